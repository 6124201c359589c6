"""Entry point of the backend image.

`serve` checks that every model file it is about to load has the sha256 the
policy gives, refusing to start otherwise: Docker restarts a backend by itself
(a crash, an engine restart) and mounts the file again, which may have changed
on the host meanwhile. It then writes the server configuration the launcher
passes in SANDBOX_BACKEND_CONFIG (JSON: host, port, models with their sha256,
...) with the API key from SANDBOX_API_KEY to the tmpfs, and runs
llama-cpp-python's server on it: one config file serves several models.
`check` is the check alone.
`health` answers whether the server answers: it loads its first model
before it listens, so an answer means the model is loaded. It asks the API's
schema, a route that does not wait for the model: a check that queued behind
a long answer would call a busy backend unhealthy (and, with the server's
interrupt_requests on, it used to cut that answer short).
"""
import hashlib
import json
import os
import sys
import time
import urllib.request

CONFIG_PATH = "/tmp/llama-cpp-config.json"
CHUNK = 4 * 1024 * 1024
# Docker restarts a container at once when it ran for more than 10 s, so a
# model that takes longer to hash would be hashed again and again, a core busy
# for nothing: a refusal waits this long before it exits.
REFUSED_PAUSE_SECONDS = 60


def load_config() -> dict:
    config = json.loads(os.environ["SANDBOX_BACKEND_CONFIG"])
    config["api_key"] = os.environ["SANDBOX_API_KEY"]
    return config


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_problems(config: dict) -> list[str]:
    """What is wrong with the model files, each checked against its sha256;
    the checks that passed are said on stderr as they finish."""
    problems = []
    for model in config["models"]:
        path, expected = model["model"], model.get("sha256")
        if not expected:
            problems.append(f"{path}: no sha256 was given to check it against")
            continue
        started = time.monotonic()
        try:
            actual = sha256_of(path)
        except OSError as e:
            problems.append(f"{path}: cannot be read ({e.strerror})")
            continue
        if actual != expected:
            problems.append(f"{path}: its sha256 is {actual}, the policy's is {expected}: "
                            f"the file changed on the host since the sandbox was started")
        else:
            print(f"backend: {path}: sha256 checked ({os.path.getsize(path) / 2**20:.0f} MiB in "
                  f"{time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
    return problems


def refuse(problems: list[str]) -> None:
    for problem in problems:
        print(f"backend: refusing to start: {problem}", file=sys.stderr, flush=True)


def serve() -> None:
    config = load_config()
    problems = model_problems(config)
    if problems:
        refuse(problems)
        time.sleep(REFUSED_PAUSE_SECONDS)
        sys.exit(2)
    for model in config["models"]:
        del model["sha256"]  # the server's settings allow no key it does not know
    with open(CONFIG_PATH, "w") as f:
        json.dump(config, f)
    os.execv(sys.executable, [sys.executable, "-m", "llama_cpp.server", "--config_file", CONFIG_PATH])


def check() -> int:
    problems = model_problems(load_config())
    refuse(problems)
    return 2 if problems else 0


def health() -> int:
    config = load_config()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{config['port']}/openapi.json", timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command == "health":
        sys.exit(health())
    if command == "check":
        sys.exit(check())
    serve()
