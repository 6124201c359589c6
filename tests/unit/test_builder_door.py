"""The builder's door to the engine (launcher/engine/builder.py), on the
stand-in engine: a build's steps get out only through the build proxy,
which is built first, by itself, when it is missing; the context sent is
the Dockerfile as checked; a failed build says what it may need; what the
engine itself would pull is checked first and recorded."""
import json

import pytest

from launcher import build_records
from launcher.engine import DockerGateway
from launcher.engine.build_proxy import BuildEgress
from launcher.errors import BuildFailure, PolicyError
from launcher.images import ImageBuild
from tests.unit.fake_engine import FakeApi, FakeClient
from tests.unit.test_build_proxy_door import ProxyEngine


@pytest.fixture
def contexts(tmp_path, monkeypatch):
    """Build contexts for the proxy and for a part, and a state directory of the test's own."""
    monkeypatch.setenv("SANDBOX_STATE_DIR", str(tmp_path / "state"))

    def context(name: str, dockerfile: str) -> ImageBuild:
        directory = tmp_path / name
        directory.mkdir()
        (directory / "Dockerfile").write_text(dockerfile)
        return ImageBuild(tag=f"sandbox-{name}:test", context=directory)
    return context


def test_a_build_runs_behind_the_proxy_which_is_built_first_by_itself(contexts):
    api = ProxyEngine()
    proxy_image = contexts("build-proxy", "FROM scratch\nCOPY . /\n")
    part = contexts("ui", "FROM scratch\nRUN apt-get update\n")
    egress = BuildEgress(proxy_image, host_addresses=("192.168.1.5",))
    lines, said = [], []
    DockerGateway(FakeClient(api)).builder.build(part, on_line=lines.append, egress=egress, say=said.append)
    builds = [kwargs for name, _, kwargs in api.calls if name == "build"]
    assert [b["tag"] for b in builds] == [proxy_image.tag, part.tag]
    assert builds[0]["network_mode"] is None and builds[0]["buildargs"] is None  # the one build not behind it
    network = builds[1]["network_mode"]
    assert network.startswith("sandbox-build-") and network not in api.networks_held  # its own, gone after
    assert set(builds[1]["buildargs"]) == {"http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"}
    assert builds[1]["buildargs"]["http_proxy"].endswith(":3128") and builds[1]["pull"] is False
    assert api.contexts_built[part.tag]["Dockerfile"] == b"FROM scratch\nRUN apt-get update\n"
    assert said == [f"building image {proxy_image.tag} (the build proxy; the one build not behind it)"]
    assert "Step 1/1 : FROM scratch" in lines
    assert build_records.may_run(proxy_image.tag, api.images_held[proxy_image.tag])


def test_a_proxy_image_the_launcher_built_is_not_built_again(contexts):
    api = ProxyEngine()
    proxy_image = contexts("build-proxy", "FROM scratch\n")
    build_records.save(proxy_image.tag, [], api.add_image(proxy_image.tag))
    DockerGateway(FakeClient(api)).builder.build(contexts("ui", "FROM scratch\n"),
                                                 egress=BuildEgress(proxy_image, host_addresses=()))
    assert [kwargs["tag"] for name, _, kwargs in api.calls if name == "build"] == ["sandbox-ui:test"]


def test_a_build_refused_its_mirror_names_the_mirror_and_the_setting_that_allows_it(contexts):
    api = ProxyEngine()
    proxy_image = contexts("build-proxy", "FROM scratch\n")
    build_records.save(proxy_image.tag, [], api.add_image(proxy_image.tag))
    part = contexts("ui", "FROM scratch\nRUN apt-get update\n")
    api.build_outputs[part.tag] = [{"stream": "Err:1 http://mirror.lan bookworm InRelease 403 Forbidden\n"},
                                   {"error": "The command '/bin/sh -c apt-get update' returned a non-zero code: 100"}]
    real_start = api.start

    def start_and_refuse(container):  # the proxy refuses the mirror while the build runs
        real_start(container)
        api.add_log(container, json.dumps({"verdict": "refused", "host": "mirror.lan", "port": 80,
                                           "addresses": ["10.1.2.3"],
                                           "reason": "10.1.2.3 is a private address (the LAN, the host's bridges)"}))
    api.start = start_and_refuse
    with pytest.raises(BuildFailure) as failed:
        DockerGateway(FakeClient(api)).builder.build(part, egress=BuildEgress(proxy_image, host_addresses=()))
    text = str(failed.value)
    assert "the proxy refused mirror.lan:80: 10.1.2.3 is a private address" in text
    assert "SANDBOX_BUILD_ALLOW_NETWORKS=10.1.2.3/32" in text
    assert part.tag not in api.images_held  # nothing tagged from a failed build


@pytest.mark.parametrize("output, hint", [
    ("curl: (60) SSL certificate problem: unable to get local issuer certificate", "--ca-bundle"),
    ("write /var/lib/apt/lists/x: no space left on device", "the disk that holds Docker's images"),
])
def test_a_failed_build_says_what_it_may_need(contexts, output, hint):
    api = FakeApi()
    part = contexts("ui", "FROM scratch\n")
    api.build_outputs[part.tag] = [{"stream": output + "\n"}, {"error": "returned a non-zero code: 1"}]
    with pytest.raises(BuildFailure, match="returned a non-zero code") as failed:
        DockerGateway(FakeClient(api)).builder.build(part)
    assert hint in str(failed.value)


def test_a_base_image_from_a_registry_on_a_private_address_is_refused_before_any_pull(contexts):
    api = FakeApi()
    part = contexts("ui", "FROM 10.1.2.3:5000/base:1\n")
    with pytest.raises(PolicyError, match="its registry 10.1.2.3") as refused:
        DockerGateway(FakeClient(api)).builder.build(part)
    assert refused.value.problems[0].line == 1
    assert not [name for name, _, _ in api.calls if name in ("pull", "build")]


def test_a_missing_base_image_is_pulled_by_itself_first_and_recorded(contexts):
    api = FakeApi()
    part = contexts("ui", "FROM debian:bookworm-slim\n")
    lines = []
    DockerGateway(FakeClient(api)).builder.build(part, on_line=lines.append)
    assert [name for name, _, _ in api.calls if name in ("pull", "build")] == ["pull", "build"]
    assert "pulling debian:bookworm-slim (FROM debian:bookworm-slim at line 1 of Dockerfile)" in lines
    recorded = build_records.load(part.tag)["sources"]
    assert [(source["image"], source["pulled"]) for source in recorded] == [("debian:bookworm-slim", True)]
