"""Request routing attacked against a real server that routes on the request line and on virtual hosts.

Debian's nginx, started by the test on loopback, serves two TLS virtual
hosts on one address (a CDN's shape): ``api.test`` (ruled, with a bound
credential) and ``other.test``.  nginx picks the virtual host from an
absolute-form target before the Host header, so a request line naming
``other.test`` inside a tunnel to ``api.test`` would reach ``other.test``
with api.test's real key; a tunnel to ``other.test`` carrying ``Host:
api.test`` would reach api.test unruled.  Judged by nginx's own access logs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from tests.conftest import BASE, kill_gateway
from tests.egress.harness import connect_tunnel, read_all, session_for, status_of, tls
from tests.egress.upstreams import make_ca_and_cert

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin")
pytestmark = pytest.mark.skipif(NGINX is None or os.geteuid() != 0,
                                reason="nginx is not installed (apt-get install nginx), or not root to start it")

REAL_KEY = "sk-real-nginx-0123456789abcdef0123456789"
ATTACKER_KEY = "sk-attacker-nginx-ffffffffffffffffffffff"

CONFIG = """
daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log;
pid {dir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    log_format seen '$server_name $request_method $request_uri key=$http_x_api_key';
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name api.test;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        access_log {dir}/api.log seen;
        location / {{ return 200 "api.test\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name other.test;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        access_log {dir}/other.log seen;
        location / {{ return 200 "other.test\\n"; }}
    }}
}}
"""


@pytest.fixture(scope="module")
def nginx():
    directory = BASE / f"nginx-{os.getpid()}"
    directory.mkdir(parents=True, exist_ok=True)
    ca, cert, key = make_ca_and_cert(str(directory), ["api.test", "other.test"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    (directory / "nginx.conf").write_text(CONFIG.format(dir=directory, port=port, cert=cert, key=key))
    proc = subprocess.Popen([NGINX, "-c", str(directory / "nginx.conf"), "-p", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    server = type("Nginx", (), {"port": port, "ca": ca, "dir": directory})
    yield server
    proc.terminate()
    proc.wait(timeout=10)
    kill_gateway(directory / "state")
    shutil.rmtree(directory, ignore_errors=True)


def seen(server, vhost: str) -> str:
    path = server.dir / f"{vhost}.log"
    time.sleep(0.1)  # nginx writes its log line as the request ends.
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def session(nginx):
    (nginx.dir / "ws").mkdir(exist_ok=True)
    doc = {"network": {"allow": ["other.test"], "resolve": {"api.test": "127.0.0.1", "other.test": "127.0.0.1"},
                       "trusted_addresses": ["127.0.0.1/32"], "upstream_ca": nginx.ca,
                       "rules": [{"host": "api.test", "paths": ["/v1/**"], "credential": "NGINX_KEY"}]},
           "credentials": {"NGINX_KEY": {"from": "env:NGINX_KEY", "hosts": ["api.test"], "header": "x-api-key"}}}
    s = session_for(doc, workspace=nginx.dir / "ws", gw_state=nginx.dir / "state", environ={"NGINX_KEY": REAL_KEY})
    yield s
    s.close()


def send(session, nginx, tunnel: str, raw: str) -> bytes:
    sock, head = connect_tunnel(session, tunnel, nginx.port)
    assert sock is not None, head
    sock = tls(sock, session, tunnel)
    sock.sendall(raw.encode())
    answer = read_all(sock, 2)
    sock.close()
    return answer


def test_request_line_cannot_pick_another_virtual_host(session, nginx):
    key = session.placeholders["NGINX_KEY"]
    answer = send(session, nginx, "api.test", f"GET https://other.test:{nginx.port}/v1/x HTTP/1.1\r\n"
                                              f"Host: api.test:{nginx.port}\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n")
    assert status_of(answer) in (400, 421), answer  # 400: the request line and Host disagree.
    assert seen(nginx, "other") == "" and REAL_KEY not in seen(nginx, "api")
    # The control: the same request for api.test itself reaches api.test's virtual host with the real key.
    answer = send(session, nginx, "api.test", f"GET /v1/x HTTP/1.1\r\nHost: api.test:{nginx.port}\r\n"
                                              f"x-api-key: {key}\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200 and b"api.test" in answer, answer
    assert f"api.test GET /v1/x key={REAL_KEY}" in seen(nginx, "api")
    assert seen(nginx, "other") == ""


def test_a_tunnel_to_another_virtual_host_cannot_front_for_the_ruled_one(session, nginx):
    answer = send(session, nginx, "other.test", f"GET /admin HTTP/1.1\r\nHost: api.test:{nginx.port}\r\n"
                                                f"x-api-key: {ATTACKER_KEY}\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 421, answer
    assert ATTACKER_KEY not in seen(nginx, "api") and "/admin" not in seen(nginx, "api")
    answer = send(session, nginx, "other.test", f"GET /page HTTP/1.1\r\nHost: other.test:{nginx.port}\r\n"
                                                "Connection: close\r\n\r\n")
    assert status_of(answer) == 200 and b"other.test" in answer, answer  # The control.
