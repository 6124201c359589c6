"""What the launcher keeps for its user goes into files made new, owner-only,
in directories made owner-only, parents included (launcher/private.py)."""
import json
import os
import stat
from pathlib import Path

import pytest

from launcher.errors import SandboxError
from launcher.private import private_directory, write_private
from tests.support.gguf_files import make_gguf


@pytest.fixture(autouse=True)
def usual_umask():
    old = os.umask(0o022)  # the usual one: what mkdir(parents=True) gives the parents it makes
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_every_directory_made_is_owner_only_parents_included(tmp_path):
    made = private_directory(tmp_path / "a" / "b" / "c")
    assert made == tmp_path / "a" / "b" / "c"
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
    os.chmod(tmp_path / "a", 0o755)  # one there already is left as it is
    private_directory(tmp_path / "a" / "d")
    assert (mode(tmp_path / "a"), mode(tmp_path / "a" / "d")) == (0o755, 0o700)


def test_a_directory_others_can_write_or_own_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    with pytest.raises(SandboxError, match="can be written by every user of this machine"):
        private_directory(shared)
    os.chmod(shared, 0o1777)  # like /tmp: the sticky bit keeps each user's entries their own
    assert private_directory(shared) == shared
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(SandboxError, match="belongs to another user"):
        private_directory(theirs)
    (tmp_path / "file").write_text("")
    with pytest.raises(SandboxError, match="is not a directory"):
        private_directory(tmp_path / "file")


def test_a_private_file_is_made_new_and_owner_only(tmp_path):
    target = tmp_path / "secret"
    write_private(target, "one")
    assert (target.read_text(), mode(target)) == ("one", 0o600)
    # A file that was there, readable by all and with a second name: replaced, not written into.
    target.unlink()
    target.write_text("theirs")
    os.chmod(target, 0o644)
    os.link(target, tmp_path / "other-name")
    write_private(target, b"two")
    assert (target.read_text(), mode(target)) == ("two", 0o600)
    assert (tmp_path / "other-name").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-name", "secret"]  # no temporary file left


def test_a_symbolic_link_at_the_target_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("theirs")
    link = tmp_path / "secret"
    link.symlink_to(elsewhere)
    with pytest.raises(SandboxError, match="is a symbolic link; refusing to write through it"):
        write_private(link, "token")
    assert elsewhere.read_text() == "theirs" and link.is_symlink()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(SandboxError, match="symbolic link"):
        write_private(tmp_path / "dangling", "token")
    assert not (tmp_path / "nowhere").exists()


def test_a_target_that_cannot_be_replaced_leaves_nothing_behind(tmp_path):
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(SandboxError, match="cannot write .*a-directory"):
        write_private(tmp_path / "a-directory", "token")
    assert [p.name for p in tmp_path.iterdir()] == ["a-directory"]


def test_what_the_launcher_keeps_is_owner_only_wherever_it_goes(tmp_path, monkeypatch):
    """Each writer of state, with its base directory not made yet: every
    directory it makes is 0700 and every file it writes 0600."""
    from launcher import access, build_records
    from launcher.commands.model import pull
    from launcher.mutex import one_command_at_a_time
    from launcher.policy.files import sha256_of
    from launcher.signing import Signer, remember_signer
    home = tmp_path / "home"
    monkeypatch.delenv("SANDBOX_STATE_DIR", raising=False)
    monkeypatch.delenv("SANDBOX_MODEL_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    home.mkdir(mode=0o700)

    access.save_token("demo", "t" * 43)
    build_records.save("sandbox-ui:1", [])
    remember_signer("demo", Signer("ED25519 key SHA256:x", "alice"))
    with one_command_at_a_time("demo"):
        pass
    model = tmp_path / "tiny.gguf"
    make_gguf(model)  # a real one: a pull keeps only what the GGUF reader reads
    sha256_of(model)
    pull(str(model))  # the model store, its partial downloads and provenance

    made = sorted(p for p in home.rglob("*"))
    facts = {str(p.relative_to(home)) for p in made if p.is_file() and p.parent.name == "model-facts"}
    assert len(facts) == 1  # the pulled model's, kept by its sha256
    assert {str(p.relative_to(home)) for p in made if p.is_file()} - facts == {
        ".local/state/sandbox/demo/access-token", ".local/state/sandbox/demo/signer.json",
        ".local/state/sandbox/builds/sandbox-ui_1.json", ".local/state/sandbox/locks/demo.lock",
        ".cache/sandbox/sha256.json", ".local/share/sandbox/models/tiny.gguf.provenance.json",
        ".local/share/sandbox/models/tiny.gguf"}
    assert {str(p.relative_to(home)): mode(p) for p in made if p.is_dir() and mode(p) != 0o700} == {}
    # The model itself is the backend's to read through its mount, as any other model file.
    assert {str(p.relative_to(home)): mode(p) for p in made if p.is_file() and mode(p) != 0o600} == {
        ".local/share/sandbox/models/tiny.gguf": 0o644}
    assert json.loads((home / ".local/state/sandbox/demo/signer.json").read_text())["principal"] == "alice"


def test_a_shared_file_is_replaced_through_a_name_no_one_can_guess(tmp_path):
    """A lock, its signature or a policy edited in place went through
    `NAME.tmp`: a link another user left there was followed, and the write
    landed wherever it pointed."""
    from launcher.commands.lock import write_lock
    victim = tmp_path / "victim"
    victim.write_text("theirs\n")
    policy = tmp_path / "team.yaml"
    policy.write_text("version: 1\n")
    (tmp_path / "team.yaml.lock.tmp").symlink_to(victim)
    path, _, _ = write_lock(policy, {"lock": 1})
    assert victim.read_text() == "theirs\n"  # untouched
    assert path.read_text().startswith("{") and oct(path.stat().st_mode & 0o777) != "0o600"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["team.yaml", "team.yaml.lock", "team.yaml.lock.tmp",
                                                           "victim"]
