"""Builds the compiled helpers of the tiers.

* ``src/blastwall/tiers/process/_raw_enter.c``: the launcher inside the process
  tier's sandbox (and around the VM tier's QEMU);
* ``src/blastwall/tiers/container/_raw_filter.c``: installs the seccomp program
  inside a gVisor sandbox; linked statically, because it runs in the image.

They are executables, not Python extensions; they are declared as Extensions
only so that setuptools builds them at the right place for wheels and for
editable installs alike.  The files keep the extension's name so the runtime
can find them; without a C compiler the build fails loudly rather than
installing without them.
"""

import os
import shlex
import subprocess
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HARDENING = ["-O2", "-Wall", "-Wextra", "-Werror", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong"]
LINK = {
    "blastwall.tiers.process._raw_enter_bin": ["-fPIE", "-pie"],
    "blastwall.tiers.container._raw_filter_bin": ["-static"],
}


class BuildHelpers(build_ext):
    def build_extension(self, ext):
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
        subprocess.run([*cc, *HARDENING, *LINK[ext.name], "-o", target, *ext.sources], check=True)


setup(
    ext_modules=[
        Extension("blastwall.tiers.process._raw_enter_bin", sources=["src/blastwall/tiers/process/_raw_enter.c"],
                  depends=["src/blastwall/tiers/_raw_fail.h"]),
        Extension("blastwall.tiers.container._raw_filter_bin", sources=["src/blastwall/tiers/container/_raw_filter.c"],
                  depends=["src/blastwall/tiers/_raw_fail.h"]),
    ],
    cmdclass={"build_ext": BuildHelpers},
)
