"""Entry point of the backend image.

`serve` checks that every model file it is about to load has the sha256 the
policy gives, refusing to start otherwise: Docker restarts a backend by itself
(a crash, an engine restart) and mounts the file again, which may have changed
on the host meanwhile. It then writes the server configuration the launcher
passes in SANDBOX_BACKEND_CONFIG (JSON: host, port, models with their sha256,
...) with the API key from SANDBOX_API_KEY to the tmpfs, and runs
llama-cpp-python's server on it: one config file serves several models.
With an embedding model (the config's `embeddings`: its port and model), a
second server serves it alone, with embeddings on, so that documents never
make the chat model reload (the server keeps one model loaded); both run
under this process, and when either ends the other is stopped and the
container ends, for Docker to restart it whole.
`check` is the check alone; `pooling PATH`, the settings the embedding
model needs to give one vector per text.
`health` answers whether the servers answer: each loads its model before it
listens, so an answer means the model is loaded. It asks the API's schema, a
route that does not wait for the model: a check that queued behind a long
answer would call a busy backend unhealthy (and, with the server's
interrupt_requests on, it used to cut that answer short).
"""
import ctypes
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request

CONFIG_PATH = "/tmp/llama-cpp-config.json"
EMBEDDINGS_CONFIG_PATH = "/tmp/llama-cpp-embeddings.json"
SERVER = [sys.executable, "-m", "llama_cpp.server", "--config_file"]
# How long a server is given to end on SIGTERM before it is killed.
STOP_SECONDS = 10
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


def served_models(config: dict) -> list[dict]:
    """Every model the servers load: the chat models and the embedding model."""
    embeddings = config.get("embeddings")
    return config["models"] + ([embeddings["model"]] if embeddings else [])


def model_problems(config: dict) -> list[str]:
    """What is wrong with the model files, each checked against its sha256;
    the checks that passed are said on stderr as they finish."""
    problems = []
    for model in served_models(config):
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


def meta_value(model, key: str) -> str | None:
    import llama_cpp
    buffer = ctypes.create_string_buffer(256)
    length = llama_cpp.llama_model_meta_val_str(model, key.encode(), buffer, len(buffer))
    return buffer.value.decode(errors="replace") if length >= 0 else None


def pooling_overrides(path: str) -> list[str]:
    """A model whose file names no pooling (a chat model's) gives a vector
    per token; pooled by their mean, it gives one per text, as an embedding
    model does. Read by llama.cpp's own reader, without the weights."""
    import llama_cpp
    # Its loader's report of every key would fill the log; errors still show.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    if not model:
        return []  # the server says why when it loads it
    try:
        architecture = meta_value(model, "general.architecture")
        if not architecture or meta_value(model, f"{architecture}.pooling_type") is not None:
            return []
        return [f"{architecture}.pooling_type=int:{llama_cpp.LLAMA_POOLING_TYPE_MEAN}"]
    finally:
        llama_cpp.llama_model_free(model)


def write_server_configs(config: dict) -> list[str]:
    """The servers' config files, each with the settings the server knows
    only; the path of each, the chat server's first."""
    for model in served_models(config):
        del model["sha256"]  # the server's settings allow no key it does not know
    embeddings = config.pop("embeddings", None)
    with open(CONFIG_PATH, "w") as f:
        json.dump(config, f)
    if not embeddings:
        return [CONFIG_PATH]
    model = embeddings["model"]
    # Asked of a short-lived process: llama.cpp loaded here would stay in
    # this one's memory for the container's life.
    asked = subprocess.run([sys.executable, os.path.abspath(__file__), "pooling", model["model"]],
                           stdout=subprocess.PIPE, check=True)
    overrides = json.loads(asked.stdout)
    if overrides:
        model["kv_overrides"] = overrides
    with open(EMBEDDINGS_CONFIG_PATH, "w") as f:
        json.dump({**config, "port": embeddings["port"], "models": [model]}, f)
    return [CONFIG_PATH, EMBEDDINGS_CONFIG_PATH]


def run_servers(config_paths: list[str]) -> int:
    """Each server, until one ends (or this process is told to stop): then
    the others are stopped too; the first one's exit status."""
    servers = [subprocess.Popen(SERVER + [path]) for path in config_paths]

    def stop(signum, frame):
        for server in servers:
            if server.poll() is None:
                server.terminate()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pid, status = os.wait()
    ended = next(server for server in servers if server.pid == pid)
    print(f"backend: the server on {config_paths[servers.index(ended)]} ended "
          f"(status {os.waitstatus_to_exitcode(status)}); stopping the others", file=sys.stderr, flush=True)
    ended.returncode = os.waitstatus_to_exitcode(status)
    stop(None, None)
    for server in servers:
        try:
            server.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return ended.returncode


def serve() -> None:
    config = load_config()
    problems = model_problems(config)
    if problems:
        refuse(problems)
        time.sleep(REFUSED_PAUSE_SECONDS)
        sys.exit(2)
    paths = write_server_configs(config)
    if len(paths) == 1:
        os.execv(sys.executable, SERVER + paths)
    else:
        code = run_servers(paths)
        sys.exit(code if code >= 0 else 128 - code)  # killed by a signal: 128 + its number, as a shell says


def check() -> int:
    problems = model_problems(load_config())
    refuse(problems)
    return 2 if problems else 0


def health() -> int:
    config = load_config()
    ports = [config["port"]] + ([config["embeddings"]["port"]] if config.get("embeddings") else [])
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=3) as response:
                if response.status != 200:
                    return 1
        except OSError:
            return 1
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command == "health":
        sys.exit(health())
    if command == "check":
        sys.exit(check())
    if command == "pooling":
        print(json.dumps(pooling_overrides(sys.argv[2])))
        sys.exit(0)
    serve()
