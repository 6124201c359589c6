"""The shell scripts a new user runs first, on machines that lack something."""
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def machine_with(tmp_path, *tools: str) -> dict:
    """An environment whose PATH holds only these tools, and a `docker` client
    that finds no engine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        os.symlink(shutil.which(tool), bin_dir / tool)
    fake = bin_dir / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    return {"PATH": str(bin_dir), "HOME": str(tmp_path)}


def test_quickstart_names_the_missing_engine_when_only_the_client_is_there(tmp_path):
    """Tried as a new user would: `docker` installed, no engine, no apt-get."""
    env = machine_with(tmp_path, "bash", "dirname", "id", "sh")
    # Said at once, not after waiting for an engine: a `sleep` that notes each
    # call (waiting is start-dockerd.sh's `sleep 1` loop) and waits for nothing.
    waits = tmp_path / "waits"
    fake_sleep = tmp_path / "bin" / "sleep"
    fake_sleep.write_text(f"#!/bin/sh\necho \"$*\" >> {waits}\n")
    fake_sleep.chmod(0o755)
    run = subprocess.run([shutil.which("bash"), str(ROOT / "scripts" / "quickstart.sh")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "the Docker Engine (dockerd) is not installed, only its docker client" in run.stderr
    assert not waits.exists(), waits.read_text()


def test_start_dockerd_names_the_missing_engine(tmp_path):
    env = machine_with(tmp_path, "bash", "sh")
    run = subprocess.run([shutil.which("bash"), str(ROOT / "scripts" / "start-dockerd.sh")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "dockerd" in run.stderr and "nohup" not in run.stderr
