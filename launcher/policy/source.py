"""A policy file with the lock and the signature that vouch for it, each read
once into memory: every later check and the run itself use these bytes."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from launcher.errors import PolicyError
from launcher.lockfile import MAX_LOCK_BYTES, MAX_SIGNATURE_BYTES, LockError, lock_path, parse_lock, read_small, sha256_bytes
from launcher.policy import loader
from launcher.signing import SignatureError, signature_path


@dataclass(frozen=True)
class PolicySource:
    """A policy with the lock and the signature that vouch for it, each read
    once. Every check (the signature, the lock, drift) and the run itself use
    these bytes: a file swapped after it was read changes nothing."""

    file: Path  # the policy file, symlinks resolved: its lock and build context sit beside it
    display: str  # the policy's path as the user wrote it, for messages
    policy: bytes
    lock: bytes | None
    signature: bytes | None

    @property
    def lock_file(self) -> Path:
        return lock_path(self.file)

    @property
    def signature_file(self) -> Path:
        return signature_path(self.lock_file)

    @property
    def policy_sha256(self) -> str:
        return sha256_bytes(self.policy)

    @cached_property
    def document(self) -> tuple[loader.Document | None, list]:
        """The policy parsed from the bytes read, once for every use (the
        sandbox's name, the checks, where a warning points): the document,
        or None and its problems."""
        return loader.load(self.file, display_name=self.display, raw=self.policy)

    def locked(self) -> dict | None:
        """The lock, parsed from the bytes read (None: there is no lock)."""
        return None if self.lock is None else parse_lock(self.lock, self.lock_file)


def read_source(policy_file: str | Path) -> PolicySource:
    """Read a policy, its lock and its signature, once each. A policy that
    cannot be read is a PolicyError, as when it is loaded."""
    display = str(policy_file)
    file = Path(os.path.realpath(policy_file))
    raw, problems = loader.read(file, display)
    if raw is None:
        raise PolicyError(problems)
    lock = read_small(lock_path(file), MAX_LOCK_BYTES, LockError)
    signature = read_small(signature_path(lock_path(file)), MAX_SIGNATURE_BYTES, SignatureError)
    return PolicySource(file, display, raw, lock, signature)
