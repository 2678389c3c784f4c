"""``blastwall serve``: ephemeral container sandboxes for many tenants over HTTP.

A thin shell, like ``cli/`` and ``client/``: no policy logic lives here.

* ``store.py``    SQLite: tenants, hashed API keys, live sandboxes (for reaping after a crash)
* ``ceiling.py``  what a tenant may ask for (pure): domains, images, resources, sessions
* ``sessions.py`` the manager: create / exec / files / delete, TTL expiry, quotas, warm pool
* ``app.py``      the FastAPI application: routes, authentication, error bodies
* ``server.py``   runs the application under uvicorn (``blastwall serve``)

FastAPI and uvicorn are imported only by ``app.py`` and ``server.py``, never on
``blastwall run``'s start-up path.  See docs/service.md.
"""
