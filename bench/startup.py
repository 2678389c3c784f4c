"""Start-up cost of `blastwall run -- true`, side by side with bare bubblewrap, Codex's sandbox and srt.

    .venv/bin/python bench/startup.py [--runs 40]

Runs the three commands interleaved (one of each per round, so machine noise
hits all alike) and prints medians, the 90th percentile and ratios.
* bare bwrap: the same namespaces and a minimal mount set (ro root, /dev,
  /proc, private /tmp, the workspace) with no seccomp, no Landlock, no policy;
* blastwall run: the installed `blastwall` command with the default policy;
* blastwall net: the same with `--allow-domain example.com` and a warm gateway;
* codex sandbox: OpenAI Codex's Linux sandbox (`codex sandbox -- true`, npm
  `@openai/codex`), installed into bench/.codex on first use; its native
  binary is run directly (the package's node wrapper adds node's start-up);
* srt: Anthropic's sandbox-runtime from npm, installed into bench/.srt on first
  use (either skipped, with the reason, when npm or its dependencies are missing);
* session exec: `exec(["true"])` in a booted process-tier session (in this
  process: what each SDK command costs once its sandbox runs).
Goals: blastwall's median <= 1/5 of srt's and within 25 ms of bare bwrap (issue 2);
with a warm gateway, network adds <= 15 ms (issue 3); blastwall's median <= Codex's (issue 14).
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SRT_DIR = HERE / ".srt"
CODEX_DIR = HERE / ".codex"


def find_blastwall() -> list[str]:
    script = Path(sys.executable).with_name("blastwall")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "blastwall"]


def npm_package(directory: Path, package: str, binary: str) -> tuple[Path | None, str]:
    """``binary`` of npm ``package``, installed into ``directory`` on first use; (None, why) if it cannot be."""
    path = directory / "node_modules" / ".bin" / binary
    if not path.exists():
        if not shutil.which("npm"):
            return None, "npm is not installed"
        directory.mkdir(exist_ok=True)
        r = subprocess.run(["npm", "install", "--silent", "--prefix", str(directory), package],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0 or not path.exists():
            return None, f"npm install {package} failed: {r.stderr.strip()[:200]}"
    return path, ""


def probed(argv: list[str], name: str) -> tuple[list[str] | None, str]:
    """``argv`` if it runs here, else (None, why)."""
    probe = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return None, f"{name} does not run here: {probe.stderr.strip()[:200]}"
    return argv, ""


def ensure_srt() -> tuple[list[str] | None, str]:
    binary, why = npm_package(SRT_DIR, "@anthropic-ai/sandbox-runtime", "srt")
    if binary is None:
        return None, why
    missing = [tool for tool in ("rg", "socat") if not shutil.which(tool)]
    if missing:
        return None, f"srt needs {', '.join(missing)} (apt-get install ripgrep socat)"
    return probed([str(binary), "true"], "srt")


def ensure_codex() -> tuple[list[str] | None, str]:
    binary, why = npm_package(CODEX_DIR, "@openai/codex", "codex")
    if binary is None:
        return None, why
    # The npm package's `codex` is a node script that starts the native binary; node's own start-up
    # (~90 ms here) is not the sandbox's, so the native binary is measured, as the package runs it.
    native = sorted(CODEX_DIR.glob("node_modules/@openai/codex-linux-*/vendor/*/bin/codex"))
    return probed([str(native[0]) if native else str(binary), "sandbox", "--", "true"], "codex sandbox")


def optional(commands: dict, name: str, ensure, *, skipped: bool, flag: str) -> str:
    """Add comparison ``name`` to ``commands`` if ``ensure()`` finds it; the note to print ("" if added)."""
    if skipped:
        return f"skipped ({flag})"
    argv, why = ensure()
    if argv is None:
        return f"skipped: {why}"
    commands[name] = argv
    return ""


def session_exec(workspace: str, env: dict, runs: int, warmup: int) -> list[float]:
    """Milliseconds of each ``exec(["true"])`` in one booted process-tier session."""
    from blastwall import api

    policy = api.load(environ=env)
    session = api.session(policy, workspace=workspace, environ=env)
    session.boot()
    devnull = os.open(os.devnull, os.O_RDWR)
    times = []
    try:
        for round_ in range(warmup + runs):
            start = time.perf_counter()
            process = session.exec(["true"], stdin=devnull, stdout=devnull, stderr=devnull)
            status = process.wait(60)
            elapsed = (time.perf_counter() - start) * 1000
            process.release()
            if status != 0:
                raise SystemExit(f"bench: session exec failed (exit {status})")
            if round_ >= warmup:
                times.append(elapsed)
    finally:
        os.close(devnull)
        session.close()
    return times


def bare_bwrap(workspace: str) -> list[str]:
    from blastwall.tiers.process import find_bwrap
    from blastwall.tiers._raw_bwrap import FIXED_FLAGS

    return [find_bwrap(), *FIXED_FLAGS, "--unshare-net", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp", "--bind", workspace, workspace, "--chdir", workspace, "--", "true"]


def measure(commands: dict[str, list[str]], runs: int, warmup: int, cwd: str, env: dict) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(warmup + runs):
        for name, argv in commands.items():
            start = time.perf_counter()
            r = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            elapsed = (time.perf_counter() - start) * 1000
            if r.returncode != 0:
                raise SystemExit(f"bench: {name} failed (exit {r.returncode}): {r.stderr.decode()[:300]}")
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-srt", action="store_true")
    parser.add_argument("--no-codex", action="store_true")
    args = parser.parse_args()

    # A normal installation has compiled bytecode; make sure this one does too.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    import blastwall

    compileall.compile_dir(os.path.dirname(blastwall.__file__), quiet=1)

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    base.mkdir(parents=True, exist_ok=True)
    workspace = tempfile.mkdtemp(prefix="blastwall-bench-", dir=base)
    try:
        commands = {"bare bwrap": bare_bwrap(workspace), "blastwall run": [*find_blastwall(), "run", "--", "true"],
                    "blastwall net": [*find_blastwall(), "run", "--allow-domain", "example.com", "--", "true"]}
        # Warm the gateway: the goal is about a gateway that is already running.
        subprocess.run(commands["blastwall net"], cwd=workspace, env=env, check=True)
        codex_note = optional(commands, "codex sandbox", ensure_codex, skipped=args.no_codex, flag="--no-codex")
        srt_note = optional(commands, "srt", ensure_srt, skipped=args.no_srt, flag="--no-srt")
        times = measure(commands, args.runs, args.warmup, workspace, env)
        times["session exec"] = session_exec(workspace, env, args.runs, args.warmup)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)

    med = {name: statistics.median(values) for name, values in times.items()}
    p90 = {name: sorted(values)[int(len(values) * 0.9) - 1] for name, values in times.items()}
    print(f"`<command> true`, {args.runs} interleaved runs each (after {args.warmup} warm-up rounds), "
          f"wall time in ms, on {os.cpu_count()} cores\n")
    print(f"| {'command':<14} | {'median':>7} | {'p90':>7} | {'vs bare bwrap':>13} | {'vs codex':>8} | {'vs srt':>7} |")
    print(f"|{'-' * 16}|{'-' * 9}|{'-' * 9}|{'-' * 15}|{'-' * 10}|{'-' * 9}|")
    for name in times:
        vs_bare = f"{med[name] / med['bare bwrap']:.1f}x"
        vs_codex = f"{med[name] / med['codex sandbox']:.2f}x" if "codex sandbox" in med else "-"
        vs_srt = f"{med[name] / med['srt']:.2f}x" if "srt" in med else "-"
        print(f"| {name:<14} | {med[name]:7.1f} | {p90[name]:7.1f} | {vs_bare:>13} | {vs_codex:>8} | {vs_srt:>7} |")
    for tool, note in (("codex", codex_note), ("srt", srt_note)):
        if note:
            print(f"\n{tool}: {note}")
    over = med["blastwall run"] - med["bare bwrap"]
    print(f"\nblastwall overhead over bare bwrap: {over:.1f} ms (goal: <= 25 ms) -> {'met' if over <= 25 else 'NOT met'}")
    net = med["blastwall net"] - med["blastwall run"]
    print(f"network (warm gateway) over no network: {net:.1f} ms (goal: <= 15 ms) -> {'met' if net <= 15 else 'NOT met'}")
    if "codex sandbox" in med:
        gap = med["blastwall run"] - med["codex sandbox"]
        print(f"blastwall run - codex sandbox: {gap:+.1f} ms (goal: <= 0) -> {'met' if gap <= 0 else 'NOT met'}")
    if "srt" in med:
        ratio = med["srt"] / med["blastwall run"]
        print(f"srt / blastwall: {ratio:.1f}x (goal: >= 5x) -> {'met' if ratio >= 5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
