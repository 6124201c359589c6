"""The one build path of `up`, `lock` and `verify`: what the plan builds is
built through the build proxy and recorded; the user's own image, never
built, must be here; a bad network for builds is refused by name."""
from dataclasses import replace

import pytest

from launcher import build_records
from launcher.builds import build_egress, build_planned
from launcher.engine.build_proxy import BuildEgress
from launcher.errors import NotFound, PolicyError
from launcher.images import ImageBuild
from launcher.plan import BUILD, KEEP, Action, Plan
from tests.unit.helpers import IMAGES

EGRESS = BuildEgress(ImageBuild("sandbox-build-proxy:1"), ("192.0.2.1",))


class Engine:
    """A plain stand-in: the tags it has, and the builds asked of it."""

    def __init__(self, present=()):
        self.present = set(present)
        self.built = []
        self.state = self.builder = self  # the gateway's doors builds.py uses, in one stand-in

    def image_present(self, tag):
        return tag in self.present

    def image_id(self, tag):
        return f"sha256:{tag}" if tag in self.present else None

    def build(self, image, on_line=None, egress=None, say=None):
        self.built.append((image.tag, egress))
        self.present.add(image.tag)
        return [{"host": "deb.debian.org", "port": 443, "verdict": "allowed"}]


def plan_building(*tags):
    return Plan(tuple(Action(BUILD if i.tag in tags else KEEP, "image", i.tag, "") for i in IMAGES.all()))


def test_what_the_plan_builds_is_built_through_the_proxy_and_recorded():
    engine, said = Engine(), []
    build_planned(engine, IMAGES, plan_building(IMAGES.dns.tag, IMAGES.ingress.tag), EGRESS, said.append)
    assert engine.built == [(IMAGES.dns.tag, EGRESS), (IMAGES.ingress.tag, EGRESS)]
    assert said == [f"building image {IMAGES.dns.tag}", f"building image {IMAGES.ingress.tag}"]
    record = build_records.load(IMAGES.dns.tag)
    assert record["contacts"][0]["host"] == "deb.debian.org"
    assert build_records.may_run(IMAGES.dns.tag, f"sha256:{IMAGES.dns.tag}")


def test_the_users_own_image_must_be_here_and_is_never_built():
    images = replace(IMAGES, frontend=ImageBuild("my-ui:1"))
    engine = Engine()
    with pytest.raises(NotFound, match="my-ui:1 is not on this machine"):
        build_planned(engine, images, plan_building(IMAGES.dns.tag), EGRESS, lambda _m: None)
    assert [tag for tag, _ in engine.built] == [IMAGES.dns.tag]  # in order, up to the missing one
    build_planned(Engine({"my-ui:1"}), images, plan_building(), EGRESS, lambda _m: None)


def test_the_networks_builds_may_reach_are_the_owners_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setenv("SANDBOX_BUILD_ALLOW_NETWORKS", " 10.1.2.3/24, 192.168.7.7")
    assert build_egress(None).allow_networks == ("10.1.2.0/24", "192.168.7.7/32")
    monkeypatch.setenv("SANDBOX_BUILD_ALLOW_NETWORKS", "10.1.2.0/24,mirror")
    with pytest.raises(PolicyError, match="'mirror' is not a network such as 10.1.2.0/24"):
        build_egress(None)
