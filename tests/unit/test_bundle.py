"""A bundle is checked whole before anything in it is used: every file
against its manifest, and the saved images against the lock's IDs, so that
loading one cannot put a stranger under one of our tags."""
import hashlib
import io
import json
import tarfile

import pytest

from launcher.commands.bundle import MANIFEST, BundleError, _check_saved_images, is_bundle, open_bundle
from launcher.signing import SignatureError

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
    with pytest.raises(BundleError, match="under no tag"):
        _check_saved_images(io.BytesIO(saved([])), ids, "b")
    with pytest.raises(BundleError, match="lacks sandbox-chat:b1"):
        _check_saved_images(io.BytesIO(tar_bytes({"manifest.json": b"[]"})), ids, "b")
    with pytest.raises(BundleError, match="not `docker save` output"):
        _check_saved_images(io.BytesIO(tar_bytes({"x": b""})), ids, "b")


PARTS = ("dns", "backend", "frontend", "ingress")


def bundle_files(policy: bytes = b"version: 1\n", lock_policy: bytes | None = None, images: bytes | None = None,
                 **manifest_changes) -> dict[str, bytes]:
    """A bundle whose lock pins its policy and four images (all the one in images.tar)."""
    locked_images = {p: {"tag": "sandbox-chat:b1", "id": IMAGE_ID, "inputs": "x"} for p in PARTS}
    lock = {"lock": 1, "policy": {"file": "team.yaml",
                                  "sha256": hashlib.sha256(lock_policy or policy).hexdigest()},
            "images": locked_images}
    files = {"policy/team.yaml": policy, "policy/team.yaml.lock": json.dumps(lock).encode(),
             "images.tar": images if images is not None else saved(["sandbox-chat:b1"])}
    manifest = {"bundle": 1, "name": "team", "policy": "policy/team.yaml",
                "images": {p: {"tag": "sandbox-chat:b1", "id": IMAGE_ID} for p in PARTS},
                "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                          for name, data in files.items()}}
    manifest.update(manifest_changes)
    return {MANIFEST: json.dumps(manifest).encode(), **files}


class Untouchable:
    """An engine that must not be touched: any use fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the engine was touched ({name}) before the bundle's checks passed")


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("SANDBOX_STATE_DIR", str(tmp_path / "state"))


def test_a_policy_is_not_a_bundle(tmp_path):
    (tmp_path / "p.yaml").write_text("version: 1\n")
    (tmp_path / "b").write_bytes(tar_bytes(bundle_files()))
    assert not is_bundle(tmp_path / "p.yaml") and is_bundle(tmp_path / "b")


def two_manifests() -> bytes:
    """images.tar whose `manifest.json` names the locked image and whose later
    `./manifest.json`, the one the engine's unpacking keeps, names another."""
    name = hashlib.sha256(CONFIG).hexdigest() + ".json"
    trojan = CONFIG + b" "
    trojan_name = hashlib.sha256(trojan).hexdigest() + ".json"
    return tar_bytes({"manifest.json": json.dumps([{"Config": name, "RepoTags": ["sandbox-chat:b1"],
                                                     "Layers": []}]).encode(),
                      name: CONFIG, trojan_name: trojan,
                      "./manifest.json": json.dumps([{"Config": trojan_name, "RepoTags": ["sandbox-chat:b1"],
                                                       "Layers": []}]).encode()})


@pytest.mark.parametrize("tamper, says", [
    (lambda f: {**f, "policy/team.yaml": b"version: 2\n"}, "policy/team.yaml is not the file its manifest names"),
    (lambda f: {**f, "extra": b""}, "holds 'extra', which its manifest does not list"),
    (lambda f: {k: v for k, v in f.items() if k != "images.tar"}, "lacks images.tar"),
    (lambda f: {**f, MANIFEST: b"{"}, "its manifest is not JSON"),
    (lambda f: {**f, MANIFEST: b"[" * 100_000}, "its manifest is not JSON"),
    (lambda f: bundle_files(files={"../../etc/x": {}, "images.tar": {}, "policy/team.yaml": {}}), "unsafe file"),
    (lambda f: bundle_files(name="../x"), "no valid sandbox name"),
    (lambda f: {k: v for k, v in bundle_files().items() if k != "policy/team.yaml.lock"}
     | {MANIFEST: json.dumps({**json.loads(bundle_files()[MANIFEST]), "files": {
         k: v for k, v in json.loads(bundle_files()[MANIFEST])["files"].items() if k != "policy/team.yaml.lock"}}
        ).encode()}, "carries no lock"),
    (lambda f: bundle_files(lock_policy=b"version: 3\n"), "its policy is not the one its lock pins"),
    (lambda f: bundle_files(images=two_manifests()), "names 'manifest.json' twice"),
    (lambda f: bundle_files(images=saved(["sandbox-chat:b1", "sandbox-ingress:trojan"])),
     "holds sandbox-ingress:trojan as sha256:"),
])
def test_a_changed_or_strange_bundle_is_refused_before_anything_is_used(tmp_path, tamper, says):
    path = tmp_path / "team.bundle"
    path.write_bytes(tar_bytes(tamper(bundle_files())))
    with pytest.raises(BundleError, match=says):
        open_bundle(Untouchable(), path, None)  # no engine is touched before the checks pass
    unpacked = tmp_path / "data" / "sandbox" / "bundles"
    assert not unpacked.exists() or list(unpacked.iterdir()) == []  # nothing half-unpacked is left


def test_an_unsigned_bundle_under_allowed_signers_touches_nothing(tmp_path):
    """Tried as an attacker would: an unsigned bundle, run with allowed signers
    set, was refused only after its images were loaded (one could retag a
    trojan as an existing tag). Now the signature is checked before anything
    is unpacked or loaded."""
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("alice@example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    path = tmp_path / "team.bundle"
    path.write_bytes(tar_bytes(bundle_files()))
    with pytest.raises(SignatureError, match="not signed"):
        open_bundle(Untouchable(), path, allowed)
    unpacked = tmp_path / "data" / "sandbox" / "bundles"
    assert not unpacked.exists() or list(unpacked.iterdir()) == []


def sparse_bundle() -> bytes:
    """A few KiB that a plain unpacking turns into 2 GiB: a GNU sparse member."""
    files = bundle_files()
    manifest = json.loads(files[MANIFEST])
    manifest["files"]["models/x.gguf"] = {"sha256": "0" * 64, "size": 2 * 2**30}
    files[MANIFEST] = json.dumps(manifest).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("models/x.gguf")
        info.type = tarfile.GNUTYPE_SPARSE
        info.size = 2 * 2**30
        info.sparse = [(2 * 2**30 - 1, 1)]
        tar.addfile(info)
    return out.getvalue()


def test_a_sparse_or_oversized_member_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "team.bundle"
    path.write_bytes(sparse_bundle())
    with pytest.raises(BundleError):
        open_bundle(Untouchable(), path, None)
    assert not (tmp_path / "data").exists() or sum(
        f.stat().st_size for f in (tmp_path / "data").rglob("*") if f.is_file()) < 2**20
    # A member whose header claims more bytes than the bundle holds.
    files = bundle_files()
    manifest = json.loads(files[MANIFEST])
    manifest["files"]["images.tar"]["size"] = 2**40
    files[MANIFEST] = json.dumps(manifest).encode()
    path.write_bytes(tar_bytes(files))
    with pytest.raises(BundleError, match="images.tar is not the file its manifest names"):
        open_bundle(Untouchable(), path, None)


def linked_tar(entries: list[tuple[str, bytes | str | None]]) -> bytes:
    """A tar of files (bytes), links (str: the target) and directories (None)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:") as tar:
        for name, what in entries:
            info = tarfile.TarInfo(name)
            if what is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(what, str):
                info.type, info.linkname = tarfile.SYMTYPE, what
                tar.addfile(info)
            else:
                info.size = len(what)
                tar.addfile(info, io.BytesIO(what))
    return out.getvalue()


def test_images_tar_is_read_through_its_links_as_the_engine_reads_it():
    """Tried as an attacker would: `manifest.json` a link to `d/../m.json`
    with `d` a link to `x/y`. Cleaned as a string it is `m.json`, the
    locked images; the engine follows `d` on the disk first and reads
    `x/m.json`, which names a trojan (and any tag it likes). The check passed
    and the engine loaded the trojan, under a signed lock."""
    name = hashlib.sha256(CONFIG).hexdigest() + ".json"
    good = json.dumps([{"Config": name, "RepoTags": ["sandbox-chat:b1"], "Layers": []}]).encode()
    evil = json.dumps([{"Config": "trojan.json", "RepoTags": ["debian:bookworm-slim"], "Layers": []}]).encode()
    ids = {"sandbox-chat:b1": IMAGE_ID}
    crafted = linked_tar([(name, CONFIG), ("m.json", good), ("x", None), ("x/y", None), ("x/m.json", evil),
                          ("trojan.json", b"{}"), ("d", "x/y"), ("manifest.json", "d/../m.json")])
    with pytest.raises(BundleError, match="which `docker save` never writes"):
        _check_saved_images(io.BytesIO(crafted), ids, "b")
    # A member under a linked directory, and a link to a directory.
    with pytest.raises(BundleError, match="under a link|never writes"):
        _check_saved_images(io.BytesIO(linked_tar([("manifest.json", good), (name, CONFIG), ("d", "x"),
                                                   ("d/layer.tar", b"")])), ids, "b")
    # Control: the link `docker save` does write, between two layers.
    layer = "a" * 64
    other = "b" * 64
    saved_with_link = linked_tar([(name, CONFIG), (f"{layer}/layer.tar", b"layer"), (f"{other}", None),
                                  (f"{other}/layer.tar", f"../{layer}/layer.tar"), ("manifest.json", good)])
    _check_saved_images(io.BytesIO(saved_with_link), ids, "b")
