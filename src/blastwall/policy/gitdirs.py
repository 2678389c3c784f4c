"""Where the host's git finds its control files inside a writable root.  Pure: reads files only.

The mandatory write-denies name ``.git`` at each writable root.  git on the
host also obeys, from inside the same tree:

* the git directory a ``.git`` *file* names (``git init --separate-git-dir``,
  a worktree), when that directory is inside the tree;
* each submodule's checkout: ``SUB/.git`` is a file naming the submodule's git
  directory, and the host's ``git status`` at the top recurses into it, so a
  rewritten ``SUB/.git`` hands git another directory's config and hooks;
* a file the repository's config includes (``include.path``,
  ``includeIf.*.path``, often a ``../.gitconfig`` kept in the project): it is
  config like any other, ``core.fsmonitor`` and all;
* ``core.hooksPath``, from the repository's or the user's config, when it
  names a directory of the tree (husky's ``.husky``, a ``.githooks``): the
  host's commit runs what is there;
* with no git directory at the root, the root itself: git takes a directory
  holding ``HEAD``, ``objects`` and ``refs`` for a bare repository, so a
  sandbox that wrote them would be obeyed by the next ``git status`` there.

``control_paths`` lists these paths for the compiler to make read-only (a
missing one gets a placeholder).  The configs read are the host's own (the
sandbox cannot write ``.git``); one this parser cannot read is refused
rather than guessed at.
"""

from __future__ import annotations

import os

from blastwall.errors import EnforcementError

__all__ = ["control_paths", "config_entries"]

MAX_CONFIG = 1 << 20  # bytes of one config file
MAX_INCLUDE_DEPTH = 10  # git's own limit on nested includes
MAX_MODULE_DIRS = 2000  # directories visited below .git/modules
MAX_DEPTH = 16


def control_paths(root: str, probe, *, home: str, git_writes: bool = False,
                  user_configs: tuple[str, ...] = ()) -> list[str]:
    """Paths inside (or beside) ``root`` that git on the host obeys, beyond ``root/.git`` itself.

    ``git_writes``: of a separate git directory, only what ``.git`` keeps
    read-only in that mode (its hooks, config and modules), not all of it.
    ``user_configs``: the user's and the system's git config files, read for
    a ``core.hooksPath`` (a relative one names a directory of every worktree).
    """
    dot_git = os.path.join(root, ".git")
    kind = probe.kind(dot_git)
    if kind == "missing" or probe.islink(dot_git):
        return [os.path.join(root, "HEAD")]  # No repository here: the root must not become a bare one.
    if kind not in ("file", "dir"):
        return []
    out: list[str] = []
    gitdir = dot_git
    if kind == "file":
        gitdir = _gitfile_target(dot_git, root, probe)
        out += [os.path.join(gitdir, name) for name in ("hooks", "config", "modules")] if git_writes else [gitdir]
    gitdirs = [gitdir]
    common = _read(os.path.join(gitdir, "commondir"), probe)  # A worktree's: the main repository's git directory.
    if common is not None and common.strip():
        gitdirs.append(os.path.normpath(os.path.join(gitdir, common.strip())))
        out.append(os.path.join(gitdirs[-1], "config"))
    repo_configs = [os.path.join(d, name) for d in gitdirs for name in ("config", "config.worktree")]
    hooks, included = _walk_configs([*user_configs, *repo_configs], probe, home)
    out += included
    out += [os.path.normpath(os.path.join(root, value)) for value in hooks]
    for directory in gitdirs:
        out += _submodule_gitfiles(os.path.join(directory, "modules"), probe, home)
    return out


def _gitfile_target(path: str, base: str, probe) -> str:
    text = _read(path, probe) or ""
    first = text.split("\n", 1)[0].rstrip("\r")
    if not first.startswith("gitdir:"):
        raise EnforcementError(f"Refusing to run: {path} is a file but not a git directory link (gitdir: ...)",
                               fix="remove or repair it; git itself would refuse the repository")
    return os.path.normpath(os.path.join(base, first[len("gitdir:"):].strip()))


def _walk_configs(configs: list[str], probe, home: str) -> tuple[list[str], list[str]]:
    """(``core.hooksPath`` values, files included) of ``configs`` and what they include, transitively."""
    hooks: list[str] = []
    included: list[str] = []
    todo = [(path, 0) for path in reversed(configs)]
    while todo:
        path, depth = todo.pop()
        text = _read(path, probe)
        if text is None:
            continue
        for section, sub, key, value in config_entries(text, source=path):
            if value is None:
                continue  # A bare key: git refuses it as a path.
            if section == "core" and sub is None and key == "hookspath":
                hooks.append(_expand(value, home))
            elif key == "path" and (section == "include" and sub is None or section == "includeif"):
                # Every includeIf is followed, whatever its condition: protecting one git
                # would not read costs nothing.
                target = os.path.normpath(os.path.join(os.path.dirname(path), _expand(value, home)))
                if depth + 1 > MAX_INCLUDE_DEPTH:
                    raise EnforcementError(f"Refusing to run: {path} nests includes deeper than git does",
                                           fix=f"git stops at {MAX_INCLUDE_DEPTH} levels; check the include chain")
                included.append(target)
                todo.append((target, depth + 1))
    return hooks, included


def _expand(value: str, home: str) -> str:
    return home + value[1:] if value == "~" or value.startswith("~/") else value


def _submodule_gitfiles(modules: str, probe, home: str) -> list[str]:
    """``W/.git`` for each submodule git directory below ``modules`` (its ``core.worktree`` is ``W``),
    and what that submodule's config includes or names as its hooks."""
    out: list[str] = []
    todo = [(modules, 0)]
    seen = 0
    while todo:
        directory, depth = todo.pop()
        if probe.kind(directory) != "dir" or probe.islink(directory):
            continue
        seen += 1
        if seen > MAX_MODULE_DIRS or depth > MAX_DEPTH:
            raise EnforcementError(f"Refusing to run: {modules} holds more submodules than blastwall reads",
                                   fix=f"report this repository's layout; at most {MAX_MODULE_DIRS} directories")
        config_path = os.path.join(directory, "config")
        if probe.kind(config_path) == "file" and probe.kind(os.path.join(directory, "HEAD")) == "file":
            for section, sub, key, value in config_entries(_read(config_path, probe) or "", source=config_path):
                if (section, sub, key) == ("core", None, "worktree") and value is not None:
                    worktree = os.path.normpath(os.path.join(directory, value))
                    out.append(os.path.join(worktree, ".git"))
                    hooks, included = _walk_configs([config_path], probe, home)
                    out += included + [os.path.normpath(os.path.join(worktree, hook)) for hook in hooks]
            todo.append((os.path.join(directory, "modules"), depth + 1))  # Its own submodules.
            continue
        # A submodule's name may hold slashes: modules/a/b is the git directory of "a/b".
        todo += [(os.path.join(directory, name), depth + 1) for name in probe.listdir(directory)]
    return out


def _read(path: str, probe) -> str | None:
    data = probe.read(path, MAX_CONFIG + 1)
    if data is None:
        return None
    if len(data) > MAX_CONFIG:
        raise EnforcementError(f"Refusing to run: {path} is larger than {MAX_CONFIG} bytes",
                               fix="check what wrote it; git's own files are far smaller")
    return data.decode("utf-8", "surrogateescape")


def config_entries(text: str, *, source: str) -> list[tuple[str, str | None, str, str | None]]:
    """``(section, subsection, key, value)`` for each variable of git config ``text``.

    Section and key are lowercased as git compares them.  Reads what git
    writes and what people commonly type: ``[section]``, ``[section "sub"]``
    and ``[section.sub]`` headers, ``key = value`` lines, ``#``/``;``
    comments, values in double quotes with git's escapes; a key alone has
    the value None (git reads it as true).  A line ending in a backslash (a continued value) or otherwise
    not understood is refused.
    """
    out: list[tuple[str, str | None, str, str | None]] = []
    current: tuple[str, str | None] | None = None
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current, line = _header(line, source, number)
            if not line or line[0] in "#;":
                continue
        name, eq, rest = line.partition("=")
        name = name.strip().lower()
        if current is None or not name or not name[0].isalpha() or not name.replace("-", "").isalnum():
            _refuse(source, number)
        out.append((*current, name, _value(rest, source, number) if eq else None))
    return out


def _header(line: str, source: str, number: int) -> tuple[tuple[str, str | None], str]:
    """The section a header line opens, and what follows it on the line."""
    if '"' in line:
        head, quote, tail = line[1:].partition('"')
        sub, end = [], 0
        while end < len(tail) and tail[end] != '"':
            if tail[end] == "\\":
                end += 1
                if end >= len(tail):
                    _refuse(source, number)
            sub.append(tail[end])
            end += 1
        rest = tail[end + 1:].lstrip()
        if end >= len(tail) or not rest.startswith("]") or not head.endswith(" "):
            _refuse(source, number)
        name, subsection = head.strip(), "".join(sub)
        rest = rest[1:]
    else:
        end = line.find("]")
        if end < 0:
            _refuse(source, number)
        name, _, subsection = line[1:end].strip().partition(".")
        subsection = subsection.lower() or None  # git lowercases the old [section.sub] form.
        rest = line[end + 1:]
    if not name or not name.replace("-", "").isalnum():
        _refuse(source, number)
    return (name.lower(), subsection), rest.strip()


def _value(rest: str, source: str, number: int) -> str:
    out: list[str] = []
    quoted = False
    pending = ""  # Unquoted whitespace: kept only if more of the value follows.
    i = 0
    rest = rest.strip()
    while i < len(rest):
        c = rest[i]
        if c == '"':
            quoted = not quoted
            out.append(pending)
            pending = ""
        elif c == "\\":
            if i + 1 >= len(rest):
                _refuse(source, number)  # A continued line.
            escaped = {"n": "\n", "t": "\t", "b": "\b", '"': '"', "\\": "\\"}.get(rest[i + 1])
            if escaped is None:
                _refuse(source, number)
            out.append(pending + escaped)
            pending = ""
            i += 1
        elif c in "#;" and not quoted:
            break
        elif c in " \t" and not quoted:
            pending += c
        else:
            out.append(pending + c)
            pending = ""
        i += 1
    if quoted:
        _refuse(source, number)
    return "".join(out)


def _refuse(source: str, number: int):
    raise EnforcementError(f"Refusing to run: can't read line {number} of {source}",
                           fix="check the file with `git config --file FILE --list`; blastwall reads it to "
                               "protect what git on the host would obey")
