"""The SDK's remote backend against a real service: the E2B-shaped calls and the typed errors."""

from __future__ import annotations

import asyncio

import pytest

from blastwall.client import (AsyncSandbox, FileNotFoundException, NotEnoughSpaceException, AuthenticationError, CeilingExceededError, CommandExitError, TimeoutException,
                              InvalidRequestError, QuotaExceededError, RateLimitError, Sandbox, SandboxClosedError,
                              SandboxError, SandboxFileError, SandboxNotFoundError, ServiceError)
from blastwall.client._errors import error_for
from blastwall.service.errors import CODES
from tests.service.conftest import needs_service_deps, requires_gvisor

pytestmark = needs_service_deps


@requires_gvisor
def test_create_run_files_and_context_manager(service):
    key = service.tenant()
    with Sandbox.create(api_url=service.url, api_key=key, timeout=120) as sbx:
        sid = sbx.sandbox_id
        assert sbx.workspace == "/home/user" and sbx.get_info().state == "running"
        sbx.files.write("src/hello.py", "print('hi from the service')")
        sbx.files.write("/home/user/data.bin", b"\x00\x01\xff")
        seen = []
        result = sbx.commands.run("python3 src/hello.py; echo err >&2", on_stdout=seen.append)
        assert (result.stdout, result.stderr, result.exit_code) == ("hi from the service\n", "err\n", 0)
        assert "".join(seen) == "hi from the service\n"
        assert sbx.files.read("data.bin", format="bytes") == b"\x00\x01\xff"
        result = sbx.commands.run(["sh", "-c", "pwd; echo $A"], envs={"A": "b"}, cwd="src")
        assert result.stdout == "/home/user/src\nb\n"
        with pytest.raises(CommandExitError) as info:
            sbx.commands.run("echo out; exit 3")
        assert (info.value.exit_code, info.value.stdout) == (3, "out\n")
        with pytest.raises(TimeoutException) as info:
            sbx.commands.run("sleep 30", timeout=1)
        assert info.value.result.exit_code == 124
        handle = sbx.commands.run("sleep 0.3; echo bg", background=True)
        assert handle.wait(timeout=30).stdout == "bg\n"
        handle = sbx.commands.run("sleep 300", background=True)
        handle.kill()
        with pytest.raises(CommandExitError):
            handle.wait(timeout=30)
        # Another client can attach by id.
        other = Sandbox.connect(sid, api_url=service.url, api_key=key)
        assert other.files.read("src/hello.py") == "print('hi from the service')"
        sbx.set_timeout(60)
        assert sbx.get_info().raw["ttl_remaining"] <= 60
    # The with block destroyed it, on the service and on the host.
    assert service.call("GET", f"/v1/sandboxes/{sid}", key).status_code == 404
    assert not service.workspace(sid).exists()
    with pytest.raises(SandboxClosedError):
        sbx.commands.run("true")
    with pytest.raises(SandboxNotFoundError):
        other.files.read("src/hello.py")
    other.kill()  # Already gone: killing it again is not an error.


@requires_gvisor
def test_environment_configures_the_remote_backend(service):
    key = service.tenant()
    env = {"BLASTWALL_API_URL": service.url, "BLASTWALL_API_KEY": key}
    with Sandbox.create(environ=env, envs={"GREETING": "hello"}) as sbx:
        assert sbx.sandbox_id.startswith("sbx_")
        assert sbx.commands.run("echo remote $GREETING").stdout == "remote hello\n"


@requires_gvisor
def test_typed_errors(service):
    key = service.tenant(max_sessions=1, allow_domains=["*.example.com"])
    with pytest.raises(AuthenticationError):
        Sandbox.create(api_url=service.url, api_key=key + "x")
    with pytest.raises(CeilingExceededError) as info:
        Sandbox.create(api_url=service.url, api_key=key, allow_domains=["evil.com"])
    assert "evil.com" in str(info.value) and info.value.status == 403
    with pytest.raises(InvalidRequestError) as info:
        Sandbox.create(api_url=service.url, api_key=key, policy="[network\n")
    assert info.value.code == "invalid_policy"
    with pytest.raises(SandboxNotFoundError):
        Sandbox.connect("sbx_" + "0" * 24, api_url=service.url, api_key=key)
    with Sandbox.create(api_url=service.url, api_key=key) as sbx:
        with pytest.raises(RateLimitError):
            Sandbox.create(api_url=service.url, api_key=key)
        assert RateLimitError is QuotaExceededError
        for bad in ("../x", "/etc/passwd", "", "a/../../b"):
            with pytest.raises(SandboxFileError):
                sbx.files.write(bad, "x")
            with pytest.raises(SandboxFileError):
                sbx.files.read(bad)
        with pytest.raises(SandboxFileError) as info:
            sbx.files.read("missing.txt")
        assert info.value.code == "file_not_found"
        with pytest.raises(InvalidRequestError):
            sbx.commands.run("true", envs={"1X": "y"})
    with pytest.raises(ServiceError):
        Sandbox.create(api_url="http://127.0.0.1:9", api_key=key)
    assert issubclass(ServiceError, SandboxError) and issubclass(CommandExitError, SandboxError)


@requires_gvisor
def test_async_sandbox_remote(service):
    key = service.tenant()

    async def main():
        async with await AsyncSandbox.create(api_url=service.url, api_key=key) as sbx:
            await sbx.files.write("a.txt", "async remote")
            results = await asyncio.gather(*[sbx.commands.run(f"cat a.txt; echo {i}") for i in range(4)])
            handle = await sbx.commands.run("echo later", background=True)
            return [r.stdout for r in results], (await handle.wait(30)).stdout

    outputs, later = asyncio.run(main())
    assert outputs == [f"async remote{i}\n" for i in range(4)] and later == "later\n"


def test_every_service_error_code_is_mapped():
    """httpx's rule: every backend error becomes the most specific public error."""
    for status, code in sorted(CODES):
        error = error_for(status, code, "message")
        assert isinstance(error, SandboxError) and (error.status, error.code) == (status, code)
        if (status >= 500 and code != "no_space") or code in ("not_found", "method_not_allowed"):
            assert type(error) is ServiceError, code
        else:
            assert type(error) is not ServiceError, code
    assert type(error_for(413, "payload_too_large", "m", files=True)) is SandboxFileError
    assert type(error_for(404, "sandbox_not_found", "m")) is SandboxNotFoundError
    assert type(error_for(507, "no_space", "m", files=True)) is NotEnoughSpaceException
    assert type(error_for(404, "file_not_found", "m", files=True)) is FileNotFoundException
    assert type(error_for(418, "teapot", "m")) is ServiceError


def test_backend_choice():
    with pytest.raises(InvalidRequestError):
        Sandbox.create(api_url="http://127.0.0.1:9", api_key="k", workspace="/tmp")
    with pytest.raises(InvalidRequestError):
        Sandbox.create(api_url=None, api_key="k", environ={})
    with pytest.raises(InvalidRequestError):
        Sandbox.create(api_url="ftp://x", api_key="k")
    with pytest.raises(InvalidRequestError):
        Sandbox.create(api_url="http://127.0.0.1:9", api_key="")


def test_public_api_is_sorted():
    import blastwall.client as client

    assert client.__all__ == sorted(client.__all__)
    for name in client.__all__:
        assert hasattr(client, name)
