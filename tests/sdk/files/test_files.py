"""files: write (str, bytes, file objects, many), read (text, bytes, stream), list, get_info, exists, make_dir,
remove, rename (E2B's files tests; both backends)."""

from __future__ import annotations

import io

import pytest

from blastwall.client import EntryInfo, FileNotFoundException, FileType, NotFoundException, SandboxFileError, \
    WriteEntry, WriteInfo


def test_write_returns_write_info_and_reads_back(sandbox):
    info = sandbox.files.write("notes/hello.txt", "héllo\n")
    assert isinstance(info, WriteInfo) and info.name == "hello.txt" and info.type == FileType.FILE
    assert info.path.endswith("/notes/hello.txt")
    assert sandbox.files.read("notes/hello.txt") == "héllo\n"
    assert sandbox.files.read(info.path, format="bytes") == "héllo\n".encode()
    assert sandbox.commands.run("cat notes/hello.txt").stdout == "héllo\n"


def test_home_user_paths_name_the_workspace(sandbox):
    sandbox.files.write("/home/user/abs.txt", b"\x00\xffbinary")
    assert sandbox.files.read("abs.txt", format="bytes") == b"\x00\xffbinary"
    assert sandbox.files.exists("/home/user/abs.txt")


def test_write_from_file_objects_and_many_at_once(sandbox):
    sandbox.files.write("from-bytesio", io.BytesIO(b"bytes io"))
    sandbox.files.write("from-stringio", io.StringIO("string io"))
    infos = sandbox.files.write_files([WriteEntry(path="many/a", data="A"), {"path": "many/b", "data": b"B"}])
    assert [i.name for i in infos] == ["a", "b"]
    out = sandbox.commands.run("cat from-bytesio; echo; cat from-stringio; echo; cat many/a many/b").stdout
    assert out == "bytes io\nstring io\nAB"


def test_read_as_a_stream(sandbox):
    data = bytes(range(256)) * 1024  # 256 KiB: more than one chunk
    sandbox.files.write("big.bin", data)
    chunks = list(sandbox.files.read("big.bin", format="stream"))
    assert all(isinstance(c, bytes) for c in chunks) and b"".join(chunks) == data


def test_list_get_info_and_depth(sandbox):
    sandbox.files.write("tree/one.txt", "1")
    sandbox.files.write("tree/sub/two.txt", "22")
    names = {e.name: e for e in sandbox.files.list("tree")}
    assert set(names) == {"one.txt", "sub"} and names["sub"].type == FileType.DIR
    assert isinstance(names["one.txt"], EntryInfo) and names["one.txt"].size == 1
    deep = {e.path.rsplit("/tree/", 1)[1] for e in sandbox.files.list("tree", depth=2)}
    assert deep == {"one.txt", "sub", "sub/two.txt"}
    info = sandbox.files.get_info("tree/sub/two.txt")
    assert (info.size, info.type, info.permissions[:2]) == (2, "file", "rw")
    assert info.modified_time.year >= 2024


def test_exists_make_dir_remove_rename(sandbox):
    assert sandbox.files.exists("nothing") is False
    assert sandbox.files.make_dir("d/e") is True and sandbox.files.make_dir("d/e") is False
    assert sandbox.files.exists("d/e")
    sandbox.files.write("d/e/f", "f")
    moved = sandbox.files.rename("d/e/f", "d/g")
    assert moved.name == "g" and sandbox.files.read("d/g") == "f" and not sandbox.files.exists("d/e/f")
    sandbox.files.remove("d")
    assert not sandbox.files.exists("d") and sandbox.commands.run("test -e d || echo gone").stdout == "gone\n"


def test_missing_files_raise_file_not_found(sandbox):
    with pytest.raises(FileNotFoundException) as info:
        sandbox.files.read("missing.txt")
    assert isinstance(info.value, NotFoundException) and isinstance(info.value, SandboxFileError)
    with pytest.raises(FileNotFoundException):
        sandbox.files.get_info("missing/dir")


@pytest.mark.parametrize("path", ["../outside", "/etc/passwd", "/home/user/../../etc/passwd", "a/../../b"])
def test_paths_leaving_the_workspace_are_refused(sandbox, path):
    with pytest.raises(SandboxFileError):
        sandbox.files.write(path, "x")
    with pytest.raises(SandboxFileError):
        sandbox.files.read(path)
