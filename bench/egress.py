"""Egress throughput and latency: direct, through blastwall's gateway, through srt's proxy.

    .venv/bin/python bench/egress.py [--size-mb 256] [--requests 200]

One upstream HTTP server on the host's loopback serves a large body and a
small one.  Measured side by side in one run:
* download: one `curl` of the large body, its reported speed (MB/s);
* latency: a Python client inside the sandbox making N sequential small
  requests, each on a new connection through the proxy; median and p90 (ms).
"direct" runs the same clients on the host without any proxy.  srt is installed
into bench/.srt on first use (see bench/startup.py) or skipped with the reason.
Goals (issue 3): at least srt's throughput, no more than srt's added latency.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import ensure_srt, find_blastwall  # noqa: E402

CHUNK = b"\0" * (1 << 20)

LATENCY = r"""
import json, os, sys, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
for name in ("no_proxy", "NO_PROXY"):  # srt exempts localhost; measure its proxy, not a bypass.
    os.environ.pop(name, None)
opener = urllib.request.build_opener(urllib.request.ProxyHandler())  # Proxies from the environment.
times = []
for _ in range(n):
    start = time.perf_counter()
    with opener.open(url) as r:
        r.read()
    times.append((time.perf_counter() - start) * 1000)
print(json.dumps(times))
"""


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    size_mb = 256

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(self.size_mb << 20))
            self.end_headers()
            for _ in range(self.size_mb):
                self.wfile.write(CHUNK)
        else:
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--no-srt", action="store_true")
    args = parser.parse_args()
    Handler.size_mb = args.size_mb
    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="blastwall-bench-egress-", dir=base))
    (work / "latency.py").write_text(LATENCY)
    policy = work / "policy.toml"
    policy.write_text('[network]\nallow = ["api.test"]\nresolve = { "api.test" = "127.0.0.1" }\n'
                      'trusted_addresses = ["127.0.0.1/32"]\n')
    srt_settings = work / "srt.json"
    srt_settings.write_text(json.dumps({"network": {"allowedDomains": ["localhost"], "deniedDomains": []},
                                        "filesystem": {"denyRead": [], "allowWrite": ["."], "denyWrite": []}}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    curl = ["curl", "-sS", "--noproxy", "", "-o", "/dev/null", "-w", "%{speed_download}"]
    runners = {
        "direct": ([], f"http://127.0.0.1:{port}"),
        "blastwall": ([*find_blastwall(), "run", "--policy", str(policy), "--"], f"http://api.test:{port}"),
    }
    srt_note = "skipped (--no-srt)"
    if not args.no_srt:
        srt, why = ensure_srt()
        if srt:
            runners["srt"] = ([srt[0], "-s", str(srt_settings), "--"], f"http://localhost:{port}")
            srt_note = ""
        else:
            srt_note = f"skipped: {why}"
    results = {}
    try:
        # Warm the gateway so its start-up is not counted.
        subprocess.run(runners["blastwall"][0] + ["true"], cwd=work, env=env, check=True)
        for name, (prefix, origin) in runners.items():
            down = subprocess.run([*prefix, *curl, f"{origin}/big"], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=600)
            if down.returncode != 0:
                raise SystemExit(f"bench: {name} download failed: {down.stderr[:300]}")
            lat = subprocess.run([*prefix, sys.executable, "latency.py", f"{origin}/small", str(args.requests)],
                                 cwd=work, env=env, capture_output=True, text=True, timeout=600)
            if lat.returncode != 0:
                raise SystemExit(f"bench: {name} latency failed: {lat.stderr[:300]}")
            times = json.loads(lat.stdout.strip().splitlines()[-1])
            results[name] = (float(down.stdout) / 1e6, statistics.median(times),
                             sorted(times)[int(len(times) * 0.9) - 1])
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    print(f"download of {args.size_mb} MiB (curl) and {args.requests} sequential small requests, "
          "each on a new connection (Python urllib)\n")
    print(f"| {'path':<10} | {'download MB/s':>13} | {'latency median ms':>17} | {'p90 ms':>7} | {'added vs direct':>15} |")
    print(f"|{'-' * 12}|{'-' * 15}|{'-' * 19}|{'-' * 9}|{'-' * 17}|")
    for name, (mbps, med, p90) in results.items():
        added = med - results["direct"][1]
        print(f"| {name:<10} | {mbps:13.0f} | {med:17.2f} | {p90:7.2f} | {added:13.2f} ms |")
    if srt_note:
        print(f"\nsrt: {srt_note}")
    if "srt" in results:
        b, s, d = results["blastwall"], results["srt"], results["direct"]
        print(f"\nthroughput: blastwall {b[0]:.0f} MB/s vs srt {s[0]:.0f} MB/s -> "
              f"{'met' if b[0] >= s[0] else 'NOT met'} (goal: at least srt's)")
        print(f"added latency: blastwall {b[1] - d[1]:.2f} ms vs srt {s[1] - d[1]:.2f} ms -> "
              f"{'met' if b[1] - d[1] <= s[1] - d[1] else 'NOT met'} (goal: no more than srt's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
