"""Image builds: what the engine itself would fetch for one is checked
first, its RUN steps get out only through the build proxy, and a failed
build says what it may need (the proxy, a CA bundle, disk)."""
from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile

import docker.errors

from launcher import build_records, build_sources
from launcher.engine.build_proxy import BuildEgress, BuildProxy
from launcher.engine.calls import Say, engine_call, quiet
from launcher.engine.context import write_context
from launcher.engine.state import EngineState
from launcher.errors import BuildFailure, DockerFailure, PolicyError, Problem, SandboxError
from launcher.hostnet import host_ipv4_addresses
from launcher.images import ImageBuild

# Marks images the launcher built (not a sandbox's: images outlive sandboxes).
LABEL_IMAGE = "io.sandbox.built-image"


class Builder:
    def __init__(self, api, state: EngineState, proxy: BuildProxy):
        self.api = api
        self.state = state
        self.proxy = proxy

    def build(self, image: ImageBuild, on_line: Say | None = None, egress: BuildEgress | None = None,
              say: Say | None = None) -> list[dict]:
        """Build an image. With `egress`, its RUN steps run on a network of
        their own whose only way out is the build proxy, and what they
        contacted through it is returned (docs/threats.md, "The build step").
        What the engine itself would fetch for it is checked first
        (launcher/build_sources.py), and the images it uses are recorded."""
        dockerfile, used = self._checked(image, egress, on_line)
        if egress is None:
            self._build(image, dockerfile, on_line)
            build_records.save_sources(image.tag, used)
            return []
        self._proxy_image_ready(egress, say)
        with self.proxy.running(egress, image.allow_hosts) as (proxy_url, network, proxy):
            try:
                self._build(image, dockerfile, on_line, network=network, proxy_url=proxy_url)
            except BuildFailure as e:
                contacts = self.proxy.record(proxy)
                raise BuildFailure(image.tag, e.reason + _egress_hint(e, contacts, proxy_url), e.log_tail) from None
            build_records.save_sources(image.tag, used)
            return self.proxy.record(proxy)

    def _proxy_image_ready(self, egress: BuildEgress, say: Say | None) -> None:
        # It has a way out and sees every build's traffic: it runs only as the launcher built it.
        proxy_id = self.state.image_id(egress.proxy_image.tag)
        if proxy_id is None or not build_records.may_run(egress.proxy_image.tag, proxy_id):
            quiet(say)(f"building image {egress.proxy_image.tag} (the build proxy; the one build not behind it)")
            self._build(egress.proxy_image, self._checked(egress.proxy_image, None, None)[0], None)
            build_records.save(egress.proxy_image.tag, [], self.state.image_id(egress.proxy_image.tag))

    def _checked(self, image: ImageBuild, egress: BuildEgress | None,
                 on_line: Say | None) -> tuple[bytes, list[dict]]:
        """The image's Dockerfile, read once (the bytes checked are the bytes
        the engine gets), and the images its build uses, once what the
        engine itself would fetch for it is checked."""
        dockerfile, problems = build_sources.read_dockerfile(image.context, image.dockerfile)
        if dockerfile is None:
            raise PolicyError(problems)
        return dockerfile, self._images_for_build(image, dockerfile, egress, quiet(on_line))

    def _build(self, image: ImageBuild, dockerfile: bytes, on_line: Say | None, network: str | None = None,
               proxy_url: str | None = None) -> None:
        on_line = quiet(on_line)
        tail: list[str] = []
        # Docker's predefined proxy arguments: no Dockerfile needs to declare
        # them, and they stay out of the image's history and cache key.
        proxy_args = {name: proxy_url for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")} \
            if proxy_url else {}
        with tempfile.TemporaryFile() as context:
            write_context(image, context, dockerfile)
            context.seek(0)
            with engine_call(f"building image {image.tag}"):
                try:
                    stream = self.api.build(fileobj=context, custom_context=True, tag=image.tag,
                                            dockerfile=image.dockerfile, rm=True, forcerm=True,
                                            pull=False, decode=True, labels={LABEL_IMAGE: "1"},
                                            network_mode=network, buildargs=proxy_args or None)
                    for chunk in stream:
                        if "error" in chunk:
                            reason = chunk["error"].strip()
                            raise BuildFailure(image.tag, reason + _tls_hint(tail) + self._disk_hint(reason, tail),
                                               tail[-20:])
                        text = chunk.get("stream") or chunk.get("status") or ""
                        for line in text.splitlines():
                            if line.strip():
                                tail.append(line)
                                del tail[:-50]
                                on_line(line)
                except docker.errors.APIError as e:
                    reason = str(e.explanation or e)
                    raise BuildFailure(image.tag, reason + self._disk_hint(reason, tail), tail[-20:]) from None

    def _images_for_build(self, image: ImageBuild, dockerfile: bytes, egress: BuildEgress | None,
                          on_line: Say) -> list[dict]:
        """Refuse what the engine itself would fetch for the build from where
        it must not (launcher/build_sources.py); pull each image the build
        uses that is missing here, once its registry is checked, so that the
        ONBUILD triggers of each base image are checked before they run; and
        return those images, by name and ID."""
        name = image.dockerfile
        host_addresses = egress.host_addresses if egress else tuple(host_ipv4_addresses())
        allow_networks = egress.allow_networks if egress else ()
        held: dict[str, build_sources.BaseImage] = {}

        def hold(uses: list[build_sources.ImageUse]) -> None:
            for use in uses:
                if use.pulled and use.image not in held:
                    held[use.image] = self._base_image(use, name, host_addresses, allow_networks, on_line)

        found = build_sources.examine(dockerfile, name)
        if found.problems:
            raise PolicyError(found.problems)
        hold(found.images)
        # Again, with what the base images hold: their environment, which
        # variables may come from, and their ONBUILD triggers.
        found = build_sources.examine(dockerfile, name, held.get)
        if found.problems:
            raise PolicyError(found.problems)
        hold(found.images)
        return [{"line": use.line, "instruction": use.instruction, "image": use.image,
                 "id": held[use.image].id, "pulled": held[use.image].pulled}
                for use in found.images if use.pulled]

    def _base_image(self, use: build_sources.ImageUse, name: str, host_addresses: tuple[str, ...],
                    allow_networks: tuple[str, ...], on_line: Say) -> build_sources.BaseImage:
        pulled = False
        if not self.state.image_present(use.image):
            why = build_sources.registry_refusal(use.image, host_addresses, allow_networks)
            if why:
                raise PolicyError([Problem(name, use.line, 0, "", f"{use}: {why}")])
            on_line(f"pulling {use.image} ({use} at line {use.line} of {name})")
            with engine_call(f"pulling {use.image}"):
                for item in self.api.pull(use.image, stream=True, decode=True):
                    if isinstance(item, dict) and item.get("error"):
                        raise DockerFailure(f"pulling {use.image} ({name}, line {use.line}): the Docker engine "
                                            f"said: {item['error']}")
            pulled = True
        with engine_call(f"inspecting image {use.image}"):
            info = self.api.inspect_image(use.image)
        config = info.get("Config") or {}
        return build_sources.BaseImage(id=info["Id"], env=tuple(config.get("Env") or ()),
                                       onbuild=tuple(config.get("OnBuild") or ()), pulled=pulled)

    def _disk_hint(self, reason: str, tail: list[str]) -> str:
        """A build that ran out of disk says which disk, and what to do. The
        engine tags an image only when its build succeeds, so nothing is
        left half-built under the tag (tests/integration/test_faults.py)."""
        if "no space left on device" not in "\n".join([reason, *tail]).lower():
            return ""
        root = "Docker's data root"
        try:
            with engine_call("reading where the engine keeps its data"):
                root = self.api.info().get("DockerRootDir") or root
        except SandboxError:
            pass  # the hint names the disk less precisely
        free = f", {shutil.disk_usage(root).free // 2**20} MiB free now" if os.path.isdir(root) else ""
        return (f"\nthe disk that holds Docker's images ({root}{free}) filled up during the build; "
                f"the image was not tagged. Free space (`docker image prune`, `docker builder prune`) "
                f"or give Docker a bigger data-root, then run the command again")


# What a build's own failure says when it tried to get out some other way.
_NETWORK_TROUBLE = ("temporary failure", "could not resolve", "name resolution", "name or service not known",
                    "network is unreachable", "no route to host", "connection refused",
                    "failed to establish a new connection", "could not connect", "403 forbidden", "timed out")


def _egress_hint(failure: BuildFailure, contacts: list[dict], proxy_url: str) -> str:
    refused = [c for c in contacts if c.get("verdict") != "allowed"]
    text = "\n".join([failure.reason, *failure.log_tail]).lower()
    if not refused and not any(t in text for t in _NETWORK_TROUBLE):
        return ""
    hint = ("\nthe build can reach the network only through the sandbox's build proxy, which it is given as "
            f"http_proxy and https_proxy ({proxy_url}); a step that ignores those variables reaches nothing")
    for c in refused[:10]:
        hint += f"\n  the proxy refused {c.get('host')}:{c.get('port')}: {c.get('reason')}"
    private = [c for c in refused if "private address" in str(c.get("reason")) or "not a public" in str(c.get("reason"))]
    if private:
        networks = ",".join(dict.fromkeys(_refused_network(c) for c in private))
        hint += ("\nif that is your package mirror, name its network for builds: "
                 f"SANDBOX_BUILD_ALLOW_NETWORKS={networks} (scripts/mirror-networks.sh prints your apt mirrors' "
                 "networks)")
    return hint


def _refused_network(contact: dict) -> str:
    """The one-address network of what the proxy refused: its reason begins
    with the address ("10.1.2.3 is a private address ..."), else the first
    address the name resolved to."""
    for word in [str(contact.get("reason")).split(" ", 1)[0], *(contact.get("addresses") or [])]:
        try:
            address = ipaddress.ip_address(word)
        except ValueError:
            continue
        return f"{address}/{address.max_prefixlen}"
    return "ADDRESS/32"


_TLS_TROUBLE = ("certificate verify failed", "certificate_verify_failed", "self-signed certificate",
                "unable to get local issuer certificate", "x509: certificate")


def _tls_hint(tail: list[str]) -> str:
    text = "\n".join(tail).lower()
    if not any(t in text for t in _TLS_TROUBLE):
        return ""
    return ("\nthe build could not verify a TLS certificate: this network may intercept TLS. Point --ca-bundle "
            "(or SANDBOX_CA_BUNDLE) at the CA bundle it uses; the host's own CAs are trusted unless SANDBOX_HOST_CA=0")
