"""The service's file API (and the SDK's remote backend over it) obeys the sandbox's plan, as commands do.

A tenant's ``deny_read`` holds a path against its own commands (an empty
read-only placeholder while it does not exist: nothing inside may make the
file nobody inside may read); the files API must not write or hand it out
either.  Every operation -- read, write, list, stat,
make_dir, remove, rename -- is judged on the host: the hidden file's bytes,
what exists in the workspace.  Links, FIFOs and traversal are attacked in
test_bad_input.py.
"""

from __future__ import annotations

import os

import pytest

from blastwall.client import Sandbox, SandboxFileError
from tests.conftest import SECRET
from tests.service.conftest import needs_gvisor, needs_service_deps

pytestmark = [needs_service_deps, *needs_gvisor]

POLICY = {"filesystem": {"deny_read": ["secrets.env", "private"]}}


def test_files_api_refuses_what_the_sandbox_is_refused(service):
    key = service.tenant()
    with Sandbox.create(api_url=service.url, api_key=key, timeout=120, policy=POLICY) as sbx:
        sid = sbx.sandbox_id
        workspace = service.workspace(sid)
        # The paths do not exist yet: the plan holds them, so the command inside cannot make them...
        out, err, code = service.run(key, sid, f"echo {SECRET} > secrets.env; mkdir -p private && "
                                                f"echo {SECRET} > private/key; echo done")
        assert out == "done\n" and err, (out, err)
        # ...and the files API refuses them for every operation.
        refused = []
        for operation in (lambda: sbx.files.write("secrets.env", "x"), lambda: sbx.files.read("secrets.env"),
                          lambda: sbx.files.list("private"), lambda: sbx.files.get_info("private/key"),
                          lambda: sbx.files.make_dir("private/sub"), lambda: sbx.files.remove("private"),
                          lambda: sbx.files.rename("private", "public"), lambda: sbx.files.write("private/key", "x")):
            with pytest.raises(SandboxFileError) as info:
                operation()
            refused.append((info.value.code, info.value.status, (info.value.details or [{}])[0].get("reason")))
        assert refused == [("path_refused", 403, "deny-read")] * len(refused), refused
        for name in ("secrets.env", "private"):
            path = workspace / name  # At most the placeholder: an empty directory.
            assert not path.exists() or (path.is_dir() and not os.listdir(path)), name
        # The controls: everything else works, and says what the sandbox sees.
        info = sbx.files.write("src/app.py", "print(1)\n")
        assert (info.path, info.type, info.size, info.state) == ("/home/user/src/app.py", "file", 9, "writable")
        assert sbx.files.make_dir("build/out") is True and sbx.files.make_dir("build/out") is False
        assert sbx.files.exists("src/app.py") and not sbx.files.exists("missing.txt")
        moved = sbx.files.rename("src/app.py", "src/main.py")
        assert moved.name == "main.py" and sbx.files.read("src/main.py") == "print(1)\n"
        names = [(e.name, e.type) for e in sbx.files.list("/home/user")]
        assert ("src", "dir") in names and ("build", "dir") in names
        sbx.files.remove("build")
        assert not (workspace / "build").exists()
        assert service.run(key, sid, "cat src/main.py")[0] == "print(1)\n"  # The command sees the tool's file.
        with pytest.raises(SandboxFileError) as info:
            sbx.files.rename("src", "src/inner")
        assert info.value.code == "invalid_path"
        with pytest.raises(SandboxFileError) as info:
            sbx.files.write("src/main.py/x", "x")
        assert info.value.code in ("invalid_path", "file_not_found")
        sbx.files.write("a.txt", "a")
        with pytest.raises(SandboxFileError) as info:
            sbx.files.rename("src/main.py", "a.txt")
        assert (info.value.code, info.value.status) == ("file_exists", 409)
    audit = [row for row in service.audit_rows() if row["session"].endswith(f"/{sid}") and row["decision"] == "deny"]
    assert len(audit) >= len(refused)  # Each refusal is in the audit log.
