"""`sandbox audit`: what the parts of a sandbox tried to reach. Every name
they looked up outside the sandbox ended at its sink, which recorded it
(and, with the policy's `audit: connections`, answered with an address of
its own); every connection or datagram to an outside address ended there
too, recorded with what it said (the TLS server name, the HTTP request);
every request the ingress refused (a proxy request, a foreign Host or
Origin, no access token) was logged by it; and what each of its images'
builds contacted was recorded by the build proxy.

Names and destinations come from the sink's summary, one entry per part and
destination with its exact count, which no flood of other attempts can
rotate away; the detail records (each lookup and connection) rotate, and
past a part's rate the sink counts them without writing them."""
from __future__ import annotations

import datetime
import json
import re
import time
from typing import Iterator

from launcher import build_records
from launcher.commands.target import resolve_name
from launcher.engine import DockerGateway
from launcher.errors import NotFound, SandboxError
from launcher.spec import AUDIT_DIR, PARTS, resource_name
from launcher.text import json_records

# Logs are rotated (ContainerSpec.log_max_size); the audit reads at most this
# many of their last lines.
AUDIT_LINES = 100_000
# The ingress's refusals and its log of the owner's API calls, kept on the
# audit volume when its container goes (the file's name is from when it
# held refusals only).
INGRESS_KEPT = "ingress-refused.log"
REFUSED = "ingress: refused "
API_CALL = "ingress: api call "
KEPT_BYTES = 8 * 1024 * 1024


def _kept(gateway: DockerGateway, name: str, kind: str, key: str) -> list[dict]:
    """The sink's records of one kind on the audit volume, oldest first: they
    outlive its container until `down --volumes`."""
    sink = resource_name(name, "dns")
    out = []
    for file in (f"{kind}.1.jsonl", f"{kind}.jsonl"):
        data = gateway.containers.read_file(sink, f"{AUDIT_DIR}/{file}")
        if data:
            out += json_records(data.decode(errors="replace").splitlines(), key)
    return out


def lookups_kept(gateway: DockerGateway, name: str) -> list[dict]:
    return _kept(gateway, name, "lookups", "name")


def connections_kept(gateway: DockerGateway, name: str) -> list[dict]:
    """Every connection and datagram to an outside address, as the sink took them."""
    return _kept(gateway, name, "connections", "protocol")


# What no count can include: the sink's datagrams wait in the kernel's
# receive queue, which drops them, unseen, when a part sends faster than the
# sink reads.
NOT_COUNTED = ("DNS queries and UDP datagrams sent faster than the sink reads them are dropped by the kernel once "
               "the sink's receive queue is full: no count here includes them")

# As the sink keeps them: a name or destination this long at most (TEXT_KEPT in
# images/dns-sink/sink.py), so that detail records find their summary's entry.
TEXT_KEPT = 256


def summary_kept(gateway: DockerGateway, name: str) -> dict:
    """The sink's summary on the audit volume: its destinations (each with a
    client, kind, where, port, count, first and last time, what was said
    first and the first body kept), the attempts per client at destinations
    not itemised, and the detail records per client the rate bound dropped.
    Empty where there is none yet, or it cannot be read."""
    data = gateway.containers.read_file(resource_name(name, "dns"), f"{AUDIT_DIR}/summary.json")
    empty: dict = {"destinations": [], "more": {}, "dropped": {}}
    try:
        kept = json.loads(data) if data else empty
        destinations = [d for d in kept["destinations"] if _well_formed(d)]
        return {"destinations": destinations, "more": {str(k): int(v) for k, v in kept["more"].items()},
                "dropped": {str(k): int(v) for k, v in kept["dropped"].items()}}
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return empty


def _well_formed(entry) -> bool:
    return (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("client", "kind", "where"))
            and isinstance(entry.get("count"), int)
            and all(isinstance(entry.get(k), (int, float)) for k in ("first", "last")))


def _by_part(counts: dict[str, int], part_of_address: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for client, count in counts.items():
        part = part_of_address.get(client, client)
        out[part] = out.get(part, 0) + count
    return out


def _count(entry: dict, since: float | None, detail: dict[tuple, int]) -> tuple[int, bool]:
    """A summary entry's count, and whether it is exact: since a time after
    its first sighting, the detail records it has since then (at least the
    last sighting's one), the summary having no times between its first and
    last; a lower bound, the detail records being rate-bound and rotated."""
    if since is None or entry["first"] >= since:
        return entry["count"], True
    return max(1, detail.get((entry["client"], entry["kind"], entry["where"], entry["port"]), 0)), False


def attempts(gateway: DockerGateway, name: str) -> int:
    """How many times a part tried to reach outside (names looked up,
    connections and datagrams), as the sink counted."""
    data = gateway.containers.read_file(resource_name(name, "dns"), f"{AUDIT_DIR}/counts.json")
    try:
        counts = json.loads(data) if data else {}
        return int(counts.get("lookups", 0)) + int(counts.get("connections", 0))
    except (ValueError, TypeError, AttributeError, RecursionError):
        return 0


def parts_by_address(gateway: DockerGateway, name: str) -> dict[str, str]:
    """Each part's address on the sandbox's internal network, to name the
    client of a record."""
    internal = resource_name(name, "internal")
    out = {}
    for part in PARTS:
        try:
            address = gateway.state.addresses(resource_name(name, part)).get(internal)
        except NotFound:  # a part that is gone has no address to name
            continue
        if address:
            out[address] = part
    return out


def names_tried(gateway: DockerGateway, name: str, since: float | None = None,
                part_of_address: dict[str, str] | None = None,
                summary: dict | None = None) -> tuple[list[dict], list[dict]]:
    """The lookups kept in detail since `since`, and one entry per name
    from the summary, with its parts, count, and first and last time, most
    asked first."""
    part_of_address = parts_by_address(gateway, name) if part_of_address is None else part_of_address
    summary = summary_kept(gateway, name) if summary is None else summary
    kept = [entry for entry in lookups_kept(gateway, name) if since is None or entry.get("time", 0) >= since]
    detail: dict[tuple, int] = {}
    for entry in kept:
        key = (entry.get("client"), "lookup", str(entry["name"])[:TEXT_KEPT], None)
        detail[key] = detail.get(key, 0) + 1
    names: dict[str, dict] = {}
    for entry in summary["destinations"]:
        if entry["kind"] != "lookup" or (since is not None and entry["last"] < since):
            continue
        seen = names.setdefault(entry["where"], {"name": entry["where"], "parts": set(), "count": 0,
                                                 "count_is_lower_bound": False, "answer": None,
                                                 "first": entry["first"], "last": entry["last"]})
        seen["parts"].add(part_of_address.get(entry["client"], entry["client"]))
        count, exact = _count(entry, since, detail)
        seen["count"] += count
        seen["count_is_lower_bound"] |= not exact
        seen["answer"] = seen["answer"] or entry.get("address")
        seen["first"], seen["last"] = min(seen["first"], entry["first"]), max(seen["last"], entry["last"])
    for entry in kept:  # the last second's, not summed up yet, or past a part's table: at least this many
        if str(entry["name"])[:TEXT_KEPT] not in names:
            seen = names.setdefault(f"detail:{entry['name']}", {"name": entry["name"], "parts": set(), "count": 0,
                                                                "count_is_lower_bound": True,
                                                                "answer": None, "first": entry.get("time"),
                                                                "last": entry.get("time")})
            seen["parts"].add(part_of_address.get(entry.get("client"), entry.get("client")))
            seen["count"] += 1
            seen["answer"] = seen["answer"] or entry.get("answer")
            seen["last"] = entry.get("time")
    summary_names = [{**n, "parts": sorted(n["parts"])} for n in sorted(names.values(), key=lambda n: -n["count"])]
    return [_lookup(entry, part_of_address) for entry in kept], summary_names


def audit(gateway: DockerGateway, target: str | None = None, since: float | None = None) -> dict:
    name = resolve_name(gateway, target, "audit")
    builds = []
    for part in PARTS:
        state = gateway.state.container_state(resource_name(name, part))
        record = build_records.load(state["image"]) if state else None
        if record and record["image"] not in [b["image"] for b in builds]:
            builds.append({**record, "parts": [part]})
        elif record:
            next(b for b in builds if b["image"] == record["image"])["parts"].append(part)
    part_of_address = parts_by_address(gateway, name)
    summary = summary_kept(gateway, name)
    lookups, names = names_tried(gateway, name, since, part_of_address, summary)
    refused = [line.partition(" ")[2].removeprefix("ingress: ") for line in ingress_refusals(gateway, name)
               if since is None or _when(line.partition(" ")[0]) >= since]
    from_host, from_parts = refusals_by_sender(refused, part_of_address)
    kept = [entry for entry in connections_kept(gateway, name) if since is None or entry.get("time", 0) >= since]
    return {"name": name, "names": names, "lookups": lookups, "ingress_refused": from_host,
            "ingress_refused_from_parts": from_parts, "builds": builds,
            "destinations": destinations(summary, part_of_address, since, kept),
            "connections": [_connection(entry, part_of_address) for entry in kept],
            "not_itemised": _by_part(summary["more"], part_of_address),
            "dropped": _by_part(summary["dropped"], part_of_address), "not_counted": NOT_COUNTED}


def refusals_by_sender(lines: list[str], part_of_address: dict[str, str]) -> tuple[list[str], list[dict]]:
    """The ingress's refusals of requests from the host (browsers, local
    programs), apart from those a part of the sandbox sent from inside, each
    labelled as that part's: a part must not pass its own requests off as a
    browser's cross-site attempts. The ingress listens on no address inside
    (images/ingress/start.sh), so the second list stays empty unless that
    wall is broken."""
    from_host, from_parts = [], []
    for line in lines:
        # The last " peer=" is the ingress's own field (a request's text
        # comes before it), followed only by the refusal's nth=.
        peer = line.rpartition(" peer=")[2].partition(" ")[0] if " peer=" in line else ""
        if peer in part_of_address:
            from_parts.append({"part": part_of_address[peer], "line": line})
        else:
            from_host.append(line)
    return from_host, from_parts


def _logged_refusals(gateway: DockerGateway, name: str) -> list[str]:
    """The refusals and API calls in the ingress container's log, each line
    beginning with the engine's timestamp."""
    try:
        lines = gateway.containers.logs(resource_name(name, "ingress"), tail=AUDIT_LINES, timestamps=True)
        return [line for line in lines if line.partition(" ")[2].startswith((REFUSED, API_CALL))]
    except NotFound:
        return []


def _kept_refusals(gateway: DockerGateway, name: str) -> list[str]:
    data = gateway.containers.read_file(resource_name(name, "dns"), f"{AUDIT_DIR}/{INGRESS_KEPT}")
    return data.decode(errors="replace").splitlines() if data else []


def _when(timestamp: str) -> float:
    """Seconds since the epoch of the engine's log timestamp
    (2026-11-29T20:55:01.123456789Z); 0 for anything else."""
    try:
        return datetime.datetime.fromisoformat(timestamp[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0


def _ingress_lines(gateway: DockerGateway, name: str, kind: str) -> list[str]:
    """The ingress's lines of one kind (REFUSED, API_CALL), oldest first,
    timestamped: those kept on the audit volume from its earlier
    containers, then its log's."""
    kept = _kept_refusals(gateway, name)
    return [line for line in kept + _not_kept_yet(gateway, name, kept) if line.partition(" ")[2].startswith(kind)]


def ingress_refusals(gateway: DockerGateway, name: str) -> list[str]:
    """Every request the ingress refused, oldest first, timestamped."""
    return _ingress_lines(gateway, name, REFUSED)


# What the ingress logs of each of the owner's API calls (images/ingress/
# nginx.conf.template): the route, a kind of client, the model asked for and
# the status, never what was asked or answered.
API_CALL_FIELDS = ("route", "client", "model", "status")


def api_call(line: str) -> dict | None:
    """One API call's fields, from its log line (with or without the
    engine's timestamp before it); None for any other line, or one whose
    fields are not all there, each once and in their order."""
    text = line if line.startswith(API_CALL) else line.partition(" ")[2]
    text = text if text.startswith(API_CALL) else ""
    fields = text.removeprefix(API_CALL).split(" ")
    pairs = [field.partition("=") for field in fields]
    if not text or [key for key, _, _ in pairs] != list(API_CALL_FIELDS) or not all(sep for _, sep, _ in pairs):
        return None
    call = {key: value for key, _, value in pairs}
    return call if call["status"].isascii() and call["status"].isdigit() else None


def count_api_calls(lines: list[str]) -> list[dict]:
    """The owner's API calls counted by kind of client and model, most
    first: how many, and how many of them failed (a status of 400 or more)."""
    counts: dict[tuple[str, str], dict] = {}
    for line in lines:
        call = api_call(line)
        if call is None:
            continue
        entry = counts.setdefault((call["client"], call["model"]), {"client": call["client"], "model": call["model"],
                                                                    "calls": 0, "failed": 0})
        entry["calls"] += 1
        entry["failed"] += int(call["status"]) >= 400
    return sorted(counts.values(), key=lambda e: (-e["calls"], e["client"], e["model"]))


def api_calls(gateway: DockerGateway, name: str) -> list[dict]:
    """The owner's calls to the API at the front door (/v1/), counted by
    kind of client and model, since the sandbox's audit volume was made."""
    return count_api_calls(_ingress_lines(gateway, name, API_CALL))


def _not_kept_yet(gateway: DockerGateway, name: str, kept: list[str]) -> list[str]:
    """The refusals in the ingress's log after the last one kept."""
    last = kept[-1].partition(" ")[0] if kept else ""
    return [line for line in _logged_refusals(gateway, name) if line.partition(" ")[0] > last]


def keep_ingress_refusals(gateway: DockerGateway, name: str) -> None:
    """Before the ingress container goes (`down`, or `up` recreating it),
    its refusals and API calls go onto the audit volume, which outlives it like the sink's
    own records, until `down --volumes`; the oldest go past KEPT_BYTES."""
    if gateway.state.container_state(resource_name(name, "dns")) is None:
        return  # no sink, no volume to keep them on
    kept = _kept_refusals(gateway, name)
    new = _not_kept_yet(gateway, name, kept)
    if not new:
        return
    data = "".join(line + "\n" for line in kept + new).encode()
    if len(data) > KEPT_BYTES:
        data = data[-KEPT_BYTES:].partition(b"\n")[2]
    gateway.containers.write_file(resource_name(name, "dns"), f"{AUDIT_DIR}/{INGRESS_KEPT}", data)


def _connection(entry: dict, part_of_address: dict[str, str]) -> dict:
    """A connection the sink took, with its name when the sink had given
    that address for one (`audit: connections`), and what it said, in a line."""
    return {"time": entry.get("time"), "part": part_of_address.get(entry.get("client"), entry.get("client")),
            "protocol": entry.get("protocol"), "name": entry.get("name"), "address": entry.get("address"),
            "port": entry.get("port"), "said": _said(entry),
            **{k: entry[k] for k in ("tls_server_name", "http", "malformed") if k in entry}}


def _said(said: dict) -> str:
    """What a connection said, in a line: from a detail record, or from what
    the summary kept of the first one."""
    http = said.get("http") or {}
    return (f"TLS to {said['tls_server_name']}" if said.get("tls_server_name") is not None else
            f"{http.get('method')} http://{http.get('host') or said.get('address')}{http.get('path')} "
            f"({http.get('body_bytes')} B body)" if http else
            f"malformed ({said['malformed']}): {said.get('first_line') or said.get('first_bytes') or ''}"
            if said.get("malformed") else
            f"not read: {said['unread']}" if said.get("unread") else
            f"{said.get('bytes', 0)} B" if said.get("bytes") else "nothing")


def destinations(summary: dict, part_of_address: dict[str, str], since: float | None = None,
                 kept: list[dict] | None = None) -> list[dict]:
    """One entry per protocol, destination (the name when there is one, else
    the address) and port, from the sink's summary: exact counts, the parts
    that went there, what was said there first, first and last time, and the
    first body of a plain-HTTP request the sink kept from each part."""
    detail: dict[tuple, int] = {}
    for c in kept or []:
        key = (c.get("client"), c.get("protocol"), str(c.get("name") or c.get("address") or "(unknown)")[:TEXT_KEPT],
               c.get("port"))
        detail[key] = detail.get(key, 0) + 1
    grouped: dict[tuple, dict] = {}
    for d in summary["destinations"]:
        if d["kind"] not in ("tcp", "udp") or (since is not None and d["last"] < since):
            continue
        address = d.get("address")
        name = d["where"] if d["where"] != address and address else None
        said = d.get("said") if isinstance(d.get("said"), dict) else {}
        entry = grouped.setdefault((d["kind"], d["where"], d["port"]), {
            "protocol": d["kind"], "name": name, "address": address, "port": d["port"], "count": 0,
            "count_is_lower_bound": False, "parts": set(), "said": set(), "bodies": [], "first": d["first"],
            "last": d["last"]})
        count, exact = _count(d, since, detail)
        entry["count"] += count
        entry["count_is_lower_bound"] |= not exact
        entry["parts"].add(part_of_address.get(d["client"], d["client"]))
        entry["said"].add(_said({**said, "address": address}))
        entry["first"], entry["last"] = min(entry["first"], d["first"]), max(entry["last"], d["last"])
        if d.get("body") and d["body"] not in entry["bodies"]:
            entry["bodies"].append(d["body"])
    summed = set(grouped)
    for c in kept or []:  # the last second's, not summed up yet, or past a part's table: at least this many
        where = str(c.get("name") or c.get("address") or "(unknown)")[:TEXT_KEPT]
        if (c.get("protocol"), where, c.get("port")) in summed:
            continue
        entry = grouped.setdefault(("detail", c.get("protocol"), where, c.get("port")), {
            "protocol": c.get("protocol"), "name": c.get("name"), "address": c.get("address"), "port": c.get("port"),
            "count": 0, "count_is_lower_bound": True, "parts": set(), "said": set(), "bodies": [],
            "first": c.get("time"), "last": c.get("time")})
        entry["count"] += 1
        entry["parts"].add(part_of_address.get(c.get("client"), c.get("client")))
        entry["said"].add(_said(c))
        entry["last"] = c.get("time")
        body = (c.get("http") or {}).get("body")
        if body and body not in entry["bodies"]:
            entry["bodies"].append(body)
    return [{**e, "parts": sorted(e["parts"]), "said": sorted(e["said"])}
            for e in sorted(grouped.values(), key=lambda e: -e["count"])]


def _lookup(entry: dict, part_of_address: dict[str, str]) -> dict:
    return {"time": entry["time"], "part": part_of_address.get(entry["client"], entry["client"]),
            "name": entry["name"], "type": entry["type"], "answer": entry.get("answer")}


def follow(gateway: DockerGateway, target: str | None = None) -> Iterator[dict]:
    """Each new lookup and connection as the sink takes it, until
    interrupted: a lookup has "name" and "type", a connection "protocol"."""
    name = resolve_name(gateway, target, "audit --follow")
    part_of_address = parts_by_address(gateway, name)
    for entry in json_records(gateway.containers.logs(resource_name(name, "dns"), tail=0, follow=True), "time"):
        if "protocol" in entry:
            yield _connection(entry, part_of_address)
        elif "type" in entry:
            yield _lookup(entry, part_of_address)


def contacts_by_destination(contacts: list[dict]) -> list[dict]:
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


def since_time(text: str) -> float:
    """The time `--since` names: a duration back from now (10m, 2h, 1d) or a time."""
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match:
        return time.time() - int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise SandboxError(f"--since {text!r}: give a duration (10m, 2h, 1d) or a time (2026-11-29T17:00)") from None
