"""Where blastwall keeps its configuration, state and cache: the XDG directories of the caller.

Kept apart (standard library ``os`` only) so that the command line's first
steps, such as reaching the resident helper, can find them without importing
the policy model.
"""

from __future__ import annotations

import os

__all__ = ["cache_dir", "config_dir", "state_dir", "user_policy_path"]


def config_dir(environ=os.environ) -> str:
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(_home(environ), ".config")
    return os.path.join(base, "blastwall")


def state_dir(environ=os.environ) -> str:
    base = environ.get("XDG_STATE_HOME") or os.path.join(_home(environ), ".local", "state")
    return os.path.join(base, "blastwall")


def cache_dir(environ=os.environ) -> str:
    base = environ.get("XDG_CACHE_HOME") or os.path.join(_home(environ), ".cache")
    return os.path.join(base, "blastwall")


def user_policy_path(environ=os.environ) -> str:
    return os.path.join(config_dir(environ), "policy.toml")


def _home(environ) -> str:
    home = environ.get("HOME")
    if home and os.path.isabs(home):
        return home
    import pwd  # Only without a usable $HOME.

    return pwd.getpwuid(os.getuid()).pw_dir
