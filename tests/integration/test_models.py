"""Models on the real engine: the memory estimate against what the backend
really uses, and the whole path from a pull to a sandbox that runs the
pulled file with no network; and a pull into a store another local user
(a real one) has planted links in."""
from __future__ import annotations

import hashlib
import json
import os

import yaml

from launcher.commands.down import down
from launcher.commands.model import pull
from launcher.commands.up import up
from launcher.models.facts import estimate, gib, read_facts
from launcher.spec import resource_name
from tests.integration.conftest import MODEL, ca_bundle, ui_json, write_policy
from tests.integration.test_local_users import MAKE_AS_OTHER, as_other, sandbox_cli, shared  # noqa: F401

# Run as the other user: a plain file of theirs with the given text.
PLANT_AS_OTHER = """
import os, sys
with open(os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as f:
    f.write(sys.argv[2])
"""


def test_the_estimate_matches_the_backends_measured_memory(gateway, sandbox):
    result, _ = sandbox
    ui_json(result, "api/chat", {"messages": [{"role": "user", "content": "Tell me about the sea."}],
                                 "max_tokens": 32})
    measured = gateway.state.memory_usage(resource_name(result.name, "backend"))
    need = estimate(read_facts(MODEL), 2048)  # the quick-start policy's context_length
    print(f"estimate {gib(need.working)} working set (+{gib(need.weights)} weights), measured {gib(measured)}: "
          f"ratio {need.working / measured:.2f}")
    # The container is charged for its own memory, and for the weights' pages
    # only when it was the first to read them (else the host's hash did).
    assert 0.6 * need.working <= measured <= 1.4 * need.total


def test_a_pulled_model_runs_in_a_sandbox(gateway, tmp_path, monkeypatch):
    monkeypatch.setenv("SANDBOX_MODEL_DIR", str(tmp_path / "store"))
    path = write_policy(tmp_path)
    policy = yaml.safe_load(path.read_text())
    policy["models"][0]["path"] = "../models/to-be-pulled.gguf"
    del policy["models"][0]["sha256"]
    path.write_text("# Our policy: the comment stays.\n" + yaml.safe_dump(policy, sort_keys=False))
    pulled = pull(str(MODEL), policy=path)
    assert pulled.policy_updated == str(path) and pulled.contacts.requests == []
    text = path.read_text()
    assert text.startswith("# Our policy: the comment stays.\n") and str(pulled.path) in text
    result = up(gateway, path, ca_bundle=ca_bundle())
    try:
        assert result.prepared.policy.models[0].path == pulled.path
        assert ui_json(result, "api/chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    finally:
        down(gateway, result.name, volumes=True)


def test_links_another_user_plants_in_a_shared_store_are_never_followed(quickstart_model, other_user, shared):
    """Tried as an attacker would: in a model store shared by several users
    (group-writable), another user planted links under .partial/; the
    victim's pull wrote the model over one of the victim's files and left
    the store's file a link the attacker owns. Here the other user is real."""
    store, victim = shared / "store", shared / "victim"
    victim.mkdir(mode=0o700)
    notes, config = victim / "notes.txt", victim / "config"
    for path in (notes, config):
        path.write_text("the victim's own\n")
    store.mkdir()
    (store / ".partial").mkdir()
    for directory in (store, store / ".partial"):
        os.chown(directory, os.geteuid(), other_user.pw_gid)
        os.chmod(directory, 0o2770)  # the victim's store, writable by a group the other user is in
    part = store / ".partial" / (MODEL.name + ".part")
    as_other(other_user, MAKE_AS_OTHER, "link", str(part), str(notes))
    as_other(other_user, PLANT_AS_OTHER, str(part) + ".provenance.json", json.dumps({"source": f"file://{MODEL}"}))
    as_other(other_user, MAKE_AS_OTHER, "link", str(store / (MODEL.name + ".provenance.json")), str(config))
    planted = sorted(p.name for p in store.rglob("*"))

    refused = sandbox_cli("model", "pull", str(MODEL), env={"SANDBOX_MODEL_DIR": str(store)})
    assert refused.returncode == 2 and "can be written by other users" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and sorted(p.name for p in store.rglob("*")) == planted
    assert notes.read_text() == config.read_text() == "the victim's own\n"

    # The victim closes the store as the refusal says; the links are still there, and are not followed.
    os.chmod(store, 0o700)
    os.chmod(store / ".partial", 0o700)
    pulled = sandbox_cli("model", "pull", str(MODEL), "--json", env={"SANDBOX_MODEL_DIR": str(store)})
    assert pulled.returncode == 0, pulled.stderr
    model = store / MODEL.name
    assert notes.read_text() == config.read_text() == "the victim's own\n"
    assert not model.is_symlink() and model.stat().st_uid == os.geteuid()
    assert hashlib.sha256(model.read_bytes()).hexdigest() == json.loads(pulled.stdout)["sha256"]
    provenance = store / (MODEL.name + ".provenance.json")
    assert not provenance.is_symlink() and json.loads(provenance.read_text())["source"] == f"file://{MODEL}"
    assert list((store / ".partial").iterdir()) == []


# Run as the other user: move the victim's store away and put a directory of their own in its place.
SWAP_AS_OTHER = """
import os, sys
store = sys.argv[1]
os.rename(store, store + ".moved")
os.mkdir(store, 0o777)
"""


def test_a_store_below_a_directory_another_user_controls_is_refused(quickstart_model, other_user, shared):
    """Tried as an attacker would: a store of the user's own (0700) below a
    directory another user may rename entries in was accepted. Here the other
    user is real, and shows what they could do with it."""
    theirs = shared / "theirs"
    as_other(other_user, "import os, sys; os.mkdir(sys.argv[1]); os.chmod(sys.argv[1], 0o777)", str(theirs))
    store = theirs / "store"
    store.mkdir(mode=0o700)
    refused = sandbox_cli("model", "pull", str(MODEL), env={"SANDBOX_MODEL_DIR": str(store)})
    assert refused.returncode == 2 and f"{theirs}, above the model store" in refused.stderr, refused.stderr
    assert "belongs to another user" in refused.stderr and "Traceback" not in refused.stderr
    assert list(store.iterdir()) == []
    as_other(other_user, SWAP_AS_OTHER, str(store))  # what the refusal keeps from happening mid-pull
    assert store.stat().st_uid == other_user.pw_uid and (theirs / "store.moved").stat().st_uid == os.geteuid()
