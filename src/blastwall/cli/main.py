"""The ``blastwall`` command: a thin shell over ``blastwall.api``.

No policy logic lives here: flags become a policy layer, the API does the rest.
Every error reaches the user as one ``blastwall: ...`` message and an exit
status (2 usage/policy, 125 set-up), never a traceback (set BLASTWALL_DEBUG=1
to see one).
"""

from __future__ import annotations

import os
import sys

from blastwall.cli.args import UsageError, parse, usage
from blastwall.errors import ContainmentError

__all__ = ["entry", "main"]

VERSION = "0.1.0"


def entry() -> None:
    if os.environ.get("BLASTWALL_DEBUG"):
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 PID: where is it stuck?
    sys.exit(main(sys.argv[1:]))


def _say(text: str) -> None:
    try:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def main(argv: list[str]) -> int:
    try:
        parsed = parse(argv)
    except UsageError as exc:
        _say(f"blastwall: {exc}\n(run 'blastwall --help' for usage)")
        return 2
    handler = _HANDLERS[parsed.command]
    try:
        return handler(parsed)
    except UsageError as exc:  # An option's value, found wrong by its handler.
        _say(f"blastwall: {exc}\n(run 'blastwall --help' for usage)")
        return 2
    except ContainmentError as exc:
        if not getattr(exc, "already_reported", False):
            _say(f"blastwall: {exc}")
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except BrokenPipeError:
        return 141
    except Exception as exc:  # Last line of defence: no tracebacks to users.
        if os.environ.get("BLASTWALL_DEBUG"):
            raise
        _say(f"blastwall: internal error: {type(exc).__name__}: {exc}\n"
             "  (set BLASTWALL_DEBUG=1 for a traceback and please report it)")
        return 125


# Command-line options that map one-to-one onto a policy key.
_FLAG_KEYS = {
    "--allow-domain": ("network", "allow"),
    "--trust-address": ("network", "trusted_addresses"),
    "--allow-write": ("filesystem", "allow_write"),
    "--deny-read": ("filesystem", "deny_read"),
    "--deny-write": ("filesystem", "deny_write"),
    "--require": ("sandbox", "require"),
    "--tier": ("sandbox", "tier"),
    "--image": ("sandbox", "image"),
}


def flags_layer(parsed):
    """The command line as a policy layer that adds to the file's lists."""
    from blastwall.errors import PolicyError
    from blastwall.policy.model import is_env_name, parse_layer

    doc: dict[str, dict[str, object]] = {}

    def put(section: str, key: str, value: object) -> None:
        doc.setdefault(section, {})[key] = value

    for option, (section, key) in _FLAG_KEYS.items():
        if parsed.get(option):
            put(section, key, parsed.get(option))
    passed, setting = [], {}
    for item in parsed.get("--env") or []:
        name, eq, value = item.partition("=")
        if not is_env_name(name):
            raise PolicyError(f"{name!r} is not an environment variable name", key="--env", source="command line")
        if eq:
            setting[name] = value
        else:
            passed.append(name)
    if passed:
        put("environment", "pass", passed)
    if setting:
        put("environment", "set", setting)
    if parsed.get("--allow-git-writes"):
        put("filesystem", "allow_git_writes", True)
    layer = parse_layer(doc, "command line", extend_lists=True)
    if parsed.get("--read-only"):
        # Replaces, not extends: the workspace (and every allow_write) read-only.
        layer.values[("filesystem", "allow_write")] = ("set", ())
    return layer


def _load(parsed):
    from blastwall import api

    notes: list[str] = []
    policy = api.load(parsed.get("--policy"), flags=flags_layer(parsed),
                      workspace=parsed.get("--workspace") or os.getcwd(), notes=notes)
    for note in notes:
        _say(f"blastwall: note: {note}")
    return policy


def _warn_once_landlock(degraded: tuple[str, ...]) -> None:
    """Landlock missing: say so once per user, then stay quiet."""
    if "landlock" not in degraded:
        return
    from blastwall.policy.load import cache_dir

    marker = os.path.join(cache_dir(), "landlock-missing-warned")
    if os.path.exists(marker):
        return
    _say("blastwall: note: this kernel has no Landlock; continuing with bubblewrap and seccomp "
         "(use --require landlock to refuse instead; `blastwall doctor` shows details)")
    try:
        os.makedirs(os.path.dirname(marker), mode=0o700, exist_ok=True)
        with open(marker, "w"):
            pass
    except OSError:
        pass


def cmd_run(parsed, command: list[str] | None = None) -> int:
    from blastwall import api

    policy = _load(parsed)
    command = command or parsed.args
    broker = None
    if policy.network.unlisted == "ask":
        from blastwall.approvals import broker as brokers

        label = " ".join(command)
        if parsed.get("--approval-webhook"):
            broker = brokers.WebhookBroker(parsed.get("--approval-webhook"), command=label,
                                           workspace=os.path.realpath(parsed.get("--workspace") or os.getcwd()))
        else:
            broker = brokers.TerminalBroker(command=label)
    sandbox = api.sandbox(policy, workspace=parsed.get("--workspace"), broker=broker)
    status = None
    import signal

    def terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    try:
        sandbox.prepare()
        _warn_once_landlock(sandbox.degraded)
        sandbox.boot()
        if _interactive():
            # Every tier gets a private pty: the sandbox never holds the user's terminal.
            from blastwall.cli.terminal import run_with_pty

            status = run_with_pty(sandbox, command)
        else:
            status = sandbox.exec(command).wait()
        deadline = sandbox.deadline
        if deadline is not None and deadline.expired:
            from blastwall.policy.model import format_duration

            _say(f"blastwall: Killed the sandbox: it ran longer than its [resources] timeout of "
                 f"{format_duration(deadline.seconds)} (exit status {status})")
        return status
    finally:
        sandbox.close()
        _report_egress(sandbox)
        _audit_run(policy, command, status)


def _audit_run(policy, command: list[str], status) -> None:
    """Record the run.  Written by a detached child, so that the command's
    caller does not wait ~15 ms for SQLite; the row still lands (and chains)."""
    try:
        first = os.fork()
    except OSError:
        first = -1
    if first > 0:
        os.waitpid(first, 0)  # The intermediate child exits at once.
        return
    if first == 0:
        if os.fork() != 0:
            os._exit(0)
        os.setsid()
        # Let go of the caller's pipes and terminal: whoever reads the
        # command's output must not wait for the audit write.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    try:
        import hashlib
        import json

        policy_hash = hashlib.sha256(json.dumps(policy.as_dict(), sort_keys=True).encode()).hexdigest()
        audit_event(kind="run", command=" ".join(command)[:2048], decision="ran" if status is not None else "failed",
                    rule=f"policy sha256:{policy_hash}", reason=f"tier {policy.sandbox.tier}; exit status {status}")
    finally:
        if first == 0:
            os._exit(0)


def _report_egress(sandbox) -> None:
    """One line on stderr: what the gateway refused during the run."""
    if sandbox.gateway_lost:
        _say("blastwall: the egress gateway stopped during the run; the sandbox lost network access "
             "(nothing was allowed to go direct)")
        return
    summary = sandbox.egress_summary
    if not summary or not summary.get("blocked_count"):
        return
    from blastwall._display import shown as safe

    counts: dict[str, int] = {}
    for item in summary["blocked"]:
        # Host, reason and detail come from inside the sandbox: escaped before they reach the terminal.
        why = f"{item['reason']}: {item['detail']}" if item.get("detail") else item["reason"]
        key = safe(f"{item['host']}:{item['port']} ({why})")
        counts[key] = counts.get(key, 0) + 1
    shown = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in list(counts.items())[:5])
    more = summary["blocked_count"] - sum(list(counts.values())[:5])
    _say(f"blastwall: blocked {summary['blocked_count']} network request(s): {shown}"
         + (f" and {more} more" if more > 0 else "") + " (see `blastwall audit tail`)")


def _interactive() -> bool:
    try:
        return os.isatty(0) and os.isatty(1)
    except OSError:
        return False


def cmd_shell(parsed) -> int:
    shell = os.environ.get("SHELL") or "/bin/sh"
    if not os.path.isabs(shell) or not os.access(shell, os.X_OK):
        shell = "/bin/sh"
    return cmd_run(parsed, [shell, "-i"] if _interactive() else [shell])


def cmd_policy_show(parsed) -> int:
    from blastwall import api
    from blastwall.policy import defaults
    from blastwall.policy.toml_out import dumps

    policy = _load(parsed)
    data = policy.as_dict()
    plan = None
    if parsed.get("--plan"):
        plan = api.plan_for(policy, workspace=parsed.get("--workspace"))
    if parsed.get("--json"):
        import json

        out = {"policy": data, "sources": list(policy.sources), "egress": egress_reading(policy),
               "builtin_secrets": [s for s in defaults.BUILTIN_SECRETS if s not in policy.filesystem.reveal],
               "mandatory_write_deny": list(defaults.mandatory_write_deny(
                   git_writes=policy.filesystem.allow_git_writes))}
        if plan is not None:
            out["plan"] = [op.describe() for op in plan.operations if type(op).__name__ != "Environment"]
            out["notes"] = list(plan.notes)
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    lines = ["# Effective blastwall policy", "# layers, lowest first: built-in defaults"
             + "".join(f" < {s}" for s in policy.sources)]
    lines.append("# plus the built-in secret list (hidden) and mandatory write-denies: see docs/policy.md")
    lines += [f"# {line}" for line in egress_reading(policy)]
    sys.stdout.write("\n".join(lines) + "\n\n" + dumps(data))
    if plan is not None:
        sys.stdout.write("\n# Compiled plan for workspace " + plan.workspace + "\n")
        for op in plan.operations:
            sys.stdout.write("#   " + op.describe().replace("\n", " ") + "\n")
        for note in plan.notes:
            sys.stdout.write("# note: " + note + "\n")
    return 0


def egress_reading(policy) -> list[str]:
    """What the gateway reads of the policy's connections, and what network.passthrough gives up."""
    net = policy.network
    if not (net.allow or net.rules):
        return ["egress: none (no network at all)"]
    if not (net.rules or policy.credentials.entries):
        return ["egress: allowed hosts are tunnelled; the gateway checks each connection's name (CONNECT, SNI, "
                "Host) and address, nothing inside it"]
    lines = ["egress: this policy has rules or credentials, so the gateway decrypts and reads every connection: "
             "each request must name the host its tunnel and TLS name (no fronting), and ruled hosts get their "
             "methods, paths and credential binding"]
    if net.passthrough:
        lines.append("egress: passthrough " + ", ".join(net.passthrough) + ": tunnelled untouched. The gateway "
                     "sees only their name and address: nothing inside is checked (no methods, paths or "
                     "credentials), and a request for another host on the same server would go unnoticed. "
                     "Keep it for clients that pin certificates.")
    return lines


def cmd_import_srt(parsed) -> int:
    from blastwall.policy.srt import import_srt_file

    text, warnings = import_srt_file(parsed.args[0])
    for warning in warnings:
        _say(f"blastwall: import-srt: {warning}")
    output = parsed.get("--output")
    if output is None:
        sys.stdout.write(text)
        return 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if parsed.get("--force") else os.O_EXCL)
    try:
        fd = os.open(output, flags, 0o644)
    except FileExistsError:
        _say(f"blastwall: Refusing to overwrite {output}: it exists (use --force)")
        return 2
    except OSError as exc:
        _say(f"blastwall: Can't write {output}: {exc.strerror}")
        return 2
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    _say(f"blastwall: wrote {output}")
    return 0


def cmd_doctor(parsed) -> int:
    from blastwall.cli.doctor import run_doctor

    database = parsed.get("--database") or os.environ.get("BLASTWALL_DATABASE")
    return run_doctor(json_output=bool(parsed.get("--json")), database=database, cluster=parsed.get("--cluster"))


def _ask(question: str) -> bool:
    """A yes/no question on the controlling terminal; False when there is none."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, f"{question} [y/N] ".encode())
        answer = b""
        while not answer.endswith(b"\n") and len(answer) < 64:
            chunk = os.read(fd, 1)
            if not chunk:
                break
            answer += chunk
    finally:
        os.close(fd)
    return answer.decode(errors="replace").strip().lower() in ("y", "yes")


def audit_event(**fields) -> None:
    """Append one row to the audit log; never let auditing break the command."""
    try:
        from blastwall.audit.log import AuditLog, default_path

        log = AuditLog(os.environ.get("BLASTWALL_AUDIT_DB") or default_path())
        log.append(**fields)
        log.close()
    except Exception as exc:  # noqa: BLE001
        _say(f"blastwall: warning: could not write the audit log: {exc}")
        try:
            from blastwall.policy.load import state_dir

            with open(os.path.join(state_dir(), "audit-errors.log"), "a") as f:
                f.write(f"{fields.get('kind')}: {exc}\n")
        except OSError:
            pass


def cmd_trust(parsed) -> int:
    import difflib
    import time

    from blastwall.policy.load import _home, parse_toml, user_layers
    from blastwall.policy.model import merge, parse_layer
    from blastwall.trust.project import split
    from blastwall.trust.store import TrustStore, digest, project_policy_path, read_project_bytes

    store = TrustStore()
    if parsed.get("--list"):
        for workspace, record in sorted(store.records().items()):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.get("trusted_at", 0)))
            widening = "widening accepted" if record.get("widening_accepted") else "narrowing only"
            sys.stdout.write(f"{workspace}  sha256:{record.get('sha256', '')[:12]}  {when}  {widening}\n")
        return 0
    workspace = os.path.realpath(parsed.get("--workspace") or os.getcwd())
    if parsed.get("--revoke"):
        found = store.revoke(workspace)
        audit_event(kind="trust", command="revoke", host=workspace, decision="revoke")
        sys.stdout.write(f"{'revoked trust in' if found else 'no trust recorded for'} {workspace}\n")
        return 0
    path = project_policy_path(workspace)
    if not os.path.lexists(path):
        sys.stdout.write(f"{workspace} has no project policy ({path})\n")
        return 0
    try:
        data = read_project_bytes(path)
    except OSError as exc:
        _say(f"blastwall: Can't read {path}: {exc.strerror or exc}")
        return 2
    text = data.decode("utf-8", "replace")
    layer = parse_layer(parse_toml(text, path), path)  # PolicyError: exit 2, nothing trusted.
    base = merge(user_layers())
    _narrowing, widening = split(base, layer, workspace=workspace, home=_home(os.environ))
    previous = store.lookup(workspace)
    out = sys.stdout
    if previous and previous.get("sha256") == digest(data):
        out.write(f"{path} is already trusted with this content.\n")
    elif previous:
        out.write(f"{path} changed since you trusted it:\n")
        out.writelines(difflib.unified_diff(previous.get("content", "").splitlines(True), text.splitlines(True),
                                            "trusted", "now"))
        out.write("\n")
    else:
        out.write(f"{path}:\n" + "".join(f"  | {line}\n" for line in text.splitlines()) + "\n")
    if widening:
        out.write("It asks for MORE than your own policy allows:\n" + "".join(f"  - {w}\n" for w in widening))
    else:
        out.write("It only narrows your policy.\n")
    out.flush()
    if not (parsed.get("--yes") or _ask("Trust this project policy?")):
        out.write("Not trusted; the file stays unread by blastwall.\n")
        return 1
    accepted = False
    if widening:
        accepted = bool(parsed.get("--allow-widening")) or _ask("Also apply the parts that widen your policy?")
    store.trust(workspace, data, widening_accepted=accepted)
    audit_event(kind="trust", command="trust", host=workspace, decision="trust",
                rule=f"sha256:{digest(data)}", reason="widening accepted" if accepted else "narrowing only")
    out.write(f"Trusted{' with its widening parts' if accepted else ' (narrowing part only)' if widening else ''}.\n")
    return 0


def cmd_approvals_list(parsed) -> int:
    import time

    from blastwall._display import shown
    from blastwall.approvals.store import ApprovalStore

    workspace = parsed.get("--workspace")
    for entry in ApprovalStore().entries(workspace):
        until = time.strftime("%Y-%m-%d", time.localtime(entry["expires"]))
        sys.stdout.write(f"{entry['id']}  {entry['decision']:<5} {shown(entry['host'])}:{entry['port']}  "
                         f"in {entry['workspace']}  until {until}\n")
    return 0


def cmd_approvals_revoke(parsed) -> int:
    from blastwall.approvals.store import ApprovalStore

    if not ApprovalStore().revoke(parsed.args[0]):
        _say(f"blastwall: no remembered answer with id {parsed.args[0]!r}")
        return 1
    audit_event(kind="approval", command="revoke", decision="revoke", rule=parsed.args[0])
    sys.stdout.write(f"revoked {parsed.args[0]}\n")
    return 0


def _audit_log():
    from blastwall.audit.log import AuditLog, default_path

    path = os.environ.get("BLASTWALL_AUDIT_DB") or default_path()
    if not os.path.exists(path):
        return None
    return AuditLog(path)


def cmd_audit_tail(parsed) -> int:
    import json
    import time

    log = _audit_log()
    rows = log.rows() if log else []
    count = parsed.get("-n") or "20"
    if not str(count).isdigit():
        _say("blastwall: audit tail: -n takes a number")
        return 2
    rows = rows[-int(count):] if int(count) else []
    from blastwall._display import shown as safe

    for row in rows:
        if parsed.get("--json"):
            sys.stdout.write(json.dumps(row) + "\n")  # JSON escapes every control character itself.
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["time"]))
        target = safe(f"{row['host']}:{row['port']}") if row["host"] else ""
        sys.stdout.write(f"{row['seq']:>6} {when} {safe(row['decision']):<5} {safe(row['kind']):<8} {target:<30} "
                         f"{safe(row['reason'])}  [{safe(row['session'])}] {safe(row['command'][:40])}\n")
    return 0


def cmd_audit_show(parsed) -> int:
    log = _audit_log()
    wanted = parsed.args[0]
    for row in (log.rows() if log else []):
        if str(row["seq"]) == wanted:
            from blastwall._display import shown as safe

            for key, value in row.items():
                sys.stdout.write(f"{key:>9}: {safe(value)}\n")
            return 0
    _say(f"blastwall: no audit row {wanted[:40]!r}")
    return 1


def cmd_audit_verify(parsed) -> int:
    if parsed.get("--cluster"):
        return _verify_cluster_audit(parsed)
    log = _audit_log()
    if log is None:
        sys.stdout.write("audit log: empty (no decisions recorded yet)\n")
        return 0
    ok, message = log.verify()
    sys.stdout.write(f"audit log {log.path}: {'OK' if ok else 'BROKEN'}: {message}\n")
    return 0 if ok else 1


def _verify_cluster_audit(parsed) -> int:
    """Every node agent's chain, checked on its node and against the heads the database recorded."""
    import ray

    from blastwall.ray import cluster

    cluster.connect(parsed.get("--cluster"))
    store = _open_store(parsed)
    try:
        heads = store.audit_heads()
    finally:
        store.close()
    agents = cluster.agents()
    broken = 0
    checked_replicas = set()
    for node, agent in sorted(agents.items()):
        replica = ray.get(agent.status.remote(), timeout=60)["replica"]
        recorded = [h for h in heads if h["replica"] == replica]
        report = ray.get(agent.verify_audit.remote(recorded), timeout=600)
        checked_replicas.add(replica)
        problems = []
        if not report["chain_ok"]:
            problems.append(report["detail"])
        if report["heads_mismatched"]:
            problems.append(f"rows {', '.join(map(str, report['heads_mismatched'][:10]))} differ from the heads the "
                            "database recorded: the log was rewritten")
        state = "BROKEN: " + "; ".join(problems) if problems else f"OK: {report['detail']}"
        broken += bool(problems)
        sys.stdout.write(f"node {node[:12]} ({replica}): {state}; {report['heads_checked']} recorded heads checked\n")
    for replica in sorted({h["replica"] for h in heads} - checked_replicas):
        node = next(h["node"] for h in heads if h["replica"] == replica)
        sys.stdout.write(f"node {node[:12]} ({replica}): not checked: no agent runs there now (the node is gone "
                         "or its agent was stopped)\n")
    if not agents:
        sys.stdout.write("no node agent runs on this cluster\n")
    return 1 if broken else 0


def cmd_audit_export(parsed) -> int:
    import json

    if not parsed.get("--json"):
        _say("blastwall: audit export: only --json is supported")
        return 2
    log = _audit_log()
    json.dump(log.rows() if log else [], sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


def cmd_image_build(parsed) -> int:
    from blastwall.tiers.container import images

    name = parsed.args[0] if parsed.args else images.DEFAULT_IMAGE
    packages = tuple(parsed.get("--package") or images.DEFAULT_PACKAGES)
    _say(f"blastwall: building image {name!r} with mmdebstrap ({', '.join(packages)})")
    path = images.build(name, packages, progress=images._progress_printer)
    sys.stdout.write(f"built {name}: {path}\n")
    return 0


def cmd_image_import(parsed) -> int:
    from blastwall.tiers.container import images

    path = images.import_image(parsed.args[0], parsed.args[1])
    sys.stdout.write(f"imported {parsed.args[0]}: {path}\n")
    return 0


def cmd_image_list(parsed) -> int:
    import time

    from blastwall.tiers.container import images

    for meta in images.list_images():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.get("built", 0)))
        sys.stdout.write(f"{meta.get('name')}  {when}  {meta.get('source', '')}  "
                         f"{','.join(meta.get('packages', []))}\n")
    return 0


def cmd_image_rm(parsed) -> int:
    from blastwall.tiers.container import images

    if not images.remove(parsed.args[0]):
        _say(f"blastwall: no image {parsed.args[0]!r}")
        return 1
    return 0


def cmd_mcp(parsed) -> int:
    from blastwall.cli.mcp import serve
    from blastwall.client import Sandbox

    from blastwall.client import SandboxError

    workspace = os.path.realpath(parsed.get("--workspace") or os.getcwd())
    try:
        # api_url=None: always this machine, whatever BLASTWALL_API_URL says.
        sandbox = Sandbox.create(tier=parsed.get("--tier"), policy_file=parsed.get("--policy"), workspace=workspace,
                                 api_url=None)
    except (ContainmentError, SandboxError, OSError) as exc:
        # The client shows this to its user (every request gets it); an exit would say nothing.
        message = str(exc) if not isinstance(exc, OSError) else f"{exc.strerror or exc}: {exc.filename or ''}"
        _say(f"blastwall mcp: {message}")
        return serve(None, startup_error=f"blastwall cannot start its sandbox: {message}")
    try:
        return serve(sandbox)
    finally:
        sandbox.close()  # The workspace is the user's: it stays.


def _service_db(parsed) -> str:
    """The service's database: --database (or --db), $BLASTWALL_DATABASE, or the data directory's SQLite file."""
    from blastwall.service.store import default_db_path

    if parsed.get("--database") and parsed.get("--db"):
        raise UsageError("give --database or --db (they are the same), not both")
    target = parsed.get("--database") or parsed.get("--db") or os.environ.get("BLASTWALL_DATABASE")
    if target:
        return target if "://" in target else os.path.abspath(target)
    if parsed.get("--data-dir"):
        return os.path.join(os.path.abspath(parsed.get("--data-dir")), "service.sqlite")
    return default_db_path()


def _open_store(parsed, **options):
    """The service's store (a database that is away raises DatabaseUnavailable: a ContainmentError)."""
    from blastwall.service.store import Store

    return Store(_service_db(parsed), **options)


def _option(parsed, name: str, convert, default=None):
    """A converted option value; a bad one is a usage error (exit 2) naming the option."""
    raw = parsed.get(name)
    if raw is None:
        return default
    try:
        return convert(raw)
    except ValueError as exc:
        raise UsageError(f"{name}: {exc}") from None


def _whole(text: str) -> int:
    if not (0 < len(text) <= 9 and all(c in "0123456789" for c in text)):
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def _number(text: str) -> float:
    value = float(text)
    if not 0 < value < 1e6:
        raise ValueError(f"{text!r} is out of range")
    return value


def _expiry(text: str) -> float:
    """An absolute time from a duration ("90d", "12h") or a date ("2026-01-31", "2026-01-31T12:00")."""
    import time

    from blastwall.service.ceiling import parse_duration

    if text[:1].isdigit() and "-" in text:
        import datetime

        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a date like 2026-01-31 or a duration like 90d") from None
        if when.tzinfo is None:
            when = when.astimezone()
        if when.timestamp() <= time.time():
            raise ValueError(f"{text!r} is in the past")
        return when.timestamp()
    return time.time() + parse_duration(text, "expiry")


def cmd_serve(parsed) -> int:
    from blastwall.service.ceiling import Resources, parse_duration, parse_size
    from blastwall.service.server import parse_listen, serve
    from blastwall.service.sessions import Config, default_pids
    from blastwall.service.store import data_dir

    listen = parsed.get("--listen") or "127.0.0.1:8700"
    _option(parsed, "--listen", parse_listen)
    directory = os.path.abspath(parsed.get("--data-dir") or data_dir())
    memory = _option(parsed, "--memory", lambda v: parse_size(v, "size"), 512 << 20)
    cpus = _option(parsed, "--cpus", _number, 1.0)
    config = Config(
        data_dir=directory,
        policy_file=parsed.get("--policy"),
        warm=_option(parsed, "--warm", _whole, 0),
        max_upload=_option(parsed, "--max-upload", lambda v: parse_size(v, "size"), 64 << 20),
        default_ttl=_option(parsed, "--default-ttl", lambda v: parse_duration(v, "duration"), 300),
        max_sandboxes=_option(parsed, "--max-sandboxes", _whole, 100),
        default_resources=Resources(memory, cpus, default_pids()),
    )
    if bool(parsed.get("--tls-cert")) != bool(parsed.get("--tls-key")):
        raise UsageError("serve: --tls-cert and --tls-key go together")
    return serve(listen=listen, config=config, db_path=_service_db(parsed), tls_cert=parsed.get("--tls-cert"),
                 tls_key=parsed.get("--tls-key"), log_level=(parsed.get("--log-level") or "info").lower(),
                 cluster=parsed.get("--cluster"))


def cmd_tenant_add(parsed) -> int:
    import json

    from blastwall.service.ceiling import Ceiling, parse_duration, parse_size

    fields = {
        "max_sessions": _option(parsed, "--max-sessions", _whole),
        "max_memory": _option(parsed, "--max-memory", lambda v: parse_size(v, "size")),
        "max_cpus": _option(parsed, "--max-cpus", _number),
        "max_pids": _option(parsed, "--max-pids", _whole),
        "max_ttl": _option(parsed, "--max-ttl", lambda v: parse_duration(v, "duration")),
        "allow_domains": parsed.get("--allow-domain"),
        "images": parsed.get("--image"),
        "tiers": parsed.get("--tier"),
    }
    try:
        ceiling = Ceiling.from_dict({k: v for k, v in fields.items() if v is not None})
    except ValueError as exc:
        raise UsageError(f"tenant add: {exc}") from None
    expires = _option(parsed, "--expires", _expiry)
    name = parsed.args[0]
    store = _open_store(parsed)
    try:
        key_id, key = store.add_tenant(name, ceiling, expires=expires)
    except ValueError as exc:
        _say(f"blastwall: Can't add tenant: {exc}")
        return 2
    finally:
        store.close()
    audit_event(kind="service", session=name, command=f"tenant add {name}", decision="allow",
                rule=f"key {key_id}", reason=json.dumps(ceiling.as_dict(), sort_keys=True))
    _say(f"blastwall: added tenant {name} with key bwk_{key_id}; the key is printed once, below:")
    sys.stdout.write(key + "\n")
    return 0


def cmd_tenant_key(parsed) -> int:

    expires = _option(parsed, "--expires", _expiry)
    name = parsed.args[0]
    store = _open_store(parsed)
    try:
        key_id, key = store.add_key(name, expires=expires)
    except ValueError as exc:
        _say(f"blastwall: Can't issue a key: {exc}")
        return 2
    finally:
        store.close()
    audit_event(kind="service", session=name, command=f"tenant key {name}", decision="allow", rule=f"key {key_id}")
    _say(f"blastwall: new key bwk_{key_id} for {name}; the key is printed once, below:")
    sys.stdout.write(key + "\n")
    return 0


def cmd_tenant_list(parsed) -> int:
    import json
    import time

    from blastwall.service.ceiling import format_size
    store = _open_store(parsed)
    try:
        tenants = store.tenants()
    finally:
        store.close()
    if parsed.get("--json"):
        sys.stdout.write(json.dumps(tenants, indent=1) + "\n")
        return 0

    def when(stamp) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "-"

    now = time.time()
    for tenant in tenants:
        c = tenant["ceiling"]
        state = f"revoked {when(tenant['revoked'])}" if tenant["revoked"] else "active"
        sys.stdout.write(f"{tenant['name']}  {state}  sessions<={c['max_sessions']} "
                         f"memory<={format_size(c['max_memory'])} cpus<={c['max_cpus']:g} "
                         f"pids<={c.get('max_pids', 1024)} ttl<={c['max_ttl']}s "
                         f"tiers={','.join(c.get('tiers', ['container']))} "
                         f"images={','.join(c['images']) or '-'} domains={','.join(c['allow_domains']) or '-'}\n")
        for key in tenant["keys"]:
            if key["revoked"]:
                status = f"revoked {when(key['revoked'])}"
            elif key["expires"] and key["expires"] <= now:
                status = f"expired {when(key['expires'])}"
            else:
                status = f"valid until {when(key['expires'])}" if key["expires"] else "valid"
            sys.stdout.write(f"  bwk_{key['id']}  created {when(key['created'])}  {status}\n")
    return 0


def cmd_tenant_revoke(parsed) -> int:
    store = _open_store(parsed)
    try:
        what = store.revoke(parsed.args[0])
    except ValueError as exc:
        _say(f"blastwall: Can't revoke: {exc}")
        return 1
    finally:
        store.close()
    audit_event(kind="service", session=parsed.args[0], command=f"tenant revoke {parsed.args[0]}", decision="revoke",
                reason=what)
    sys.stdout.write(f"revoked {what}\n")
    return 0


def _with_schema(parsed, work):
    """``work(database, migrations)`` on the service's database, opened without checking its schema."""
    from blastwall.service import migrations

    store = _open_store(parsed, check=False)
    try:
        return store.db, work(store.db, migrations)
    finally:
        store.close()


def cmd_db_upgrade(parsed) -> int:
    db, (before, applied, after) = _with_schema(parsed, lambda db, m: (m.version(db), m.upgrade(db), m.version(db)))
    if applied:
        sys.stdout.write(f"{db.description}: schema version {before} -> {after} "
                         f"(applied {', '.join(map(str, applied))})\n")
    else:
        sys.stdout.write(f"{db.description}: schema version {after}, up to date\n")
    return 0


def cmd_db_status(parsed) -> int:
    target = _service_db(parsed)
    if "://" not in target and not os.path.exists(target):  # Looked at, never made.
        sys.stdout.write(f"{target}: no database yet (the service or `blastwall db upgrade` makes it)\n")
        return 1
    db, (found, migrations) = _with_schema(parsed, lambda db, m: (m.version(db), m))
    sys.stdout.write(f"{db.description} ({db.kind}): schema version {found}; this blastwall needs "
                     f"{migrations.LATEST}\n")
    for number, what, _ in migrations.MIGRATIONS:
        if number > found:
            sys.stdout.write(f"  pending: {number} ({what})\n")
    if found > migrations.LATEST:
        sys.stdout.write("  written by a newer blastwall: upgrade blastwall here\n")
    return 0 if found == migrations.LATEST else 1


def cmd_cluster_status(parsed) -> int:
    import json

    import ray

    from blastwall.ray import cluster
    from blastwall.service.ceiling import format_size

    cluster.connect(parsed.get("--cluster") or "auto")
    agents = cluster.agents()
    nodes = cluster.nodes()
    for node in nodes:
        agent = agents.get(node["node"])
        node["agent"] = ray.get(agent.status.remote(), timeout=60) if agent is not None else None
    if parsed.get("--json"):
        sys.stdout.write(json.dumps(nodes, indent=1) + "\n")
        return 0
    for node in nodes:
        agent = node["agent"]
        running = (f"{agent['sandboxes']} sandboxes ({format_size(agent['memory'])}), {agent['warm']} warm"
                   if agent else "no agent yet")
        free = "?" if node["slots_free"] is None else f"{node['slots_free']:g}"
        sys.stdout.write(f"node {node['node'][:12]} {node['address']}: slots {free} free of {node['slots']:g}, "
                         f"{node['cpus']:g} CPUs, {format_size(int(node['memory']))} memory; {running}\n")
    if not any(node["slots"] for node in nodes):
        sys.stdout.write(f"no node offers {cluster.SLOT}: start nodes with --resources '{{\"{cluster.SLOT}\": N}}'\n")
    return 0


def cmd_version(parsed) -> int:
    sys.stdout.write(f"blastwall {VERSION}\n")
    return 0


def cmd_help(parsed) -> int:
    sys.stdout.write(usage())
    return 0


_HANDLERS = {
    "run": cmd_run,
    "shell": cmd_shell,
    "policy show": cmd_policy_show,
    "policy import-srt": cmd_import_srt,
    "doctor": cmd_doctor,
    "trust": cmd_trust,
    "image build": cmd_image_build,
    "image import": cmd_image_import,
    "image list": cmd_image_list,
    "image rm": cmd_image_rm,
    "approvals list": cmd_approvals_list,
    "approvals revoke": cmd_approvals_revoke,
    "audit tail": cmd_audit_tail,
    "audit verify": cmd_audit_verify,
    "audit show": cmd_audit_show,
    "audit export": cmd_audit_export,
    "mcp": cmd_mcp,
    "serve": cmd_serve,
    "tenant add": cmd_tenant_add,
    "tenant key": cmd_tenant_key,
    "tenant list": cmd_tenant_list,
    "tenant revoke": cmd_tenant_revoke,
    "cluster status": cmd_cluster_status,
    "db upgrade": cmd_db_upgrade,
    "db status": cmd_db_status,
    "version": cmd_version,
    "help": cmd_help,
}
