"""`sandbox model pull` against a local stand-in for the hub and a plain URL
(real HTTP, no real hub): what it contacted, resume, sha256 checks that
leave nothing behind, provenance, and a policy filled in with its comments."""
import hashlib
import json
import os
import re
import stat
import struct
import threading

import pytest
from huggingface_hub import close_session
from typer.testing import CliRunner

from launcher.cli import app
from launcher.commands.model import PullError, list_models, pull, verify_models
from launcher.errors import SandboxError
from launcher.lockfile import LOCK_FORMAT
from launcher.models import store as model_store
from launcher.models.download import DownloadError, DownloadRefused, Pace
from launcher.models.store import provenance_path
from tests.support.fake_hub import FakeHub, HubFile
from tests.support.hostile_source import Answer, Certificate, HostileSource, make_certificate
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
    # What it contacted: the hub (HEAD) and the CDN link (GET).
    assert [(r["method"], r["host"], r["path"], r["status"]) for r in pulled.contacts.requests] == [
        ("HEAD", "127.0.0.1", f"/{REPO}/resolve/{REVISION}/{FILE}", 200),
        ("GET", "localhost", f"/cdn/{sha}", 200)]
    # Exactly those: the hub client's own extras (telemetry, its agent registry)
    # stay off. This hub speaks plain http: the token goes to neither.
    assert [(r["method"], r["path"].split("?")[0], r["authorization"]) for r in hub.requests] == [
        ("HEAD", f"/{REPO}/resolve/{REVISION}/{FILE}", None), ("GET", f"/cdn/{sha}", None)]
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


# Sources that lie: a hostile server of our own on loopback.

@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def hostile(hub, certificate, monkeypatch):
    """Two hostile servers beside the hub: one over plain http, one over https."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))
    close_session()  # the hub client keeps one, made with the certificates of before
    plain, tls = HostileSource().start(), HostileSource(certificate=certificate).start()
    yield plain, tls
    plain.stop()
    tls.stop()
    close_session()


def nothing_kept(tmp_path) -> bool:
    store = tmp_path / "store"
    return not list(store.glob("*.gguf*")) and not list((store / ".partial").iterdir())


@pytest.mark.parametrize("location", ["file:///etc/hostname", "file:///dev/zero", "ftp://127.0.0.1/x.gguf",
                                      "data:application/octet-stream;base64,R0dVRgMAAAA="])
def test_a_redirect_to_another_scheme_is_refused_before_it_is_read(hostile, model, tmp_path, location):
    """Tried as an attacker would: a 302 to file:///dev/zero wrote 7 GiB of
    partial file; one to file:///etc/hostname was read."""
    plain, _ = hostile
    plain.answers["/x.gguf"] = Answer(302, {"Location": location})
    # The cap is low so that, were the scheme let through, /dev/zero ends soon all the same.
    with pytest.raises(DownloadRefused, match=f"redirected to {re.escape(location[:5])}.*refused"):
        pull(plain.url("/x.gguf"), sha256=hashlib.sha256(model).hexdigest(), max_size=2**20)
    assert nothing_kept(tmp_path) and len(plain.requests) == 1


def test_a_redirect_to_plain_http_needs_a_sha256_to_check(hostile, model, tmp_path):
    plain, tls = hostile
    plain.answers["/model.gguf"] = Answer(200, body=model)
    tls.answers["/model.gguf"] = Answer(302, {"Location": plain.url("/model.gguf")})
    with pytest.raises(DownloadRefused, match="redirected to http://.*not encrypted.*sha256"):
        pull(tls.url("/model.gguf"))
    assert nothing_kept(tmp_path) and plain.requests == []
    # Control: with the sha256 to check the bytes against, the same redirect is followed.
    pulled = pull(tls.url("/model.gguf"), sha256=hashlib.sha256(model).hexdigest())
    assert pulled.path.read_bytes() == model


def test_the_hub_token_goes_to_the_hubs_own_origin_only(hostile, certificate, model, monkeypatch):
    """Tried as an attacker would: the hub's redirect to its CDN, which
    redirected to another port on the hub's host name, carried the token."""
    _, cdn = hostile
    other_port = HostileSource(certificate=certificate).start()
    tls_hub = FakeHub(files={f"{REPO}@{REVISION}/{FILE}": HubFile(model)}, certificate=certificate,
                      cdn=cdn.url("", host="localhost")).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", tls_hub.endpoint)
        sha = hashlib.sha256(model).hexdigest()
        cdn.answers[f"/cdn/{sha}"] = Answer(302, {"Location": other_port.url("/model.gguf")})  # 127.0.0.1
        other_port.answers["/model.gguf"] = Answer(200, body=model)
        pulled = pull(SOURCE)
        assert pulled.path.read_bytes() == model
        assert [r["authorization"] for r in tls_hub.requests] == ["Bearer hf_secret_token"]  # the hub's HEAD
        assert [r["authorization"] for r in cdn.requests + other_port.requests] == [None, None]
        # Control: a download the hub serves itself, from its own origin, does carry the token.
        tls_hub.cdn = tls_hub.endpoint
        tls_hub.requests.clear()
        pulled.path.unlink()
        provenance_path(pulled.path).unlink()
        pull(SOURCE)
        assert [r["method"] for r in tls_hub.requests][-1] == "GET"
        assert {r["authorization"] for r in tls_hub.requests} == {"Bearer hf_secret_token"}
    finally:
        tls_hub.stop()
        other_port.stop()


def test_a_download_that_never_ends_stops_at_the_cap_and_leaves_nothing(hostile, model, tmp_path):
    plain, _ = hostile
    plain.answers["/endless.gguf"] = Answer(200, body=model[:4], endless=True)
    sha = hashlib.sha256(model).hexdigest()
    with pytest.raises(DownloadRefused, match=r"more than 2097152 bytes.*--max-size"):
        pull(plain.url("/endless.gguf"), sha256=sha, max_size=2 * 2**20)
    assert nothing_kept(tmp_path)
    result = runner.invoke(app, ["model", "pull", plain.url("/endless.gguf"), "--sha256", sha, "--max-size", "2m"])
    assert result.exit_code == 2 and "more than 2097152 bytes" in result.stderr, result.output
    assert "Traceback" not in result.output and nothing_kept(tmp_path)
    result = runner.invoke(app, ["model", "pull", plain.url("/endless.gguf"), "--sha256", sha, "--max-size", "lots"])
    assert result.exit_code == 2 and "--max-size 'lots'" in result.stderr, result.output
    # The cap is the user's to raise, and a file of an announced size under it passes.
    plain.answers["/model.gguf"] = Answer(200, body=model)
    with pytest.raises(DownloadRefused, match=rf"announces {len(model)} bytes, more than.*--max-size"):
        pull(plain.url("/model.gguf"), sha256=sha, max_size=len(model) - 1)
    assert nothing_kept(tmp_path) and [r["path"] for r in plain.requests].count("/model.gguf") == 1
    assert pull(plain.url("/model.gguf"), sha256=sha, max_size=len(model)).path.read_bytes() == model


def test_a_download_stops_at_the_size_the_hub_announced(hub, hostile, model, tmp_path):
    """The hub says how big the file is; its CDN sends more, endlessly, or
    announces more."""
    _, cdn = hostile
    hub.cdn = cdn.url("", host="localhost")
    sha = hashlib.sha256(model).hexdigest()
    cdn.answers[f"/cdn/{sha}"] = Answer(200, body=model, endless=True)
    with pytest.raises(DownloadRefused, match=rf"more than the {len(model)} bytes the hub announced"):
        pull(SOURCE)
    assert nothing_kept(tmp_path)
    cdn.answers[f"/cdn/{sha}"] = Answer(200, {"Content-Length": str(len(model) + 1)}, body=model + b"x")
    with pytest.raises(DownloadRefused, match=rf"announces {len(model) + 1} bytes.*the {len(model)} bytes the hub"):
        pull(SOURCE)
    assert nothing_kept(tmp_path)
    cdn.answers[f"/cdn/{sha}"] = Answer(200, body=model)  # control
    assert pull(SOURCE).path.read_bytes() == model


def test_a_download_stops_at_the_size_the_policys_lock_states(hostile, model, tmp_path):
    plain, _ = hostile
    sha = hashlib.sha256(model).hexdigest()
    policy = tmp_path / "team.yaml"
    policy.write_text(POLICY.replace("    context_length", f"    sha256: {sha}\n    context_length"))
    lock = tmp_path / "team.yaml.lock"
    lock.write_text(json.dumps({"lock": LOCK_FORMAT, "models": [{"alias": "tiny", "sha256": sha,
                                                                 "size": len(model)}]}))
    plain.answers["/endless.gguf"] = Answer(200, body=model, endless=True)
    with pytest.raises(DownloadRefused, match=rf"sent more than the {len(model)} bytes {re.escape(str(lock))} states"):
        pull(plain.url("/endless.gguf"), policy=policy)
    assert nothing_kept(tmp_path)
    plain.answers["/endless.gguf"] = Answer(200, body=model)  # control
    assert pull(plain.url("/endless.gguf"), policy=policy).path.read_bytes() == model


def hostile_ggufs(model: bytes) -> dict[str, bytes]:
    """Files that `model inspect` refuses, which pull took into the store."""
    key_length = struct.unpack_from("<Q", model, 24)[0]
    value_type = 32 + key_length  # the first key's value type
    return {"truncated": model[:66],
            "version 4294967295": model[:4] + struct.pack("<I", 0xFFFFFFFF) + model[8:],
            "unknown value type": model[:value_type] + struct.pack("<I", 99) + model[value_type + 4:]}


@pytest.mark.parametrize("kind", ["truncated", "version 4294967295", "unknown value type"])
def test_pull_refuses_what_the_reader_refuses_and_keeps_nothing(hub, model, tmp_path, kind):
    data = hostile_ggufs(model)[kind]
    hub.files["bad.gguf"] = HubFile(data)
    result = runner.invoke(app, ["model", "pull", f"{hub.endpoint}/plain/bad.gguf", "--sha256",
                                 hashlib.sha256(data).hexdigest()])
    assert result.exit_code == 2 and "not a readable GGUF file" in result.stderr, result.output
    assert "Traceback" not in result.output and nothing_kept(tmp_path)
    # The same, imported from a file.
    source = tmp_path / "bad.gguf"
    source.write_bytes(data)
    with pytest.raises(PullError, match="not a readable GGUF file"):
        pull(str(source))
    assert nothing_kept(tmp_path)


def test_links_planted_in_the_store_are_never_followed(hub, model, tmp_path):
    """What another user of a shared store would plant (tests/integration/
    test_models.py plants them as a real second user): a partial file that
    is a link to one of the victim's files, with a sidecar saying it is this
    source's (so that the pull resumes into it); a sidecar that is a link; a
    link at the model's own name."""
    store = tmp_path / "store"
    (store / ".partial").mkdir(parents=True, mode=0o700)
    victim = {name: tmp_path / name for name in ("notes.txt", "ssh-config")}
    for path in victim.values():
        path.write_text("the victim's own\n")
    url = f"{hub.endpoint}/plain/{FILE}"
    part = store / ".partial" / (FILE + ".part")
    part.symlink_to(victim["notes.txt"])
    model_store.provenance_path(part).write_text(json.dumps({"source": url}))
    other_part = store / ".partial" / "other.gguf.part"
    other_part.symlink_to(victim["ssh-config"])
    model_store.provenance_path(other_part).symlink_to(victim["ssh-config"])
    sha = hashlib.sha256(model).hexdigest()
    pulled = pull(url, sha256=sha)
    model_store.provenance_path(pulled.path).unlink()
    pulled.path.rename(tmp_path / "first.gguf")
    second = pull(url, sha256=sha, name="other.gguf")
    assert {p.name: p.read_text() for p in victim.values()} == {p.name: "the victim's own\n" for p in victim.values()}
    for path in (tmp_path / "first.gguf", second.path):
        assert not path.is_symlink() and path.read_bytes() == model and path.stat().st_uid == os.geteuid()
    assert not list((store / ".partial").iterdir())
    # A link at the model's own name, even one that leads nowhere yet, is not written through.
    missing = tmp_path / "missing.gguf"
    (store / "third.gguf").symlink_to(missing)
    with pytest.raises(PullError, match="third.gguf holds something else"):
        pull(url, sha256="1" * 64, name="third.gguf")
    assert (store / "third.gguf").is_symlink() and not missing.exists()


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o3777])
def test_a_store_others_can_write_to_is_refused(hub, model, tmp_path, monkeypatch, mode):
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    os.chmod(store, mode)
    with pytest.raises(SandboxError, match=f"{store} can be written by (every user|other users).*chmod"):
        pull(f"{hub.endpoint}/plain/{FILE}", sha256=hashlib.sha256(model).hexdigest())
    assert not list(store.iterdir())
    os.chmod(store, 0o755)  # control, named through a link of the user's too
    monkeypatch.setenv("SANDBOX_MODEL_DIR", str(tmp_path / "link-to-store"))
    (tmp_path / "link-to-store").symlink_to(store)
    assert pull(f"{hub.endpoint}/plain/{FILE}", sha256=hashlib.sha256(model).hexdigest()).path.is_file()


def one_error_line(result) -> bool:
    """One line of error, with nothing in it a terminal would obey."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return len(errors) == 1 and not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", result.stderr)


@pytest.mark.parametrize("location", [
    "/ok\x1b]0;PWN\x07.gguf",  # a terminal title and a bell, as the attacker sent
    "/ok\t\x85.gguf", "/a b.gguf", "/caf\u00e9.gguf", "http://[::1/x.gguf", "http://127.0.0.1:99999/x.gguf",
    "http://127.0.0.1:port/x.gguf", "https:///x.gguf"])
def test_a_redirect_to_a_url_that_cannot_be_used_is_refused_in_one_line(hostile, model, tmp_path, location):
    """Tried as an attacker would: `302 Location: http://127.0.0.1:P/ok\\x1b]0;PWN\\x07.gguf`
    ended in a traceback (http.client.InvalidURL), exit 1."""
    plain, _ = hostile
    plain.answers["/x.gguf"] = Answer(302, {"Location": location})
    plain.answers["/ok.gguf"] = Answer(200, body=model)
    sha = hashlib.sha256(model).hexdigest()
    result = runner.invoke(app, ["model", "pull", plain.url("/x.gguf"), "--sha256", sha])
    assert result.exit_code == 2 and "redirected to a URL that cannot be used" in result.stderr, result.output
    assert one_error_line(result) and "Traceback" not in result.output
    assert nothing_kept(tmp_path) and [r["path"] for r in plain.requests] == ["/x.gguf"]
    # Control: a redirect to a URL that can be used is followed.
    plain.answers["/x.gguf"] = Answer(302, {"Location": "/ok.gguf"})
    assert pull(plain.url("/x.gguf"), sha256=sha).path.read_bytes() == model


@pytest.mark.parametrize("url", ["http://127.0.0.1:8/ok\x1b]0;PWN\x07.gguf", "https://127.0.0.1:99999/x.gguf",
                                 "https://[::1/x.gguf"])
def test_a_source_url_that_cannot_be_used_is_refused_in_one_line(hub, tmp_path, url):
    result = runner.invoke(app, ["model", "pull", url, "--sha256", "0" * 64])
    assert result.exit_code == 2 and "a URL that cannot be used" in result.stderr, result.output
    assert one_error_line(result) and "Traceback" not in result.output


def stalled_pull(url: str, sha: str, window: float) -> DownloadError:
    with pytest.raises(DownloadError) as refused:
        pull(url, sha256=sha, pace=Pace(window=window))
    return refused.value


@pytest.mark.parametrize("drip", [None, 0.01], ids=["silent", "one byte every 10 ms"])
def test_a_source_that_stalls_is_broken_off_and_resumed_later(hostile, model, tmp_path, drip):
    """Tried as an attacker would: one byte every 2 s ran forever (a 60 s
    timeout per read, no minimum rate). The window is shrunk to 0.2 s: a
    source held at 300,000 bytes can never send 1 MiB in it, however fast or
    slow this machine is."""
    plain, _ = hostile
    stalling = Answer(200, body=model, hold_after=300_000, drip=drip)
    plain.answers["/model.gguf"] = stalling
    sha = hashlib.sha256(model).hexdigest()
    try:
        error = stalled_pull(plain.url("/model.gguf"), sha, window=0.2)
    finally:
        stalling.release.set()
    assert error.exit_code == 1
    assert re.fullmatch(r"the download from http://127\.0\.0\.1:\d+/model\.gguf stalled: less than 1 MiB in "
                        r"0\.2 s \(after \d+ bytes\); run the same command again to resume", str(error)), str(error)
    part = tmp_path / "store" / ".partial" / "model.gguf.part"
    kept = part.stat().st_size
    assert 0 < kept <= 300_000 + (len(model) if drip else 0) and not (tmp_path / "store" / "model.gguf").exists()
    # Like a cut connection, it resumes: the next pull asks for the rest.
    plain.answers["/model.gguf"] = Answer(200, body=model)
    assert pull(plain.url("/model.gguf"), sha256=sha).path.read_bytes() == model
    assert plain.requests[-1]["range"] == f"bytes={kept}-" and not part.exists()


def test_a_source_that_pauses_within_the_window_is_waited_for(hostile, model, tmp_path):
    """Control: the same source held at the same point, released by the test
    once it is held, well within the default window (60 s), is waited for."""
    plain, _ = hostile
    pausing = Answer(200, body=model, hold_after=300_000)
    plain.answers["/model.gguf"] = pausing
    releaser = threading.Thread(target=lambda: pausing.held.wait() and pausing.release.set(), daemon=True)
    releaser.start()
    pulled = pull(plain.url("/model.gguf"), sha256=hashlib.sha256(model).hexdigest())
    assert pausing.held.is_set() and pulled.path.read_bytes() == model


@pytest.mark.parametrize("parent_mode", [0o777, 0o757])
def test_a_store_whose_parent_others_can_write_to_is_refused(hub, model, tmp_path, monkeypatch, parent_mode):
    """Tried as an attacker would: SANDBOX_MODEL_DIR=/tmp/x/sh2/inner, inner
    0700 and the user's, sh2 0777 and not sticky, was accepted: another user
    could rename inner away and put a directory of theirs in its place
    between the steps of a pull."""
    parent = tmp_path / "sh2"
    parent.mkdir()
    os.chmod(parent, parent_mode)
    store = parent / "inner"
    store.mkdir(mode=0o700)
    url, sha = f"{hub.endpoint}/plain/{FILE}", hashlib.sha256(model).hexdigest()
    for named_as in (store, tmp_path / "link-to-inner", parent / "inner" / "not-yet-made"):
        if named_as.name == "link-to-inner":
            named_as.symlink_to(store)  # a link of the user's, in a directory of theirs, into the open one
        monkeypatch.setenv("SANDBOX_MODEL_DIR", str(named_as))
        with pytest.raises(SandboxError, match=rf"{re.escape(str(parent))}, above the model store .*, can be written "
                                               rf"by other users \(mode {parent_mode:o}.*chmod"):
            pull(url, sha256=sha)
        assert not list(store.iterdir())
    # Control: sticky, as /tmp is, others may not rename what is the user's in it.
    os.chmod(parent, parent_mode | 0o1000)
    assert pull(url, sha256=sha).path.read_bytes() == model


def test_the_parents_check_follows_ssh_strict_modes():
    """Each directory above the store, as ssh checks a user's
    authorized_keys: the user's or root's, and writable by nobody else
    unless sticky."""
    me, other = os.geteuid(), os.geteuid() + 4242
    lone_group = os.getgid()

    def stat_of(mode, uid=me, gid=lone_group):
        return os.stat_result((stat.S_IFDIR | mode, 0, 0, 2, uid, gid, 4096, 0, 0, 0))

    def refused(st):
        return model_store.parent_fault(st, group_has_others=lambda gid: gid != lone_group) is not None

    assert not refused(stat_of(0o755)) and not refused(stat_of(0o755, uid=0)) and not refused(stat_of(0o1777, 0))
    assert not refused(stat_of(0o775))  # a group of the user's alone (user private groups)
    assert refused(stat_of(0o755, uid=other))  # another user's: they may rename anything in it
    assert refused(stat_of(0o1777, uid=other))
    assert refused(stat_of(0o777)) and refused(stat_of(0o757, uid=0))
    assert refused(stat_of(0o775, gid=lone_group + 1)) and not refused(stat_of(0o3775, gid=lone_group + 1))
