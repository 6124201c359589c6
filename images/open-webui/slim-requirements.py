"""Print pinned requirements from a `pip install --report` file, leaving out
the GPU stack (torch, triton, NVIDIA's CUDA wheels) that Open WebUI's
dependencies pull in but a sandbox with an external backend never uses."""
import json
import re
import sys

DROP = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")

with open(sys.argv[1]) as f:
    report = json.load(f)
for item in report["install"]:
    meta = item["metadata"]
    name = meta["name"].lower().replace("_", "-")
    if not DROP.match(name):
        print(f"{meta['name']}=={meta['version']}")
