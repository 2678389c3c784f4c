"""Interactive commands: a private pseudo-terminal relayed to the user's terminal.

The sandbox never receives a descriptor of the user's real terminal.  It gets
the slave side of a new pty (its controlling terminal, so job control and
Ctrl-C work inside), and this process copies bytes between the real terminal
and the pty's master.  So even if an ioctl slipped past seccomp, the sandbox
could only inject keystrokes into its own pty, never into the host shell.
"""

from __future__ import annotations

import errno
import os
import select
import signal

__all__ = ["run_with_pty"]


def run_with_pty(sandbox, command: list[str]) -> int:
    import fcntl
    import termios
    import tty

    master, slave = os.openpty()
    real_in, real_out = 0, 1
    try:
        attrs = termios.tcgetattr(real_in)
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
    except termios.error:
        attrs = None
    _copy_winsize(real_out, master, fcntl, termios)
    stderr = slave if os.isatty(2) else 2
    try:
        process = sandbox.exec(command, stdin=slave, stdout=slave, stderr=stderr, ctty=True)
    finally:
        os.close(slave)

    def on_winch(_signum, _frame):
        _copy_winsize(real_out, master, fcntl, termios)

    from blastwall.approvals.broker import GATE

    previous = signal.signal(signal.SIGWINCH, on_winch)
    if attrs is not None:
        tty.setraw(real_in, termios.TCSANOW)
        GATE.cooked_attrs, GATE.raw_attrs = attrs, termios.tcgetattr(real_in)
    GATE.relay_active = True
    try:
        _relay(real_in, real_out, master, GATE)
    finally:
        GATE.relay_active = False
        GATE.raw_attrs = GATE.cooked_attrs = None
        GATE.idle.set()
        if attrs is not None:
            termios.tcsetattr(real_in, termios.TCSAFLUSH, attrs)
        signal.signal(signal.SIGWINCH, previous)
        os.close(master)
    return process.wait()


def _copy_winsize(src: int, dst: int, fcntl, termios) -> None:
    try:
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def _relay(real_in: int, real_out: int, master: int, gate) -> None:
    """Copy until the sandbox side of the pty is closed by every process in it.

    While an approval prompt holds the terminal (``gate.paused``), the user's
    keystrokes are not read here: they answer blastwall, never the sandbox.
    """
    stdin_open = True
    while True:
        paused = gate.paused.is_set()
        if paused:
            gate.idle.set()
        readers = [master, real_in] if stdin_open and not paused else [master]
        try:
            ready, _, _ = select.select(readers, [], [], 0.1)
        except InterruptedError:
            continue
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return  # Every slave descriptor is closed: the sandbox is gone.
                raise
            if not data:
                return
            _write_all(real_out, data)
        if stdin_open and real_in in ready and not gate.paused.is_set():
            data = os.read(real_in, 65536)
            if not data:
                stdin_open = False
                continue
            _write_all(master, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[written:]
