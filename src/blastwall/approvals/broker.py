"""Approval brokers: who answers when the gateway asks about an unlisted host.

The gateway never asks the sandbox: questions travel over the run's control
connection to the ``blastwall run`` process on the host, which asks

* a person, on the controlling terminal (``TerminalBroker``);
* a Python callback, when blastwall is used as a library (``CallbackBroker``);
* a webhook, for services (``WebhookBroker``).

Answers: allow or deny, ``once``, for this ``session``, or always in this
``workspace`` (remembered, with an expiry, in the approval store).  Anything
else — no terminal, an error, no answer — is a denial.
"""

from __future__ import annotations

import os
import threading

__all__ = ["CallbackBroker", "PromptGate", "TerminalBroker", "WebhookBroker", "parse_answer"]

ANSWERS = {
    "o": (True, "once"), "s": (True, "session"), "w": (True, "workspace"),
    "d": (False, "once"), "n": (False, "workspace"),
}
PROMPT = ("[o] allow once  [s] allow for this session  [w] always allow in this workspace  "
          "[d] deny  [n] never in this workspace")


def parse_answer(text: str) -> tuple[bool, str]:
    """A typed answer; anything unrecognised denies once."""
    return ANSWERS.get(text.strip().lower()[:1], (False, "once"))


class PromptGate:
    """Lets the pty relay and a prompt take turns with the user's terminal.

    While a prompt is shown the relay stops reading the terminal, so the
    answer goes to blastwall and never to the sandbox.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.paused = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        self.raw_attrs = None  # Set by the relay while the terminal is raw.
        self.cooked_attrs = None
        self.relay_active = False


GATE = PromptGate()


class TerminalBroker:
    def __init__(self, *, command: str) -> None:
        self.command = command

    def decide(self, host: str, port: int) -> tuple[bool, str]:
        with GATE.lock:
            if GATE.relay_active:
                GATE.idle.clear()
                GATE.paused.set()
                GATE.idle.wait(1.0)  # The relay has stopped reading the terminal.
            else:
                GATE.paused.set()
            try:
                return self._prompt(host, port)
            finally:
                GATE.paused.clear()

    def _prompt(self, host: str, port: int) -> tuple[bool, str]:
        try:
            fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            return False, "no-terminal"
        import termios

        raw = GATE.raw_attrs
        try:
            if raw is not None and GATE.cooked_attrs is not None:
                termios.tcsetattr(fd, termios.TCSANOW, GATE.cooked_attrs)
            termios.tcflush(fd, termios.TCIFLUSH)  # Nothing typed before the question counts.
            from blastwall._display import shown

            # The host is the sandbox's choice: escaped, so that it cannot rewrite the question.
            os.write(fd, (f"\r\nblastwall: the sandbox ({shown(self.command[:60])}) wants to connect to "
                          f"{shown(host)}:{port}, "
                          f"which your policy does not list.\r\n{PROMPT}? ").encode())
            answer = b""
            while not answer.endswith((b"\n", b"\r")) and len(answer) < 32:
                chunk = os.read(fd, 1)
                if not chunk:
                    break
                answer += chunk
            allowed, scope = parse_answer(answer.decode(errors="replace"))
            os.write(fd, f"blastwall: {'allowed' if allowed else 'denied'} ({scope})\r\n".encode())
            return allowed, scope
        except OSError:
            return False, "no-terminal"
        finally:
            if raw is not None:
                try:
                    termios.tcsetattr(fd, termios.TCSANOW, raw)
                except termios.error:
                    pass
            os.close(fd)


class CallbackBroker:
    """``callback(host, port) -> (allowed, scope)``; an exception denies."""

    def __init__(self, callback) -> None:
        self.callback = callback

    def decide(self, host: str, port: int) -> tuple[bool, str]:
        try:
            allowed, scope = self.callback(host, port)
        except Exception:  # noqa: BLE001 - a broken callback denies
            return False, "callback-error"
        scope = scope if scope in ("once", "session", "workspace") else "once"
        return bool(allowed), scope


class WebhookBroker:
    """POSTs ``{"host", "port", "command", "workspace"}``; expects ``{"decision", "scope"}``."""

    def __init__(self, url: str, *, command: str, workspace: str, timeout: float = 30.0) -> None:
        self.url, self.command, self.workspace, self.timeout = url, command, workspace, timeout

    def decide(self, host: str, port: int) -> tuple[bool, str]:
        import json
        import urllib.request

        body = json.dumps({"host": host, "port": port, "command": self.command, "workspace": self.workspace})
        request = urllib.request.Request(self.url, data=body.encode(), method="POST",
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read(65536))
        except Exception:  # noqa: BLE001 - unreachable, slow or garbled: deny
            return False, "webhook-error"
        scope = answer.get("scope") if answer.get("scope") in ("once", "session", "workspace") else "once"
        return answer.get("decision") == "allow", scope
