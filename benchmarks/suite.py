"""The sandbox's costs in one command, each side by side with its baseline:

- streaming: time to first token and tokens/s of a streamed answer, from the
  bare backend (its own published port, no sandbox) and through the sandbox
  (ingress, access check, `chat` front-end, server-sent events);
- lifecycle: a warm `sandbox up` until the UI answers, and `sandbox down`,
  next to `docker-compose up -d` (Debian's, v1) until the UI answers and
  `docker-compose down`, of an equivalent compose file on the same images;
- the phases of `sandbox up` (prepare, apply, ready).

Needs the engine, the images (`sandbox up policies/quickstart.yaml` once),
the quick-start model and `docker-compose`. Prints a table; docs/benchmarks.md
keeps the last one.

    python benchmarks/suite.py [--requests 8] [--max-tokens 64] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import docker
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import MODEL, free_port, run_plain_backend, wait_for  # noqa: E402
from launcher.access import open_ui  # noqa: E402
from launcher.commands.down import down  # noqa: E402
from launcher.commands.up import up  # noqa: E402
from launcher.render.compose import render as compose_file  # noqa: E402
from launcher.engine import DockerGateway  # noqa: E402
from launcher.images import recipe_image  # noqa: E402

PROMPT = [{"role": "user", "content": "Write three sentences about the sea."}]


def stream_events(response) -> tuple[float | None, int, float]:
    """(seconds to the first piece, pieces, seconds to the end) of an SSE answer."""
    started, first, pieces = time.monotonic(), None, 0
    for line in response:
        line = line.strip()
        if not line.startswith(b"data:") or line == b"data: [DONE]":
            continue
        event = json.loads(line[5:])
        piece = event.get("delta") or ((event.get("choices") or [{}])[0].get("delta") or {}).get("content")
        if piece:
            pieces += 1
            first = first if first is not None else time.monotonic() - started
    return first, pieces, time.monotonic() - started


def measure(call, requests: int) -> dict:
    call()  # warm-up
    firsts, rates = [], []
    for _ in range(requests):
        first, pieces, total = call()
        firsts.append(first)
        rates.append(pieces / total)
    return {"ttft_ms": statistics.median(firsts) * 1000, "tokens_per_s": statistics.median(rates)}


def bare_backend(client, args) -> dict:
    image = recipe_image("llama-cpp").tag
    port = free_port()
    container = run_plain_backend(client, image, f"sandbox-bench-bare-{port}", port)
    try:
        auth = {"Authorization": "Bearer bench"}
        wait_for(f"http://127.0.0.1:{port}/v1/models", auth)
        body = json.dumps({"messages": PROMPT, "max_tokens": args.max_tokens, "stream": True}).encode()

        def call():
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json", **auth})
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=300) as r:
                return stream_events(r)
        return measure(call, args.requests)
    finally:
        container.remove(force=True)


def through_sandbox(result, args) -> dict:
    payload = {"messages": PROMPT, "max_tokens": args.max_tokens, "stream": True}

    def call():
        with open_ui(result.url + "api/chat", result.token, data=json.dumps(payload).encode(),
                     headers={"Content-Type": "application/json"}, timeout=300) as r:
            return stream_events(r)
    return measure(call, args.requests)


def lifecycle(gateway, args) -> dict:
    policy = yaml.safe_load((ROOT / "policies" / "quickstart.yaml").read_text())
    policy["models"][0]["path"] = str(MODEL)
    times: dict[str, list[float]] = {k: [] for k in ("sandbox up", "sandbox down", "compose up", "compose down",
                                                     "prepare", "apply", "ready")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            policy["name"] = f"bench-{free_port()}"
            policy["ingress"]["port"] = free_port()
            path = Path(tmp) / "bench.yaml"
            path.write_text(yaml.safe_dump(policy))
            started = time.monotonic()
            result = up(gateway, path)
            times["sandbox up"].append(time.monotonic() - started)
            for phase in ("prepare", "apply", "ready"):
                times[phase].append(result.seconds[phase])
            spec = result.prepared.spec
            started = time.monotonic()
            down(gateway, result.name, volumes=True)
            times["sandbox down"].append(time.monotonic() - started)

            # The same sandbox, by docker-compose, on the same images.
            project = Path(tmp) / "compose"
            project.mkdir(exist_ok=True)
            (project / "docker-compose.yml").write_text(yaml.safe_dump(compose_file(spec)))
            compose = ["docker-compose", "-p", f"cmp{free_port()}", "-f", str(project / "docker-compose.yml")]
            started = time.monotonic()
            subprocess.run([*compose, "up", "-d"], check=True, capture_output=True)
            deadline = time.monotonic() + 300
            while True:
                try:
                    with open_ui(spec.url + "health", result.token, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the compose project did not answer")
                time.sleep(0.05)
            times["compose up"].append(time.monotonic() - started)
            started = time.monotonic()
            subprocess.run([*compose, "down", "-v"], check=True, capture_output=True)
            times["compose down"].append(time.monotonic() - started)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("docker-compose"):
        raise SystemExit("docker-compose is needed for the baseline (Debian: apt-get install docker-compose)")
    client = docker.from_env()
    gateway = DockerGateway(client)
    bare = bare_backend(client, args)
    policy = yaml.safe_load((ROOT / "policies" / "quickstart.yaml").read_text())
    policy.update(name=f"bench-{free_port()}")
    policy["ingress"]["port"] = free_port()
    policy["models"][0]["path"] = str(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(policy))
        result = up(gateway, path)
        try:
            boxed = through_sandbox(result, args)
        finally:
            down(gateway, result.name, volumes=True)
    life = lifecycle(gateway, args)

    print(f"{'metric':<36}{'baseline':>12}{'sandbox':>12}{'ratio':>8}")
    rows = [("time to first token (ms), median", bare["ttft_ms"], boxed["ttft_ms"]),
            ("tokens/s streamed, median", bare["tokens_per_s"], boxed["tokens_per_s"]),
            ("warm up until the UI answers (s)", life["compose up"], life["sandbox up"]),
            ("down (s)", life["compose down"], life["sandbox down"])]
    for label, base, box in rows:
        print(f"{label:<36}{base:>12.2f}{box:>12.2f}{box / base:>8.2f}")
    print("baselines: the bare backend on its own port; docker-compose of the same containers and images")
    print("sandbox up phases (s, median): " + ", ".join(f"{p} {life[p]:.2f}" for p in ("prepare", "apply", "ready")))
    print(f"({args.requests} streamed answers of up to {args.max_tokens} tokens; {args.rounds} up/down rounds; "
          f"{os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
