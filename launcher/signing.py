"""Signatures of locks in OpenSSH's format (`ssh-keygen -Y sign`, the one git
uses for signed commits), checked against an allowed-signers file in git's
format (`PRINCIPALS KEYTYPE KEY`, one signer a line). OpenSSH's own
ssh-keygen does the cryptography: we only call it.

Who to trust is the user's setting, never the policy's: `--allowed-signers
FILE`, else $SANDBOX_ALLOWED_SIGNERS, else `allowed_signers:` in
$XDG_CONFIG_HOME/sandbox/config.yaml. With one set, `up` runs only policies
whose lock a listed signer signed (docs/teams.md)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from launcher.access import token_file
from launcher.config import config_file_path
from launcher.errors import NotFound, SandboxError
from launcher.private import private_directory, write_private

NAMESPACE = "sandbox-policy"  # a signature for something else (a commit, a file) is not one for a policy
ALLOWED_SIGNERS_ENV = "SANDBOX_ALLOWED_SIGNERS"


class SignatureError(SandboxError):
    exit_code = 2


@dataclass(frozen=True)
class Signer:
    key: str  # "ED25519 key SHA256:..."
    principal: str | None  # who the allowed-signers file says it is; None: not checked against one

    def to_dict(self) -> dict:
        return {"principal": self.principal, "key": self.key}


def signer_file(sandbox: str) -> Path:
    return token_file(sandbox).with_name("signer.json")


def remember_signer(sandbox: str, signer: Signer | None) -> None:
    """Kept beside the access token: who signed the policy the sandbox was last started from."""
    path = signer_file(sandbox)
    if signer is None:
        path.unlink(missing_ok=True)
        return
    write_private(private_directory(path.parent) / path.name, json.dumps(signer.to_dict()) + "\n")


def remembered_signer(sandbox: str) -> dict | None:
    try:
        data = json.loads(signer_file(sandbox).read_text())
    except (OSError, ValueError, RecursionError, NotFound):
        return None
    return data if isinstance(data, dict) else None


def forget_signer(sandbox: str) -> None:
    try:
        signer_file(sandbox).unlink(missing_ok=True)
    except NotFound:
        pass


def signature_path(lock_file: Path) -> Path:
    return lock_file.with_name(lock_file.name + ".sig")


def allowed_signers_setting(flag: Path | None = None) -> Path | None:
    """The user's trust setting: the flag, else the environment, else the config file."""
    if flag:
        return flag
    if os.environ.get(ALLOWED_SIGNERS_ENV):
        return Path(os.environ[ALLOWED_SIGNERS_ENV]).expanduser()
    return config_file_path("allowed_signers")


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if not found:
        raise SignatureError("ssh-keygen (OpenSSH) is needed for signatures: on Debian, apt-get install openssh-client")
    return found


def sign(lock: bytes, lock_file: Path, key: Path) -> bytes:
    """Sign `lock` (the bytes of `lock_file`) with the SSH private key `key`
    (or a public key whose private half is in ssh-agent). Returns the
    signature."""
    if not key.is_file():
        raise SignatureError(f"{key}: no such key file")
    with tempfile.TemporaryDirectory(prefix="sandbox-signature-") as scratch:
        copy = Path(scratch) / lock_file.name
        copy.write_bytes(lock)
        run = subprocess.run([_ssh_keygen(), "-Y", "sign", "-f", str(key), "-n", NAMESPACE, str(copy)],
                             capture_output=True, text=True, check=False, stdin=None)
        if run.returncode != 0:
            raise SignatureError(f"signing with {key} failed: {_last_line(run)}")
        return signature_path(copy).read_bytes()


def verify(message: bytes, signature: bytes | None, signature_file: Path, allowed_signers: Path | None) -> Signer:
    """The signer of `message`, from `signature` (the bytes of `signature_file`,
    read once by the caller), checked against `allowed_signers` (when None,
    only that the signature is sound and whose key made it). Raises
    SignatureError saying what is wrong."""
    if signature is None:
        raise SignatureError(f"{signature_file}: no signature (`sandbox sign` makes one)")
    # ssh-keygen reads a signature from a file: a private copy of the bytes
    # that were read, never the file beside the policy again.
    with tempfile.TemporaryDirectory(prefix="sandbox-signature-") as scratch:
        copy = Path(scratch) / "signature"
        copy.write_bytes(signature)
        return _verify(message, copy, signature_file, allowed_signers)


def _verify(message: bytes, copy: Path, signature_file: Path, allowed_signers: Path | None) -> Signer:
    if allowed_signers is None:
        run = _run(["-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(copy)], message)
        if run.returncode != 0:
            raise SignatureError(f"{signature_file}: not a good signature of the lock ({_last_line(run)})")
        return Signer(_key_of(run.stdout), None)
    if not allowed_signers.is_file():
        raise SignatureError(f"{allowed_signers}: no such allowed-signers file")
    found = _run(["-Y", "find-principals", "-s", str(copy), "-f", str(allowed_signers)], b"")
    principals = [line.strip() for line in found.stdout.splitlines() if line.strip()]
    if found.returncode != 0 or not principals:
        key = _run(["-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(copy)], message)
        made_by = _key_of(key.stdout) if key.returncode == 0 else "an unreadable key"
        raise SignatureError(f"{signature_file}: signed by {made_by}, who is not in {allowed_signers}")
    principal = principals[0]
    run = _run(["-Y", "verify", "-f", str(allowed_signers), "-I", principal, "-n", NAMESPACE,
                "-s", str(copy)], message)
    if run.returncode != 0:
        raise SignatureError(f"{signature_file}: the signature by {principal} does not match the lock: "
                             f"the lock changed after it was signed")
    return Signer(_key_of(run.stdout), principal)


def _run(args: list[str], stdin: bytes) -> subprocess.CompletedProcess:
    done = subprocess.run([_ssh_keygen(), *args], input=stdin, capture_output=True, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                       done.stderr.decode(errors="replace"))


def _key_of(output: str) -> str:
    match = re.search(r"with (\S+ key \S+)", output)
    return match.group(1) if match else "an unknown key"


def _last_line(run: subprocess.CompletedProcess) -> str:
    lines = [line for line in (run.stderr or run.stdout or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit {run.returncode}"
