"""The egress gateway: the only way out of a sandbox.

``decide`` holds every decision as pure functions; ``addon`` applies them inside
mitmproxy; ``gateway`` is the long-lived process serving many sandboxes;
``client`` is what ``blastwall run`` uses to register a session with it.
"""
