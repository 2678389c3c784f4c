"""Interactive use through a real pseudo-terminal: python -i, a shell, Ctrl-C."""

from __future__ import annotations

import os
import pty
import select
import sys
import time

from tests.conftest import bw_env, needs_bwrap

pytestmark = needs_bwrap


class Terminal:
    """Runs blastwall on a fresh pty, like a person at a terminal."""

    def __init__(self, args, *, home, cwd, extra_env=None):
        env = bw_env(home, {"TERM": "dumb", **(extra_env or {})})
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir(cwd)
            os.execve(sys.executable, [sys.executable, "-m", "blastwall", *args], env)
        self.output = b""

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, needle: str, timeout: float = 20, count: int = 1) -> str:
        """Wait until ``needle`` has appeared ``count`` times in the output so far."""
        deadline = time.monotonic() + timeout
        while self.output.count(needle.encode()) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"did not see {needle!r} in {self.output[-2000:]!r}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                self.output += chunk
        assert needle.encode() in self.output, self.output[-2000:]
        return self.output.decode(errors="replace")

    def wait(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if ready:
                    self.output += os.read(self.fd, 65536)
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError("blastwall did not exit")


def test_python_interactive(home, workspace):
    term = Terminal(["run", "--", "python3", "-i", "-q"], home=home, cwd=workspace)
    term.expect(">>> ")
    term.send("print(6 * 7)\n")
    term.expect("42")
    term.send("import os; print('tty', os.isatty(0), os.getpgrp() == os.tcgetpgrp(0))\n")
    term.expect("tty True True")  # Our own pty, with us in the foreground.
    term.send("exit(3)\n")
    assert term.wait() == 3


def test_ctrl_c_interrupts_the_program_not_the_sandbox(home, workspace):
    term = Terminal(["run", "--", "python3", "-i", "-q"], home=home, cwd=workspace)
    term.expect(">>> ")
    term.send("import time; time.sleep(30)\n")
    time.sleep(0.5)
    term.send("\x03")
    term.expect("KeyboardInterrupt")
    term.send("print('still', 'here')\n")
    term.expect("still here")
    term.send("exit(0)\n")
    assert term.wait() == 0


def test_shell(home, workspace):
    term = Terminal(["shell"], home=home, cwd=workspace)
    term.send("echo sandbox=$BLASTWALL_SANDBOX; cat ~/.aws/credentials; exit 5\n")
    term.expect("sandbox=process")
    assert term.wait() == 5
    assert "AKIA" not in term.output.decode(errors="replace")
