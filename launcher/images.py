"""Images: which Dockerfile builds each part, and the tag that names its build
inputs. A tag is a hash of every file in the build context, the Dockerfile,
and the build arguments (not the extra CA bundle), so an unchanged image is
never rebuilt and a changed recipe always is."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from launcher.build_context import context_digest
from launcher.policy.model import Policy
from launcher.resources import IMAGES_DIR

BASE_IMAGE = "debian:bookworm-slim"
EXTRA_CA_NAME = "extra-ca.crt"  # the file each recipe's Dockerfile copies


@dataclass(frozen=True)
class ImageBuild:
    """An image to build from a context directory, or (context None) one the
    user already has on this machine."""

    tag: str
    context: Path | None = None
    dockerfile: str = "Dockerfile"
    ca_bundle: Path | None = None  # added to the context as extra-ca.crt
    # The only hosts its build may reach through the build proxy; empty: any
    # public host. Not part of the tag: it limits the build, not its inputs.
    allow_hosts: tuple[str, ...] = ()
    # The whole sha256 of the build inputs (the tag carries its first 16
    # digits); a lock pins it. None for an image not built here.
    inputs: str | None = None

    @property
    def built_here(self) -> bool:
        return self.context is not None


@dataclass(frozen=True)
class PartImages:
    dns: ImageBuild
    backend: ImageBuild
    frontend: ImageBuild | None  # None: an API-only sandbox (`frontend: none`) has no front-end
    ingress: ImageBuild

    def all(self) -> tuple[ImageBuild, ...]:
        return tuple(image for _, image in self.by_part())

    def by_part(self) -> tuple[tuple[str, ImageBuild], ...]:
        """Each part's image, in the order the parts start; none for a part
        the sandbox does not have."""
        return tuple((part, image) for part, image in (("dns", self.dns), ("backend", self.backend),
                                                       ("frontend", self.frontend), ("ingress", self.ingress))
                     if image is not None)


# Where Linux distributions keep the host's trusted CAs (Debian, Fedora).
HOST_CA_BUNDLES = (Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/pki/tls/certs/ca-bundle.crt"))


def host_ca_bundle() -> Path | None:
    """The CAs this machine trusts, which our recipes' builds trust too, so a
    network that intercepts TLS works without a setting. SANDBOX_HOST_CA=0
    turns that off."""
    if os.environ.get("SANDBOX_HOST_CA", "1") == "0":
        return None
    return next((p for p in HOST_CA_BUNDLES if p.is_file()), None)


def recipe_image(recipe: str, dockerfile: str = "Dockerfile", ca_bundle: Path | None = None) -> ImageBuild:
    context = IMAGES_DIR / recipe
    name = recipe if dockerfile == "Dockerfile" else f"{recipe}-{dockerfile.rsplit('.', 1)[-1]}"
    return _hashed(f"sandbox-{name}", context, dockerfile, ca_bundle or host_ca_bundle())


def images_for(policy: Policy, use_gpu: bool, ca_bundle: Path | None) -> PartImages:
    f = policy.frontend
    if f is None:
        frontend = None
    elif f.recipe:
        frontend = recipe_image(f.recipe, ca_bundle=ca_bundle)
    elif f.build_context:
        # Its build gets the same CAs as ours (as extra-ca.crt in its context):
        # a UI installed from a package index must get through a network that
        # intercepts TLS too. CA certificates are public; they are no secret to keep from it.
        frontend = replace(_hashed(f"sandbox-{policy.name}-frontend", f.build_context, f.build_dockerfile,
                                   ca_bundle or host_ca_bundle()),
                           allow_hosts=f.build_allow_hosts)
    else:
        frontend = ImageBuild(tag=f.image)
    return PartImages(
        dns=recipe_image("dns-sink", ca_bundle=ca_bundle),
        backend=recipe_image("llama-cpp", "Dockerfile.cuda" if use_gpu else "Dockerfile", ca_bundle),
        frontend=frontend,
        ingress=recipe_image("ingress", ca_bundle=ca_bundle),
    )


def _hashed(repository: str, context: Path, dockerfile: str, ca_bundle: Path | None) -> ImageBuild:
    digest = hashlib.sha256()
    digest.update(f"dockerfile={dockerfile}\n".encode())
    context_digest(context, dockerfile, digest)
    # The CA bundle is left out: it only lets a build reach its sources through
    # a network that intercepts TLS, and says nothing of what the image is.
    # With it in the tag, an `up` without the setting would rebuild everything.
    return ImageBuild(tag=f"{repository}:{digest.hexdigest()[:16]}", context=context,
                      dockerfile=dockerfile, ca_bundle=ca_bundle, inputs=digest.hexdigest())
