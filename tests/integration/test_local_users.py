"""Other local users of the machine are strangers (docs/threats.md): what the
launcher writes for its user (`render -o`'s manifests hold the sandbox's
access token and keys; the model store, the sha256 cache) is for that user's
eyes only, even in a directory everyone shares, in a file another user made
beforehand, or through a link one left. The other user here is a real one."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import MODEL, write_policy

# Run as the other user: what each path gives them.
READ_AS_OTHER = """
import json, os, sys
seen = {}
for path in sys.argv[1:]:
    try:
        seen[path] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read()
    except OSError as e:
        seen[path] = type(e).__name__
print(json.dumps(seen))
"""
MAKE_AS_OTHER = """
import os, sys
kind, path, target = sys.argv[1:]
if kind == "file":
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as f:
        f.write("made by the other user\\n")
else:
    os.symlink(target, path)
"""


def as_other(user, script: str, *args: str) -> str:
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable  # one the other user may run
    run = subprocess.run([python, "-c", script, *args], user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                         capture_output=True, text=True, timeout=60, cwd="/", check=True)
    return run.stdout


@pytest.fixture
def shared(tmp_path):
    """A directory every user may write to, as /tmp is (sticky), reachable by the other user."""
    path = Path(tempfile.mkdtemp(prefix="sandbox-shared-", dir="/tmp"))
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path)


def sandbox_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def render_to(target: Path, policy: Path) -> subprocess.CompletedProcess:
    return sandbox_cli("render", str(policy), "--target", "compose", "-o", str(target))


def access_token(rendered: Path) -> str:
    services = yaml.safe_load(rendered.read_text())["services"]
    return next(s["environment"]["SANDBOX_ACCESS_TOKEN"] for s in services.values()
                if "SANDBOX_ACCESS_TOKEN" in (s.get("environment") or {}))


def test_render_into_a_file_another_user_made_gives_them_nothing(quickstart_model, other_user, shared, tmp_path):
    """They made it beforehand, readable by all, hoping the secrets would land in it."""
    policy = write_policy(tmp_path)
    target = shared / "team.compose.yaml"
    as_other(other_user, MAKE_AS_OTHER, "file", str(target), "")
    run = render_to(target, policy)
    assert "Traceback" not in run.stderr, run.stderr
    seen = json.loads(as_other(other_user, READ_AS_OTHER, str(target)))[str(target)]
    if run.returncode == 0:  # replaced by a file of the user's own, which the other user cannot open
        token = access_token(target)
        assert token not in seen and seen == "PermissionError", seen
        st = target.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600)
    else:  # or refused, saying why, and their file holds no secret
        assert run.stderr.startswith(f"error: cannot write {target}"), run.stderr
        assert seen == "made by the other user\n"


def test_render_refuses_a_link_at_the_target(quickstart_model, other_user, shared, tmp_path):
    policy = write_policy(tmp_path)
    theirs = shared / "theirs.yaml"
    as_other(other_user, MAKE_AS_OTHER, "file", str(theirs), "")
    link = shared / "team.compose.yaml"
    as_other(other_user, MAKE_AS_OTHER, "link", str(link), str(theirs))
    run = render_to(link, policy)
    assert run.returncode == 1, run.stdout
    assert run.stderr == (f"error: {link} is a symbolic link; refusing to write through it (it holds secrets): "
                          f"remove the link or choose another path\n")
    assert theirs.read_text() == "made by the other user\n" and link.is_symlink()
    assert sorted(p.name for p in shared.iterdir()) == ["team.compose.yaml", "theirs.yaml"]


def test_render_to_a_new_file_is_for_its_user_only(quickstart_model, other_user, shared, tmp_path):
    """The control: a fresh target is written, whole, and only its user can read it."""
    policy = write_policy(tmp_path)
    target = shared / "team.compose.yaml"
    run = render_to(target, policy)
    assert run.returncode == 0, run.stderr
    token = access_token(target)
    assert f"sandbox_token={token}" in run.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(as_other(other_user, READ_AS_OTHER, str(target)))[str(target)] == "PermissionError"


def test_the_model_store_and_the_hash_cache_are_closed_to_other_users(quickstart_model, other_user, shared):
    """Every directory the launcher makes, parents included, is owner-only:
    the other user cannot even list them."""
    home = shared / "home"
    home.mkdir()
    os.chmod(home, 0o755)  # a home others may enter, as many are
    run = sandbox_cli("model", "pull", str(MODEL), env={
        "XDG_DATA_HOME": str(home / ".local" / "share"), "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"), "SANDBOX_MODEL_DIR": ""})  # the default store, under home
    assert run.returncode == 0, run.stderr
    made = [home / p for p in (".local", ".local/share", ".local/share/sandbox", ".local/share/sandbox/models",
                               ".local/share/sandbox/models/.partial", ".cache", ".cache/sandbox")]
    assert {str(p): stat.S_IMODE(p.stat().st_mode) for p in made} == {str(p): 0o700 for p in made}
    seen = json.loads(as_other(other_user, READ_AS_OTHER, *map(str, made)))
    assert set(seen.values()) == {"PermissionError"}, seen
    assert (home / ".local/share/sandbox/models" / MODEL.name).is_file()
