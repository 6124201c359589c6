"""The lock: what it pins, and the words for each kind of drift."""
import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest

from launcher import lockfile
from launcher.images import ImageBuild, PartImages
from launcher.lockfile import LockError, drift, dump, lock_path, make_lock, read_lock
from tests.unit.helpers import make_policy

IMAGES = PartImages(
    dns=ImageBuild("sandbox-dns-sink:d1", Path("/images/dns-sink"), inputs="d1" * 32),
    backend=ImageBuild("sandbox-llama-cpp:a1", Path("/images/llama-cpp"), inputs="a1" * 32),
    frontend=ImageBuild("ui:latest"),  # an image the user brings: named by its ID
    ingress=ImageBuild("sandbox-ingress:c1", Path("/images/ingress"), inputs="c1" * 32))
IDS = {"sandbox-dns-sink:d1": "sha256:" + "1" * 64, "sandbox-llama-cpp:a1": "sha256:" + "2" * 64,
       "ui:latest": "sha256:" + "3" * 64, "sandbox-ingress:c1": "sha256:" + "4" * 64}


@pytest.fixture
def locked(tmp_path):
    models = []
    for name, size in (("tiny", 10), ("other", 20)):
        (tmp_path / f"{name}.gguf").write_bytes(b"G" * size)
    policy = make_policy(file=tmp_path / "team.yaml")
    policy = replace(policy, models=tuple(replace(m, path=tmp_path / f"{m.alias}.gguf") for m in policy.models))
    models = policy.models
    return make_lock(policy, b"version: 1\n", IMAGES, IDS), policy, models


def test_a_lock_pins_policy_images_models_schema_and_launcher(locked):
    lock, policy, _ = locked
    assert lock["launcher"] == lockfile.__version__ and lock["schema"]["id"] == "urn:sandbox:policy-schema:1"
    assert lock["policy"] == {"file": "team.yaml", "sha256": lockfile.sha256_bytes(b"version: 1\n")}
    assert lock["images"]["backend"] == {"tag": "sandbox-llama-cpp:a1", "inputs": "a1" * 32, "id": IDS[
        "sandbox-llama-cpp:a1"]}
    assert lock["images"]["frontend"]["inputs"] is None
    assert [(m["alias"], m["size"]) for m in lock["models"]] == [("tiny", 10), ("other", 20)]
    assert drift(lock, copy.deepcopy(lock)) == []


def test_the_lock_file_is_stable_json_beside_the_policy(locked, tmp_path):
    lock, _, _ = locked
    assert dump(lock) == dump(json.loads(dump(lock)))  # sorted keys: the same lock is the same bytes
    assert lock_path(tmp_path / "team.yaml") == tmp_path / "team.yaml.lock"
    (tmp_path / "team.yaml.lock").write_bytes(dump(lock))
    assert read_lock(tmp_path / "team.yaml.lock") == lock


@pytest.mark.parametrize("content, says", [
    (None, "no such lock"), (b"{", "not a readable lock"), (b'{"lock": 9}', "not a lock this launcher reads"),
    (b"[]", "not a lock")])
def test_a_bad_lock_file_is_a_clear_error(tmp_path, content, says):
    path = tmp_path / "p.yaml.lock"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LockError, match=says):
        read_lock(path)


def changed(lock, *keys, value):
    out = copy.deepcopy(lock)
    target = out
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return out


@pytest.mark.parametrize("keys, value, says", [
    (("policy", "sha256"), "f" * 64, "the policy team.yaml: its sha256 was"),
    (("launcher",), "9.9.9", "the launcher: locked with sandbox"),
    (("schema", "id"), "urn:other", "the policy schema"),
    (("images", "backend", "inputs"), "b2" * 32, "the backend image: its build inputs (Dockerfile, build context or "
                                                 "recipe) changed"),
    (("images", "ingress", "tag"), "sandbox-ingress:c2", "the ingress image: its build inputs"),
    (("images", "frontend", "id"), "sha256:" + "9" * 64, "the frontend image ui:latest: locked ID 3333"),
    (("models", 0, "sha256"), "e" * 64, "model tiny: locked sha256"),
    (("models", 1, "size"), 21, "model other: locked sha256"),
])
def test_each_kind_of_drift_is_named(locked, keys, value, says):
    lock, _, _ = locked
    current = changed(lock, *keys, value=value)
    [change] = drift(lock, current)
    assert says in change


def test_an_image_built_here_is_named_by_its_inputs_unless_it_came_from_a_bundle(locked):
    lock, _, _ = locked
    rebuilt = changed(lock, "images", "dns", "id", value="sha256:" + "8" * 64)
    assert drift(lock, rebuilt) == []  # rebuilt from the same inputs: timestamps differ, the lock does not care
    [change] = drift(lock, rebuilt, same_image_ids=True)
    assert "the dns image sandbox-dns-sink:d1: locked ID 1111" in change
    missing = changed(lock, "images", "frontend", "id", value=None)
    assert "this machine has no such image" in drift(lock, missing)[0]


def test_models_added_or_removed_are_named(locked):
    lock, _, _ = locked
    current = copy.deepcopy(lock)
    current["models"] = current["models"][:1] + [{"alias": "new", "sha256": "a" * 64, "size": 1}]
    assert drift(lock, current) == ["model new: not in the lock",
                                    "model other: in the lock, no longer in the policy"]


def test_an_image_runs_only_if_the_launcher_built_it_or_a_lock_pins_it(tmp_path, monkeypatch):
    from launcher import build_records
    from launcher.errors import ImageSwapped
    monkeypatch.setenv("SANDBOX_STATE_DIR", str(tmp_path))
    tag = "sandbox-ingress:0123456789abcdef"
    assert build_records.may_run(tag, "sha256:old") is False  # no record: built again
    build_records.save(tag, [], "sha256:built")
    assert build_records.may_run(tag, "sha256:built") is True
    assert build_records.may_run(tag, "sha256:trojan", pinned="sha256:trojan") is True  # the lock pins it
    with pytest.raises(ImageSwapped, match=f"the image {tag} is now sha256:trojan, which this launcher neither"):
        build_records.may_run(tag, "sha256:trojan")
    build_records.loaded(tag, "sha256:bundled", "team.bundle")
    assert build_records.may_run(tag, "sha256:bundled") is False  # another policy's: built again
    assert build_records.may_run(tag, "sha256:built") is True  # control: still ours
    build_records.loaded(tag, "sha256:built", "made-here.bundle")  # the bytes built here, carried back
    assert build_records.may_run(tag, "sha256:built") is True
