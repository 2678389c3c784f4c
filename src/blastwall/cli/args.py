"""Command-line parsing: a pure function from argv to a ``Parsed`` request.

Hand-written rather than argparse because ``blastwall run`` starts on every
command an agent makes; argparse alone costs about 10 ms to import here.
"""

from __future__ import annotations

__all__ = ["COMMANDS", "Parsed", "UsageError", "parse", "usage"]

# option -> (takes a value, may repeat)
_SANDBOX_OPTIONS = {
    "--policy": (True, False),
    "--workspace": (True, False),
    "--allow-domain": (True, True),
    "--trust-address": (True, True),
    "--allow-write": (True, True),
    "--deny-read": (True, True),
    "--deny-write": (True, True),
    "--env": (True, True),
    "--tier": (True, False),
    "--require": (True, True),
    "--read-only": (False, False),
    "--allow-git-writes": (False, False),
    "--approval-webhook": (True, False),
    "--image": (True, False),
}

COMMANDS: dict[str, tuple[dict[str, tuple[bool, bool]], str, str]] = {
    # name -> (options, positional kind, summary)
    "run": (_SANDBOX_OPTIONS, "command", "run COMMAND in a sandbox"),
    "shell": (_SANDBOX_OPTIONS, "none", "start an interactive shell in a sandbox"),
    "policy show": ({**_SANDBOX_OPTIONS, "--json": (False, False), "--plan": (False, False)},
                    "none", "print the effective policy (and the compiled plan)"),
    "policy import-srt": ({"--output": (True, False), "--force": (False, False)}, "one",
                          "convert an srt settings file to a blastwall policy"),
    "doctor": ({"--json": (False, False), "--database": (True, False), "--cluster": (True, False)}, "none",
               "check what this machine supports (and the service's database and Ray cluster, when given)"),
    "image build": ({"--package": (True, True)}, "optional", "build a root filesystem image with mmdebstrap"),
    "image import": ({}, "two", "import an image from a directory or tarball"),
    "image list": ({}, "none", "list images"),
    "image rm": ({}, "one", "remove an image"),
    "trust": ({"--workspace": (True, False), "--yes": (False, False), "--allow-widening": (False, False),
               "--revoke": (False, False), "--list": (False, False)}, "none",
              "review and trust the workspace's .blastwall/policy.toml"),
    "approvals list": ({"--workspace": (True, False)}, "none", "list remembered answers"),
    "approvals revoke": ({}, "one", "forget a remembered answer"),
    "audit tail": ({"-n": (True, False), "--json": (False, False)}, "none", "show the latest audit rows"),
    "audit verify": ({"--cluster": (True, False), "--database": (True, False), "--db": (True, False)}, "none",
                     "check the audit log's hash chain (--cluster: every node's, against the recorded heads)"),
    "audit show": ({}, "one", "show one audit row with its hashes"),
    "audit export": ({"--json": (False, False)}, "none", "print every audit row as JSON"),
    "mcp": ({"--workspace": (True, False), "--policy": (True, False), "--tier": (True, False)}, "none",
            "serve sandboxed run_command/read_file/write_file tools over MCP (stdio)"),
    "serve": ({"--listen": (True, False), "--db": (True, False), "--database": (True, False), "--data-dir": (True, False), "--warm": (True, False),
               "--policy": (True, False), "--max-upload": (True, False), "--default-ttl": (True, False),
               "--max-sandboxes": (True, False), "--memory": (True, False), "--cpus": (True, False),
               "--tls-cert": (True, False), "--tls-key": (True, False), "--log-level": (True, False),
               "--cluster": (True, False)}, "none",
              "serve the multi-tenant sandbox HTTP API"),
    "tenant add": ({"--db": (True, False), "--database": (True, False), "--max-sessions": (True, False), "--max-memory": (True, False),
                    "--max-cpus": (True, False), "--max-pids": (True, False), "--max-ttl": (True, False),
                    "--allow-domain": (True, True),
                    "--image": (True, True), "--tier": (True, True), "--expires": (True, False)}, "one",
                   "add a tenant of the service and print its first API key"),
    "tenant key": ({"--db": (True, False), "--database": (True, False), "--expires": (True, False)}, "one", "issue another API key for a tenant"),
    "tenant list": ({"--db": (True, False), "--database": (True, False), "--json": (False, False)}, "none", "list tenants and their keys"),
    "tenant revoke": ({"--db": (True, False), "--database": (True, False)}, "one", "revoke a tenant (and all its keys) or one key"),
    "db upgrade": ({"--db": (True, False), "--database": (True, False), "--data-dir": (True, False)}, "none",
                   "bring the service's database schema up to date"),
    "db status": ({"--db": (True, False), "--database": (True, False), "--data-dir": (True, False)}, "none",
                  "show the service database's schema version"),
    "cluster status": ({"--cluster": (True, False), "--json": (False, False)}, "none",
                       "the Ray cluster's nodes: blastwall slots, sandboxes, agents"),
    "version": ({}, "none", "print the version"),
}

USAGE = """\
usage: blastwall run [OPTIONS] [--] COMMAND [ARG...]
       blastwall shell [OPTIONS]
       blastwall policy show [OPTIONS] [--json] [--plan]
       blastwall policy import-srt FILE [--output FILE] [--force]
       blastwall doctor [--json] [--database PATH|URL] [--cluster ADDRESS]
       blastwall image build [NAME] [--package P]... | import NAME DIR|TARBALL | list | rm NAME
       blastwall approvals list [--workspace DIR] | revoke ID
       blastwall trust [--workspace DIR] [--yes] [--allow-widening] | --revoke | --list
       blastwall audit tail [-n N] [--json] | show SEQ | verify [--cluster ADDRESS] | export --json
       blastwall mcp [--workspace DIR] [--policy FILE] [--tier TIER]
       blastwall serve [--listen HOST:PORT] [--data-dir DIR] [--database PATH|URL] [--warm N] [--policy FILE]
                       [--max-upload SIZE] [--default-ttl DURATION] [--max-sandboxes N] [--memory SIZE]
                       [--cpus N] [--tls-cert FILE --tls-key FILE] [--log-level LEVEL] [--cluster ray://HOST:PORT|auto]
       blastwall tenant add NAME [--max-sessions N] [--max-memory SIZE] [--max-cpus N] [--max-pids N] [--max-ttl DURATION]
                            [--allow-domain HOST]... [--image NAME]... [--tier container|vm]...
                            [--expires DURATION|DATE] [--database PATH|URL]
       blastwall tenant key NAME [--expires DURATION|DATE] | list [--json] | revoke NAME|KEY-ID  [--database PATH|URL]
       blastwall db upgrade | status  [--database PATH|URL]
       blastwall cluster status [--cluster ADDRESS] [--json]
       blastwall version

Sandbox options:
  --policy FILE        policy file (default: ~/.config/blastwall/policy.toml)
  --workspace DIR      the writable project directory (default: current directory)
  --allow-domain HOST  allow network access to HOST (repeatable)
  --trust-address CIDR let allowed hosts resolve to this private or reserved range (repeatable)
  --allow-write PATH   also make PATH writable (repeatable)
  --deny-read PATH     also hide PATH (repeatable)
  --deny-write PATH    also make PATH read-only (repeatable)
  --env NAME[=VALUE]   pass variable NAME through (or set it) deliberately (repeatable)
  --read-only          make the workspace read-only too
  --allow-git-writes   let the command write .git (commit, branch; its hooks and config stay read-only)
  --tier TIER          process (default), container (gVisor) or vm
  --image NAME         the container tier's image (default: default; see blastwall image build)
  --require FEATURE    refuse to run without FEATURE (landlock)
  --approval-webhook URL  with network.unlisted = "ask": ask this URL instead of the terminal

Service database: --database takes an SQLite file (the default: service.sqlite in the data
directory) or a postgresql:// URL shared by several replicas; BLASTWALL_DATABASE gives it
without putting a password on the command line (--db is the same as --database).

Exit status: the command's; 125 if the sandbox could not be set up; 2 for usage
or policy errors.
"""


class UsageError(Exception):
    """Bad command line: exit status 2 with the usage text."""


class Parsed:
    __slots__ = ("command", "options", "args")

    def __init__(self, command: str, options: dict[str, object], args: list[str]) -> None:
        self.command = command
        self.options = options
        self.args = args

    def get(self, name: str, default=None):
        return self.options.get(name, default)

    def __repr__(self) -> str:
        return f"Parsed({self.command!r}, {self.options!r}, {self.args!r})"


def usage() -> str:
    return USAGE


def parse(argv: list[str]) -> Parsed:
    """Parse ``argv`` (without the program name); raise UsageError when it is wrong."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        return Parsed("help", {}, [])
    if argv[0] in ("--version", "-V"):
        return Parsed("version", {}, [])
    name = argv[0]
    rest = argv[1:]
    if name in ("policy", "audit", "approvals", "image", "tenant", "db", "cluster"):
        if not rest or rest[0] in ("-h", "--help"):
            subs = {"policy": "show or import-srt", "audit": "tail, verify or export",
                    "approvals": "list or revoke", "image": "build, import, list or rm",
                    "tenant": "add, key, list or revoke", "db": "upgrade or status", "cluster": "status"}[name]
            raise UsageError(f"{name} needs a subcommand: {subs}")
        name = f"{name} {rest[0]}"
        rest = rest[1:]
    if name not in COMMANDS:
        raise UsageError(f"unknown command {name!r}")
    spec, positional, _summary = COMMANDS[name]
    options: dict[str, object] = {}
    args: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            args.extend(rest[i + 1:])
            break
        if arg in ("-h", "--help"):
            return Parsed("help", {}, [])
        if (arg.startswith("--") and len(arg) > 2) or arg in spec:
            key, eq, inline = arg.partition("=")
            if key not in spec:
                raise UsageError(f"{name}: unknown option {key}")
            takes_value, repeatable = spec[key]
            if takes_value:
                if eq:
                    value = inline
                else:
                    if i + 1 >= len(rest):
                        raise UsageError(f"{name}: {key} needs a value")
                    i += 1
                    value = rest[i]
                if repeatable:
                    options.setdefault(key, []).append(value)  # type: ignore[union-attr]
                elif key in options:
                    raise UsageError(f"{name}: {key} given twice")
                else:
                    options[key] = value
            else:
                if eq:
                    raise UsageError(f"{name}: {key} takes no value")
                options[key] = True
            i += 1
            continue
        if arg.startswith("-") and arg != "-":
            raise UsageError(f"{name}: unknown option {arg}")
        if positional == "command":
            # The first word that is not an option starts the command; the
            # command's own options are never ours.
            args.extend(rest[i:])
            break
        args.append(arg)
        i += 1
    if positional == "command" and not args:
        raise UsageError(f"{name}: no command given (blastwall run -- COMMAND)")
    if positional == "none" and args:
        raise UsageError(f"{name}: unexpected argument {args[0]!r}")
    if positional == "one" and len(args) != 1:
        raise UsageError(f"{name}: expected exactly one argument")
    if positional == "two" and len(args) != 2:
        raise UsageError(f"{name}: expected two arguments")
    if positional == "optional" and len(args) > 1:
        raise UsageError(f"{name}: expected at most one argument")
    return Parsed(name, options, args)
