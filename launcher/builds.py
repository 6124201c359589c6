"""The launcher's image builds, one path for `up`, `lock` and `verify`: each
build goes out through the build proxy (docs/threats.md, "The build step"),
and what it contacted and the image it made are recorded (build_records),
which decides later whether that image may run."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Callable, Iterable

from launcher import build_records
from launcher.engine import DockerGateway
from launcher.engine.build_proxy import BuildEgress
from launcher.errors import NotFound, PolicyError, Problem
from launcher.hostnet import host_ipv4_addresses
from launcher.images import ImageBuild, PartImages, recipe_image
from launcher.plan import BUILD, Plan

Say = Callable[[str], None]


def build_egress(ca_bundle: Path | None) -> BuildEgress:
    """Every image build goes out through the build proxy, which also refuses
    the host's own addresses (besides every non-public one). The machine's
    owner, never a policy, may name networks of package mirrors it may reach
    ($SANDBOX_BUILD_ALLOW_NETWORKS, CIDRs separated by commas)."""
    networks = []
    for text in filter(None, (n.strip() for n in os.environ.get("SANDBOX_BUILD_ALLOW_NETWORKS", "").split(","))):
        try:
            networks.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise PolicyError([Problem("SANDBOX_BUILD_ALLOW_NETWORKS", 0, 0, "",
                                       f"{text!r} is not a network such as 10.1.2.0/24")]) from None
    return BuildEgress(recipe_image("build-proxy", ca_bundle=ca_bundle), tuple(host_ipv4_addresses()),
                       tuple(networks))


def build_and_record(gateway: DockerGateway, images: Iterable[ImageBuild], egress: BuildEgress, say: Say,
                     on_build_line: Say | None = None) -> None:
    """Build each image through `egress`, and record what its build contacted
    and the image ID it gave."""
    for image in images:
        say(f"building image {image.tag}")
        contacts = gateway.builder.build(image, on_build_line, egress=egress, say=say)
        build_records.save(image.tag, contacts, gateway.state.image_id(image.tag))


def images_not_ours(gateway: DockerGateway, images: PartImages, locked: dict | None,
                    image_ids: dict[str, str | None] | None = None) -> frozenset[str]:
    """The tags of `images` built here that are to be built again rather
    than run (build_records.may_run); raises ImageSwapped for one whose tag
    was moved to an image the launcher never made. An image the lock pins
    runs (a bundle's, loaded after its checks). `image_ids`: each tag's
    image ID as the command already asked the engine (None: not here)."""
    pinned = {part["tag"]: part.get("id") for part in (locked or {}).get("images", {}).values()
              if isinstance(part, dict) and isinstance(part.get("tag"), str)}
    ids = image_ids if image_ids is not None else image_ids_of(gateway, images)
    return frozenset(image.tag for image in images.all() if image.built_here and ids.get(image.tag) is not None
                     and not build_records.may_run(image.tag, ids[image.tag], pinned.get(image.tag)))


def image_ids_of(gateway: DockerGateway, images: PartImages) -> dict[str, str | None]:
    """Each image's ID on the engine (None: not here), asked once per tag."""
    return {image.tag: gateway.state.image_id(image.tag) for image in images.all()}


def image_is_ours(gateway: DockerGateway, image: ImageBuild, pinned: str | None = None) -> bool:
    """Whether the image under `image.tag` may run (build_records.may_run);
    False too when there is none."""
    image_id = gateway.state.image_id(image.tag)
    return image_id is not None and build_records.may_run(image.tag, image_id, pinned)


def build_planned(gateway: DockerGateway, images: PartImages, plan: Plan, egress: BuildEgress, say: Say,
                  on_build_line: Say | None = None) -> None:
    """The images the plan builds, built and recorded; the user's own image,
    which is never built, must be here."""
    for image in images.all():
        if plan.verb_of("image", image.tag) == BUILD:
            build_and_record(gateway, [image], egress, say, on_build_line)
        elif not image.built_here and not gateway.state.image_present(image.tag):
            raise NotFound(f"the front-end image {image.tag} is not on this machine; "
                           f"`docker pull` or `docker load` it first")
