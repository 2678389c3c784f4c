"""Stable reason codes for every network decision.

Shared by ``decide``, the gateway's addon, the audit log, the refusal bodies
a sandboxed client reads and the end-of-run summary.  The values are a
contract (scripts parse them): add members; never rename or reuse one.
``Verdict`` accepts only these, so an unknown code fails where it is made.
"""

from __future__ import annotations

import enum

__all__ = ["EgressReason"]


class EgressReason(str, enum.Enum):
    ALLOWED = "allowed"
    APPROVED = "approved"  # Unlisted, and a person said yes.
    CREDENTIAL_USED = "credential-used"  # A placeholder was swapped for the real credential.
    # The destination.
    DENIED = "denied"  # network.deny.
    NOT_ALLOWED = "not-allowed"  # Not in network.allow.
    REFUSED_BY_PERSON = "refused-by-person"  # Unlisted, and a person said no (or nobody answered).
    BAD_HOST = "bad-host"  # Not a canonical host name.
    BAD_PORT = "bad-port"
    BAD_ADDRESS = "bad-address"
    FORBIDDEN_ADDRESS = "forbidden-address"  # Loopback, private, metadata, ... and not trusted.
    NO_ADDRESS = "no-address"
    RESOLVE_FAILED = "resolve-failed"
    # The request names another host than its tunnel or proxy request.
    HOST_MISMATCH = "host-mismatch"
    TARGET_MISMATCH = "target-mismatch"
    SNI_MISMATCH = "sni-mismatch"
    # The request itself.
    BAD_REQUEST = "bad-request"
    BAD_TARGET = "bad-target"
    BAD_HOST_HEADER = "bad-host-header"
    MISSING_HOST = "missing-host"
    DUPLICATE_HOST = "duplicate-host"
    CONTROL_CHARACTER = "control-character"
    AMBIGUOUS_PATH = "ambiguous-path"
    METHOD_OVERRIDE = "method-override"
    BODY_TOO_LARGE = "body-too-large"
    # Grants: [[network.rules]] and credentials.
    NOT_GRANTED = "not-granted"
    HEADER_NOT_GRANTED = "header-not-granted"
    QUERY_NOT_GRANTED = "query-not-granted"
    COOKIE_NOT_GRANTED = "cookie-not-granted"
    FOREIGN_CREDENTIAL = "foreign-credential"
    PLACEHOLDER_TO_UNBOUND_HOST = "placeholder-to-unbound-host"
    # The gateway itself.
    NO_SESSION = "no-session"  # The connection belongs to no sandbox's session (it ended, or never was).
    NO_DESTINATION = "no-destination"  # A request that names nowhere to go.

    def __str__(self) -> str:
        return self.value
