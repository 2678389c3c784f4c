"""Root filesystem images for the container tier: build with mmdebstrap, import, list, remove.

Images live under the user's cache directory (``~/.cache/blastwall/images/NAME``),
each a ``rootfs`` directory and a ``meta.json``.  The host's own root
filesystem is never an image.  Builds go to a temporary directory and are
renamed into place when complete, so a half-built image is never used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from blastwall.errors import EnforcementError, PolicyError
from blastwall.policy.load import cache_dir

__all__ = ["COMPAT", "DEFAULT_IMAGE", "DEFAULT_PACKAGES", "build", "has_compat", "image_dir", "import_image",
           "install_compat", "list_images", "remove"]

DEFAULT_IMAGE = "default"
# What a code-running agent reaches for: Python with pip and venv, git, curl, the usual tools.
DEFAULT_PACKAGES = ("python3", "python3-pip", "python3-venv", "coreutils", "curl", "git", "ca-certificates", "procps",
                    "less", "file", "xz-utils", "unzip")
COMPAT = "usr/lib/blastwall/statx-compat.so"  # inside the rootfs: see _raw_statx_compat.c
SUITE = "bookworm"


def _images(environ=os.environ) -> str:
    return os.path.join(cache_dir(environ), "images")


def _check_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise PolicyError(f"{name!r} is not an image name (letters, digits, '-', '_', '.')")
    return name


def image_dir(name: str, environ=os.environ) -> str:
    return os.path.join(_images(environ), _check_name(name))


def rootfs(name: str, environ=os.environ) -> str:
    path = os.path.join(image_dir(name, environ), "rootfs")
    if not os.path.isdir(path):
        raise EnforcementError(f"Can't find the image {name!r}", fix=f"build it: blastwall image build {name}")
    return path


def build(name: str = DEFAULT_IMAGE, packages=DEFAULT_PACKAGES, *, suite: str = SUITE, environ=os.environ,
          progress=None) -> str:
    """Build image ``name`` with mmdebstrap; return its rootfs path."""
    progress = progress or (lambda line: None)
    mmdebstrap = shutil.which("mmdebstrap", path="/usr/bin:/usr/local/bin")
    if mmdebstrap is None:
        raise EnforcementError("Can't build images: mmdebstrap is not installed",
                               fix="sudo apt-get install mmdebstrap")
    for package in packages:
        if not package or not all(c.isalnum() or c in "+-.:" for c in package):
            raise PolicyError(f"{package!r} is not a Debian package name")
    target = image_dir(name, environ)
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    work = f"{target}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    mode = "root" if os.geteuid() == 0 else "unshare"
    argv = [mmdebstrap, "--variant=minbase", f"--include={','.join(packages)}", f"--mode={mode}",
            "--format=directory", suite, os.path.join(work, "rootfs")]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        progress(line)
    if proc.wait() != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise EnforcementError(f"Can't build image {name!r}: mmdebstrap failed:\n  " + "\n  ".join(tail))
    try:
        install_compat(os.path.join(work, "rootfs"))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    with open(os.path.join(work, "meta.json"), "w") as f:
        json.dump({"name": name, "suite": suite, "packages": list(packages), "built": time.time(),
                   "seconds": round(time.monotonic() - started, 1), "source": "mmdebstrap", "compat": [COMPAT]}, f)
    _replace(work, target)
    return os.path.join(target, "rootfs")


def install_compat(root: str) -> None:
    """Build the statx compatibility layer into the rootfs at ``root`` and preload it (every binary of the
    image then runs on the old runsc as on a current one); EnforcementError if it cannot be built."""
    gcc = shutil.which("gcc", path="/usr/bin:/usr/local/bin")
    if gcc is None:
        raise EnforcementError("Can't build the image's statx compatibility layer: gcc is not installed",
                               fix="sudo apt-get install gcc libc6-dev")
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_raw_statx_compat.c")
    target = os.path.join(root, COMPAT)
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    result = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", target, source],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise EnforcementError(f"Can't build the image's statx compatibility layer:\n  {result.stderr.strip()[:2000]}")
    os.chmod(target, 0o644)
    preload = os.path.join(root, "etc", "ld.so.preload")
    lines = open(preload).read().split() if os.path.exists(preload) else []
    if "/" + COMPAT not in lines:
        with open(preload, "w") as f:
            f.write("\n".join([*lines, "/" + COMPAT]) + "\n")
        os.chmod(preload, 0o644)


def has_compat(name: str = DEFAULT_IMAGE, environ=os.environ) -> bool:
    """Whether image ``name`` preloads the statx compatibility layer."""
    root = os.path.join(image_dir(name, environ), "rootfs")
    try:
        with open(os.path.join(root, "etc", "ld.so.preload")) as f:
            return "/" + COMPAT in f.read().split() and os.path.isfile(os.path.join(root, COMPAT))
    except OSError:
        return False


def import_image(name: str, source: str, *, environ=os.environ) -> str:
    """Import a root filesystem from a directory or a tarball."""
    target = image_dir(name, environ)
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    work = f"{target}.importing-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "rootfs"))
    real = os.path.realpath(source)
    if real == "/":
        raise PolicyError("Refusing to import the host's root filesystem as an image")
    if os.path.isdir(real):
        result = subprocess.run(["cp", "-a", "--reflink=auto", real + "/.", os.path.join(work, "rootfs")],
                                capture_output=True, text=True)
    elif os.path.isfile(real):
        result = subprocess.run(["tar", "-xf", real, "-C", os.path.join(work, "rootfs"), "--numeric-owner"],
                                capture_output=True, text=True)
    else:
        raise PolicyError(f"Can't import {source}: not a directory or a tarball")
    if result.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise EnforcementError(f"Can't import {source}: {result.stderr.strip()[:300]}")
    if not os.path.exists(os.path.join(work, "rootfs", "bin")) and \
            not os.path.exists(os.path.join(work, "rootfs", "usr", "bin")):
        shutil.rmtree(work, ignore_errors=True)
        raise PolicyError(f"Can't import {source}: it does not look like a root filesystem (no bin/)")
    with open(os.path.join(work, "meta.json"), "w") as f:
        json.dump({"name": name, "built": time.time(), "source": f"import {real}"}, f)
    _replace(work, target)
    return os.path.join(target, "rootfs")


def _replace(work: str, target: str) -> None:
    old = None
    if os.path.exists(target):
        old = f"{target}.old-{os.getpid()}"
        os.rename(target, old)
    os.rename(work, target)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def list_images(environ=os.environ) -> list[dict]:
    base = _images(environ)
    out = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        meta_path = os.path.join(base, name, "meta.json")
        if "." in name and (".building-" in name or ".importing-" in name or ".old-" in name):
            continue
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        out.append(meta)
    return out


def remove(name: str, environ=os.environ) -> bool:
    target = image_dir(name, environ)
    if not os.path.isdir(target):
        return False
    shutil.rmtree(target)
    return True


def _progress_printer(line: str) -> None:
    if line.startswith(("I: ", "W: ", "E: ")):
        sys.stderr.write(f"  {line}\n")
        sys.stderr.flush()
