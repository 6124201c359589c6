"""What the ingress's log filter (images/ingress/log-filter.awk) costs per
line as lines grow: nginx's one worker waits on it to take its output, so a
cost that grows with the square of a line's length stalls every client.
Runs it as start.sh does (mawk, the image's awk, where installed; LC_ALL=C)
on lines of 24 KB and of 240 KB of three kinds (bytes written as \\xNN, as a
refusal's fields are; %XX escapes, decoded each round; the token again and
again) and prints the CPU time per line of each and the ratio of the two:
about 10 where the cost grows with the length, about 100 where it grows
with its square (docs/benchmarks.md, "The ingress's log filter").

    python benchmarks/log_filter.py [--lines 10] [--filter PATH]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "b" * 43
KINDS = {
    "escaped bytes": "\\xFF",
    "%XX escapes": "x%41",
    "the token": TOKEN + "x",
}


def cpu_seconds(awk: str, program: Path, text: bytes) -> float:
    """The CPU time (user and system) the filter took over `text`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([awk, "-f", str(program)], input=text, stdout=subprocess.DEVNULL, check=True,
                   env={**os.environ, "LC_ALL": "C", "SANDBOX_ACCESS_TOKEN": TOKEN})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10, help="lines of each length per run")
    parser.add_argument("--filter", type=Path, default=ROOT / "images" / "ingress" / "log-filter.awk",
                        help="the awk program to measure (another version of it, to compare)")
    args = parser.parse_args()
    awk = shutil.which("mawk") or "awk"
    # What starting awk costs, taken from each run's.
    start = min(cpu_seconds(awk, args.filter, b"x\n" * args.lines) for _ in range(3))
    print(f"{awk} -f {args.filter}, {args.lines} lines a run; CPU time per line")
    for kind, unit in KINDS.items():
        costs = []
        for length in (24_000, 240_000):
            line = (unit * (length // len(unit) + 1))[:length].encode() + b"\n"
            spent = min(cpu_seconds(awk, args.filter, line * args.lines) for _ in range(3))
            costs.append(max(spent - start, 1e-6) / args.lines)
        print(f"  {kind:14} 24 KB: {costs[0] * 1000:8.2f} ms   240 KB: {costs[1] * 1000:8.2f} ms   "
              f"ratio {costs[1] / costs[0]:6.1f}")


if __name__ == "__main__":
    main()
