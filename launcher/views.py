"""What the commands show people: text views of their results, the
consoles every output passes through (escaping what parts and builds
wrote), and the progress of long work."""
from __future__ import annotations

import shlex
import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from launcher.text import json_text, printable


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


def print_actions(actions) -> None:
    # Plain columns, never truncated: names and tags are what people copy.
    rows = [("ACTION", "KIND", "NAME", "REASON")] + [(a.verb, a.kind, a.name, a.reason) for a in actions]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        out.print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}", markup=False)


def render_verify(result, as_json: bool) -> None:
    from launcher.matrix import FRONTEND_WORD
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


def render_env(result: dict, as_json: bool) -> None:
    """`sandbox env`: lines a POSIX shell runs (`eval "$(sandbox env)"`)."""
    if as_json:
        out.print_json(data=result)
        return
    embeddings = f"; embedding model: {result['embedding_model']}" if result.get("embedding_model") else ""
    out.print(f"# sandbox {result['name']}'s API; models: {', '.join(result['models']) or 'none listed'}{embeddings}",
              markup=False)
    for key, value in result["env"].items():
        out.print(f"export {key}={shlex.quote(value)}", markup=False)


def render_audit(result: dict) -> None:
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
    from launcher.commands.audit import contacts_by_destination
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
            for c in contacts_by_destination(build.get("contacts") or []):
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


def followed_line(entry: dict) -> str:
    """One new lookup or connection, as `audit --follow` prints it."""
    when = time.strftime("%H:%M:%S", time.localtime(entry["time"]))
    did = (f"{entry['protocol']} to {_destination(entry)}: {entry['said']}" if "protocol" in entry
           else f"looked up {entry['name']} ({entry['type']})")
    return printable(f"  {when}  {entry['part']} {did}")


def api_call_lines(calls: list[dict]) -> list[str]:
    """The owner's API calls in `status`: a line per kind of client and model."""
    if not calls:
        return []
    total = sum(c["calls"] for c in calls)
    lines = [f"  {total} API call(s) at /v1/:"]
    for c in calls:
        model = "no model named" if c["model"] == "-" else f"model {c['model']}"
        failed = f" ({c['failed']} failed)" if c["failed"] else ""
        lines.append(f"    {c['calls']} from {c['client']}, {model}{failed}")
    return lines


def render_status(sandboxes: list[dict], memory: bool) -> None:
    from launcher.models.facts import gib
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
        if s.get("api_only"):
            out.print(f"  API only (no front-end): `sandbox env {s['name']}` for its address and token", markup=False)
        if s.get("attempts"):
            out.print(f"  {s['attempts']} attempt(s) to reach outside, all stopped: `sandbox audit {s['name']}`",
                      markup=False)
        for line in api_call_lines(s.get("api_calls") or []):
            out.print(printable(line), markup=False)
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("part", "state", "health", "restarts") + (("memory",) if memory else ()):
            table.add_column(column)
        for p in s["parts"]:
            health = p.get("health") or "-"
            if p.get("health_by") == "up":  # the engine's first check is still to come
                health += " (seen by up)"
            row = [p["part"], p["state"], health, str(p.get("restarts", "-"))]
            if memory:
                mem = p.get("memory_bytes")
                row.append(f"{mem / 2**20:.0f} MiB" if mem else "-")
            table.add_row(*row)
        out.print(table)
        for v in s.get("volumes") or []:
            used = "?" if v["used_bytes"] is None else gib(v["used_bytes"])
            limit = f"of at most {gib(v['limit_bytes'])}" if v["limit_bytes"] else "no size limit"
            out.print(f"  volume {v['name']}: {used} used, {limit}", markup=False)
