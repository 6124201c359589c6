"""Signatures of policies: OpenSSH's own ssh-keygen signs and checks, with
keys the tests make. Each refusal has its control: the same check passes on
the untouched files."""
import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.commands.lock import (
    check_signature,
    sign_policy,
    strict_problems,
    verify_signature,
)
from launcher.config import ConfigError
from launcher.lock import LockError, lock_path
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
    from launcher.lock import dump, sha256_bytes
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
    assert check_signature(policy, None).principal is None


def test_an_unknown_signer_is_refused(team):
    policy, alice, bob, allowed = team
    sign_policy(policy, bob)
    with pytest.raises(SignatureError, match=r"signed by ED25519 key SHA256:\S+, who is not in"):
        check_signature(policy, allowed)
    sign_policy(policy, alice)  # control
    assert check_signature(policy, allowed).principal == "alice@example.org"


def test_one_changed_byte_in_the_lock_is_refused(team):
    policy, alice, _, allowed = team
    sign_policy(policy, alice)
    lock = lock_path(policy)
    original = lock.read_bytes()
    lock.write_bytes(original.replace(b'"lock": 1', b'"lock": 2'))
    with pytest.raises(SignatureError, match="the lock changed after it was signed"):
        check_signature(policy, allowed)
    lock.write_bytes(original)
    assert check_signature(policy, allowed).principal == "alice@example.org"


def test_one_changed_byte_in_the_policy_is_refused(team):
    policy, alice, _, allowed = team
    sign_policy(policy, alice)
    original = policy.read_bytes()
    policy.write_bytes(original.replace(b"team", b"tean"))
    for trusted in (allowed, None):  # a signature that is there is never ignored
        with pytest.raises(SignatureError, match="the policy changed after its lock was signed"):
            check_signature(policy, trusted)
    policy.write_bytes(original)
    assert check_signature(policy, allowed).principal == "alice@example.org"


def test_an_unsigned_policy_is_refused_only_when_signers_are_set(team):
    policy, _, _, allowed = team
    assert check_signature(policy, None) is None
    with pytest.raises(SignatureError, match="not signed .no team.yaml.lock.sig.; allowed signers are set"):
        check_signature(policy, allowed)
    lock_path(policy).unlink()
    with pytest.raises(SignatureError, match="not signed .no lock team.yaml.lock."):
        check_signature(policy, allowed)


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
