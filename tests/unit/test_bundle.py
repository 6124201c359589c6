"""A bundle is checked whole before anything in it is used: every file
against its manifest, and the saved images against the lock's IDs, so that
loading one cannot put a stranger under one of our tags."""
import hashlib
import io
import json
import tarfile

import pytest

from launcher.commands.bundle import MANIFEST, BundleError, _check_saved_images, is_bundle, open_bundle

CONFIG = b'{"architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": []}}'
IMAGE_ID = "sha256:" + hashlib.sha256(CONFIG).hexdigest()


def tar_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def saved(tags: list[str], config: bytes = CONFIG) -> bytes:
    """What `docker save` writes, reduced to what is checked."""
    name = hashlib.sha256(config).hexdigest() + ".json"
    return tar_bytes({"manifest.json": json.dumps([{"Config": name, "RepoTags": tags, "Layers": []}]).encode(),
                      name: config})


def test_saved_images_must_be_the_locked_ones():
    ids = {"sandbox-chat:b1": IMAGE_ID}
    _check_saved_images(io.BytesIO(saved(["sandbox-chat:b1"])), ids, "b")  # control
    with pytest.raises(BundleError, match="holds sandbox-llama-cpp:a1 as sha256:"):
        _check_saved_images(io.BytesIO(saved(["sandbox-chat:b1", "sandbox-llama-cpp:a1"])), ids, "b")
    with pytest.raises(BundleError, match="which its lock does not pin"):
        _check_saved_images(io.BytesIO(saved(["sandbox-chat:b1"], config=CONFIG + b" ")), ids, "b")
    with pytest.raises(BundleError, match="lacks sandbox-chat:b1"):
        _check_saved_images(io.BytesIO(saved([])), ids, "b")
    with pytest.raises(BundleError, match="not `docker save` output"):
        _check_saved_images(io.BytesIO(tar_bytes({"x": b""})), ids, "b")


def bundle_files(policy: bytes = b"version: 1\n", **manifest_changes) -> dict[str, bytes]:
    files = {"policy/team.yaml": policy, "images.tar": saved(["sandbox-chat:b1"])}
    manifest = {"bundle": 1, "name": "team", "policy": "policy/team.yaml",
                "images": {p: {"tag": "t", "id": "i"} for p in ("dns", "backend", "frontend", "ingress")},
                "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                          for name, data in files.items()}}
    manifest.update(manifest_changes)
    return {MANIFEST: json.dumps(manifest).encode(), **files}


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


def test_a_policy_is_not_a_bundle(tmp_path):
    (tmp_path / "p.yaml").write_text("version: 1\n")
    (tmp_path / "b").write_bytes(tar_bytes(bundle_files()))
    assert not is_bundle(tmp_path / "p.yaml") and is_bundle(tmp_path / "b")


@pytest.mark.parametrize("tamper, says", [
    (lambda f: {**f, "policy/team.yaml": b"version: 2\n"}, "policy/team.yaml is not the file its manifest names"),
    (lambda f: {**f, "extra": b""}, "holds 'extra', which its manifest does not list"),
    (lambda f: {k: v for k, v in f.items() if k != "images.tar"}, "lacks images.tar"),
    (lambda f: {**f, MANIFEST: b"{"}, "its manifest is not JSON"),
    (lambda f: bundle_files(files={"../../etc/x": {}, "images.tar": {}, "policy/team.yaml": {}}), "unsafe file"),
    (lambda f: bundle_files(name="../x"), "no valid sandbox name"),
])
def test_a_changed_or_strange_bundle_is_refused_before_anything_is_used(tmp_path, tamper, says):
    path = tmp_path / "team.bundle"
    path.write_bytes(tar_bytes(tamper(bundle_files())))
    with pytest.raises(BundleError, match=says):
        open_bundle(None, path)  # no engine is touched before the checks pass
    unpacked = tmp_path / "data" / "sandbox" / "bundles"
    assert not unpacked.exists() or list(unpacked.iterdir()) == []  # nothing half-unpacked is left
