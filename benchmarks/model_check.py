"""What the backend's check of its weights costs at each start: the backend
image's own check (`sandbox-backend check`: the sha256 of each model file
against the policy's) in a container with the file mounted read-only, side by
side with the same container and check given no model (the cost of starting
it at all), for the quick-start model and a large file made here (random
bytes: the hash's cost does not depend on them being a model). `sha256sum` of
the same file on the host is printed too. Rounds alternate so that machine
noise falls on all; the files are in the page cache, as a model just loaded or
written is. Needs the engine and the backend image (`sandbox up` once).

    python benchmarks/model_check.py [--rounds 5] [--large-gib 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import MODEL  # noqa: E402
from launcher.engine import DockerGateway  # noqa: E402
from launcher.images import recipe_image  # noqa: E402
from launcher.policy.files import sha256_of  # noqa: E402
from launcher.spec import NOBODY  # noqa: E402


def checked_start(client, image: str, model: Path | None, sha256: str | None) -> float:
    """Seconds from start to exit of the backend image's check, as a sandbox
    runs its backend (read-only root, no network, uid 65534), with `model`
    mounted where the backend finds it; None: a configuration of no models."""
    models = [{"model": "/models/m.gguf", "sha256": sha256, "model_alias": "m"}] if model else []
    container = client.containers.create(
        image, command=["check"], user=NOBODY, read_only=True, network_mode="none",
        environment={"SANDBOX_BACKEND_CONFIG": json.dumps({"models": models}), "SANDBOX_API_KEY": "bench"},
        volumes={str(model): {"bind": "/models/m.gguf", "mode": "ro"}} if model else {})
    try:
        started = time.perf_counter()
        container.start()
        code = container.wait()["StatusCode"]
        seconds = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"the check failed: {container.logs().decode(errors='replace')}")
        return seconds
    finally:
        container.remove(force=True)


def sha256sum(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--large-gib", type=float, default=2)
    args = parser.parse_args()
    if not MODEL.is_file():
        raise SystemExit("the quick-start model is missing: bash scripts/fetch-quickstart-model.sh")
    client = docker.from_env(timeout=600)
    ca = Path(os.environ["SANDBOX_CA_BUNDLE"]) if os.environ.get("SANDBOX_CA_BUNDLE") else None
    image = recipe_image("llama-cpp", ca_bundle=ca).tag
    if not DockerGateway(client).state.image_present(image):
        raise SystemExit(f"{image} is missing: run `sandbox up policies/quickstart.yaml` once first")
    with tempfile.TemporaryDirectory() as scratch:
        large = Path(scratch) / "large.bin"
        with open(large, "wb") as f:
            for _ in range(int(args.large_gib * 1024)):
                f.write(os.urandom(2**20))
        files = {"quick-start model": MODEL, f"{args.large_gib:g} GiB file": large}
        sums = {name: sha256_of(path) for name, path in files.items()}
        times: dict[str, dict[str, list[float]]] = {name: {"start": [], "check": [], "sha256sum": []}
                                                    for name in files}
        for _ in range(args.rounds):
            for name, path in files.items():
                times[name]["start"].append(checked_start(client, image, None, None))
                times[name]["check"].append(checked_start(client, image, path, sums[name]))
                times[name]["sha256sum"].append(sha256sum(path))
        print(f"{image}, {args.rounds} rounds, median seconds")
        print(f"{'file':<20} {'MiB':>6} {'no model':>9} {'check':>8} {'ratio':>6} {'added':>7} {'MiB/s':>6} "
              f"{'sha256sum':>10}")
        for name, path in files.items():
            mib = path.stat().st_size / 2**20
            start, check, host = (statistics.median(times[name][k]) for k in ("start", "check", "sha256sum"))
            print(f"{name:<20} {mib:>6.0f} {start:>9.2f} {check:>8.2f} {check / start:>6.2f} {check - start:>7.2f} "
                  f"{mib / max(check - start, 1e-3):>6.0f} {host:>10.2f}")


if __name__ == "__main__":
    main()
