"""Reading policy files and layering them: defaults < user file < command line.

The only I/O here is reading the one policy file the user chose (or the default
user file).  Project files inside the workspace are never opened: a later trust
step decides whether they may be read at all.
"""

from __future__ import annotations

import os

from blastwall.errors import PolicyError
from blastwall.policy.model import Layer, Policy, merge, parse_layer

__all__ = ["config_dir", "load_policy", "read_policy_file", "user_policy_path"]

MAX_POLICY_BYTES = 1 << 20


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


def read_text(path: str, what: str = "policy file") -> str:
    """Read a small UTF-8 file, refusing anything odd with a clear PolicyError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PolicyError(f"Can't read {what}: no such file", source=path) from None
    except OSError as exc:
        raise PolicyError(f"Can't read {what}: {exc.strerror}", source=path) from None
    try:
        import stat

        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PolicyError(f"Can't read {what}: not a regular file", source=path)
        if info.st_size > MAX_POLICY_BYTES:
            raise PolicyError(
                f"Can't read {what}: larger than {MAX_POLICY_BYTES} bytes", source=path
            )
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_POLICY_BYTES:
                raise PolicyError(
                    f"Can't read {what}: larger than {MAX_POLICY_BYTES} bytes", source=path
                )
            chunks.append(chunk)
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"Can't read {what}: not UTF-8 ({exc.reason} at byte {exc.start})", source=path) from None


def parse_toml(text: str, source: str) -> dict:
    import tomllib  # Only paid for when a policy file exists.

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"not valid TOML: {exc}", source=source) from None
    except RecursionError:
        raise PolicyError("not valid TOML: nested too deeply", source=source) from None


def read_policy_file(path: str) -> Layer:
    """Read, parse and validate one policy file into a Layer."""
    return parse_layer(parse_toml(read_text(path), path), path)


def user_layers(policy_file: str | None = None, *, environ=os.environ) -> list[Layer]:
    """The user's own layer: ``policy_file``, or the default user file if it exists.

    A named file that does not exist is an error, a missing default user file is not.
    """
    if policy_file is not None:
        return [read_policy_file(policy_file)]
    default = user_policy_path(environ)
    if os.path.lexists(default):
        return [read_policy_file(default)]
    return []


def load_policy(
    policy_file: str | None = None,
    *,
    flags: Layer | None = None,
    environ=os.environ,
) -> Policy:
    """The effective policy without any project layer: built-in defaults < user file < ``flags``."""
    layers = user_layers(policy_file, environ=environ)
    if flags is not None:
        layers.append(flags)
    return merge(layers)
