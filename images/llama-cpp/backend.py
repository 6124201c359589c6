"""Entry point of the backend image.

`serve` writes the server configuration the launcher passes in
SANDBOX_BACKEND_CONFIG (JSON: host, port, models, ...) with the API key from
SANDBOX_API_KEY to the tmpfs, and runs llama-cpp-python's server on it: one
config file serves several models.
`health` answers whether the server lists its models, which is the only
readiness signal it has (there is no health route).
"""
import json
import os
import sys
import urllib.request

CONFIG_PATH = "/tmp/llama-cpp-config.json"


def load_config() -> dict:
    config = json.loads(os.environ["SANDBOX_BACKEND_CONFIG"])
    config["api_key"] = os.environ["SANDBOX_API_KEY"]
    return config


def serve() -> None:
    config = load_config()
    with open(CONFIG_PATH, "w") as f:
        json.dump(config, f)
    os.execv(sys.executable, [sys.executable, "-m", "llama_cpp.server", "--config_file", CONFIG_PATH])


def health() -> int:
    config = load_config()
    request = urllib.request.Request(
        f"http://127.0.0.1:{config['port']}/v1/models",
        headers={"Authorization": f"Bearer {config['api_key']}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command == "health":
        sys.exit(health())
    serve()
