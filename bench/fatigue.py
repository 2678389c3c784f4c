"""Approval fatigue: how many prompts a person would see, by hand versus under blastwall.

    .venv/bin/python bench/fatigue.py record   # record a session (needs strace and PyPI)
    .venv/bin/python bench/fatigue.py          # replay every trace in bench/traces/

Recording runs a real coding-agent-style session with real tools (git, a
venv, pip installing from PyPI, pytest, sed, curl) under ``strace -f`` and
keeps every action the session *attempted*: each program executed, each file
opened for writing (by its resolved path), each outgoing connection.  The
session script is fixed below and was written before any counting; the trace
is committed as recorded.

Replay counts, with rules fixed in ``classify``:
* by hand: one prompt per action (every command, every write, every request);
* blastwall, default policy plus ``network.unlisted = "ask"``: commands and
  writes inside the boundary (the workspace, the private /tmp) need no prompt;
  writes elsewhere are *refused* (not prompted, never auto-allowed); network
  destinations are asked about once per session per destination.
Goal (issue 5): at least 95% fewer prompts, with no action outside the
boundary auto-allowed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRACES = HERE / "traces"

SESSION = r"""
set -e
cd "$WORKSPACE"
git init -q
cat > calc.py <<'PY'
def add(a, b):
    return a + b
PY
cat > test_calc.py <<'PY'
from calc import add

def test_add():
    assert add(2, 3) == 5
PY
ls -la
python3 -m venv .venv
.venv/bin/pip install -q pytest requests
.venv/bin/python -m pytest -q
cat >> calc.py <<'PY'

def mul(a, b):
    return a * b
PY
cat >> test_calc.py <<'PY'

def test_mul():
    from calc import mul
    assert mul(2, 3) == 6
PY
.venv/bin/python -m pytest -q
grep -n "def " calc.py
sed -i 's/return a \* b/return a * b  # product/' calc.py
.venv/bin/python -m pytest -q
curl -sS -o pypi-meta.json https://pypi.org/pypi/requests/json
.venv/bin/python -c "import json; print(json.load(open('pypi-meta.json'))['info']['version'])"
git add calc.py test_calc.py
git -c user.name=agent -c user.email=agent@example.com commit -qm "Add mul"
git log --oneline
"""


def record(name: str) -> Path:
    if not shutil.which("strace"):
        raise SystemExit("fatigue: record needs strace (apt-get install strace)")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    work = Path(tempfile.mkdtemp(prefix="blastwall-fatigue-", dir=base))
    workspace = work / "project"
    workspace.mkdir()
    log = work / "strace.log"
    env = dict(os.environ, WORKSPACE=str(workspace))
    subprocess.run(["strace", "-f", "-qq", "-y", "-s", "512",
                    "-e", "trace=execve,openat,connect,clone,clone3,fork,vfork,sendto,sendmmsg",
                    "-e", "signal=none",
                    "-o", str(log), "bash", "-c", SESSION], env=env, check=True)
    actions = parse(log.read_text(), workspace=str(workspace), home=str(Path.home()))
    TRACES.mkdir(exist_ok=True)
    out = TRACES / f"{name}.jsonl"
    with open(out, "w") as f:
        for action in actions:
            f.write(json.dumps(action) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return out


_EXEC = re.compile(r'^\d+\s+execve\("([^"]+)", \[(.*?)\].* = 0')
_OPEN = re.compile(r'^\d+\s+openat\(.*?"(?:[^"\\]|\\.)*", ([A-Z_|]+).*\) = \d+<(.+)>$')
_CONNECT = re.compile(r'^\d+\s+connect\(\d+<[^>]*>, \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\), '
                      r'(?:sin_addr=inet_addr\("([^"]+)"\)|.*?inet_pton\(AF_INET6, "([^"]+)")')


_DNS_PAYLOAD = re.compile(r'(?:sendto\(\d+<[^>]*>, |iov_base=)"((?:[^"\\]|\\.)*)"')


def _dns_name(payload: bytes) -> str | None:
    """The queried name of a DNS query message, or None."""
    if len(payload) < 17 or payload[2] & 0x80 or payload[4:6] != b"\x00\x01":
        return None
    labels, i = [], 12
    while i < len(payload) and payload[i]:
        n = payload[i]
        label = payload[i + 1:i + 1 + n]
        if n > 63 or len(label) != n or not all(c == 45 or 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122
                                                 or c == 95 for c in label):
            return None
        labels.append(label.decode("ascii"))
        i += 1 + n
    return ".".join(labels).lower() or None


_SPAWN = re.compile(r'^(\d+)\s+(?:(?:clone3?|v?fork)\(.*\)|<\.\.\. (?:clone3?|v?fork) resumed>.*) = (\d+)')


def parse(text: str, *, workspace: str, home: str) -> list[dict]:
    """Actions from an strace log; paths under the workspace or home are made relative for the record.

    Each action carries its ``depth`` in the process tree: 0 is the session's
    own shell (its redirections are the agent's file edits), 1 the commands it
    runs, more what those commands run in turn.
    """
    actions = []
    parent: dict[str, str] = {}
    root = None

    def depth(pid: str) -> int:
        d = 0
        while pid != root and pid in parent and d < 64:
            pid = parent[pid]
            d += 1
        return d

    for line in text.splitlines():
        pid = line.split(None, 1)[0] if line else ""
        if root is None and pid.isdigit():
            root = pid
        m = _SPAWN.match(line)
        if m:
            parent[m.group(2)] = m.group(1)
            continue
        m = _EXEC.match(line)
        if m:
            argv = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(2))
            actions.append({"kind": "command", "argv": [a[:80] for a in argv[:4]], "depth": depth(pid)})
            continue
        if "sendto(" in line or "sendmmsg(" in line:
            import codecs

            for raw in _DNS_PAYLOAD.findall(line):
                name = _dns_name(codecs.escape_decode(raw.encode())[0])
                if name:
                    actions.append({"kind": "lookup", "host": name, "depth": depth(pid)})
            continue
        m = _OPEN.match(line)
        if m and any(flag in m.group(1) for flag in ("O_WRONLY", "O_RDWR", "O_CREAT")):
            path = m.group(2)
            if path.startswith("/dev/") or path.startswith("/proc/"):
                continue
            if path.startswith(workspace):
                path = "$WORKSPACE" + path[len(workspace):]
            elif path.startswith(home):
                path = "~" + path[len(home):]
            actions.append({"kind": "write", "path": path, "depth": depth(pid)})
            continue
        m = _CONNECT.match(line)
        if m:
            address = m.group(2) or m.group(3)
            if address in ("127.0.0.53", "127.0.0.1", "::1") and m.group(1) == "53":
                continue
            actions.append({"kind": "connect", "address": address, "port": int(m.group(1)), "depth": depth(pid)})
    return actions


def classify(action: dict) -> str:
    """'inside' (no prompt), 'outside' (refused, no prompt) or 'ask' (one prompt per destination).

    Writes inside the workspace are inside the boundary except blastwall's
    mandatory write-denies (.git, .bashrc, .vscode, ...), which are refused.
    """
    from blastwall.policy.defaults import MANDATORY_WRITE_DENY

    if action["kind"] in ("command", "connect"):
        return "inside" if action["kind"] == "command" else "request"
    if action["kind"] == "write":
        path = action["path"]
        if path.startswith("$WORKSPACE/"):
            rel = path[len("$WORKSPACE/"):]
            if any(rel == entry or rel.startswith(entry + "/") for entry in MANDATORY_WRITE_DENY):
                return "outside"
            return "inside"
        if path.startswith("/tmp/") or path.startswith("/var/tmp/"):
            return "inside"
        return "outside"
    return "ask"  # A name looked up to connect: one question per host and session.


def replay(path: Path) -> dict:
    actions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # Name lookups are part of a request, not an action anyone approves on its
    # own (inside a sandbox they happen in the gateway): counted on neither side.
    actions = [a for a in actions if not (a["kind"] == "connect" and a["port"] == 53)]
    lookups = [a for a in actions if a["kind"] == "lookup"]
    actions = [a for a in actions if a["kind"] != "lookup"] + lookups
    by_kind: dict[str, int] = {}
    for action in actions:
        if action["kind"] != "lookup":
            by_kind[action["kind"]] = by_kind.get(action["kind"], 0) + 1
    classes = [classify(a) for a in actions]
    # Prompts are per host name, which the trace knows from the session's own
    # DNS queries (addresses alone can hide several hosts behind one proxy).
    destinations = {a["host"] for a, c in zip(actions, classes) if c == "ask"}
    outside = [a for a, c in zip(actions, classes) if c == "outside"]
    # What an approve-every-action tool asks about: each command the agent
    # runs (depth 1; the session's shell itself, depth 0, is not one), each
    # file the agent writes itself (depth 0), each network request.
    agent_level = [a for a in actions
                   if (a["kind"] == "command" and a.get("depth") == 1)
                   or (a["kind"] == "write" and a.get("depth") == 0)
                   or a["kind"] == "connect"]
    total = sum(by_kind.values())
    return {"actions": total, "by_kind": by_kind, "manual_prompts": len(agent_level),
            "syscall_prompts": total, "hosts": sorted(destinations), "blastwall_prompts": len(destinations), "outside": outside,
            "auto_allowed_outside": 0}


def main(argv: list[str]) -> int:
    if argv[:1] == ["record"]:
        name = argv[1] if len(argv) > 1 else "coding-session"
        print(f"recorded {record(name)}")
        return 0
    traces = sorted(TRACES.glob("*.jsonl"))
    if not traces:
        raise SystemExit("fatigue: no traces in bench/traces (run: bench/fatigue.py record)")
    print("prompts a person sees: approving every action by hand vs blastwall (default policy, "
          "network.unlisted = \"ask\")\n")
    print(f"| {'trace':<16} | {'actions':>7} | {'commands':>8} | {'writes':>6} | {'connects':>8} | "
          f"{'by hand':>7} | {'blastwall':>9} | {'fewer':>6} | {'outside, refused':>16} |")
    print("|" + "|".join("-" * (w + 2) for w in (16, 7, 8, 6, 8, 7, 9, 6, 16)) + "|")
    notes = []
    for trace in traces:
        r = replay(trace)
        fewer = 100.0 * (1 - r["blastwall_prompts"] / r["manual_prompts"])
        k = r["by_kind"]
        print(f"| {trace.stem:<16} | {r['actions']:>7} | {k.get('command', 0):>8} | {k.get('write', 0):>6} | "
              f"{k.get('connect', 0):>8} | {r['manual_prompts']:>7} | {r['blastwall_prompts']:>9} | "
              f"{fewer:5.1f}% | {len(r['outside']):>16} |")
        outside_paths = sorted({a["path"] for a in r["outside"]})
        shown = ", ".join(outside_paths[:4]) + (" ..." if len(outside_paths) > 4 else "")
        twice = 100.0 * (1 - r["blastwall_prompts"] / (2 * r["manual_prompts"]))
        notes.append(f"{trace.stem}: answered 'always in this workspace', a second session of the same kind in "
                     f"the same workspace asks nothing: over two sessions, {twice:.1f}% fewer prompts.")
        notes.append(f"{trace.stem}: blastwall asks about {', '.join(r['hosts']) or 'no host'} (once each).")
        notes.append(f"{trace.stem}: 'by hand' counts agent-level actions ({r['manual_prompts']}: the commands "
                     f"the agent ran, the files it wrote itself, each request); counting every write any program "
                     f"made ({r['syscall_prompts']} actions) would give "
                     f"{100.0 * (1 - r['blastwall_prompts'] / r['syscall_prompts']):.1f}% fewer.")
        if outside_paths:
            notes.append(f"{trace.stem}: writes outside the boundary, refused (never auto-allowed, never asked): "
                         f"{shown}")
        notes.append(f"{trace.stem}: goal >= 95% fewer prompts -> {'met' if fewer >= 95 else 'NOT met'}; "
                     f"actions outside the boundary auto-allowed: {r['auto_allowed_outside']}")
    print("\n" + "\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
