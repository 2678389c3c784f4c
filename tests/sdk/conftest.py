"""The SDK's tests, organised as E2B's own SDK tests are (commands/, files/, sandbox/), each test run against
both backends: ``local`` (a process-tier session on this machine) and ``remote`` (a ``blastwall serve`` service,
its gVisor container tier).  E2B code should not care which one it talks to.

``create(**kwargs)`` makes a sandbox of the test's backend (killed after the test); ``sandbox`` is one made with
no arguments; ``backend`` says which ("local" or "remote"); ``connect_args`` are the arguments ``Sandbox.connect``,
``Sandbox.list`` and ``Sandbox.kill(id)`` need for it.
"""

from __future__ import annotations

import os

import pytest

from blastwall.client import Sandbox
from tests.conftest import bw_env, needs_bwrap
from tests.service.conftest import destroy_service, make_service, needs_gvisor, service_images  # noqa: F401 - a fixture


@pytest.fixture(scope="session")
def sdk_service(service_images):
    """One service for every SDK test against the remote backend."""
    svc = make_service(service_images)
    svc.start()
    yield svc
    destroy_service(svc)


@pytest.fixture(params=[pytest.param("local", marks=needs_bwrap), pytest.param("remote", marks=needs_gvisor)])
def backend(request) -> str:
    return request.param


@pytest.fixture
def connect_args(backend, request, home) -> dict:
    if backend == "local":
        return {"api_url": None, "environ": {**os.environ, **bw_env(home)}}
    service = request.getfixturevalue("sdk_service")
    return {"api_url": service.url, "api_key": service.tenant()}


@pytest.fixture
def create(connect_args):
    made: list[Sandbox] = []

    def create(**kwargs) -> Sandbox:
        sandbox = Sandbox.create(**connect_args, **kwargs)
        made.append(sandbox)
        return sandbox

    yield create
    for sandbox in made:
        sandbox.kill()


@pytest.fixture
def sandbox(create) -> Sandbox:
    return create(timeout=120)
