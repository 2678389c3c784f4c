"""``blastwall serve``: the manager, the application and uvicorn, started and stopped in order.

Start: lock the data directory, reap what a previous process left, start the
TTL reaper and the warm pool, then listen.  Stop (SIGTERM or SIGINT): stop
listening, finish the requests in flight (10 s), then destroy every sandbox.
A SIGKILLed service leaves its sandboxes running until the next start, which
reaps them before it listens.
"""

from __future__ import annotations

import logging
import os
import sys

from blastwall.errors import ContainmentError

__all__ = ["parse_listen", "serve"]


def parse_listen(text: str) -> tuple[str, int]:
    """("127.0.0.1", 8700) from "127.0.0.1:8700", "[::1]:8700" or ":8700"; ValueError otherwise."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def serve(*, listen: str, config, db_path: str, tls_cert: str | None = None, tls_key: str | None = None,
          log_level: str = "info", cluster: str | None = None) -> int:
    """``cluster``: a Ray cluster's address: the sandboxes live on its nodes (``service/cluster.py``)."""
    import uvicorn

    from blastwall.service.app import create_app
    from blastwall.service.sessions import Manager, prepare_data_dir
    from blastwall.service.store import Store

    host, port = parse_listen(listen)
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s blastwall-serve %(levelname)s %(message)s", stream=sys.stderr)
    log = logging.getLogger("blastwall.service")
    if os.geteuid() != 0:
        raise ContainmentError("Can't serve: the container tier needs root on this machine (runsc)",
                               fix="run `blastwall serve` as root")
    if host not in ("127.0.0.1", "::1", "localhost") and not tls_cert:
        log.warning("listening on %s without TLS: API keys cross the network in clear text "
                    "(use --tls-cert/--tls-key, or a TLS-terminating proxy)", host)
    prepare_data_dir(config.data_dir)  # Before anything is created in it.
    store = Store(db_path)
    if cluster:
        from blastwall.service.cluster import ClusterManager

        manager = ClusterManager(config, store, address=cluster, database=db_path)
    else:
        manager = Manager(config, store)
    try:
        manager.start()
        if not cluster:
            _warn_without_default_image(config, log)
        app = create_app(manager, store)
        server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
            timeout_graceful_shutdown=10, ssl_certfile=tls_cert, ssl_keyfile=tls_key, server_header=False))
        log.info("serving on %s://%s:%d (data %s, database %s, %s)", "https" if tls_cert else "http",
                 host, port, config.data_dir, store.db.description,
                 f"sandboxes on the Ray cluster at {cluster}" if cluster else f"warm pool {config.warm}")
        server.run()
        return 0 if server.started else 125
    finally:
        manager.close()
        store.close()


def _warn_without_default_image(config, log) -> None:
    """Every create would fail with 503 without it: say so once, at start, with the fix."""
    from blastwall.tiers.container.images import rootfs

    try:
        rootfs("default", config.environ)
    except ContainmentError:
        log.warning("the default image is not built: sandboxes cannot start (run `blastwall image build`)")
