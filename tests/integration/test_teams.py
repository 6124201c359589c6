"""Vetted policies for teams on the real engine: a lock that refuses every kind
of drift, signatures that `up` requires when allowed signers are set, and a
bundle that carries a sandbox to a machine that builds and pulls nothing."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import docker.errors
import pytest
import yaml

from launcher import images as image_recipes
from launcher import lockfile
from launcher.commands.bundle import make_bundle, open_bundle
from launcher.commands.down import down
from launcher.commands.lock import lock, sign_policy
from launcher.commands.prepare import prepare
from launcher.commands.status import status
from launcher.commands.up import up
from launcher.errors import ImageSwapped, PolicyError
from launcher.lockfile import LockError
from launcher.resources import IMAGES_DIR
from launcher.signing import SignatureError
from tests.integration.conftest import ca_bundle, ui_json, write_policy

pytestmark = pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs ssh-keygen (openssh-client)")


def chat(result, text: str) -> list[str]:
    ui_json(result, "api/chat", {"messages": [{"role": "user", "content": text}], "max_tokens": 4})
    return [m["content"] for m in ui_json(result, "api/history", timeout=30)["messages"]]


def refused(gateway, path: Path, **kwargs) -> str:
    with pytest.raises((LockError, SignatureError, PolicyError)) as e:
        prepare(gateway, path, ca_bundle(), **kwargs)
    return str(e.value)


@pytest.fixture
def keys(tmp_path, monkeypatch):
    """alice (allowed) and bob (not), and the allowed-signers file."""
    monkeypatch.delenv("SANDBOX_ALLOWED_SIGNERS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    made = {}
    for name in ("alice", "bob"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(tmp_path / name)],
                       check=True)
        made[name] = tmp_path / name
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("alice@example.org " + " ".join((tmp_path / "alice.pub").read_text().split()[:2]) + "\n")
    return made["alice"], made["bob"], allowed


def test_a_lock_refuses_each_kind_of_drift(gateway, docker_client, own_model, monkeypatch):
    path, model, _ = own_model
    # The front-end is built from a context beside the policy (a copy of the chat recipe).
    shutil.copytree(IMAGES_DIR / "chat", path.parent / "ui")
    policy = yaml.safe_load(path.read_text())
    policy["frontend"] = {"build": {"context": "ui"}, "data": "/data", "health_path": "/health"}
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    started = time.monotonic()
    lock_file, locked, _ = lock(gateway, path, ca_bundle())
    print(f"lock took {time.monotonic() - started:.1f} s")
    assert lock_file == path.with_name(path.name + ".lock") and locked["images"]["frontend"]["id"]
    prepare(gateway, path, ca_bundle())  # control: nothing changed, nothing refused

    def drifted(change, undo, says):
        change()
        try:
            assert says in refused(gateway, path)
        finally:
            undo()
        prepare(gateway, path, ca_bundle())

    original = path.read_text()
    drifted(lambda: path.write_text(original.replace("cpus: 2", "cpus: 1")), lambda: path.write_text(original),
            "the policy " + path.name + ": its sha256 was")
    page = path.parent / "ui" / "index.html"
    html = page.read_text()
    drifted(lambda: page.write_text(html + "<!-- changed -->"), lambda: page.write_text(html),
            "the frontend image: its build inputs (Dockerfile, build context or recipe) changed")
    dockerfile = path.parent / "ui" / "Dockerfile"
    recipe = dockerfile.read_text()
    drifted(lambda: dockerfile.write_text(recipe + "# changed\n"), lambda: dockerfile.write_text(recipe),
            "the frontend image: its build inputs")
    # The launcher's own recipes (an upgrade, or a changed checkout).
    changed_recipes = path.parent / "recipes"
    shutil.copytree(IMAGES_DIR, changed_recipes)
    (changed_recipes / "ingress" / "start.sh").write_text((IMAGES_DIR / "ingress" / "start.sh").read_text() + "\n")
    drifted(lambda: monkeypatch.setattr(image_recipes, "IMAGES_DIR", changed_recipes),
            lambda: monkeypatch.setattr(image_recipes, "IMAGES_DIR", IMAGES_DIR), "the ingress image: its build inputs")
    drifted(lambda: monkeypatch.setattr(lockfile, "__version__", "99.0"),
            lambda: monkeypatch.setattr(lockfile, "__version__", locked["launcher"]), "the launcher: locked with sandbox")
    # The model: a changed byte fails the policy's own sha256; a policy that
    # names the new bytes is drift from the lock.
    weights = model.read_bytes()
    model.write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    try:
        assert f"{model}: sha256 mismatch" in refused(gateway, path)
        new_sha = hashlib.sha256(model.read_bytes()).hexdigest()
        path.write_text(original.replace(locked["models"][0]["sha256"], new_sha))
        message = refused(gateway, path)
        assert "model smollm2: locked sha256" in message and "the policy" in message
    finally:
        model.write_bytes(weights)
        path.write_text(original)
    prepare(gateway, path, ca_bundle())

    # A front-end image the user brings is named by its ID: retagging it is drift.
    brought = f"sandbox-test-brought-ui:{uuid.uuid4().hex[:8]}"  # a crashed run's tag is no part of this run
    docker_client.images.get(locked["images"]["frontend"]["tag"]).tag(brought)
    try:
        policy["frontend"] = {"image": brought, "data": "/data", "health_path": "/health"}
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        lock(gateway, path, ca_bundle())
        prepare(gateway, path, ca_bundle())
        docker_client.images.get(locked["images"]["ingress"]["tag"]).tag(brought)
        assert f"the frontend image {brought}: locked ID" in refused(gateway, path)
    finally:
        docker_client.images.remove(brought)


def test_relock_pins_a_change_on_purpose(gateway, tmp_path):
    path = write_policy(tmp_path)
    lock(gateway, path, ca_bundle())
    path.write_text(path.read_text().replace("cpus: 2", "cpus: 1"))
    assert "its sha256 was" in refused(gateway, path)
    said: list[str] = []
    result = up(gateway, path, ca_bundle=ca_bundle(), relock=True, say=said.append)
    try:
        assert any(m.startswith(f"wrote {path}.lock") for m in said)
        prepare(gateway, path, ca_bundle())  # the new lock holds
    finally:
        down(gateway, result.name, volumes=True)


def test_signed_policies_under_allowed_signers(gateway, tmp_path, keys, monkeypatch):
    alice, bob, allowed = keys
    path = write_policy(tmp_path)
    assert "not signed (no lock" in refused(gateway, path, allowed_signers=allowed)
    lock(gateway, path, ca_bundle())
    assert "not signed (no " in refused(gateway, path, allowed_signers=allowed)
    sign_policy(path, bob)
    assert "who is not in" in refused(gateway, path, allowed_signers=allowed)
    sign_policy(path, alice)
    # The setting from the environment, and from the per-user config file, as from the flag.
    monkeypatch.setenv("SANDBOX_ALLOWED_SIGNERS", str(allowed))
    result = up(gateway, path, ca_bundle=ca_bundle())
    try:
        [report] = status(gateway, result.name)
        assert report["signed_by"]["principal"] == "alice@example.org"
        lock_file = path.with_name(path.name + ".lock")
        signed = lock_file.read_bytes()
        lock_file.write_bytes(signed.replace(b'"lock": 1', b'"lock":  1'))
        assert "the lock changed after it was signed" in refused(gateway, path)
        lock_file.write_bytes(signed)
        original = path.read_bytes()
        path.write_bytes(original.replace(b"cpus: 2", b"cpus: 3"))
        assert "the policy changed after its lock was signed by alice@example.org" in refused(gateway, path)
        path.write_bytes(original)
        monkeypatch.delenv("SANDBOX_ALLOWED_SIGNERS")
        config = tmp_path / "config" / "sandbox" / "config.yaml"
        config.parent.mkdir(parents=True)
        config.write_text(f"allowed_signers: {allowed}\n")
        sign_policy(path, bob)
        assert "who is not in" in refused(gateway, path)
        with pytest.raises(LockError, match="--relock writes a new lock, which no allowed signer has signed"):
            up(gateway, path, ca_bundle=ca_bundle(), relock=True)
        # The control: the refused relock changed nothing, what runs is alice's.
        [report] = status(gateway, result.name)
        assert report["signed_by"]["principal"] == "alice@example.org"
        down(gateway, result.name)  # its volumes stay, so `status` still lists it
        [report] = status(gateway, result.name)
        assert report["signed_by"] is None  # nothing runs that anyone signed
    finally:
        down(gateway, result.name, volumes=True)


def test_a_bundle_carries_the_sandbox_to_an_engine_without_its_images(gateway, docker_client, tmp_path, keys,
                                                                      monkeypatch):
    alice, _, allowed = keys
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    # The images this test removes are its own, never the quick-start images
    # other tests use: recipes with a file of this run in each context have
    # tags of their own (a tag names every file of its context), and the
    # engine still builds them from its cache (no step uses that file).
    recipes = [("dns-sink", "Dockerfile"), ("llama-cpp", "Dockerfile"), ("llama-cpp", "Dockerfile.cuda"),
               ("chat", "Dockerfile"), ("ingress", "Dockerfile")]
    shared = {image_recipes.recipe_image(*recipe).tag for recipe in recipes}
    own_recipes = tmp_path / "recipes"
    shutil.copytree(IMAGES_DIR, own_recipes)
    run = uuid.uuid4().hex
    for name in {name for name, _ in recipes}:
        (own_recipes / name / "test-run").write_text(run + "\n")
    monkeypatch.setattr(image_recipes, "IMAGES_DIR", own_recipes)
    own = {image_recipes.recipe_image(*recipe).tag for recipe in recipes}
    assert not own & shared
    path = write_policy(tmp_path)
    try:
        started = time.monotonic()
        lock(gateway, path, ca_bundle())
        sign_policy(path, alice)
        signed = time.monotonic()
        bundle = tmp_path / "usb" / "team.bundle"
        bundle.parent.mkdir()
        manifest = make_bundle(gateway, path, bundle, models=True)
        bundled = time.monotonic()
        print(f"lock+sign {signed - started:.1f} s, bundle {bundled - signed:.1f} s, "
              f"{bundle.stat().st_size / 2**20:.0f} MiB")

        # Another machine: none of the images, no policy, no model beside it.
        tags = [image["tag"] for image in manifest["images"].values()]
        assert set(tags) <= own, tags
        for tag in tags:
            # Untagged, not forced: bytes another tag names stay in the engine;
            # the load below still hands the engine every byte of images.tar.
            docker_client.images.remove(tag)
        assert not any(gateway.state.image_present(tag) for tag in tags)
        said: list[str] = []
        try:
            result = up(gateway, bundle, ca_bundle=ca_bundle(), allowed_signers=allowed, say=said.append,
                        on_build_line=lambda line: said.append("build: " + line))
            print(f"up from the bundle {result.seconds['total']:.1f} s (loading {result.seconds['bundle']:.1f} s)")
            assert not any(m.startswith(("building image", "build: ")) for m in said), said
            assert any(m.startswith("loading 4 images") for m in said)
            for part, image in manifest["images"].items():
                assert gateway.state.image_id(image["tag"]) == image["id"], part
            assert str(tmp_path / "data") in str(result.prepared.policy.file)
            assert "hello" in chat(result, "hello")
            [report] = status(gateway, result.name)
            assert report["healthy"] and report["signed_by"]["principal"] == "alice@example.org"
        finally:
            down(gateway, manifest["name"], volumes=True)

        # A changed byte anywhere in the bundle is refused before anything is used.
        data = bytearray(bundle.read_bytes())
        at = data.index(b"cpus: 2")
        data[at + 6] = ord("3")
        tampered = tmp_path / "tampered.bundle"
        tampered.write_bytes(bytes(data))
        with pytest.raises(Exception, match="is not the file its manifest names"):
            up(gateway, tampered, ca_bundle=ca_bundle())
    finally:
        for tag in own:
            try:
                docker_client.images.remove(tag)
            except docker.errors.ImageNotFound:
                pass


def crafted_images_tar(gateway, saved_tag: str, as_tag: str) -> bytes:
    """`docker save` of `saved_tag`, rewritten to name it `as_tag`: what an
    attacker puts in a bundle to load a stranger under one of our tags."""
    source = io.BytesIO(b"".join(gateway.state.save_images([saved_tag])))
    out = io.BytesIO()
    with tarfile.open(fileobj=source, mode="r:") as saved, tarfile.open(fileobj=out, mode="w:") as crafted:
        for member in saved:
            data = saved.extractfile(member).read() if member.isreg() else None
            if member.name in ("manifest.json", "repositories"):
                data = data.replace(saved_tag.encode(), as_tag.encode()).replace(
                    saved_tag.split(":")[0].encode(), as_tag.split(":")[0].encode()).replace(
                    saved_tag.split(":")[1].encode(), as_tag.split(":")[1].encode())
                member.size = len(data)
            crafted.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def trojan(docker_client, name: str) -> str:
    """A tiny image of no use, made here: its ID."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w:") as tar:
        data = name.encode()
        info = tarfile.TarInfo("trojan")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    repository, tag = name.split(":")
    docker_client.api.import_image_from_data(layer.getvalue(), repository=repository, tag=tag)
    return docker_client.images.get(name).id


def unsigned_bundle(path: Path, out: Path, images_tar: bytes, tag: str, image_id: str) -> None:
    """A bundle that is whole and consistent (every hash matches, its lock pins
    its images), but that no one signed."""
    policy = path.read_bytes()
    lock_bytes = json.dumps({"lock": 1, "policy": {"file": path.name, "sha256": hashlib.sha256(policy).hexdigest()},
                             "images": {part: {"tag": tag, "id": image_id, "inputs": "x"} for part in lockfile.PART_ORDER}
                             }).encode()
    files = {f"policy/{path.name}": policy, f"policy/{path.name}.lock": lock_bytes, "images.tar": images_tar}
    manifest = {"bundle": 1, "name": "trojan", "policy": f"policy/{path.name}",
                "images": {part: {"tag": tag, "id": image_id} for part in lockfile.PART_ORDER},
                "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()}}
    with tarfile.open(out, "w:") as tar:
        for name, data in {"sandbox-bundle.json": json.dumps(manifest).encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_refused_bundle_changes_nothing_and_a_retagged_image_never_runs(gateway, docker_client, tmp_path, keys,
                                                                          monkeypatch):
    """Tried as an attacker would: an unsigned bundle whose images.tar tags a
    trojan as an existing tag of ours, run with allowed signers set, was
    refused ("not signed") only after the engine had loaded it: the tag
    pointed at the trojan, and the next `up` of a signed, locked policy
    started it. Now the signature is checked before the engine sees anything,
    and `up` runs an image built here only if the launcher built or loaded that
    very ID, or the lock pins it."""
    _, _, allowed = keys
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    path = write_policy(tmp_path)
    lock(gateway, path, ca_bundle())  # builds here (and records) what the lock pins
    target = json.loads(lockfile.lock_path(path).read_bytes())["images"]["ingress"]["tag"]
    original = gateway.state.image_id(target)
    name = f"sandbox-test-trojan:{uuid.uuid4().hex[:8]}"
    trojan_id = trojan(docker_client, name)
    bundle = tmp_path / "trojan.bundle"
    unsigned_bundle(path, bundle, crafted_images_tar(gateway, name, target), target, trojan_id)
    second = f"sandbox-test-trojan:{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(SignatureError, match="not signed"):
            up(gateway, bundle, ca_bundle=ca_bundle(), allowed_signers=allowed)
        assert gateway.state.image_id(target) == original  # the engine is as it was

        # Control: the same bundle, with no signers set, is one the user chose
        # to trust; it loads the trojan under our tag (so the attack above would
        # have worked had the load come first).
        open_bundle(gateway, bundle, None)
        assert gateway.state.image_id(target) == trojan_id
        # A plain policy then builds its own image again instead of running the bundle's.
        said: list[str] = []
        prepared = prepare(gateway, path, ca_bundle())
        assert ("build", "present, but not built here from its inputs: built again") in {
            (a.verb, a.reason) for a in prepared.plan.actions if a.name == target}
        lock(gateway, path, ca_bundle(), say=said.append)
        assert f"building image {target}" in said and gateway.state.image_id(target) not in (trojan_id, None)

        # A tag moved by hand (`docker tag`) to an image the launcher never made is refused, named.
        docker_client.images.get(trojan(docker_client, second)).tag(target)
        with pytest.raises(ImageSwapped, match=f"the image {target} is now sha256:"):
            prepare(gateway, path, ca_bundle())
        with pytest.raises(ImageSwapped):
            lock(gateway, path, ca_bundle())
    finally:
        docker_client.images.get(original).tag(target)
        for image in (name, second):
            try:
                docker_client.images.remove(image, force=True)
            except Exception:
                pass
    prepare(gateway, path, ca_bundle())  # control: our own image runs
