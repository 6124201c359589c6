"""`sandbox audit`: what the parts of a sandbox tried to reach. Every name
they looked up outside the sandbox ended at its sink, which recorded it
(and, with the policy's `audit: connections`, answered with an address of
its own); every connection or datagram to an outside address ended there
too, recorded with what it said (the TLS server name, the HTTP request);
every request the ingress refused (a proxy request, a foreign Host or
Origin, no access token) was logged by it; and what each of its images'
builds contacted was recorded by the build proxy."""
from __future__ import annotations

import datetime
import json
from typing import Iterator

from launcher import build_records
from launcher.commands.target import resolve_name
from launcher.docker_gateway import DockerGateway
from launcher.errors import NotFound
from launcher.spec import AUDIT_DIR, PARTS, resource_name
from launcher.text import json_records

# Logs are rotated (ContainerSpec.log_max_size); the audit reads at most this
# many of their last lines.
AUDIT_LINES = 100_000
# The ingress's refusals, kept on the audit volume when its container goes.
INGRESS_KEPT = "ingress-refused.log"
KEPT_BYTES = 8 * 1024 * 1024


def _kept(gateway: DockerGateway, name: str, kind: str, key: str) -> list[dict]:
    """The sink's records of one kind on the audit volume, oldest first: they
    outlive its container until `down --volumes`."""
    sink = resource_name(name, "dns")
    out = []
    for file in (f"{kind}.1.jsonl", f"{kind}.jsonl"):
        data = gateway.read_file(sink, f"{AUDIT_DIR}/{file}")
        if data:
            out += json_records(data.decode(errors="replace").splitlines(), key)
    return out


def lookups_kept(gateway: DockerGateway, name: str) -> list[dict]:
    return _kept(gateway, name, "lookups", "name")


def connections_kept(gateway: DockerGateway, name: str) -> list[dict]:
    """Every connection and datagram to an outside address, as the sink took them."""
    return _kept(gateway, name, "connections", "protocol")


def attempts(gateway: DockerGateway, name: str) -> int:
    """How many times a part tried to reach outside (names looked up,
    connections and datagrams), as the sink counted."""
    data = gateway.read_file(resource_name(name, "dns"), f"{AUDIT_DIR}/counts.json")
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
            address = gateway.addresses(resource_name(name, part)).get(internal)
        except NotFound:  # a part that is gone has no address to name
            continue
        if address:
            out[address] = part
    return out


def names_tried(gateway: DockerGateway, name: str, since: float | None = None,
                part_of_address: dict[str, str] | None = None) -> tuple[list[dict], list[dict]]:
    """The lookups since `since`, and one entry per name with its parts and
    count, most asked first."""
    part_of_address = parts_by_address(gateway, name) if part_of_address is None else part_of_address
    lookups = [_lookup(entry, part_of_address) for entry in lookups_kept(gateway, name)
               if since is None or entry.get("time", 0) >= since]
    names: dict[str, dict] = {}
    for entry in lookups:
        seen = names.setdefault(entry["name"], {"name": entry["name"], "parts": set(), "count": 0, "answer": None})
        seen["parts"].add(entry["part"])
        seen["count"] += 1
        seen["answer"] = entry.get("answer") or seen["answer"]
    summary = [{**n, "parts": sorted(n["parts"])} for n in sorted(names.values(), key=lambda n: -n["count"])]
    return lookups, summary


def audit(gateway: DockerGateway, target: str | None = None, since: float | None = None) -> dict:
    name = resolve_name(gateway, target)
    builds = []
    for part in PARTS:
        state = gateway.container_state(resource_name(name, part))
        record = build_records.load(state["image"]) if state else None
        if record and record["image"] not in [b["image"] for b in builds]:
            builds.append({**record, "parts": [part]})
        elif record:
            next(b for b in builds if b["image"] == record["image"])["parts"].append(part)
    part_of_address = parts_by_address(gateway, name)
    lookups, summary = names_tried(gateway, name, since, part_of_address)
    refused = [line.partition(" ")[2].removeprefix("ingress: ") for line in ingress_refusals(gateway, name)
               if since is None or _when(line.partition(" ")[0]) >= since]
    from_host, from_parts = refusals_by_sender(refused, part_of_address)
    caught = [_connection(entry, part_of_address) for entry in connections_kept(gateway, name)
              if since is None or entry.get("time", 0) >= since]
    return {"name": name, "names": summary, "lookups": lookups, "ingress_refused": from_host,
            "ingress_refused_from_parts": from_parts, "builds": builds,
            "destinations": destinations(caught), "connections": caught}


def refusals_by_sender(lines: list[str], part_of_address: dict[str, str]) -> tuple[list[str], list[dict]]:
    """The ingress's refusals of requests from the host (browsers, local
    programs), apart from those a part of the sandbox sent from inside, each
    labelled as that part's: a part must not pass its own requests off as a
    browser's cross-site attempts. The ingress listens on no address inside
    (images/ingress/start.sh), so the second list stays empty unless that
    wall is broken."""
    from_host, from_parts = [], []
    for line in lines:
        peer = line.rpartition(" peer=")[2] if " peer=" in line else ""
        if peer in part_of_address:
            from_parts.append({"part": part_of_address[peer], "line": line})
        else:
            from_host.append(line)
    return from_host, from_parts


def _logged_refusals(gateway: DockerGateway, name: str) -> list[str]:
    """The refusals in the ingress container's log, each line beginning with
    the engine's timestamp."""
    try:
        lines = gateway.logs(resource_name(name, "ingress"), tail=AUDIT_LINES, timestamps=True)
        return [line for line in lines if line.partition(" ")[2].startswith("ingress: refused ")]
    except NotFound:
        return []


def _kept_refusals(gateway: DockerGateway, name: str) -> list[str]:
    data = gateway.read_file(resource_name(name, "dns"), f"{AUDIT_DIR}/{INGRESS_KEPT}")
    return data.decode(errors="replace").splitlines() if data else []


def _when(timestamp: str) -> float:
    """Seconds since the epoch of the engine's log timestamp
    (2026-11-29T20:55:01.123456789Z); 0 for anything else."""
    try:
        return datetime.datetime.fromisoformat(timestamp[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0


def ingress_refusals(gateway: DockerGateway, name: str) -> list[str]:
    """Every request the ingress refused, oldest first, timestamped: those
    kept on the audit volume from its earlier containers, then its log's."""
    kept = _kept_refusals(gateway, name)
    return kept + _not_kept_yet(gateway, name, kept)


def _not_kept_yet(gateway: DockerGateway, name: str, kept: list[str]) -> list[str]:
    """The refusals in the ingress's log after the last one kept."""
    last = kept[-1].partition(" ")[0] if kept else ""
    return [line for line in _logged_refusals(gateway, name) if line.partition(" ")[0] > last]


def keep_ingress_refusals(gateway: DockerGateway, name: str) -> None:
    """Before the ingress container goes (`down`, or `up` recreating it),
    its refusals go onto the audit volume, which outlives it like the sink's
    own records, until `down --volumes`; the oldest go past KEPT_BYTES."""
    if gateway.container_state(resource_name(name, "dns")) is None:
        return  # no sink, no volume to keep them on
    kept = _kept_refusals(gateway, name)
    new = _not_kept_yet(gateway, name, kept)
    if not new:
        return
    data = "".join(line + "\n" for line in kept + new).encode()
    if len(data) > KEPT_BYTES:
        data = data[-KEPT_BYTES:].partition(b"\n")[2]
    gateway.write_file(resource_name(name, "dns"), f"{AUDIT_DIR}/{INGRESS_KEPT}", data)


def _connection(entry: dict, part_of_address: dict[str, str]) -> dict:
    """A connection the sink took, with its name when the sink had given
    that address for one (`audit: connections`), and what it said, in a line."""
    said = (f"TLS to {entry['tls_server_name']}" if entry.get("tls_server_name") else
            f"{entry['http']['method']} http://{entry['http'].get('host') or entry.get('address')}"
            f"{entry['http']['path']} ({entry['http']['body_bytes']} B body)" if entry.get("http") else
            f"not read: {entry['unread']}" if entry.get("unread") else
            f"{entry.get('bytes', 0)} B" if entry.get("bytes") else "nothing")
    return {"time": entry.get("time"), "part": part_of_address.get(entry.get("client"), entry.get("client")),
            "protocol": entry.get("protocol"), "name": entry.get("name"), "address": entry.get("address"),
            "port": entry.get("port"), "said": said, **{k: entry[k] for k in ("tls_server_name", "http") if k in entry}}


def destinations(connections: list[dict]) -> list[dict]:
    """One entry per protocol, destination (the name when there is one, else
    the address) and port, with what was said there, counts, and the bodies
    of plain-HTTP requests the sink kept."""
    grouped: dict[tuple, dict] = {}
    for c in connections:
        key = (c["protocol"], c.get("name") or c["address"], c["port"])
        entry = grouped.setdefault(key, {"protocol": c["protocol"], "name": c.get("name"), "address": c["address"],
                                         "port": c["port"], "count": 0, "parts": set(), "said": set(),
                                         "bodies": []})
        entry["count"] += 1
        entry["parts"].add(c["part"])
        entry["said"].add(c["said"])
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
    name = resolve_name(gateway, target)
    part_of_address = parts_by_address(gateway, name)
    for entry in json_records(gateway.logs(resource_name(name, "dns"), tail=0, follow=True), "time"):
        if "protocol" in entry:
            yield _connection(entry, part_of_address)
        elif "type" in entry:
            yield _lookup(entry, part_of_address)
