"""blastwall: deterministic containment for AI agents.

The public API is small and listed in ``__all__``; it is imported lazily so
that ``blastwall run`` starts fast.
"""

from __future__ import annotations

__all__ = [
    "ContainmentError",
    "EnforcementError",
    "Policy",
    "PolicyError",
    "PolicyViolation",
    "Reason",
    "Unsupported",
    "load_policy",
    "plan_for",
    "run",
    "sandbox",
]

__version__ = "0.1.0"

_LAZY = {
    "ContainmentError": ("blastwall.errors", "ContainmentError"),
    "EnforcementError": ("blastwall.errors", "EnforcementError"),
    "PolicyError": ("blastwall.errors", "PolicyError"),
    "PolicyViolation": ("blastwall.errors", "PolicyViolation"),
    "Unsupported": ("blastwall.errors", "Unsupported"),
    "Policy": ("blastwall.policy.model", "Policy"),
    "Reason": ("blastwall.policy.reasons", "Reason"),
    "load_policy": ("blastwall.api", "load"),
    "plan_for": ("blastwall.api", "plan_for"),
    "run": ("blastwall.api", "run"),
    "sandbox": ("blastwall.api", "sandbox"),
}


def __getattr__(name: str):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'blastwall' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
