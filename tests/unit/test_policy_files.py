"""Golden files: every bad policy under tests/fixtures/bad is refused with
exactly the messages in the .expected file beside it."""
import hashlib
import os
from pathlib import Path

import pytest

from launcher.policy import check_policy_file
from launcher.policy.loader import MAX_POLICY_BYTES
from tests.conftest import FIXTURES

BAD = FIXTURES / "bad"
GOOD = FIXTURES / "good"


def problems_of(name: str, directory: Path) -> list[str]:
    try:
        policy, problems = check_policy_file(name, check_port=False)
    except RecursionError:  # compared outside: pytest takes minutes to show a traceback this deep
        return ["RecursionError"]
    assert (policy is None) == bool(problems)
    return [str(p).replace(str(FIXTURES), "<fixtures>") for p in problems]


@pytest.mark.parametrize("case", sorted(p.stem for p in BAD.glob("*.yaml")))
def test_bad_policy_gives_expected_messages(case, monkeypatch):
    monkeypatch.chdir(BAD)
    expected = (BAD / f"{case}.expected").read_text().splitlines()
    assert expected, f"{case}.expected is empty"
    assert problems_of(f"{case}.yaml", BAD) == expected


def test_there_are_enough_hostile_policies():
    assert len(list(BAD.glob("*.yaml"))) >= 25


@pytest.mark.parametrize("case", sorted(p.name for p in GOOD.glob("*.yaml")))
def test_good_policy_has_no_problems(case, monkeypatch):
    monkeypatch.chdir(GOOD)
    assert problems_of(case, GOOD) == []


def test_huge_policy_is_refused_without_reading_it_all(tmp_path):
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:
        f.write(b"version: 1\n# " + b"x" * (50 * 1024 * 1024) + b"\n")
    policy, problems = check_policy_file(huge, check_port=False)
    assert policy is None
    assert [p.message for p in problems] == [f"is larger than {MAX_POLICY_BYTES // 1024} KiB; a policy is a short file"]


def test_missing_file_and_directory(tmp_path):
    assert [p.message for p in check_policy_file(tmp_path / "nope.yaml")[1]] == ["no such file"]
    assert [p.message for p in check_policy_file(tmp_path)[1]] == ["is a directory, not a policy file"]


def test_full_policy_fills_every_field(monkeypatch):
    monkeypatch.chdir(GOOD)
    policy, problems = check_policy_file("full.yaml", check_port=False)
    assert problems == []
    assert policy.backend.gpu == ("0", "1")
    assert [m.alias for m in policy.models] == ["tiny", "tiny-again"]
    assert policy.models[0].path == (FIXTURES / "models" / "tiny.gguf").resolve()
    f = policy.frontend
    assert (f.image, f.port, f.backend_url_env, f.backend_key_env, f.user) == ("my-ui:1.0", 3000, "LLM_URL", "LLM_KEY", 1000)
    # YAML numbers and booleans in env become the text a program expects.
    assert f.env == (("MAX_TOKENS", "512"), ("TELEMETRY", "false"), ("THEME", "dark"))
    assert (f.data, f.data_size, policy.accept_unbounded_volumes) == ("/var/lib/ui", "2g", ("data",))


def test_minimal_policy_takes_recipe_defaults(monkeypatch):
    monkeypatch.chdir(GOOD)
    policy, _ = check_policy_file("minimal.yaml", check_port=False)
    assert policy.backend.gpu == "auto"
    assert policy.models[0].context_length == 4096
    assert (policy.frontend.port, policy.frontend.data, policy.frontend.health_path) == (8080, "/data", "/health")
    assert (policy.frontend.data_size, policy.accept_unbounded_volumes) == ("4g", ())


BUSY = "is in use (TCP or UDP, both of which the sandbox holds); stop what holds it or pick another"


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_busy_port_is_a_problem_unless_the_sandbox_holds_it(tmp_path, monkeypatch, kind):
    """A port another program holds, by TCP or (where a page's WebTransport to
    the sandbox's own origin would go) by UDP."""
    import socket
    monkeypatch.chdir(tmp_path)
    with socket.socket(type=socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        if kind == "tcp":
            s.listen()
        port = s.getsockname()[1]
        # The model's path, made absolute, stays on its line: the problem's line and column are as in minimal.yaml.
        text = (GOOD / "minimal.yaml").read_text().replace("18080", str(port)).replace(
            "../models/", f"{FIXTURES / 'models'}/")
        (tmp_path / "busy.yaml").write_text(text)
        _, problems = check_policy_file("busy.yaml")
        assert [str(p) for p in problems] == [
            f"busy.yaml:10:9 ingress.port: port {port} on 127.0.0.1 {BUSY}"]
        _, problems = check_policy_file("busy.yaml", port_holder=lambda name, p: "minimal" if p == port else None)
        assert problems == []
        _, problems = check_policy_file("busy.yaml", port_holder=lambda name, p: "quickstart" if p == port else None)
        assert [str(p) for p in problems] == [
            f"busy.yaml:10:9 ingress.port: port {port} on 127.0.0.1 is used by sandbox quickstart: "
            "`sandbox down quickstart` frees it, or pick another port here"]


def test_sha256_is_cached_and_rechecked_when_the_file_changes(tmp_path):
    from launcher.policy.files import sha256_of
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"a" * 100)
    calls = []
    first = sha256_of(model, lambda done, total, name: calls.append(done))
    assert calls and sha256_of(model, lambda *a: calls.append("again")) == first
    assert "again" not in calls
    model.write_bytes(b"GGUF" + b"b" * 100)
    assert sha256_of(model) != first


def test_a_model_edited_in_place_with_its_mtime_set_back_is_hashed_again(tmp_path):
    from launcher.policy.files import sha256_of
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"a" * 100)
    first = sha256_of(model)
    before = model.stat()
    with open(model, "r+b") as f:  # same size, same inode
        f.seek(50)
        f.write(b"b")
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = model.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (before.st_size, before.st_ino, before.st_mtime_ns)
    assert sha256_of(model) != first


def test_hash_always_hashes_a_file_whose_metadata_a_file_server_kept_the_same(tmp_path, monkeypatch):
    """A file server may report the metadata of before for changed bytes:
    here the cache's stamp is made to match the changed file, as such a
    server would have it."""
    import json

    from launcher.policy.files import cache_path, sha256_of
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"a" * 100)
    first = sha256_of(model)
    model.write_bytes(b"GGUF" + b"b" * 100)
    st = model.stat()
    cache = json.loads(cache_path().read_text())
    cache[str(model)]["stamp"] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    cache_path().write_text(json.dumps(cache))
    assert sha256_of(model) == first  # the cache believed the metadata: the weakness, reproduced
    monkeypatch.setenv("SANDBOX_HASH_ALWAYS", "1")
    assert sha256_of(model) == hashlib.sha256(model.read_bytes()).hexdigest()
    monkeypatch.setenv("SANDBOX_HASH_ALWAYS", "yes")  # any value but 0 turns it on
    calls = []
    sha256_of(model, lambda *a: calls.append(a))
    assert calls


def test_a_hard_link_in_a_build_context_is_refused_where_the_policy_names_the_context(tmp_path):
    """Git keeps no hard links, so this bad policy is made here rather than
    kept under tests/fixtures/bad."""
    policy = tmp_path / "policy.yaml"
    policy.write_text((BAD / "build-context-escaping-symlinks.yaml").read_text()
                      .replace("../models/tiny.gguf", str(FIXTURES / "models" / "tiny.gguf"))
                      .replace("contexts/links", "ui"))
    (tmp_path / "ui").mkdir()
    (tmp_path / "ui" / "Dockerfile").write_text("FROM scratch\nCOPY . /ui\n")
    assert check_policy_file(policy, check_port=False)[1] == []  # control: the same policy, no link
    outside = tmp_path / "elsewhere"
    outside.write_text("not the context's to send\n")
    os.link(outside, tmp_path / "ui" / "notes")
    _, problems = check_policy_file(policy, check_port=False)
    assert [str(p) for p in problems] == [
        f"{policy}:9:14 frontend.build.context: notes is a hard link: the same file has 2 names, which may be "
        "outside the build context; put a copy in instead"]



def test_open_webui_without_an_embedding_model_is_warned_of_where_its_recipe_is_named(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from launcher.cli import app
    without = (GOOD / "embeddings.yaml").read_text().replace("    role: embeddings\n", "")
    (tmp_path / "p.yaml").write_text(without.replace("../models/", f"{FIXTURES / 'models'}/"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["validate", "--no-port-check", "p.yaml", str(GOOD / "embeddings.yaml")])
    assert result.exit_code == 0, result.output  # a warning: the sandbox runs, only its documents would fail
    warned = [line for line in result.stderr.splitlines() if "role: embeddings" in line]
    assert len(warned) == 1 and warned[0].startswith("p.yaml:12:11 frontend.recipe: warning: open-webui "), warned
    assert "processing will fail" in warned[0]
