"""What the sandbox costs, side by side with a baseline: the same backend image
and model run plainly (published port, no hardening, no internal network, no
relay, no front-end), against the quick-start sandbox answering through its
ingress and front-end. Prints start-up time, tokens/s and memory for both and
their ratio. Needs the engine, the images (`sandbox up` once) and the model.

    python benchmarks/overhead.py [--requests 8] [--max-tokens 64]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import docker
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from launcher.commands.down import down  # noqa: E402
from launcher.commands.up import up  # noqa: E402
from launcher.engine import DockerGateway  # noqa: E402
from launcher.images import recipe_image  # noqa: E402
from launcher.policy.files import sha256_of  # noqa: E402

MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = [{"role": "user", "content": "Write three sentences about the sea."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, headers: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


def wait_for(url: str, headers: dict | None = None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def tokens_per_second(call, requests: int) -> float:
    call()  # warm-up: the first answer fills caches
    rates = []
    for _ in range(requests):
        started = time.monotonic()
        tokens = call()
        rates.append(tokens / (time.monotonic() - started))
    return statistics.median(rates)


def memory_mib(client, name: str) -> float:
    return client.api.stats(name, stream=False)["memory_stats"]["usage"] / 2**20


def run_plain_backend(client, image: str, name: str, port: int):
    """The backend image run plainly: published on 127.0.0.1:port, key "bench",
    the quick-start model (which it checks at start, as in a sandbox), two
    CPUs; none of the sandbox around it."""
    config = {"host": "0.0.0.0", "port": 8000, "api_key": "bench",
              "models": [{"model": "/models/m.gguf", "sha256": sha256_of(MODEL), "model_alias": "smollm2",
                          "n_ctx": 2048, "n_threads": 2}]}
    return client.containers.run(
        image, detach=True, name=name, ports={"8000/tcp": ("127.0.0.1", port)},
        environment={"SANDBOX_BACKEND_CONFIG": json.dumps(config), "SANDBOX_API_KEY": "bench"},
        volumes={str(MODEL): {"bind": "/models/m.gguf", "mode": "ro"}}, nano_cpus=2 * 10**9)


def baseline(client, image: str, args) -> dict:
    port = free_port()
    started = time.monotonic()
    container = run_plain_backend(client, image, f"sandbox-bench-baseline-{port}", port)
    try:
        auth = {"Authorization": "Bearer bench"}
        wait_for(f"http://127.0.0.1:{port}/v1/models", auth)
        ready = time.monotonic() - started
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = {"messages": PROMPT, "max_tokens": args.max_tokens, "temperature": 0}
        rate = tokens_per_second(lambda: post(url, body, auth)["usage"]["completion_tokens"], args.requests)
        return {"ready_s": ready, "tokens_per_s": rate, "backend_mib": memory_mib(client, container.name),
                "total_mib": memory_mib(client, container.name)}
    finally:
        container.remove(force=True)


def sandboxed(client, gateway: DockerGateway, args) -> dict:
    policy = yaml.safe_load((ROOT / "policies" / "quickstart.yaml").read_text())
    policy["name"] = f"bench-{free_port()}"
    policy["ingress"]["port"] = free_port()
    policy["models"][0]["path"] = str(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(policy))
        ca = Path(os.environ["SANDBOX_CA_BUNDLE"]) if os.environ.get("SANDBOX_CA_BUNDLE") else None
        started = time.monotonic()
        result = up(gateway, path, ca_bundle=ca)
        ready = time.monotonic() - started
        try:
            body = {"model": "smollm2", "messages": PROMPT, "max_tokens": args.max_tokens}
            rate = tokens_per_second(lambda: post(result.url + "api/chat", body, {"Authorization": f"Bearer {result.token}"})["usage"]["completion_tokens"],
                                     args.requests)
            parts = {p: memory_mib(client, f"sandbox-{result.name}-{p}") for p in ("dns", "backend", "frontend", "ingress")}
            return {"ready_s": ready, "tokens_per_s": rate, "backend_mib": parts["backend"],
                    "total_mib": sum(parts.values()), "parts": parts}
        finally:
            down(gateway, result.name, volumes=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    client = docker.from_env()
    gateway = DockerGateway(client)
    ca = Path(os.environ["SANDBOX_CA_BUNDLE"]) if os.environ.get("SANDBOX_CA_BUNDLE") else None
    image = recipe_image("llama-cpp", ca_bundle=ca).tag
    if not gateway.state.image_present(image):
        raise SystemExit(f"{image} is missing: run `sandbox up policies/quickstart.yaml` once first")
    base = baseline(client, image, args)
    box = sandboxed(client, gateway, args)
    print(f"{'metric':<28}{'baseline':>12}{'sandbox':>12}{'ratio':>8}")
    for key, label in (("ready_s", "start to ready (s)"), ("tokens_per_s", "tokens/s (median)"),
                       ("backend_mib", "backend memory (MiB)"), ("total_mib", "all parts memory (MiB)")):
        print(f"{label:<28}{base[key]:>12.2f}{box[key]:>12.2f}{box[key] / base[key]:>8.2f}")
    print("sandbox parts (MiB): " + ", ".join(f"{p} {m:.0f}" for p, m in box["parts"].items()))


if __name__ == "__main__":
    main()
