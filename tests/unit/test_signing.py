"""Signatures of policies: OpenSSH's own ssh-keygen signs and checks, with
keys the tests make. Each refusal has its control: the same check passes on
the untouched files."""
import builtins
import io
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from launcher.commands.lock import (
    check_signature,
    sign_policy,
    strict_problems,
    verify_signature,
)
from launcher.config import ConfigError
from launcher.lockfile import LockError, lock_path
from launcher.policy.source import read_source
from launcher.signing import SignatureError, allowed_signers_setting, signature_path

pytestmark = pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs ssh-keygen (openssh-client)")


def make_key(directory: Path, name: str) -> Path:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


@pytest.fixture
def team(tmp_path, monkeypatch):
    """A policy with a lock, alice's and bob's keys, and a file allowing alice."""
    monkeypatch.delenv("SANDBOX_ALLOWED_SIGNERS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    policy = tmp_path / "team.yaml"
    policy.write_text("version: 1\nname: team\n")
    from launcher.lockfile import dump, sha256_bytes
    lock_path(policy).write_bytes(dump({"lock": 1, "policy": {"file": "team.yaml",
                                                              "sha256": sha256_bytes(policy.read_bytes())}}))
    alice, bob = make_key(tmp_path, "alice"), make_key(tmp_path, "bob")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("alice@example.org " + " ".join(Path(f"{alice}.pub").read_text().split()[:2]) + "\n")
    return policy, alice, bob, allowed


def test_a_signed_policy_names_its_signer(team):
    policy, alice, _, allowed = team
    signature, signer = sign_policy(policy, alice)
    assert signature == signature_path(lock_path(policy)) and signer.key.startswith("ED25519 key SHA256:")
    checked = verify_signature(policy, allowed)
    assert checked.principal == "alice@example.org" and checked.key == signer.key
    # Without allowed signers, a signature is still checked to be sound, and its key named.
    assert check_signature(read_source(policy), None).principal is None


def test_an_unknown_signer_is_refused(team):
    policy, alice, bob, allowed = team
    sign_policy(policy, bob)
    with pytest.raises(SignatureError, match=r"signed by ED25519 key SHA256:\S+, who is not in"):
        check_signature(read_source(policy), allowed)
    sign_policy(policy, alice)  # control
    assert check_signature(read_source(policy), allowed).principal == "alice@example.org"


def test_one_changed_byte_in_the_lock_is_refused(team):
    policy, alice, _, allowed = team
    sign_policy(policy, alice)
    lock = lock_path(policy)
    original = lock.read_bytes()
    lock.write_bytes(original.replace(b'"lock": 1', b'"lock": 2'))
    with pytest.raises(SignatureError, match="the lock changed after it was signed"):
        check_signature(read_source(policy), allowed)
    lock.write_bytes(original)
    assert check_signature(read_source(policy), allowed).principal == "alice@example.org"


def test_one_changed_byte_in_the_policy_is_refused(team):
    policy, alice, _, allowed = team
    sign_policy(policy, alice)
    original = policy.read_bytes()
    policy.write_bytes(original.replace(b"team", b"tean"))
    for trusted in (allowed, None):  # a signature that is there is never ignored
        with pytest.raises(SignatureError, match="the policy changed after its lock was signed"):
            check_signature(read_source(policy), trusted)
    policy.write_bytes(original)
    assert check_signature(read_source(policy), allowed).principal == "alice@example.org"


def test_an_unsigned_policy_is_refused_only_when_signers_are_set(team):
    policy, _, _, allowed = team
    assert check_signature(read_source(policy), None) is None
    with pytest.raises(SignatureError, match="not signed .no team.yaml.lock.sig.; allowed signers are set"):
        check_signature(read_source(policy), allowed)
    lock_path(policy).unlink()
    with pytest.raises(SignatureError, match="not signed .no lock team.yaml.lock."):
        check_signature(read_source(policy), allowed)


def test_a_stale_lock_is_not_signed(team):
    policy, alice, _, _ = team
    policy.write_text(policy.read_text() + "# changed\n")
    with pytest.raises(LockError, match="changed since it was locked"):
        sign_policy(policy, alice)
    assert not signature_path(lock_path(policy)).exists()


def test_the_trust_setting_comes_from_the_flag_the_environment_or_the_config_file(team, tmp_path, monkeypatch):
    _, _, _, allowed = team
    assert allowed_signers_setting(None) is None
    config = tmp_path / "config" / "sandbox" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("allowed_signers: team_signers\n")  # relative to the config's directory
    assert allowed_signers_setting(None) == config.parent / "team_signers"
    monkeypatch.setenv("SANDBOX_ALLOWED_SIGNERS", str(allowed))
    assert allowed_signers_setting(None) == allowed
    assert allowed_signers_setting(Path("/flag")) == Path("/flag")
    monkeypatch.delenv("SANDBOX_ALLOWED_SIGNERS")
    config.write_text("allowed_signers: [1]\n")
    with pytest.raises(ConfigError, match="allowed_signers must be a path"):
        allowed_signers_setting(None)


def test_validate_strict_wants_a_current_lock_and_a_signature(team):
    policy, alice, _, allowed = team
    [problem] = strict_problems(policy, allowed)
    assert "not signed" in problem.message
    sign_policy(policy, alice)
    assert strict_problems(policy, allowed) == []
    assert strict_problems(policy, None) == []
    policy.write_text(policy.read_text() + "# changed\n")
    [problem] = strict_problems(policy, None)
    assert "changed since team.yaml.lock was written" in problem.message
    lock_path(policy).unlink()
    [problem] = strict_problems(policy, None)
    assert "--strict needs a lock" in problem.message


@pytest.fixture
def reads(monkeypatch):
    """Counts every opening of a file for reading, by path; `swap_after[path]`
    puts other bytes in the file right after its next read, as an attacker
    watching with inotify would."""
    counted, swap_after = Counter(), {}
    real_open = builtins.open

    def counting_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, Path)) and "r" in mode and "+" not in mode:
            path = Path(file).resolve()
            counted[path] += 1
            if path in swap_after:
                data = handle.read()
                handle.close()
                Path(path).write_bytes(swap_after.pop(path))
                return io.BytesIO(data) if "b" in mode else io.StringIO(data.decode())
        return handle
    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    return counted, swap_after


def test_the_policy_the_lock_and_the_signature_are_each_read_once(team, reads):
    policy, alice, _, allowed = team
    sign_policy(policy, alice)
    counted, _ = reads
    counted.clear()
    assert verify_signature(policy, allowed).principal == "alice@example.org"
    files = [policy, lock_path(policy), signature_path(lock_path(policy))]
    assert [counted[f.resolve()] for f in files] == [1, 1, 1]
    counted.clear()
    assert strict_problems(policy, allowed) == []
    assert [counted[f.resolve()] for f in files] == [1, 1, 1]


def test_a_lock_swapped_after_it_was_read_changes_nothing(team, reads):
    """Tried as an attacker would: swap the lock (and the policy) for an
    unsigned change right after the signature check read it. The check read
    the lock once; it ran the change as "signed by alice", 10 times of 10.
    Now every check and the run use the bytes that were read."""
    policy, alice, _, allowed = team
    sign_policy(policy, alice)
    reviewed = policy.read_bytes()
    from launcher.lockfile import dump, sha256_bytes
    evil_policy = b"version: 1\nname: evil\n"
    evil_lock = dump({"lock": 1, "policy": {"file": "team.yaml", "sha256": sha256_bytes(evil_policy)}})
    _, swap_after = reads
    swap_after[lock_path(policy).resolve()] = evil_lock
    swap_after[policy.resolve()] = evil_policy
    source = read_source(policy)
    assert policy.read_bytes() == evil_policy and lock_path(policy).read_bytes() == evil_lock  # the swap happened
    assert check_signature(source, allowed).principal == "alice@example.org"
    # What runs is what was signed: the policy as read, not the file now.
    assert source.policy == reviewed
    from launcher.policy.loader import load
    doc, _ = load(source.file, raw=source.policy)
    assert doc.data["name"] == "team"
    # Control: read now, the swapped files are refused.
    with pytest.raises(SignatureError, match="does not match the lock"):
        check_signature(read_source(policy), allowed)
