"""The command line: each command parses, calls one library function, and
renders the result as text for people or, with --json, for programs.
Errors a user can act on are printed as messages, never as tracebacks."""
from __future__ import annotations

import functools
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from launcher.errors import PolicyError, SandboxError
from launcher.text import json_text, one_line, printable

app = typer.Typer(
    help="Run a local llama.cpp backend and a chat front-end in a hardened Docker sandbox "
         "with no route to the internet, the LAN or the host. The UI is served at 127.0.0.1 only.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


class EscapingConsole(Console):
    """Text from a sandbox's parts and its image builds reaches every output
    (progress, errors, audit, logs, status, verify, as text or JSON), so it is
    escaped here, where all of them pass, rather than at each call: every
    string printed goes through `printable` (newlines kept; a caller whose
    line must not break escapes them itself), and JSON is `json_text`."""

    def print(self, *objects, **kwargs) -> None:
        super().print(*(printable(o, keep_newlines=True) if isinstance(o, str) else o for o in objects), **kwargs)

    def print_json(self, *, data: object) -> None:
        super().print(json_text(data), markup=False, highlight=False, emoji=False)


# No :name: emoji codes either: a part's text is shown as it was sent.
out = EscapingConsole(highlight=False, soft_wrap=True, emoji=False)
err = EscapingConsole(stderr=True, highlight=False, soft_wrap=True, emoji=False)

JSON = typer.Option(False, "--json", help="Print the result as JSON for programs.")
ALLOWED_SIGNERS = typer.Option(
    None, "--allowed-signers", envvar="SANDBOX_ALLOWED_SIGNERS", dir_okay=False, resolve_path=True,
    help="Who may sign policies: an allowed-signers file in git's format. When set (here, in the "
         "environment, or as allowed_signers: in ~/.config/sandbox/config.yaml) only policies whose lock "
         "one of them signed run.")
CA_BUNDLE = typer.Option(
    None, "--ca-bundle", envvar="SANDBOX_CA_BUNDLE", exists=True, dir_okay=False, resolve_path=True,
    help="Extra CA certificates (PEM) that image builds must trust, for networks that intercept TLS.")


def _gateway():
    from launcher.docker_gateway import DockerGateway
    return DockerGateway()


def handled(fn):
    """Turn a SandboxError into a message on stderr and its exit code."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PolicyError as e:
            if kwargs.get("as_json"):
                out.print_json(data={"ok": False, "problems": [p.to_dict() for p in e.problems]})
            for problem in e.problems:
                err.print(str(problem), markup=False)
            raise typer.Exit(e.exit_code) from None
        except SandboxError as e:
            if kwargs.get("as_json"):
                out.print_json(data={"ok": False, "error": str(e)})
            err.print(printable(f"error: {e}", keep_newlines=True), markup=False)
            raise typer.Exit(e.exit_code) from None
    return wrapper


class Progress:
    """Shows long work on stderr: steps as lines; image builds as a spinner with
    the build's last line on a terminal, or a line every 30 s elsewhere."""

    def __init__(self):
        self.status = None
        self.build_started = 0.0
        self.last_beat = 0.0

    def say(self, message: str) -> None:
        self._stop()
        # One line each: a newline in a name a part looked up must not start a line of its own.
        err.print(f"[bold]•[/bold] {escape(printable(message))}", markup=True, highlight=False)
        if message.startswith("building image") or message.startswith("waiting"):
            self.build_started = self.last_beat = time.monotonic()
            if err.is_terminal:
                # The spinner's text is drawn outside print: escaped here.
                self.status = err.status(escape(printable(message)))
                self.status.start()

    def build_line(self, line: str) -> None:
        """A line a build printed: its RUN steps' output, a stranger's to choose."""
        elapsed = time.monotonic() - self.build_started
        if self.status is not None:
            self.status.update(f"{int(elapsed)} s  {escape(printable(line[:100]))}")
        elif time.monotonic() - self.last_beat >= 30:
            self.last_beat = time.monotonic()
            err.print(printable(f"  … {int(elapsed)} s: {line[:120]}"), markup=False)

    def hashing(self, done: int, total: int, name: str) -> None:
        if total < 256 * 1024 * 1024:
            return  # small files hash in a blink
        if time.monotonic() - self.last_beat >= 2 or done == total:
            self.last_beat = time.monotonic()
            err.print(f"  checking sha256 of {name}: {done * 100 // total}%", markup=False)

    def _stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def close(self) -> None:
        self._stop()


@app.command()
@handled
def validate(files: List[Path] = typer.Argument(..., help="Policy files to check."),
             no_port_check: bool = typer.Option(False, "--no-port-check",
                                                help="Do not check that the host port is free."),
             no_model_files: bool = typer.Option(False, "--no-model-files",
                                                 help="Do not look at the model files (a repository of "
                                                      "policies holds no weights)."),
             strict: bool = typer.Option(False, "--strict",
                                         help="Also require a lock that pins this very policy, and a good "
                                              "signature of it (by an allowed signer, when they are set)."),
             allowed_signers: Optional[Path] = ALLOWED_SIGNERS,
             as_json: bool = JSON):
    """Check policy files: the schema, the model files and their sha256, and the host port.

    Every problem is listed as FILE:LINE:COLUMN FIELD: MESSAGE. Exits 2 if any."""
    from launcher.commands.lock import strict_problems
    from launcher.commands.model import policy_warnings
    from launcher.policy import check_policy_file
    from launcher.signing import allowed_signers_setting
    progress = Progress()
    port_holder = _port_holder_if_engine()
    trusted = allowed_signers_setting(allowed_signers) if strict else None
    results = []
    for file in files:
        policy, problems = check_policy_file(file, check_port=not no_port_check, port_holder=port_holder,
                                             hash_progress=progress.hashing, check_model_files=not no_model_files)
        if strict and not problems:
            problems = strict_problems(file, trusted)
        # Warnings do not fail a policy: the model may run, but not as written.
        warnings = policy_warnings(policy, policy.backend.gpu not in ("none", "auto"), display=str(file)) \
            if policy and not no_model_files else []
        results.append({"file": str(file), "ok": not problems, "name": policy.name if policy else None,
                        "problems": [p.to_dict() for p in problems], "warnings": [w.to_dict() for w in warnings]})
        if not as_json:
            for p in problems + warnings:
                err.print(str(p), markup=False)
            if not problems:
                out.print(f"{file}: ok (sandbox {policy.name})", markup=False)
    if as_json:
        out.print_json(data={"ok": all(r["ok"] for r in results), "files": results})
    if not all(r["ok"] for r in results):
        raise typer.Exit(PolicyError.exit_code)


def _name_in(policy: Path) -> str:
    from launcher.policy.loader import load
    doc, _ = load(policy)
    name = doc.data.get("name") if doc is not None and isinstance(doc.data, dict) else None
    return name if isinstance(name, str) else "(unnamed)"


def _port_holder_if_engine():
    """A busy port is fine when the sandbox's own ingress holds it, and worth
    naming when another sandbox's does; that needs the engine, which
    `validate` does not otherwise require."""
    def holder(name: str, port: int) -> str | None:
        try:
            from launcher.commands.prepare import port_holder
            return port_holder(_gateway())(name, port)
        except SandboxError:
            return None
    return holder


@app.command()
@handled
def plan(policy: Path = typer.Argument(..., help="The policy file."), ca_bundle: Optional[Path] = CA_BUNDLE,
         as_json: bool = JSON):
    """Show what `up` would build, create, recreate, keep or remove, and why. Changes nothing."""
    from launcher.commands.bundle import is_bundle
    from launcher.commands.prepare import prepare
    if is_bundle(policy):
        raise SandboxError(f"{policy} is a bundle: `sandbox up {policy}` checks and starts it")
    progress = Progress()
    prepared = prepare(_gateway(), policy, ca_bundle, hash_progress=progress.hashing)
    actions = prepared.plan.actions
    if as_json:
        out.print_json(data={"name": prepared.spec.name, "url": prepared.spec.url,
                             "actions": [a.to_dict() for a in actions]})
        return
    _print_actions(actions)
    changes = len(prepared.plan.changes)
    out.print(f"\n{changes} change(s) for sandbox {prepared.spec.name}" if changes
              else f"\nsandbox {prepared.spec.name} is up to date", markup=False)


def _print_actions(actions) -> None:
    # Plain columns, never truncated: names and tags are what people copy.
    rows = [("ACTION", "KIND", "NAME", "REASON")] + [(a.verb, a.kind, a.name, a.reason) for a in actions]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        out.print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}", markup=False)


@app.command()
@handled
def up(policy: Path = typer.Argument(..., help="The policy file."), ca_bundle: Optional[Path] = CA_BUNDLE,
       timeout: float = typer.Option(600, help="Seconds to wait for the backend and the UI to be ready."),
       then_verify: bool = typer.Option(False, "--verify", help="Run `sandbox verify` once it is up."),
       new_token: bool = typer.Option(False, "--new-token",
                                      help="Make a new access token; links and cookies given out before stop working."),
       relock: bool = typer.Option(False, "--relock",
                                   help="The policy changed on purpose: write its lock anew instead of refusing."),
       allowed_signers: Optional[Path] = ALLOWED_SIGNERS,
       as_json: bool = JSON):
    """Build and start the sandbox a policy (or a bundle) describes, wait until it answers, and print its URL.

    Running it again changes nothing unless the policy (or an image recipe) changed. A policy with a lock
    (POLICY.lock) must still resolve to what the lock pins. A bundle's images are loaded, never built."""
    from launcher.commands.up import up as run_up
    progress = Progress()
    try:
        result = run_up(_gateway(), policy, ca_bundle=ca_bundle, timeout=timeout, say=progress.say,
                        on_build_line=progress.build_line, hash_progress=progress.hashing, new_token=new_token,
                        relock=relock, allowed_signers=allowed_signers)
    except KeyboardInterrupt:
        progress.close()
        # Whatever had started keeps running: say so, and how to go on.
        name = _name_in(policy)
        err.print(printable(f"interrupted: sandbox {name} may be partly up. `sandbox up {policy}` finishes the "
                            f"job; `sandbox down {name}` removes what was started; `sandbox status {name}` shows it."),
                  markup=False)
        raise typer.Exit(130) from None
    finally:
        progress.close()
    checked = None
    if then_verify:
        from launcher.commands.verify import verify as run_verify
        checked = run_verify(_gateway(), result.name, ca_bundle=ca_bundle, say=progress.say)
        progress.close()
    if as_json:
        data = {"ok": checked is None or checked.ok, **result.to_dict()}
        if checked:
            data["verify"] = checked.to_dict()
        out.print_json(data=data)
    else:
        changes = len(result.prepared.plan.changes)
        out.print(f"sandbox {result.name} is up ({changes} change(s), {result.seconds['total']:.1f} s)",
                  markup=False)
        out.print(f"open {result.access_link}", markup=False)
        out.print("(the link is your key to this sandbox: `sandbox open` opens it in your browser)", markup=False)
        if checked:
            out.print("")
            _render_verify(checked, as_json=False)
    if checked and not checked.ok:
        raise typer.Exit(1)


@app.command("open")
@handled
def open_ui(target: Optional[str] = typer.Argument(None, help="Sandbox name or policy file; "
                                                              "may be left out when only one sandbox exists."),
            print_only: bool = typer.Option(False, "--print", help="Print the access link; open no browser.")):
    """Open a sandbox's UI in your browser, with its access link (which logs the browser in)."""
    from launcher.commands.open import access_link, open_in_browser
    name, link = access_link(_gateway(), target)
    if print_only:
        out.print(link, markup=False)
    elif open_in_browser(name, link):
        err.print(f"opened sandbox {name} in your browser", markup=False)
    else:
        err.print("no browser could be started here; open this link yourself (it is your key to the sandbox):",
                  markup=False)
        out.print(link, markup=False)


@app.command()
@handled
def verify(target: Optional[str] = typer.Argument(None, help="Sandbox name or policy file; "
                                                             "may be left out when only one sandbox exists."),
           ca_bundle: Optional[Path] = CA_BUNDLE, as_json: bool = JSON):
    """Attack a running sandbox from inside its front-end and print one line per attack of the threat
    model: PASS when it was stopped. Exits 1 if any attack got through."""
    from launcher.commands.verify import verify as run_verify
    progress = Progress()
    try:
        result = run_verify(_gateway(), target, ca_bundle=ca_bundle, say=progress.say)
    finally:
        progress.close()
    _render_verify(result, as_json)
    if not result.ok:
        raise typer.Exit(1)


def _render_verify(result, as_json: bool) -> None:
    from launcher.verify import FRONTEND_WORD
    if as_json:
        out.print_json(data=result.to_dict())
        return
    if result.drift:
        out.print(f"note: sandbox {result.name} differs from its policy; `sandbox up` would "
                  + "; ".join(result.drift), markup=False)
    width = max(len(r.attack) for r in result.rows)
    verdict_width = max(len(r.verdict) for r in result.rows)
    where = {r.attack: ", ".join(r.checked_by) for r in result.rows}
    where_width = max(len(w) for w in where.values())
    for r in result.rows:
        out.print(printable(f"{r.verdict:{verdict_width}}  {r.attack:<{width}}  {where[r.attack]:<{where_width}}  "
                            f"{r.result}"), markup=False)
    failed = [r.attack for r in result.rows if r.verdict == "FAIL"]
    unsettled = [r.attack for r in result.rows if r.verdict == "INCONCLUSIVE"]
    said = []
    if failed:
        said.append(f"{len(failed)} attack(s) got through: {', '.join(failed)}")
    if unsettled:
        said.append(f"{len(unsettled)} check(s) inconclusive, proving neither way: {', '.join(unsettled)}")
    out.print(f"\nsandbox {result.name}: " + ("; ".join(said) or "every attack was stopped"), markup=False)
    if any(FRONTEND_WORD in r.checked_by for r in result.rows):
        out.print(f"rows checked by the {FRONTEND_WORD} rest on what the front-end itself said", markup=False)


@app.command()
@handled
def audit(target: Optional[str] = typer.Argument(None, help="Sandbox name or policy file; "
                                                            "may be left out when only one sandbox exists."),
          since: Optional[str] = typer.Option(None, "--since", help="Only what happened since: 10m, 2h, 1d, or "
                                                                    "a time such as 2026-11-29T17:00."),
          follow: bool = typer.Option(False, "--follow", "-f", help="Then keep printing each new attempt."),
          as_json: bool = JSON):
    """Show what a sandbox's parts tried to reach: every outside name they looked up, every
    connection or datagram to an outside address with what it said (TLS server name, HTTP request),
    and every request the ingress refused (proxy requests, foreign Host or Origin, no access token).
    Nothing ever got out: the sink took each attempt. With `audit: connections` in the policy, names
    resolve to the sink, so the connections show what a part wanted to send.

    The records outlive the sandbox's containers until `sandbox down --volumes`."""
    from launcher.commands.audit import audit as run_audit
    from launcher.commands.audit import follow as follow_audit
    result = run_audit(_gateway(), target, since=_since(since) if since else None)
    if as_json and not follow:
        out.print_json(data=result)
        return
    if not as_json:
        _render_audit(result)
    if follow:
        if not as_json:
            err.print("following new attempts (Ctrl-C ends)", markup=False)
        try:
            for entry in follow_audit(_gateway(), result["name"]):
                if as_json:
                    out.print(json_text(entry, indent=None), markup=False)
                else:
                    when = time.strftime("%H:%M:%S", time.localtime(entry["time"]))
                    did = (f"{entry['protocol']} to {_destination(entry)}: {entry['said']}" if "protocol" in entry
                           else f"looked up {entry['name']} ({entry['type']})")
                    out.print(printable(f"  {when}  {entry['part']} {did}"), markup=False)
        except KeyboardInterrupt:
            pass


def _since(text: str) -> float:
    import datetime
    import re
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match:
        return time.time() - int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise SandboxError(f"--since {text!r}: give a duration (10m, 2h, 1d) or a time (2026-11-29T17:00)") from None


def _render_audit(result: dict) -> None:
    """What the parts tried while running first, the question `audit` is asked;
    then what its image builds used and contacted."""
    _render_running(result)
    _render_builds(result)


def _render_running(result: dict) -> None:
    if not result["names"] and not result["ingress_refused"] and not result["destinations"] \
            and not result["ingress_refused_from_parts"]:
        out.print(f"sandbox {result['name']}: nothing tried to get out while running", markup=False)
        return
    if result["names"]:
        out.print(f"sandbox {result['name']}: names looked up (the sink answered each; none resolved outside)",
                  markup=False)
    for n in result["names"]:
        answered = (f" -> the sink ({n['answer']})" if n.get("answer") else
                    " queries the sink could not read: refused" if n["name"] == "(malformed)" else ": no such name")
        out.print(printable(f"  {_times(n)}  {n['name']}{answered}  (by {', '.join(n['parts'])})"), markup=False)
    if result["destinations"]:
        out.print(f"sandbox {result['name']}: connections to outside (each ended at the sink; nothing was forwarded)",
                  markup=False)
    for d in result["destinations"]:
        out.print(printable(f"  {_times(d)}  {d['protocol']} {_destination(d)}  "
                            f"{'; '.join(d['said'])}  (by {', '.join(d['parts'])})"), markup=False)
        for body in d["bodies"][:3]:
            shown = body if len(body) <= 300 else body[:300] + f"... ({len(body)} characters kept; --json has them)"
            out.print(printable(f"           body: {shown}"), markup=False)
    for part, count in sorted(result.get("not_itemised", {}).items()):
        out.print(printable(f"  {count:5}x  more attempts by {part}, at new destinations past its own table "
                            f"in the sink's summary (counted, not itemised)"), markup=False)
    for part, count in sorted(result.get("dropped", {}).items()):
        out.print(printable(f"{part} tried faster than the sink records in detail: {count} detail record(s) not "
                            f"written"), markup=False)
    if result["names"] or result["destinations"]:
        out.print("counts are the sink's exact ones, except those marked \"at least\": rebuilt from its detail "
                  "records, which it writes at a bounded rate and turns over", markup=False)
        if result.get("not_counted"):
            out.print(result["not_counted"], markup=False)
    if result["ingress_refused"]:
        out.print("requests the ingress refused:", markup=False)
        for line in result["ingress_refused"]:
            out.print(printable(f"  {line}"), markup=False)
    if result["ingress_refused_from_parts"]:
        out.print("requests the parts sent to the ingress from inside (refused; the ingress is not theirs to use):",
                  markup=False)
        for r in result["ingress_refused_from_parts"]:
            out.print(printable(f"  {r['part']}: {r['line']}"), markup=False)


def _render_builds(result: dict) -> None:
    if result["builds"]:
        out.print(f"sandbox {result['name']}: the images its image builds used, and what they contacted "
                  f"(through the build proxy)",
                  markup=False)
        for build in result["builds"]:
            out.print(f"  {build['image']} ({', '.join(build['parts'])})", markup=False)
            for source in build.get("sources") or []:
                how = "pulled for it" if source.get("pulled") else "already on this machine"
                out.print(printable(f"    uses {source['image']} ({source['instruction']}, line {source['line']}): "
                                    f"{source['id']}, {how}"), markup=False)
            if not build.get("contacts"):
                out.print("    nothing", markup=False)
            for c in _contacts_by_destination(build.get("contacts") or []):
                detail = (f"{c['bytes_sent']} B sent, {c['bytes_received']} B received" if c["verdict"] == "allowed"
                          else c["reason"])
                out.print(printable(f"    {c['count']:4}x {c['verdict']:8} {c['host']}:{c['port']}  {detail}"),
                          markup=False)


def _times(counted: dict) -> str:
    """5x, or "at least 5x" where the count was rebuilt from detail records."""
    return f"at least {counted['count']}x" if counted.get("count_is_lower_bound") else f"{counted['count']:5}x"


def _destination(connection: dict) -> str:
    """api.ui.example:443 (198.18.3.4), or 203.0.113.7:443 for an attempt by address."""
    where = f"{connection.get('name') or connection['address']}:{connection['port']}"
    return f"{where} ({connection['address']})" if connection.get("name") else where


def _contacts_by_destination(contacts: list[dict]) -> list[dict]:
    """One line per verdict, host and port, with counts and bytes added up."""
    grouped: dict[tuple, dict] = {}
    for c in contacts:
        key = (c.get("verdict"), c.get("host"), c.get("port"), "" if c.get("verdict") == "allowed" else c.get("reason"))
        entry = grouped.setdefault(key, {"verdict": key[0], "host": key[1], "port": key[2], "reason": key[3] or "",
                                         "count": 0, "bytes_sent": 0, "bytes_received": 0})
        entry["count"] += 1
        entry["bytes_sent"] += c.get("bytes_sent") or 0
        entry["bytes_received"] += c.get("bytes_received") or 0
    return list(grouped.values())


@app.command()
@handled
def down(target: Optional[str] = typer.Argument(None, help="Sandbox name or policy file; "
                                                           "may be left out when only one sandbox exists."),
         volumes: bool = typer.Option(False, "--volumes", help="Also delete the front-end's data (chat history), the audit records "
                                                             "and the access token."),
         as_json: bool = JSON):
    """Stop and remove a sandbox. Its data and audit volumes are kept unless --volumes is given."""
    from launcher.commands.down import down as run_down
    progress = Progress()
    result = run_down(_gateway(), target, volumes=volumes, say=None if as_json else progress.say)
    if as_json:
        out.print_json(data={"ok": True, **result})
    elif result["removed"]:
        out.print(f"sandbox {result['name']} removed", markup=False)
    else:
        out.print(f"sandbox {result['name']}: nothing to remove", markup=False)


@app.command()
@handled
def status(target: Optional[str] = typer.Argument(None, help="Sandbox name or policy file; all when left out."),
           memory: bool = typer.Option(False, "--memory", help="Also show each part's memory use."),
           as_json: bool = JSON):
    """Show each sandbox's parts, their state and health, the URL of its UI and what its volumes hold.

    With --json, also its access token and link (for the user who started it)."""
    from launcher.commands.status import status as run_status
    from launcher.models.facts import gib
    sandboxes = run_status(_gateway(), target, memory=memory)
    if as_json:
        out.print_json(data={"sandboxes": sandboxes})
        return
    if not sandboxes:
        out.print("no sandboxes", markup=False)
    for s in sandboxes:
        out.print(f"sandbox {s['name']}: {'healthy' if s['healthy'] else 'NOT healthy'}  "
                  f"{s['url'] or '(no URL)'}  policy {s['policy']}", markup=False)
        signer = s.get("signed_by")
        if signer:
            who = signer.get("principal") or "a key not checked against allowed signers"
            out.print(printable(f"  signed by {who} ({signer.get('key')})"), markup=False)
        for problem in s["problems"]:
            out.print(printable(f"  {problem}"), markup=False)
        if s.get("attempts"):
            out.print(f"  {s['attempts']} attempt(s) to reach outside, all stopped: `sandbox audit {s['name']}`",
                      markup=False)
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("part", "state", "health", "restarts") + (("memory",) if memory else ()):
            table.add_column(column)
        for p in s["parts"]:
            row = [p["part"], p["state"], p.get("health") or "-", str(p.get("restarts", "-"))]
            if memory:
                mem = p.get("memory_bytes")
                row.append(f"{mem / 2**20:.0f} MiB" if mem else "-")
            table.add_row(*row)
        out.print(table)
        for v in s.get("volumes") or []:
            used = "?" if v["used_bytes"] is None else gib(v["used_bytes"])
            limit = f"of at most {gib(v['limit_bytes'])}" if v["limit_bytes"] else "no size limit"
            out.print(f"  volume {v['name']}: {used} used, {limit}", markup=False)
    if not all(s["healthy"] for s in sandboxes):
        raise typer.Exit(1)


@app.command()
@handled
def lock(policy: Path = typer.Argument(..., help="The policy file."), ca_bundle: Optional[Path] = CA_BUNDLE,
         as_json: bool = JSON):
    """Pin what a policy resolves to in POLICY.lock; `up` then refuses any drift from it.

    The lock holds the policy's sha256, each image's build inputs and ID, each model's sha256 and size,
    the schema and the launcher version. Missing images are built first. Review its diff like the policy's."""
    from launcher.commands.lock import lock as run_lock
    progress = Progress()
    try:
        path, locked, unsigned = run_lock(_gateway(), policy, ca_bundle, say=progress.say,
                                          on_build_line=progress.build_line, hash_progress=progress.hashing)
    finally:
        progress.close()
    if as_json:
        out.print_json(data={"ok": True, "lock_file": str(path), "lock": locked, "signature_removed": unsigned})
        return
    out.print(f"wrote {path}", markup=False)
    for part, image in locked["images"].items():
        out.print(f"  {part:<9} {image['tag']}  {image['id']}", markup=False)
    for model in locked["models"]:
        out.print(f"  model     {model['alias']}  sha256 {model['sha256']}  {model['size']} bytes", markup=False)
    if unsigned:
        err.print("its old signature no longer matched and was removed: `sandbox sign` it again", markup=False)


@app.command()
@handled
def sign(policy: Path = typer.Argument(..., help="The policy file (its lock must be current)."),
         key: Path = typer.Option(..., "--key", exists=True, dir_okay=False, resolve_path=True,
                                  help="Your SSH private key (or its .pub, with the key in ssh-agent)."),
         as_json: bool = JSON):
    """Sign a policy's lock, and with it the policy, with an SSH key (OpenSSH's format, as git uses).

    Writes POLICY.lock.sig. Commit it beside the policy and its lock."""
    from launcher.commands.lock import sign_policy
    signature, signer = sign_policy(policy, key)
    if as_json:
        out.print_json(data={"ok": True, "signature": str(signature), "key": signer.key})
        return
    out.print(f"wrote {signature} (signed with {signer.key})", markup=False)


@app.command("verify-signature")
@handled
def verify_signature(policy: Path = typer.Argument(..., help="The policy file."),
                     allowed_signers: Optional[Path] = ALLOWED_SIGNERS, as_json: bool = JSON):
    """Check that an allowed signer signed the policy's lock and that neither changed since.

    Exits 0 and names the signer, or exits 2 saying what is wrong. (`sandbox verify` attacks a running sandbox.)"""
    from launcher.commands.lock import verify_signature as run_verify_signature
    signer = run_verify_signature(policy, allowed_signers)
    if as_json:
        out.print_json(data={"ok": True, "signed_by": signer.to_dict()})
        return
    out.print(f"{policy}: signed by {signer.principal} ({signer.key})", markup=False)


@app.command()
@handled
def bundle(policy: Path = typer.Argument(..., help="The policy file (it must be locked)."),
           output: Path = typer.Option(..., "-o", "--output", dir_okay=False, help="The bundle file to write."),
           models: bool = typer.Option(False, "--models", help="Carry the model files too."),
           as_json: bool = JSON):
    """Write one file that carries a locked policy to a machine with no network.

    It holds the images, the policy, its lock and signature (and, with --models, the weights).
    `sandbox up FILE` there checks every hash, loads it and starts the sandbox without building or pulling."""
    from launcher.commands.bundle import make_bundle
    progress = Progress()
    started = time.monotonic()
    try:
        manifest = make_bundle(_gateway(), policy, output, models=models, say=None if as_json else progress.say)
    finally:
        progress.close()
    size = output.stat().st_size
    if as_json:
        out.print_json(data={"ok": True, "bundle": str(output), "bytes": size, "manifest": manifest})
        return
    out.print(f"wrote {output} ({size / 2**20:.0f} MiB, {time.monotonic() - started:.1f} s): "
              f"{len(manifest['files'])} files, sandbox {manifest['name']}", markup=False)


@app.command()
@handled
def render(policy: Path = typer.Argument(..., help="The policy file."),
           target: str = typer.Option(..., "--target", help="kubernetes or compose."),
           output: Optional[Path] = typer.Option(None, "-o", "--output", dir_okay=False,
                                                 help="Write here (readable by you only: it holds the "
                                                      "sandbox's secrets) instead of to standard output."),
           model_volume: str = typer.Option("models", "--model-volume",
                                            help="kubernetes: the PersistentVolumeClaim holding the model files."),
           image_prefix: str = typer.Option("", "--image-prefix",
                                            help="kubernetes: the registry path the cluster pulls the images "
                                                 "from, as registry.example.org/sandbox/."),
           gpus: int = typer.Option(0, "--gpus", min=0, help="GPUs for the backend (for gpu: auto or all)."),
           data_size: str = typer.Option("1Gi", "--data-size", help="kubernetes: the front-end's data volume.")):
    """Write the sandbox a policy describes for another engine: Kubernetes manifests or a compose file.

    The same spec as `sandbox up`, with the same isolation (docs/kubernetes.md). Fresh secrets each time."""
    from launcher.private import write_private
    from launcher.render import TARGETS
    from launcher.render import render as run_render
    if target not in TARGETS:
        raise SandboxError(f"--target must be one of {', '.join(TARGETS)}, not {target!r}")
    text, spec = run_render(policy, target, model_volume=model_volume, image_prefix=image_prefix, gpus=gpus,
                            data_size=data_size)
    if output is None:
        out.print(text, markup=False, end="")
        return
    write_private(output, text)
    token = spec.container("ingress").env_value("SANDBOX_ACCESS_TOKEN")
    port = spec.url.rsplit(":", 1)[1].strip("/")
    if target == "kubernetes":
        err.print(f"wrote {output}: `kubectl apply -f {output}`, then `kubectl -n sandbox-{spec.name} "
                  f"port-forward svc/ingress {port}:8080` and open {spec.url}?sandbox_token={token}", markup=False)
    else:
        err.print(f"wrote {output}: `docker-compose -p sandbox-{spec.name} -f {output} up -d`, then open "
                  f"{spec.url}?sandbox_token={token}", markup=False)


model_app = typer.Typer(help="Get models once, from a source you can name, and check them: pull, list, "
                             "verify, inspect.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("pull")
@handled
def model_pull(source: str = typer.Argument(..., help="hf://OWNER/REPO@REVISION/FILE.gguf, an https:// URL, "
                                                      "or a file on this machine."),
               sha256: Optional[str] = typer.Option(None, "--sha256", help="The sha256 the file must have."),
               policy: Optional[Path] = typer.Option(None, "--policy", exists=True, dir_okay=False,
                                                     help="Fill in this policy's model path and sha256 (keeping its "
                                                          "comments); its sha256, if any, is the one expected."),
               alias: Optional[str] = typer.Option(None, "--alias", help="Which of the policy's models."),
               name: Optional[str] = typer.Option(None, "--name", help="The file's name in the store."),
               max_size: Optional[str] = typer.Option(None, "--max-size",
                                                      help="The most a download may bring (e.g. 80g); 64g "
                                                           "if not given."),
               as_json: bool = JSON):
    """Download (or import) a GGUF model into the model store, check its sha256, and record where it came from.

    Prints every host it contacted. An interrupted download resumes; a file with the wrong sha256 is not kept."""
    from launcher.commands.model import PullError, pull
    from launcher.models.facts import gib
    from launcher.spec import memory_bytes
    cap = None
    if max_size is not None:
        try:
            cap = memory_bytes(max_size)
        except ValueError:
            raise PullError(f"--max-size {printable(max_size)!r}: a size such as 80g, 512m or 1000000") from None
    last = [0.0]

    def progress(done: int, total: int | None) -> None:
        if as_json or (time.monotonic() - last[0] < 2 and done != total):
            return
        last[0] = time.monotonic()
        share = f"{done * 100 // total}% of {gib(total)}" if total else gib(done)
        err.print(f"  {share}", markup=False)

    result = pull(source, sha256=sha256, policy=policy, alias=alias, name=name,
                  say=None if as_json else Progress().say, progress=progress, max_size=cap)
    if as_json:
        out.print_json(data={"ok": True, **result.to_dict()})
        return
    verb = "already in the store" if result.reused else f"pulled in {result.seconds:.1f} s"
    out.print(f"{result.path}: {verb}", markup=False)
    out.print(f"  sha256 {result.sha256}  {result.size} bytes", markup=False)
    out.print(f"  source {result.source}", markup=False)
    if result.provenance.get("commit"):
        out.print(f"  commit {result.provenance['commit']}", markup=False)
    contacted = result.contacts.requests
    out.print(f"  contacted: {'nothing' if not contacted else ''}", markup=False)
    for r in contacted:
        out.print(f"    {r['method']} {r['scheme']}://{r['host']}:{r['port']}{r['path']} -> {r['status']}",
                  markup=False)
    if result.policy_updated:
        out.print(f"  updated {result.policy_updated}", markup=False)


@model_app.command("list")
@handled
def model_list(as_json: bool = JSON):
    """The models in the store, with where each came from."""
    from launcher.commands.model import list_models
    from launcher.models.store import store_dir
    models = list_models()
    if as_json:
        out.print_json(data={"store": str(store_dir()), "models": models})
        return
    out.print(f"model store {store_dir()}", markup=False)
    if not models:
        out.print("  (empty: `sandbox model pull SOURCE`)", markup=False)
    for m in models:
        out.print(f"  {Path(m['path']).name}  {m['size']} bytes  sha256 {m['sha256'] or '(unknown)'}", markup=False)
        out.print(f"    from {m['source'] or '(no provenance)'}" + (f" at {m['commit']}" if m["commit"] else "")
                  + (f", {m['fetched_at']}" if m["fetched_at"] else ""), markup=False)


@model_app.command("verify")
@handled
def model_verify(files: Optional[List[Path]] = typer.Argument(None, help="Model files; all in the store if none."),
                 as_json: bool = JSON):
    """Hash models again, byte by byte, and compare with their recorded sha256. Exits 1 if any differs."""
    from launcher.commands.model import verify_models
    progress = Progress()
    results = verify_models([f.resolve() for f in files] if files else None,
                            progress=None if as_json else lambda n, d, t: progress.hashing(d, t, n))
    if as_json:
        out.print_json(data={"ok": all(r["ok"] for r in results), "models": results})
    else:
        for r in results:
            out.print(f"{r['path']}: {'ok' if r['ok'] else 'FAILED: ' + r['why']}", markup=False)
        if not results:
            out.print("no models to verify", markup=False)
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


@model_app.command("inspect")
@handled
def model_inspect(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A GGUF file."),
                  context: Optional[int] = typer.Option(None, "--context", min=1,
                                                        help="Context length to size the KV cache for "
                                                             "(default: the model's own)."),
                  memory: Optional[str] = typer.Option(None, "--memory", help="A memory limit to check, as 4g."),
                  as_json: bool = JSON):
    """What a GGUF file says of itself (without loading the weights), and the memory it needs."""
    from launcher.commands.model import inspect_model
    from launcher.models.facts import gib
    found = inspect_model(file, context, memory)
    if as_json:
        out.print_json(data=found)
        return
    f = found["facts"]
    # A model's text is the file's maker's: each on its own line, and short.
    rows = [("architecture", one_line(f["architecture"])), ("name", one_line(f["name"]) if f["name"] else "-"),
            ("parameters", f"{f['parameters'] / 1e9:.2f} B" if f["parameters"] >= 1e9 else
             f"{f['parameters'] / 1e6:.0f} M"),
            ("quantization", one_line(f["quantization"])), ("trained context", str(f["context_length"] or "-")),
            ("layers", str(f["layers"] or "-")), ("chat template", "yes" if f["chat_template"] else "no"),
            ("file", f"{gib(f['size_bytes'])}"), ("needs", found["describe"])]
    for key, value in rows:
        out.print(f"{key:<16} {value}", markup=False)
    machine = found["machine"]
    if machine["available_ram"]:
        out.print(f"{'free memory':<16} {gib(machine['available_ram'])}", markup=False)
    for gpu in machine["gpus"]:
        out.print(f"{'GPU':<16} {gpu['name']}: {gib(gpu['free'])} free of {gib(gpu['total'])}", markup=False)
    for warning in found["warnings"]:
        err.print(f"warning: {warning}", markup=False)


@app.command()
@handled
def logs(target: Optional[str] = typer.Argument(None, metavar="SANDBOX",
                                                help="Sandbox name or policy file; may be left out when only one "
                                                     "sandbox exists."),
         part: Optional[str] = typer.Argument(None, metavar="PART", help="dns, backend, frontend or ingress."),
         sandbox: Optional[str] = typer.Option(None, "--sandbox", "-s",
                                               help="The sandbox, as in `sandbox logs PART -s SANDBOX`."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
         tail: int = typer.Option(100, "--tail", "-n", help="Lines from the end to start with.")):
    """Print the log of one part of a sandbox: `sandbox logs SANDBOX PART`, or `sandbox logs PART` when only
    one sandbox exists."""
    from launcher.commands.logs import logs as run_logs
    from launcher.commands.logs import sandbox_and_part
    sandbox, part = sandbox_and_part(target, part, sandbox)
    try:
        for line in run_logs(_gateway(), part, sandbox, tail=tail, follow=follow):
            out.print(printable(line), markup=False)
    except KeyboardInterrupt:
        pass


@app.command()
@handled
def doctor(port: List[int] = typer.Option([8080], "--port", help="Host ports to check are free."),
           as_json: bool = JSON):
    """Check this machine: the Docker engine, the base image, GPU support, gVisor, volume sizes, free ports."""
    from launcher.commands.doctor import FAIL, doctor as run_doctor
    checks = run_doctor(_gateway, tuple(port))
    if as_json:
        out.print_json(data={"ok": all(c.result != FAIL for c in checks), "checks": [c.to_dict() for c in checks]})
    else:
        for c in checks:
            out.print(f"{c.result.upper():5} {c.name}: {c.detail}", markup=False)
            if c.fix and c.result != "ok":
                out.print(f"      fix: {c.fix}", markup=False)
    if any(c.result == FAIL for c in checks):
        raise typer.Exit(1)


def _terminated(signum, frame):
    # As for Ctrl-C: clean-ups in `finally` blocks run (a build's proxy and
    # network are removed) instead of the process vanishing mid-step.
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminated)
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
