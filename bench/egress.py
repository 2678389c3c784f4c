"""Egress throughput and latency over HTTPS: direct, blastwall's opaque tunnel, an intercepted ruled host, srt.

    .venv/bin/python bench/egress.py [--size-mb 256] [--requests 200] [--no-srt]

One HTTPS upstream on the host's loopback (its own CA) serves a large body
and a small one.  Measured side by side in one run, each through CONNECT:

* download: one `curl` of the large body, its reported speed (MB/s);
* latency: a Python client inside the sandbox making N sequential small
  requests, each on a new connection (a new tunnel and TLS handshake);
  median and p90 (ms).

Paths: "direct" (the same clients on the host, no proxy); "opaque" (a
blastwall session with a plain allowlist: the TLS is tunnelled, checked by
its SNI); "intercepted" (a session whose host has a rule: the gateway
decrypts, checks the rule on each request, and re-encrypts upstream); "srt"
(srt's proxy, which tunnels).  srt is installed into bench/.srt on first use
(see bench/startup.py) or skipped with the reason.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import socketserver
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from startup import ensure_srt, find_blastwall  # noqa: E402

CHUNK = b"\0" * (1 << 20)

LATENCY = r"""
import json, os, ssl, sys, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
for name in ("no_proxy", "NO_PROXY"):  # srt exempts localhost; measure its proxy, not a bypass.
    os.environ.pop(name, None)
context = ssl.create_default_context(cafile=os.environ.get("BENCH_CA") or os.environ.get("SSL_CERT_FILE"))
opener = urllib.request.build_opener(urllib.request.ProxyHandler(), urllib.request.HTTPSHandler(context=context))
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
    from tests.egress.upstreams import make_ca_and_cert

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="blastwall-bench-egress-", dir=base))
    ca, cert, key = make_ca_and_cert(str(work), ["api.test", "localhost"])
    Handler.size_mb = args.size_mb
    server = Server(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    (work / "latency.py").write_text(LATENCY)
    network = ('[network]\nallow = ["api.test"]\nresolve = { "api.test" = "127.0.0.1" }\n'
               f'trusted_addresses = ["127.0.0.1/32"]\nupstream_ca = "{ca}"\n')
    opaque, ruled = work / "opaque.toml", work / "ruled.toml"
    opaque.write_text(network)
    ruled.write_text(network + '[[network.rules]]\nhost = "api.test"\nmethods = ["GET"]\npaths = ["/**"]\n')
    srt_settings = work / "srt.json"
    srt_settings.write_text(json.dumps({"network": {"allowedDomains": ["localhost"], "deniedDomains": []},
                                        "filesystem": {"denyRead": [], "allowWrite": ["."], "denyWrite": []}}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    curl = ["curl", "-sS", "--noproxy", "", "-o", "/dev/null", "-w", "%{speed_download}"]
    blastwall = find_blastwall()
    # (prefix, origin, trust the upstream's own CA?)
    runners = {
        "direct": ([], f"https://localhost:{port}", True),
        "opaque": ([*blastwall, "run", "--policy", str(opaque), "--"], f"https://api.test:{port}", True),
        "intercepted": ([*blastwall, "run", "--policy", str(ruled), "--"], f"https://api.test:{port}", False),
    }
    srt_note = "skipped (--no-srt)"
    if not args.no_srt:
        srt, why = ensure_srt()
        if srt:
            runners["srt"] = ([srt[0], "-s", str(srt_settings), "--"], f"https://localhost:{port}", True)
            srt_note = ""
        else:
            srt_note = f"skipped: {why}"
    results = {}
    try:
        # Warm the gateway so its start-up is not counted.
        subprocess.run(runners["opaque"][0] + ["true"], cwd=work, env=env, check=True)
        for name, (prefix, origin, own_ca) in runners.items():
            trust = ["--cacert", ca] if own_ca else []  # Intercepted: the sandbox's own CA variables.
            run_env = {**env, "BENCH_CA": ca} if own_ca else env
            down = subprocess.run([*prefix, *curl, *trust, f"{origin}/big"], cwd=work, env=run_env,
                                  capture_output=True, text=True, timeout=900)
            if down.returncode != 0:
                raise SystemExit(f"bench: {name} download failed: {down.stderr[:300]}")
            lat = subprocess.run([*prefix, sys.executable, "latency.py", f"{origin}/small", str(args.requests)],
                                 cwd=work, env=run_env, capture_output=True, text=True, timeout=900)
            if lat.returncode != 0:
                raise SystemExit(f"bench: {name} latency failed: {lat.stderr[:300]}")
            times = json.loads(lat.stdout.strip().splitlines()[-1])
            results[name] = (float(down.stdout) / 1e6, statistics.median(times),
                             sorted(times)[int(len(times) * 0.9) - 1])
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    print(f"HTTPS through CONNECT: download of {args.size_mb} MiB (curl) and {args.requests} sequential small "
          "requests, each on a new connection and TLS handshake (Python urllib)\n")
    print(f"| {'path':<12} | {'download MB/s':>13} | {'latency median ms':>17} | {'p90 ms':>7} | {'added vs direct':>15} |")
    print(f"|{'-' * 14}|{'-' * 15}|{'-' * 19}|{'-' * 9}|{'-' * 17}|")
    for name, (mbps, med, p90) in results.items():
        added = med - results["direct"][1]
        print(f"| {name:<12} | {mbps:13.0f} | {med:17.2f} | {p90:7.2f} | {added:13.2f} ms |")
    if srt_note:
        print(f"\nsrt: {srt_note}")
    if "srt" in results:
        o, s, d = results["opaque"], results["srt"], results["direct"]
        print(f"\nopaque vs srt: {o[0]:.0f} vs {s[0]:.0f} MB/s, +{o[1] - d[1]:.2f} vs +{s[1] - d[1]:.2f} ms")
    i, o = results["intercepted"], results["opaque"]
    print(f"interception costs: {o[0] / i[0]:.1f}x the throughput, +{i[1] - o[1]:.2f} ms per new connection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
