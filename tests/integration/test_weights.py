"""The bytes that were checked are the bytes that are mounted: a model edited
in place with its mtime set back is refused, and so is one changed after the
policy was checked but before the backend that mounts it was created."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.commands.down import down
from launcher.commands.up import up
from launcher.errors import ModelChanged, PolicyError
from launcher.policy import check_policy_file
from tests.integration.conftest import ca_bundle, labelled


def tamper(model: Path) -> None:
    """Change one byte in place and put the mtime back: size, inode and
    mtime are as they were."""
    before = model.stat()
    with open(model, "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_model_edited_in_place_with_its_mtime_restored_is_refused(gateway, docker_client, own_model):
    path, model, name = own_model
    assert check_policy_file(path)[1] == []  # checked once: the hash is cached
    tamper(model)
    with pytest.raises(PolicyError) as refused:
        up(gateway, path, ca_bundle=ca_bundle(), timeout=30)
    assert "sha256 mismatch" in str(refused.value) and str(model) in str(refused.value)
    assert labelled(docker_client, name) == {"containers": [], "networks": [], "volumes": []}


def test_a_model_changed_between_check_and_mount_is_refused(gateway, docker_client, own_model):
    path, model, name = own_model

    def swap_while_starting(message: str) -> None:
        if message.startswith("starting dns"):  # after the check, before the backend
            tamper(model)

    try:
        with pytest.raises(ModelChanged) as refused:
            up(gateway, path, ca_bundle=ca_bundle(), timeout=30, say=swap_while_starting)
        assert "refusing to start the backend" in str(refused.value) and str(model) in str(refused.value)
        assert f"sandbox-{name}-backend" not in labelled(docker_client, name)["containers"]
    finally:
        down(gateway, name, volumes=True)
