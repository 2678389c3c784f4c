"""Every error blastwall raises, in one tree.

::

    ContainmentError            anything blastwall refuses or cannot do
    ├── PolicyError             the policy (file, flags, import) is invalid   -> exit 2
    ├── EnforcementError        a sandbox could not be set up or verified     -> exit 125
    ├── Unsupported             this machine or tier cannot enforce the plan  -> exit 125
    ├── PolicyViolation         an action was refused by the policy
    │   └── PathRefused         a file tool's path is read-only or hidden in the sandbox,
    │                           or holds a protected path
    └── FileError               a file tool's path is malformed, missing, not a regular
                                file or directory, or too large

Each tier translates the failures of its primitives (bubblewrap's messages,
``OSError`` from libseccomp or Landlock) into the most specific member of this
tree at its boundary, so callers never see a raw backend error.  Messages read
``Can't <verb> <object>: <cause>`` or ``Refusing to ...``; ``fix`` says what the
user can do about it.
"""

from __future__ import annotations

__all__ = [
    "ContainmentError",
    "EnforcementError",
    "PolicyError",
    "FileError",
    "PathRefused",
    "PolicyViolation",
    "Unsupported",
]


class ContainmentError(Exception):
    """Base of every blastwall error.

    ``exit_status`` is what the CLI exits with; ``fix`` is an optional sentence
    telling the user how to resolve the problem.
    """

    exit_status = 125

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message}\n  fix: {self.fix}"
        return self.message


class PolicyError(ContainmentError):
    """The policy document, a command-line flag or an imported file is invalid.

    ``key`` names the offending setting (``filesystem.deny_read[2]``) and
    ``source`` the file or layer it came from.
    """

    exit_status = 2

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        source: str | None = None,
        fix: str | None = None,
    ) -> None:
        where = ""
        if source and key:
            where = f"{source}: {key}: "
        elif source:
            where = f"{source}: "
        elif key:
            where = f"{key}: "
        super().__init__(where + message, fix=fix)
        self.key = key
        self.source = source


class EnforcementError(ContainmentError):
    """A sandbox could not be set up, or a restriction did not take effect."""


class Unsupported(ContainmentError):
    """The chosen tier, or this machine, cannot enforce an operation of the plan.

    Raised before anything runs: a plan is enforced whole or not at all.
    """


class PolicyViolation(ContainmentError):
    """An action was refused by the policy; ``reason`` is a stable ``Reason``."""

    exit_status = 1

    def __init__(self, message: str, *, reason: object, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.reason = reason


class PathRefused(PolicyViolation):
    """A file tool may not do this at ``path``: the sandbox sees it ``state`` (read-only, hidden, busy)."""

    def __init__(self, message: str, *, path: str, state: str, reason: object) -> None:
        super().__init__(message, reason=reason)
        self.path = path
        self.state = state


class FileError(ContainmentError):
    """A file tool's path is malformed, missing, of the wrong kind, or too large; ``code`` is stable.

    Codes: ``invalid_path``, ``not_found``, ``not_regular``, ``not_directory``,
    ``is_directory``, ``exists``, ``too_large``, ``no_space``.
    """

    exit_status = 1

    def __init__(self, message: str, *, path: str, code: str) -> None:
        super().__init__(message)
        self.path = path
        self.code = code
