"""What `audit: connections` costs, side by side with the default
(`audit: lookups`): the quick-start sandbox in each mode, alternately, for
a few rounds. Prints, per mode, the median of: `up` from nothing until the UI
answers, the sink's memory once up, the time one lookup of a new outside
name takes from inside the front-end, and the sink's memory after the UI
has looked up 2,000 different names; then their ratio. Needs the engine,
the images (`sandbox up` once) and the model.

    python benchmarks/audit_modes.py [--rounds 3] [--names 2000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import MODEL, free_port  # noqa: E402
from launcher.commands.down import down  # noqa: E402
from launcher.commands.up import up  # noqa: E402
from launcher.engine import DockerGateway  # noqa: E402

MODES = ("lookups", "connections")
# Run in the front-end: look up `n` new names one after another, as a UI
# phoning home would; print the median seconds one lookup took.
LOOKUPS = """
import socket, statistics, sys, time, uuid
took = []
for i in range(int(sys.argv[1])):
    name = f"bench-{uuid.uuid4().hex[:12]}.example.com"
    start = time.perf_counter()
    try:
        socket.getaddrinfo(name, 443, socket.AF_INET)
    except socket.gaierror:
        pass
    took.append(time.perf_counter() - start)
print(statistics.median(took))
"""


def memory_mib(gateway: DockerGateway, container: str) -> float:
    return gateway.state.memory_usage(container) / 2**20


def one_round(gateway: DockerGateway, mode: str, names: int, directory: Path) -> dict:
    policy = yaml.safe_load((ROOT / "policies" / "quickstart.yaml").read_text())
    policy.update(name=f"bench-audit-{mode}", audit=mode)
    policy["ingress"]["port"] = free_port()
    policy["models"][0]["path"] = str(MODEL)
    path = directory / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(policy))
    sink, frontend = f"sandbox-{policy['name']}-dns", f"sandbox-{policy['name']}-frontend"
    down(gateway, policy["name"], volumes=True)
    started = time.monotonic()
    up(gateway, path)
    out = {"up_s": time.monotonic() - started}
    time.sleep(2)
    out["sink_mib"] = memory_mib(gateway, sink)
    _, output = gateway.containers.exec_in(frontend, ["python3", "-c", LOOKUPS, str(names)])
    out["lookup_ms"] = float(output.strip().splitlines()[-1]) * 1000
    out["sink_after_mib"] = memory_mib(gateway, sink)
    down(gateway, policy["name"], volumes=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--names", type=int, default=2000)
    args = parser.parse_args()
    gateway = DockerGateway()
    found: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as directory:
        for i in range(args.rounds):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):  # alternate, so neither always goes first
                found[mode].append(one_round(gateway, mode, args.names, Path(directory)))
                print(f"round {i + 1} {mode}: " + ", ".join(f"{k} {v:.2f}" for k, v in found[mode][-1].items()),
                      file=sys.stderr, flush=True)
    rows = [("`up` until the UI answers (s)", "up_s"), ("sink memory once up (MiB)", "sink_mib"),
            ("one lookup of a new name, from the UI (ms)", "lookup_ms"),
            (f"sink memory after {args.names} names (MiB)", "sink_after_mib")]
    print(f"| metric (median of {args.rounds}) | audit: lookups | audit: connections | ratio |")
    print("|---|---|---|---|")
    for label, key in rows:
        base = statistics.median(r[key] for r in found["lookups"])
        other = statistics.median(r[key] for r in found["connections"])
        print(f"| {label} | {base:.2f} | {other:.2f} | {other / base:.2f} |")


if __name__ == "__main__":
    main()
