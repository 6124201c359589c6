"""The launcher as users install a CLI (`pip install .` or pipx, not
editable): the wheel carries the schema and the image recipes, and the
installed `sandbox` validates, plans and starts the quick start."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import yaml

from tests.integration.conftest import ROOT, ui_json, write_policy


def test_every_recipe_directory_is_in_the_wheel():
    listed = set(re.findall(r'"share/sandbox/images/([a-z0-9-]+)"', (ROOT / "pyproject.toml").read_text()))
    assert listed == {p.name for p in (ROOT / "images").iterdir() if p.is_dir()}


def test_a_non_editable_install_validates_plans_and_starts(gateway, tmp_path):
    """Tried as a new user would: `pip install .` gave a `sandbox` without
    schemas/ and images/."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)], check=True, timeout=600,
                   cwd=tmp_path)
    sandbox = str(venv / "bin" / "sandbox")
    found = subprocess.run([str(venv / "bin" / "python"), "-c", "import launcher.resources as r; print(r.ROOT)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert found == str(venv / "share" / "sandbox")  # not the source tree

    path = write_policy(tmp_path)
    name = yaml.safe_load(path.read_text())["name"]
    env = {**os.environ}

    def run(*args):
        done = subprocess.run([sandbox, *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=900)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    try:
        assert "ok (sandbox" in run("validate", str(path))
        assert json.loads(run("plan", str(path), "--json"))["name"] == name
        result = json.loads(run("up", str(path), "--json"))
        assert result["ok"]

        class Up:  # what ui_json needs of an up result
            url, token = result["url"], result["token"]
        assert ui_json(Up, "api/history", timeout=30)["messages"] == []
    finally:
        subprocess.run([sandbox, "down", name, "--volumes"], capture_output=True, env=env, timeout=120)
