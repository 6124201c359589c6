"""What a pull of the quick-start model costs, side by side with the plain
tools: `sandbox model pull` importing the file (copy + sha256), the same
from the local stand-in hub over loopback (HTTP, resolve + redirect +
download + sha256), `sha256sum` and `cp` of the same file. Rounds alternate
so that machine noise falls on all; prints the median time, the rate, and
the ratio to `sha256sum`. Needs the quick-start model (no engine, no network).

    python benchmarks/model_pull.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from launcher.commands.model import pull  # noqa: E402
from tests.support.fake_hub import FakeHub, HubFile  # noqa: E402

MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE = "hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@0123456789abcdef0123456789abcdef01234567/" + MODEL.name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not MODEL.is_file():
        sys.exit("the quick-start model is missing: bash scripts/fetch-quickstart-model.sh")
    data = MODEL.read_bytes()
    hub = FakeHub(files={SOURCE.removeprefix("hf://"): HubFile(data)}).start()
    os.environ.update(HF_ENDPOINT=hub.endpoint, XDG_CACHE_HOME=tempfile.mkdtemp())
    for proxy in ("http_proxy", "HTTP_PROXY", "no_proxy"):
        os.environ.pop(proxy, None)
    times: dict[str, list[float]] = {"sha256sum": [], "cp": [], "pull (import a file)": [],
                                     "pull (hub over loopback)": []}
    contacted = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            times["sha256sum"].append(_timed(lambda: subprocess.run(["sha256sum", str(MODEL)], check=True,
                                                                     capture_output=True)))
            times["cp"].append(_timed(lambda: shutil.copyfile(MODEL, scratch / "copy.gguf")))
            os.environ["SANDBOX_MODEL_DIR"] = str(scratch / "store-a")
            times["pull (import a file)"].append(_timed(lambda: pull(str(MODEL))))
            os.environ["SANDBOX_MODEL_DIR"] = str(scratch / "store-b")
            result = {}
            times["pull (hub over loopback)"].append(_timed(lambda: result.setdefault("r", pull(SOURCE))))
            contacted = result["r"].contacts.requests
    hub.stop()
    size = len(data)
    base = statistics.median(times["sha256sum"])
    print(f"{MODEL.name}: {size / 2**20:.0f} MiB, sha256 {hashlib.sha256(data).hexdigest()[:16]}..., "
          f"{args.rounds} rounds, median")
    print(f"{'':<26} {'seconds':>8} {'MiB/s':>8} {'vs sha256sum':>13}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<26} {median:>8.3f} {size / 2**20 / median:>8.0f} {median / base:>12.2f}x")
    print("the hub pull contacted:")
    for r in contacted:
        print(f"  {r['method']} {r['scheme']}://{r['host']}:{r['port']}{r['path']} -> {r['status']}")


def _timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
