"""The service under an API fuzzer: schemathesis generates requests for every operation of the service's own
OpenAPI document (valid and invalid ones), half of them aimed at a real sandbox of the tenant, and checks every
answer: never a 5xx, and always a status, content type, headers and body the document declares.

Bounded: ``FUZZ_EXAMPLES`` per operation (the environment's ``BLASTWALL_FUZZ_EXAMPLES`` raises it for a
longer run), a generated command's timeout cut to a few seconds and a TTL kept long enough for the run.  A
positive control in the same run proves the checks bite: an answer the document does not declare fails them.
"""

from __future__ import annotations

import os

import pytest

from tests.service.conftest import requires_gvisor

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install .[test])")

FUZZ_EXAMPLES = int(os.environ.get("BLASTWALL_FUZZ_EXAMPLES", "25"))
SERVICE_ARGS = ["--max-upload", "256K"]


def _checks():
    from schemathesis.checks import (content_type_conformance, not_a_server_error, response_headers_conformance,
                                     response_schema_conformance, status_code_conformance)

    return [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
            response_schema_conformance]


def _aim(case, sandbox_id: str, command_id: str, real: bool) -> None:
    """Point the case at the real sandbox, its real command and file (``real``), and keep what it would run
    there short."""
    if not real or "sandbox_id" not in (case.path_parameters or {}) or case.method.upper() == "DELETE":
        return
    case.path_parameters["sandbox_id"] = sandbox_id
    if "command_id" in case.path_parameters:
        case.path_parameters["command_id"] = command_id
    if "path" in case.path_parameters and case.method.upper() == "GET":
        case.path_parameters["path"] = "fuzz.txt"
    if isinstance(case.body, dict):
        if isinstance(case.body.get("timeout"), (int, float)) and not isinstance(case.body["timeout"], bool):
            case.body["timeout"] = min(max(case.body["timeout"], 0.01), 3.0)
        if isinstance(case.body.get("ttl"), int) and not isinstance(case.body["ttl"], bool) and case.body["ttl"] > 0:
            case.body["ttl"] = max(case.body["ttl"], 600)


@requires_gvisor
def test_every_operation_answers_as_documented_and_never_5xx(service):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    key = service.tenant(max_sessions=8, max_ttl=3600)
    sandbox_id = service.create(key, ttl=3600)["id"]
    headers = {"Authorization": f"Bearer {key}"}
    assert service.call("PUT", f"/v1/sandboxes/{sandbox_id}/files/fuzz.txt", key, data=b"fuzz\n").status_code == 200
    started = service.call("POST", f"/v1/sandboxes/{sandbox_id}/commands", key,
                           json={"cmd": "cat >/dev/null; sleep 600", "background": True, "stdin": True,
                                 "timeout": 600})
    assert started.status_code == 202, started.text
    command_id = started.json()["id"]
    schema = schemathesis.openapi.from_url(service.url + "/openapi.json")
    checks = _checks()
    failures: list[str] = []
    calls = {"n": 0}
    statuses: dict[str, set[int]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 17, [op.label for op in operations]

    for operation in operations:
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(), real=st.booleans())
        def fuzz(case, real):
            _aim(case, sandbox_id, command_id, real)
            response = case.call(base_url=service.url, headers=headers, timeout=60)
            calls["n"] += 1
            statuses.setdefault(operation.label, set()).add(response.status_code)
            try:
                case.validate_response(response, checks=checks)
            except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' failures: collected, reported at once
                failures.append(f"{operation.label}: {response.status_code} {type(exc).__name__}: "
                                f"{str(exc)[:400]}")

        fuzz()

    assert calls["n"] >= len(operations) * min(FUZZ_EXAMPLES, 5)
    # It reached past the checks, into real sandboxes: most operations answered a success at least once.
    succeeded = sorted(label for label, seen in statuses.items() if any(200 <= s < 300 for s in seen))
    assert len(succeeded) >= len(operations) // 2, statuses
    assert not failures, "\n".join(sorted(set(failures))[:30])
    # The service is still up, and the real sandbox still answers.
    assert service.call("GET", "/v1/health").status_code == 200
    assert service.call("GET", f"/v1/sandboxes/{sandbox_id}", key).status_code in (200, 404)
    assert "Traceback" not in service.read_log()

    # Positive control: an answer the document does not declare (a 500, a body of the wrong shape) fails.
    import requests

    operation = schema.find_operation_by_path("GET", "/v1/sandboxes/{sandbox_id}")
    case = operation.Case(path_parameters={"sandbox_id": sandbox_id})
    fake = requests.Response()
    fake.status_code, fake._content = 500, b'{"oops": 1}'
    fake.headers["content-type"] = "application/json"
    fake.request = requests.Request("GET", service.url + f"/v1/sandboxes/{sandbox_id}").prepare()
    fake.url = fake.request.url
    with pytest.raises((AssertionError, BaseExceptionGroup)):
        case.validate_response(fake, checks=checks)
