"""What the sandbox costs, each figure measured side by side with a baseline
that owes nothing to our code, in one run:

- `--baseline by-hand` (the default, and the only one so far): a compose file
  written here by hand, not by the launcher: the same backend image, model and
  settings and the same front-end image (the policy's recipe: `chat` for the
  quick start, Open WebUI for `--policy policies/open-webui.yaml`, given the
  recipe's offline switches and the backend's embedding server, as its
  documentation has a careful user do), on a plain bridge network,
  the UI published on 127.0.0.1 directly, the UI started once the backend's
  healthcheck (its /v1/models, every second) passes; run by `docker-compose`
  (Debian's v1);
- the bare backend (its own published port: no front-end, no sandbox) for
  what the sandbox's path costs a stream over the model's own speed.

Rounds alternate the sandbox and the baseline (which goes first alternates
too), from down with the volumes kept. Each figure is printed with its median
and its spread (min-max) over the rounds:

1. a warm `up` until a one-token chat through the UI answers;
2. time to the first streamed piece of an answer through the UI;
3. streamed pieces per second through the UI;
4. the same pieces per second against the bare backend;
4a. a streamed chat through the API at the front door
   (/v1/chat/completions, the bearer token), against the bare backend:
   time to the first piece and pieces (tokens) per second;
5. an `up` with nothing to change (the sandbox only);
6. `down` (the volumes kept);
7. the phases of the sandbox's `up` (prepare, apply, ready, total).

Needs the engine, the images (`sandbox up policies/quickstart.yaml` once),
the quick-start model and `docker-compose`. docs/benchmarks.md keeps the
last table.

    python benchmarks/suite.py [--policy policies/quickstart.yaml] [--rounds 3] [--requests 8]
                               [--max-tokens 64] [--json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
from contextlib import contextmanager
from pathlib import Path

import docker
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.documents import WebUI  # noqa: E402
from benchmarks.overhead import MODEL, free_port, run_plain_backend, wait_for  # noqa: E402
from launcher.access import open_ui  # noqa: E402
from launcher.commands.down import down  # noqa: E402
from launcher.commands.up import up  # noqa: E402
from launcher.engine import DockerGateway  # noqa: E402
from launcher.images import recipe_image  # noqa: E402
from launcher.recipes import FRONTEND_RECIPES  # noqa: E402

PROMPT = [{"role": "user", "content": "Write three sentences about the sea."}]
# Temperature 0: every path gets the same answer, so the pieces per second
# compare the paths, not the answers.
TEMPERATURE = 0
ONE_TOKEN_CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
# The by-hand backend's key: any string; the front-end is given the same.
BY_HAND_KEY = "by-hand"
# Debian's docker-compose (v1) runs `depends_on: condition: service_healthy`
# in the 2.x file format only.
COMPOSE_VERSION = "2.4"
# The goal issue 25 sets for `sandbox down`.
DOWN_TARGET_S = 1.0
UP_TIMEOUT_S = 300
# The backend's ports: the chat server's, and the embedding model's own
# server beside it (launcher/spec.py), in both setups.
BACKEND_PORT = 8000
EMBEDDINGS_PORT = 8001
# Open WebUI signs its sessions with this; any string does by hand.
BY_HAND_SESSION_KEY = "by-hand-session"


# The baseline: written here, from the policy's plain values.

def by_hand_compose(*, backend_image: str, frontend_image: str, model: Path, alias: str, sha256: str,
                    context_length: int, cpus: float, memory: str, port: int, api_key: str = BY_HAND_KEY,
                    embedding_alias: str | None = None, frontend_env: dict | None = None) -> dict:
    """The compose file someone would write by hand for the same model served
    the same way: the backend given the settings the launcher gives it (the
    image refuses to start without the model's sha256, as in a sandbox), the
    policy's CPU and memory for the backend, the front-end told the backend's
    address and key, and `frontend_env` (by_hand_frontend_env). With
    `embedding_alias`, the same file served as the embedding model too, on
    the backend's second server, as a policy with `role: embeddings` has it.
    None of the sandbox around them: no DNS sink, no ingress, no internal
    network, no hardening."""
    def served(name: str) -> dict:
        # logits_all as in a sandbox: the last position's logits only.
        return {"model": f"/models/{name}.gguf", "sha256": sha256, "model_alias": name,
                "n_ctx": context_length, "logits_all": False, "n_gpu_layers": 0, "n_threads": max(1, int(cpus))}
    config = {
        "host": "0.0.0.0", "port": BACKEND_PORT,
        # As in a sandbox: a streamed answer is not cut short when the
        # healthcheck asks meanwhile.
        "interrupt_requests": False,
        "models": [served(alias)],
    }
    if embedding_alias:
        config["embeddings"] = {"port": EMBEDDINGS_PORT, "model": {**served(embedding_alias), "embedding": True}}
    # The backend image has no curl: its own Python asks.
    probe = ("import sys, urllib.request as u; "
             "u.urlopen(u.Request('http://127.0.0.1:8000/v1/models', "
             "headers={'Authorization': 'Bearer ' + sys.argv[1]}), timeout=2)")
    return {
        "version": COMPOSE_VERSION,
        "services": {
            "backend": {
                "image": backend_image,
                "environment": {"SANDBOX_BACKEND_CONFIG": json.dumps(config, sort_keys=True),
                                "SANDBOX_API_KEY": api_key},
                "volumes": [f"{model}:/models/{name}.gguf:ro" for name in (alias, embedding_alias) if name],
                "cpus": cpus, "mem_limit": memory,
                # An init, so that `down` stops each container at its SIGTERM
                # rather than killing it 10 s later (the chat server, PID 1
                # without one, ignores SIGTERM); a sandbox's parts have one.
                "init": True,
                "healthcheck": {"test": ["CMD", "/opt/venv/bin/python", "-c", probe, api_key],
                                "interval": "1s", "timeout": "2s", "retries": 600},
            },
            "frontend": {
                "image": frontend_image,
                "environment": {**(frontend_env or {}),
                                "OPENAI_API_BASE_URL": f"http://backend:{BACKEND_PORT}/v1",
                                "OPENAI_API_KEY": api_key},
                "volumes": ["data:/data"],
                "ports": [f"127.0.0.1:{port}:8080"],
                "init": True,
                "depends_on": {"backend": {"condition": "service_healthy"}},
            },
        },
        "volumes": {"data": {}},
    }


def by_hand_frontend_env(recipe: str, policy_env: dict, embedding_alias: str | None,
                         api_key: str = BY_HAND_KEY) -> dict:
    """What the by-hand front-end is told besides the backend's address and
    key: the policy's own variables, and for a recipe that has them the
    switches that keep the UI offline (for Open WebUI, those its
    documentation lists for an offline install; without them it reaches for
    the internet as it starts, which could only slow the baseline), the
    recipe's defaults, its session key and the embedding server; not the
    recipe's sign-in by the ingress's headers."""
    found = FRONTEND_RECIPES[recipe]
    # Not the sign-in by the ingress's headers: by hand there is no ingress to
    # send them, and Open WebUI would refuse every sign-in without them.
    locked = {name: value for name, value in found.locked_env.items()
              if not name.startswith("WEBUI_AUTH_TRUSTED_")}
    env = {**found.default_env, **policy_env, **locked}
    if found.session_key_env:
        env[found.session_key_env] = BY_HAND_SESSION_KEY
    if found.embeddings_env:
        embeddings = found.embeddings_env
        port = EMBEDDINGS_PORT if embedding_alias else BACKEND_PORT
        env[embeddings.url] = f"http://backend:{port}/v1"
        env[embeddings.key] = api_key
        if embedding_alias:
            env[embeddings.model] = embedding_alias
    return env


class ChatFrontend:
    """The `chat` front-end: its /api/chat, its own events. A sandbox's is
    asked with the bearer token, the by-hand one with nothing."""

    def answers(self, url: str, name: str | None, token: str | None) -> bool:
        with open_ui(url + "api/chat", token, data=json.dumps(ONE_TOKEN_CHAT).encode(),
                     headers={"Content-Type": "application/json"}, timeout=30) as r:
            return r.status == 200 and json.load(r).get("reply") is not None

    def stream(self, url: str, name: str | None, token: str | None, max_tokens: int):
        return stream_call(url, token, max_tokens)


class OpenWebUIFrontend:
    """Open WebUI, through its API as its page calls it (benchmarks/documents.py):
    signed in (its login off), /api/chat/completions, OpenAI's events. A
    sandbox's is asked with the access cookie and its own Origin."""

    def __init__(self, alias: str):
        self.alias = alias

    def body(self, max_tokens: int, stream: bool, messages: list) -> bytes:
        return json.dumps({"model": self.alias, "messages": messages, "stream": stream,
                           "max_tokens": max_tokens, "temperature": TEMPERATURE}).encode()

    def answers(self, url: str, name: str | None, token: str | None) -> bool:
        webui = WebUI(url, name, token)
        with webui.open("/api/chat/completions", self.body(1, False, ONE_TOKEN_CHAT["messages"]), timeout=30) as r:
            return r.status == 200 and bool(json.load(r).get("choices"))

    def stream(self, url: str, name: str | None, token: str | None, max_tokens: int):
        webui = WebUI(url, name, token)
        body = self.body(max_tokens, True, PROMPT)

        def call():
            with webui.open("/api/chat/completions", body, timeout=300) as r:
                return stream_events(r)
        return call


def frontend_of(policy: dict):
    recipe = policy["frontend"]["recipe"]
    if recipe == "chat":
        return ChatFrontend()
    if recipe == "open-webui":
        return OpenWebUIFrontend(chat_alias(policy))
    raise SystemExit(f"the suite runs the chat and open-webui recipes, not {recipe!r}")


def chat_alias(policy: dict) -> str:
    return next(m["alias"] for m in policy["models"] if m.get("role", "chat") == "chat")


def embedding_alias(policy: dict) -> str | None:
    return next((m["alias"] for m in policy["models"] if m.get("role") == "embeddings"), None)


def bench_policy(policy: dict, name: str, port: int, model: Path) -> dict:
    """The policy benchmarked: its own name and port, every model the
    benchmark's file, no GPU (the by-hand backend has none)."""
    return {**policy, "name": name, "ingress": {**policy["ingress"], "port": port},
            "backend": {**policy["backend"], "gpu": "none"},
            "models": [{**m, "path": str(model)} for m in policy["models"]]}


class ByHand:
    """The by-hand compose project: `up` until a one-token chat answers,
    streaming straight to the published UI, `down` keeping the volume."""

    def __init__(self, directory: Path, policy: dict, max_tokens: int):
        self.port = free_port()
        model = next(m for m in policy["models"] if m["alias"] == chat_alias(policy))
        digest = hashlib.sha256()
        with MODEL.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        sha256 = digest.hexdigest()
        recipe = policy["frontend"]["recipe"]
        embedding = embedding_alias(policy)
        self.file = directory / "docker-compose.yml"
        self.file.write_text(yaml.safe_dump(by_hand_compose(
            backend_image=recipe_image("llama-cpp").tag, frontend_image=recipe_image(recipe).tag,
            model=MODEL, alias=chat_alias(policy), sha256=sha256, context_length=model["context_length"],
            cpus=float(policy["backend"]["cpus"]), memory=policy["backend"]["memory"], port=self.port,
            embedding_alias=embedding,
            frontend_env=by_hand_frontend_env(recipe, policy["frontend"].get("env", {}), embedding))))
        self.project = f"byhand{self.port}"
        self.url = f"http://127.0.0.1:{self.port}/"
        self.max_tokens = max_tokens
        self.ui = frontend_of(policy)

    def compose(self, *args: str) -> None:
        subprocess.run(["docker-compose", "-p", self.project, "-f", str(self.file), *args],
                       check=True, capture_output=True)

    def up(self) -> float:
        started = time.monotonic()
        self.compose("up", "-d")
        first_answer(self.ui, self.url, None, None)
        return time.monotonic() - started

    def stream(self):
        return self.ui.stream(self.url, None, None, self.max_tokens)

    def down(self, volumes: bool = False) -> float:
        started = time.monotonic()
        self.compose("down", *(["-v"] if volumes else []))
        return time.monotonic() - started


class Sandbox:
    """The policy's sandbox on the benchmark's model, name and port."""

    def __init__(self, directory: Path, policy: dict, max_tokens: int, gateway):
        policy = bench_policy(policy, f"bench-{free_port()}", free_port(), MODEL)
        self.ui = frontend_of(policy)
        self.path = directory / "bench.yaml"
        self.path.write_text(yaml.safe_dump(policy))
        self.name = policy["name"]
        self.gateway = gateway
        self.max_tokens = max_tokens
        self.result = None

    def up(self) -> float:
        started = time.monotonic()
        self.result = up(self.gateway, self.path)
        first_answer(self.ui, self.result.url, self.name, self.result.token)
        return time.monotonic() - started

    def up_unchanged(self) -> float:
        started = time.monotonic()
        again = up(self.gateway, self.path)
        seconds = time.monotonic() - started
        changed = again.prepared.plan.changes
        if changed:  # then it timed something else than an `up` with nothing to do
            raise SystemExit(f"a second `up` of the running sandbox changed {len(changed)} thing(s)")
        return seconds

    def stream(self):
        return self.ui.stream(self.result.url, self.name, self.result.token, self.max_tokens)

    def api_stream(self):
        """A streamed chat as an API client makes it: /v1/chat/completions at
        the front door, with the bearer token, the same body as the bare
        backend's."""
        return chat_completions_stream(self.result.url + "v1/chat/completions",
                                       {"Authorization": f"Bearer {self.result.token}"}, self.max_tokens)

    def down(self, volumes: bool = False) -> float:
        started = time.monotonic()
        down(self.gateway, self.name, volumes=volumes)
        return time.monotonic() - started


# Talking to a UI: the sandbox's through its ingress with the access token,
# the by-hand one on its published port (token None).

def first_answer(ui, url: str, name: str | None, token: str | None, timeout: float = UP_TIMEOUT_S) -> None:
    """Until a one-token chat through the UI answers."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            if ui.answers(url, name, token):
                return
        except urllib.error.HTTPError as e:
            last = f"it answered {e.code}"
        except (OSError, ValueError, KeyError) as e:
            last = str(e)
        time.sleep(0.05)
    raise SystemExit(f"{url}: no answer to a chat within {timeout} s ({last})")


def stream_call(url: str, token: str | None, max_tokens: int):
    body = json.dumps({"messages": PROMPT, "max_tokens": max_tokens, "temperature": TEMPERATURE,
                       "stream": True}).encode()

    def call():
        with open_ui(url + "api/chat", token, data=body, headers={"Content-Type": "application/json"},
                     timeout=300) as r:
            return stream_events(r)
    return call


def stream_events(response) -> tuple[float | None, int, float]:
    """(seconds to the first piece, pieces, seconds to the end) of an SSE answer:
    the chat UI's events ({"delta"}) or the backend's (OpenAI chunks)."""
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
    """Each request's time to the first piece (ms) and pieces per second,
    after one answer to warm the caches."""
    call()
    firsts, rates = [], []
    for _ in range(requests):
        first, pieces, total = call()
        if first is None:
            raise SystemExit("a streamed answer had no piece")
        firsts.append(first * 1000)
        rates.append(pieces / total)
    return {"ttft_ms": firsts, "pieces_per_s": rates}


@contextmanager
def bare_backend(client):
    """The backend image alone on its published port: a call streaming from it."""
    port = free_port()
    container = run_plain_backend(client, recipe_image("llama-cpp").tag, f"sandbox-bench-bare-{port}", port)
    try:
        auth = {"Authorization": "Bearer bench"}
        wait_for(f"http://127.0.0.1:{port}/v1/models", auth)
        yield port, auth
    finally:
        container.remove(force=True)


def chat_completions_stream(url: str, auth: dict, max_tokens: int):
    """A streamed chat to an OpenAI-compatible /v1/chat/completions: the
    bare backend's, or the sandbox's front door (Sandbox.api_stream)."""
    body = json.dumps({"messages": PROMPT, "max_tokens": max_tokens, "temperature": TEMPERATURE,
                       "stream": True}).encode()

    def call():
        with open_ui(url, None, data=body,
                     headers={"Content-Type": "application/json", **auth}, timeout=300) as r:
            return stream_events(r)
    return call


# The figures.

def spread(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "samples": samples}


FIGURES = (
    # key, label, unit, baseline (None: the sandbox only)
    ("up", "warm `up` until a one-token chat answers", "s", "by hand"),
    ("ttft", "time to first streamed piece", "ms", "by hand"),
    ("rate", "streamed pieces per second", "pieces/s", "by hand"),
    ("rate_bare", "streamed pieces per second, against the bare backend", "pieces/s", "bare backend"),
    ("api_ttft", "time to first streamed piece, /v1/chat/completions with the bearer token", "ms", "bare backend"),
    ("api_rate", "streamed pieces (tokens) per second, /v1/chat/completions with the bearer token", "pieces/s",
     "bare backend"),
    ("up_unchanged", "`up` with nothing to change", "s", None),
    ("down", "`down` (volumes kept)", "s", "by hand"),
    ("prepare", "phase of `up`: prepare", "s", None),
    ("apply", "phase of `up`: apply", "s", None),
    ("ready", "phase of `up`: ready", "s", None),
    ("total", "phase of `up`: total", "s", None),
)


# Which of the bare backend's figures a "bare backend" figure is set against.
BARE_FIGURE = {"rate_bare": "rate", "api_ttft": "ttft", "api_rate": "rate"}


def figures(rounds: list[dict]) -> list[dict]:
    """Each figure over the rounds: its median and spread, for the sandbox
    and its baseline, and their ratio (sandbox / baseline)."""
    out = []
    for key, label, unit, baseline in FIGURES:
        box = spread([r["sandbox"][key] for r in rounds])
        base = None
        if baseline == "by hand":
            base = spread([r["by_hand"][key] for r in rounds])
        elif baseline == "bare backend":
            base = spread([r["bare"][BARE_FIGURE[key]] for r in rounds])
        out.append({"figure": key, "label": label, "unit": unit, "baseline_name": baseline,
                    "sandbox": box, "baseline": base,
                    "ratio": box["median"] / base["median"] if base else None})
    return out


def per_request(rounds: list[dict]) -> dict:
    """Every request's figures pooled over the rounds: how much one answer varies."""
    out = {}
    for who in ("sandbox", "by_hand", "bare"):
        for key in ("ttft_ms", "pieces_per_s"):
            out[f"{who} {key}"] = spread([s for r in rounds for s in r["requests"][who][key]])
    return out


def cell(s: dict | None, unit: str) -> str:
    if s is None:
        return "-"
    digits = 0 if unit == "ms" and s["median"] >= 100 else 1 if unit in ("ms", "pieces/s") else 2
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


WHO = {"sandbox": "sandbox", "by_hand": "by hand", "bare": "bare backend"}


def table(result: dict) -> str:
    rows = [("figure", "sandbox", "by hand", "ratio"), ("---",) * 4]
    for f in result["figures"]:
        label = f"{f['label']} ({f['unit']}" + (
            "; by-hand column: the bare backend)" if f["baseline_name"] == "bare backend" else ")")
        rows.append((label, cell(f["sandbox"], f["unit"]), cell(f["baseline"], f["unit"]),
                     f"{f['ratio']:.2f}" if f["ratio"] is not None else "-"))
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    m, each = result["machine"], result["per_request"]
    down_box = next(f for f in result["figures"] if f["figure"] == "down")["sandbox"]["median"]
    lines += ["",
              f"median (min-max) over {result['rounds']} rounds; streaming: each round's median of "
              f"{result['requests']} answers of up to {result['max_tokens']} tokens",
              f"sandbox `down` {down_box:.2f} s: " + ("within" if down_box <= DOWN_TARGET_S else "over")
              + f" the {DOWN_TARGET_S:.0f} s target",
              "each answer, all rounds pooled (median, min-max):",
              "  time to first piece (ms): " + ", ".join(
                  f"{name} {cell(each[f'{who} ttft_ms'], 'ms')}" for who, name in WHO.items()),
              "  pieces/s: " + ", ".join(
                  f"{name} {cell(each[f'{who} pieces_per_s'], 'pieces/s')}" for who, name in WHO.items()),
              f"{m['cpus']} CPUs, Docker Engine {m['engine']}, {m['compose']}"
              + (f"; policy {result['policy']}" if result.get("policy") else "")]
    return "\n".join(lines)


def run(args) -> dict:
    client = docker.from_env()
    gateway = DockerGateway(client)
    policy = yaml.safe_load(args.policy.read_text())
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "by-hand").mkdir()
        sandbox = Sandbox(Path(tmp), policy, args.max_tokens, gateway)
        by_hand = ByHand(Path(tmp) / "by-hand", policy, args.max_tokens)
        try:
            # Once each, untimed: the volumes made, the model and images in
            # the page cache; every round then starts from down, volumes kept.
            sandbox.up()
            sandbox.down()
            by_hand.up()
            by_hand.down()
            for n in range(args.rounds):
                this = {"sandbox": {}, "by_hand": {}, "bare": {}, "requests": {}}
                order = ("sandbox", "by_hand") if n % 2 == 0 else ("by_hand", "sandbox")
                for who in order:
                    if who == "sandbox":
                        figures_of = this["sandbox"]
                        figures_of["up"] = sandbox.up()
                        figures_of.update({p: sandbox.result.seconds[p] for p in ("prepare", "apply", "ready",
                                                                                   "total")})
                        figures_of["up_unchanged"] = sandbox.up_unchanged()
                        streamed = measure(sandbox.stream(), args.requests)
                        api = measure(sandbox.api_stream(), args.requests)
                        figures_of["api_ttft"] = statistics.median(api["ttft_ms"])
                        figures_of["api_rate"] = statistics.median(api["pieces_per_s"])
                        this["requests"]["api"] = api
                        figures_of["down"] = sandbox.down()
                    else:
                        figures_of = this["by_hand"]
                        figures_of["up"] = by_hand.up()
                        streamed = measure(by_hand.stream(), args.requests)
                        figures_of["down"] = by_hand.down()
                    figures_of["ttft"] = statistics.median(streamed["ttft_ms"])
                    figures_of["rate"] = statistics.median(streamed["pieces_per_s"])
                    this["requests"][who] = streamed
                with bare_backend(client) as (port, auth):
                    streamed = measure(chat_completions_stream(f"http://127.0.0.1:{port}/v1/chat/completions",
                                                               auth, args.max_tokens), args.requests)
                this["bare"] = {"ttft": statistics.median(streamed["ttft_ms"]),
                                "rate": statistics.median(streamed["pieces_per_s"])}
                this["requests"]["bare"] = streamed
                this["sandbox"]["rate_bare"] = this["sandbox"]["rate"]
                rounds.append(this)
                print(f"round {n + 1} of {args.rounds} done", file=sys.stderr, flush=True)
        finally:
            try:
                sandbox.down(volumes=True)
            finally:
                by_hand.down(volumes=True)
    engine = client.version()
    compose = subprocess.run(["docker-compose", "version", "--short"], capture_output=True, text=True).stdout.strip()
    return {"baseline": args.baseline, "policy": args.policy.name, "rounds": args.rounds, "requests": args.requests,
            "max_tokens": args.max_tokens,
            "machine": {"cpus": os.cpu_count(), "engine": engine.get("Version"),
                        "compose": f"docker-compose {compose}"},
            "figures": figures(rounds), "per_request": per_request(rounds), "raw": rounds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", choices=["by-hand"], default="by-hand",
                        help="what the sandbox is measured against: a compose file written by hand")
    parser.add_argument("--policy", type=Path, default=ROOT / "policies" / "quickstart.yaml",
                        help="the sandbox measured: its recipe (chat or open-webui), models' settings, CPUs and "
                             "memory; every model is served from the quick-start file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="the same figures as JSON")
    args = parser.parse_args(argv)
    if not shutil.which("docker-compose"):
        raise SystemExit("docker-compose is needed for the baseline (Debian: apt-get install docker-compose)")
    if not args.policy.is_file():
        raise SystemExit(f"{args.policy}: no such policy file")
    if not MODEL.exists():
        raise SystemExit(f"{MODEL} is missing: bash scripts/fetch-quickstart-model.sh")
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main()
