"""Image tags name build inputs: a CA bundle is not one."""
from launcher import images
from launcher.engine.builder import _tls_hint


def test_the_ca_bundle_is_not_part_of_an_images_identity(tmp_path, monkeypatch):
    """Tried as a new user would: after an `up` with SANDBOX_CA_BUNDLE set,
    verify without it said every image differed from its policy."""
    bundle = tmp_path / "corporate.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    with_bundle = images.recipe_image("chat", ca_bundle=bundle)
    monkeypatch.setenv("SANDBOX_HOST_CA", "0")
    without = images.recipe_image("chat")
    assert with_bundle.tag == without.tag
    assert with_bundle.ca_bundle == bundle and without.ca_bundle is None


def test_builds_trust_the_hosts_cas_unless_told_not_to(monkeypatch):
    monkeypatch.delenv("SANDBOX_HOST_CA", raising=False)
    found = images.host_ca_bundle()
    assert found is None or found in images.HOST_CA_BUNDLES
    if found:
        assert images.recipe_image("chat").ca_bundle == found
    monkeypatch.setenv("SANDBOX_HOST_CA", "0")
    assert images.host_ca_bundle() is None


def test_a_tls_failure_in_a_build_says_what_to_do():
    tail = ["Collecting llama-cpp-python", "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] "
            "certificate verify failed: unable to get local issuer certificate"]
    assert "--ca-bundle" in _tls_hint(tail) and "intercept TLS" in _tls_hint(tail)
    assert _tls_hint(["E: Unable to locate package nope"]) == ""


def test_a_front_end_the_user_builds_gets_the_ca_bundle_too(tmp_path, monkeypatch):
    """Tried as a new user would: a front-end whose Dockerfile pip-installs
    a UI failed on a network that intercepts TLS, and the hint's
    --ca-bundle changed nothing: its context got an empty extra-ca.crt."""
    from dataclasses import replace

    from tests.unit.helpers import make_policy
    bundle = tmp_path / "corporate.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "ui").mkdir()
    (tmp_path / "ui" / "Dockerfile").write_text("FROM debian:bookworm-slim\n")
    policy = make_policy(frontend=replace(make_policy().frontend, recipe=None, build_context=tmp_path / "ui"))
    built = images.images_for(policy, use_gpu=False, ca_bundle=bundle).frontend
    assert built.ca_bundle == bundle
    monkeypatch.setenv("SANDBOX_HOST_CA", "0")
    assert images.images_for(policy, use_gpu=False, ca_bundle=None).frontend.ca_bundle is None
    assert images.images_for(policy, use_gpu=False, ca_bundle=None).frontend.tag == built.tag


PYTHON_STANZA = """FROM debian:bookworm-slim
RUN apt-get update \\
 && apt-get install -y --no-install-recommends python3 \\
 && rm -rf /var/lib/apt/lists/*
"""


def test_the_small_python_images_share_one_cached_layer():
    """The `chat` image and the tests' own front-ends each begin with the
    same stanza, word for word, on purpose: Docker keys its build cache on
    the base and the instruction's text, so the one apt-get layer is built
    once on a bare engine and shared by all. A stanza that drifts (a package
    added in one) rebuilds it for that image alone."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    dockerfiles = [root / "images" / "chat" / "Dockerfile",
                   *sorted((root / "tests" / "fixtures").glob("*-ui/Dockerfile"))]
    assert len(dockerfiles) >= 6
    drifted = [str(path.relative_to(root)) for path in dockerfiles if PYTHON_STANZA not in path.read_text()]
    assert drifted == []
