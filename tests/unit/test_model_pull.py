"""`sandbox model pull` against a local stand-in for the hub and a plain URL
(real HTTP, no real hub): what it contacted, resume, sha256 checks that
leave nothing behind, provenance, and a policy filled in with its comments."""
import hashlib
import json

import pytest
from typer.testing import CliRunner

from launcher.cli import app
from launcher.commands.model import PullError, list_models, pull, verify_models
from launcher.models.download import DownloadError
from launcher.models.store import provenance_path
from tests.support.fake_hub import FakeHub, HubFile
from tests.support.gguf_files import make_gguf

runner = CliRunner()
REPO, REVISION, FILE = "acme/tiny-GGUF", "0123456789abcdef0123456789abcdef01234567", "tiny-Q4.gguf"
SOURCE = f"hf://{REPO}@{REVISION}/{FILE}"


@pytest.fixture
def model(tmp_path) -> bytes:
    return make_gguf(tmp_path / "made.gguf", filler=300_000).read_bytes()  # about 1.2 MB


@pytest.fixture
def hub(model, monkeypatch, tmp_path):
    served = FakeHub(files={f"{REPO}@{REVISION}/{FILE}": HubFile(model), FILE: HubFile(model)}).start()
    monkeypatch.setenv("HF_ENDPOINT", served.endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("SANDBOX_MODEL_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    yield served
    served.stop()


def test_a_hub_file_is_pulled_checked_against_its_lfs_sha256_and_its_provenance_kept(hub, model, tmp_path):
    pulled = pull(SOURCE)
    sha = hashlib.sha256(model).hexdigest()
    assert pulled.path == tmp_path / "store" / FILE and pulled.path.read_bytes() == model and pulled.sha256 == sha
    # What it contacted: the hub (HEAD, with the token) and the CDN link (GET, without it).
    assert [(r["method"], r["host"], r["path"], r["status"]) for r in pulled.contacts.requests] == [
        ("HEAD", "127.0.0.1", f"/{REPO}/resolve/{REVISION}/{FILE}", 200),
        ("GET", "localhost", f"/cdn/{sha}", 200)]
    # Exactly those: the hub client's own extras (telemetry, its agent registry) stay off.
    assert [(r["method"], r["path"].split("?")[0], r["authorization"]) for r in hub.requests] == [
        ("HEAD", f"/{REPO}/resolve/{REVISION}/{FILE}", "Bearer hf_secret_token"), ("GET", f"/cdn/{sha}", None)]
    assert "signature=secret" not in json.dumps(pulled.to_dict())  # a signed link's query is a credential
    prov = json.loads(provenance_path(pulled.path).read_text())
    assert prov["source"] == SOURCE and prov["repo"] == REPO and prov["revision"] == REVISION
    assert prov["commit"] == hub.files[FILE].commit and prov["sha256"] == sha and prov["size"] == len(model)
    assert prov["contacted"] == [f"127.0.0.1:{hub.port}", f"localhost:{hub.port}"] and prov["fetched_at"]
    assert prov["checked_against"] == "expected sha256"
    assert list_models() == [{"path": str(pulled.path), "size": len(model), "sha256": sha, "source": SOURCE,
                              "commit": prov["commit"], "fetched_at": prov["fetched_at"], "provenance": True}]
    assert not list((tmp_path / "store" / ".partial").iterdir())

    # The same file again costs nothing but the hub's answer.
    hub.requests.clear()
    again = pull(SOURCE)
    assert again.reused and [r["method"] for r in hub.requests] == ["HEAD"]


def test_an_interrupted_download_resumes(hub, model, tmp_path):
    hub.break_after = 500_000
    with pytest.raises(DownloadError, match="broke off after|ended at"):
        pull(SOURCE)
    part = tmp_path / "store" / ".partial" / (FILE + ".part")
    assert part.stat().st_size == 500_000 and not (tmp_path / "store" / FILE).exists()
    hub.requests.clear()
    pulled = pull(SOURCE)
    assert [r["range"] for r in hub.requests if r["method"] == "GET"] == ["bytes=500000-"]
    assert pulled.path.read_bytes() == model and not part.exists()


def test_a_wrong_sha256_is_refused_and_leaves_nothing(hub, model, tmp_path):
    with pytest.raises(PullError, match="the hub says its sha256 is"):
        pull(SOURCE, sha256="0" * 64)
    url = f"{hub.endpoint}/plain/{FILE}"
    with pytest.raises(PullError, match=f"sha256 mismatch: expected {'0' * 64}, got"):
        pull(url, sha256="0" * 64)
    store = tmp_path / "store"
    assert list(store.glob("*.gguf")) == [] and list((store / ".partial").glob("*.part")) == []
    with pytest.raises(PullError, match="is not encrypted: give the sha256"):
        pull(url)
    pulled = pull(url, sha256=hashlib.sha256(model).hexdigest())  # control
    assert pulled.path.read_bytes() == model and pulled.provenance["url"] == url


def test_a_file_that_is_not_gguf_is_refused(hub, tmp_path):
    hub.files["junk.gguf"] = HubFile(b"<html>not found</html>")
    with pytest.raises(PullError, match="not a GGUF file"):
        pull(f"{hub.endpoint}/plain/junk.gguf", sha256=hub.files["junk.gguf"].sha256)
    assert not (tmp_path / "store" / "junk.gguf").exists()


def test_offline_and_unpinned_sources_are_refused_with_what_to_do(hub, monkeypatch):
    with pytest.raises(Exception, match="name the revision to pin"):
        pull(f"hf://{REPO}/{FILE}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PullError, match="HF_HUB_OFFLINE is set"):
        pull(SOURCE)
    assert hub.requests == []
    with pytest.raises(PullError, match="the hub answered 404"):
        monkeypatch.delenv("HF_HUB_OFFLINE")
        pull(f"hf://{REPO}@{REVISION}/missing.gguf")


def test_a_local_file_is_imported_and_verified_later(hub, model, tmp_path):
    source = tmp_path / "downloads" / "mine.gguf"
    source.parent.mkdir()
    source.write_bytes(model)
    pulled = pull(str(source))
    assert pulled.contacts.requests == [] and pulled.provenance["source"] == f"file://{source}"
    assert verify_models() == [{"path": str(pulled.path), "ok": True, "sha256": pulled.sha256, "why": None}]
    with open(pulled.path, "r+b") as f:  # one byte changes on disk
        f.seek(100)
        f.write(b"X")
    [checked] = verify_models()
    assert not checked["ok"] and "the file changed" in checked["why"]
    result = runner.invoke(app, ["model", "verify"])
    assert result.exit_code == 1 and "FAILED" in result.stdout


POLICY = """\
# Our team's model. Reviewed by alice.
version: 1
name: team
models:
  - alias: tiny   # the small one
    path: ../models/old.gguf        # will be replaced
    context_length: 2048
backend:
  gpu: none
frontend:
  recipe: chat
ingress:
  port: 8080
"""


def test_pull_fills_in_a_policy_keeping_its_comments(hub, model, tmp_path, monkeypatch):
    policy = tmp_path / "team.yaml"
    policy.write_text(POLICY)
    result = runner.invoke(app, ["model", "pull", SOURCE, "--policy", str(policy)])
    assert result.exit_code == 0, result.output
    sha = hashlib.sha256(model).hexdigest()
    store_path = str(tmp_path / "store" / FILE)
    expected = POLICY.replace("path: ../models/old.gguf", f"path: {store_path}").replace(
        "  - alias: tiny   # the small one\n", f"  - alias: tiny   # the small one\n    sha256: {sha}\n")
    assert policy.read_text() == expected
    assert f"GET http://localhost:{hub.port}/cdn/{sha} -> 200" in result.stdout
    # Its sha256 is now the one expected: on a teammate's machine (an empty
    # store), a pull of other bytes for it is refused.
    monkeypatch.setenv("SANDBOX_MODEL_DIR", str(tmp_path / "teammate"))
    other = tmp_path / "other.gguf"
    make_gguf(other, filler=10)
    refused = runner.invoke(app, ["model", "pull", str(other), "--policy", str(policy), "--name", "other.gguf"])
    assert refused.exit_code == 2 and "sha256 mismatch" in refused.stderr and "Traceback" not in refused.output
    assert policy.read_text() == expected


def test_the_store_can_be_moved_by_the_config_file(hub, tmp_path, monkeypatch):
    monkeypatch.delenv("SANDBOX_MODEL_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    (tmp_path / "config" / "sandbox").mkdir(parents=True)
    (tmp_path / "config" / "sandbox" / "config.yaml").write_text(f"model_dir: {tmp_path / 'elsewhere'}\n")
    assert pull(SOURCE).path.parent == tmp_path / "elsewhere"
