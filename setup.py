"""Builds the compiled sandbox launcher (src/blastwall/tiers/process/_raw_enter.c).

It is an executable, not a Python extension; it is declared as an Extension
only so that setuptools builds it at the right place for wheels and for
editable installs alike.  The file keeps the extension's name so the runtime
can find it (see blastwall.tiers.process.compiled_launcher); without a C
compiler the build fails loudly rather than installing a slower launcher
silently.
"""

import os
import shlex
import subprocess
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = "src/blastwall/tiers/process/_raw_enter.c"


class BuildLauncher(build_ext):
    def build_extension(self, ext):
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
        command = [*cc, "-O2", "-Wall", "-Wextra", "-Werror", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong",
                   "-fPIE", "-pie", "-o", target, *ext.sources]
        subprocess.run(command, check=True)


setup(
    ext_modules=[Extension("blastwall.tiers.process._raw_enter_bin", sources=[SOURCE])],
    cmdclass={"build_ext": BuildLauncher},
)
