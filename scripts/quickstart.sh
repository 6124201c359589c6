#!/usr/bin/env bash
# The quick start on a fresh Linux machine: make sure Docker runs, install the
# `sandbox` command into .venv, fetch the quick-start model, make the base
# image if no registry can be reached, and run `sandbox up
# policies/quickstart.yaml`. Safe to run again: what is there is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

# What runs containers is the engine (dockerd): a `docker` command alone is
# only its client. Install the engine where nothing answers and it is missing.
if ! docker info >/dev/null 2>&1 && ! command -v dockerd >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Docker Engine (Debian's docker.io) and debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
  else
    echo "the Docker Engine (dockerd) is not installed$(command -v docker >/dev/null && echo ", only its docker client"):" \
         "install it (https://docs.docker.com/engine/install/, or Debian's docker.io) and run this again" >&2
    exit 1
  fi
fi
if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null && systemctl start docker 2>/dev/null && docker info >/dev/null 2>&1; then
    :
  elif [ "$(id -u)" = 0 ]; then
    bash scripts/start-dockerd.sh
  else
    echo "the Docker daemon is not running, or you may not use it: start it, or add yourself to the docker group" >&2
    exit 1
  fi
fi

bash scripts/make-base-image.sh
python3 -m venv .venv
.venv/bin/pip install --quiet -e .
bash scripts/fetch-quickstart-model.sh

# Networks that intercept TLS need their CA trusted inside image builds:
# set SANDBOX_CA_BUNDLE=/path/to/bundle.pem before running this.
# Builds go out only through the build proxy, which reaches public addresses
# only; where this machine's apt mirrors sit on private ones, let it reach them.
if [ -z "${SANDBOX_BUILD_ALLOW_NETWORKS:-}" ]; then
  SANDBOX_BUILD_ALLOW_NETWORKS=$(bash scripts/mirror-networks.sh)
  export SANDBOX_BUILD_ALLOW_NETWORKS
fi
exec .venv/bin/sandbox up policies/quickstart.yaml "$@"
