#!/usr/bin/env bash
# Register gVisor's runsc with the Docker engine as the runtime "runsc", so a
# policy can say `runtime: gvisor`. Debian's runsc works as a Docker runtime
# only with --network=host: gVisor then uses the network namespace Docker made
# for the container, which is as isolated as under runc.
# Merges into /etc/docker/daemon.json and reloads a running dockerd (SIGHUP).
set -euo pipefail
runsc=$(command -v runsc || true)
if [ -z "$runsc" ]; then
  echo "runsc is not installed (Debian: apt-get install runsc)" >&2
  exit 1
fi
config=${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
mkdir -p "$(dirname "$config")"
python3 - "$config" "$runsc" <<'PY'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
config = {}
if os.path.exists(path) and os.path.getsize(path):
    with open(path) as f:
        config = json.load(f)
config.setdefault("runtimes", {})["runsc"] = {"path": runsc, "runtimeArgs": ["--network=host"]}
with open(path + ".tmp", "w") as f:
    json.dump(config, f, indent=2)
os.replace(path + ".tmp", path)
PY
if pid=$(pidof dockerd); then
  kill -HUP $pid
  for _ in $(seq 1 20); do
    docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q runsc && break
    sleep 0.5
  done
fi
echo "gVisor: runsc registered in $config"
