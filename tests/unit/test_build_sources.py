"""What the Docker engine itself would fetch for a build, outside the build
proxy (launcher/build_sources.py): each Dockerfile here is read by the
engine's own parser, and each refusal names its line. No test here talks to
an engine or sends a packet; tests/integration/test_build_egress.py builds
the hostile ones for real, with canaries listening."""
import socket

import pytest

from launcher.build_sources import BaseImage, examine, registry_of, registry_refusal


def refusals(text: str, base_image=None) -> list[str]:
    return [str(p) for p in examine(text.encode(), "Dockerfile", base_image).problems]


def images(text: str, base_image=None) -> list[tuple[int, str, str]]:
    return [(u.line, u.instruction, u.image) for u in examine(text.encode(), "Dockerfile", base_image).images]


@pytest.mark.parametrize("dockerfile, line, shown", [
    ("FROM debian\nADD http://127.0.0.1:8000/x /x\n", 2, "http://127.0.0.1:8000/x"),
    ("from debian\nadd --chown=1:1 \\\n    https://example.org/a.tgz \\\n    /opt/\n", 2, "https://example.org/a.tgz"),
    ("FROM debian\nADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d "
     "https://example.org/a /a\n", 2, "https://example.org/a"),
    ('FROM debian\nADD ["http://192.168.1.1/x", "/x"]\n', 2, "http://192.168.1.1/x"),
    ('FROM debian\nADD "http://10.0.0.1/x" /x\n', 2, '"http://10.0.0.1/x" (which is http://10.0.0.1/x)'),
    ("FROM debian\nADD h\\ttp://10.0.0.1/x /x\n", 2, "h\\ttp://10.0.0.1/x (which is http://10.0.0.1/x)"),
    ("# escape=`\nFROM debian\nADD h`ttp://10.0.0.1/x `\n  /x\n", 3, "h`ttp://10.0.0.1/x (which is http://10.0.0.1/x)"),
    ("FROM debian\nARG URL=http://169.254.169.254/latest\nADD $URL /x\n", 3, "$URL (which is http://169.254.169.254/latest)"),
    ("ARG HOST=127.0.0.1\nFROM debian\nARG HOST\nENV URL=http://${HOST}:8000\nADD ${URL}/x /x\n", 5,
     "${URL}/x (which is http://127.0.0.1:8000/x)"),
    ("FROM debian\nARG URL\nADD ${URL:-http://127.0.0.1/} /x\n", 3, "${URL:-http://127.0.0.1/} (which is http://127.0.0.1/)"),
    ("FROM debian\nADD git@github.com:someone/repo.git /src\n", 2, "git@github.com:someone/repo.git"),
    ("FROM debian\nADD git://10.0.0.1/repo.git /src\n", 2, "git://10.0.0.1/repo.git"),
    ("FROM debian\nADD ftp://10.0.0.1/x /src\n", 2, "ftp://10.0.0.1/x"),
])
def test_a_remote_add_is_refused_at_its_line_however_it_is_written(dockerfile, line, shown):
    [refusal] = refusals(dockerfile)
    assert refusal.startswith(f"Dockerfile:{line}: ADD {shown}: a remote source"), refusal
    assert "RUN step" in refusal


def test_an_add_hidden_in_a_heredoc_is_refused_as_engine_20_10_reads_it():
    # Engine 20.10's parser knows no heredocs: to it, line 3 is an ADD of its
    # own (tests/integration/test_build_egress.py shows the engine fetching it).
    dockerfile = "FROM debian\nRUN <<CMD\nADD http://127.0.0.1:8000/x /x\nCMD\n"
    [refusal] = refusals(dockerfile)
    assert refusal.startswith("Dockerfile:3: ADD http://127.0.0.1:8000/x: a remote source")


def test_onbuild_adds_are_refused_since_a_later_stage_runs_them():
    dockerfile = "FROM debian AS base\nONBUILD ADD http://127.0.0.1/x /x\nFROM base\n"
    [refusal] = refusals(dockerfile)
    assert refusal.startswith("Dockerfile:2: ONBUILD ADD http://127.0.0.1/x: a remote source")


def test_what_is_no_remote_fetch_passes():
    dockerfile = (
        "# syntax=docker/dockerfile:1\n"
        "FROM debian:bookworm-slim AS build\n"
        "ARG VERSION=1.2\n"
        "ADD app-$VERSION.tar.gz /opt/\n"
        "add --chown=65534 ./static \\\n    /srv/static\n"
        "COPY <<EOF /etc/app.conf\nurl = http://127.0.0.1:8000/\nEOF\n"
        "RUN curl -fsSL https://example.org/tool.tgz | tar xz\n"
        "RUN echo 'ADD http://127.0.0.1/ /x'\n"
        "FROM build\n"
        "COPY --from=build /opt /opt\n"
        "COPY --from=0 /srv /srv\n")
    assert refusals(dockerfile) == []
    assert images(dockerfile) == [(1, "# syntax", "docker/dockerfile:1"), (2, "FROM", "debian:bookworm-slim")]


@pytest.mark.parametrize("dockerfile, line, shown, why", [
    ("FROM 127.0.0.1:5000/x\n", 1, "FROM 127.0.0.1:5000/x", "is an IP address"),
    ("FROM 127.1:5000/x\n", 1, "FROM 127.1:5000/x", "is an IP address"),
    ("FROM 2130706433:5000/x\n", 1, "FROM 2130706433:5000/x", "is an IP address"),
    ("FROM [::1]:5000/x\n", 1, "FROM [::1]:5000/x", "is an IP address"),
    ("FROM 203.0.113.9/x\n", 1, "FROM 203.0.113.9/x", "is an IP address"),
    ("FROM localhost:5000/x\n", 1, "FROM localhost:5000/x", "is this machine"),
    ("FROM LOCALHOST/x\n", 1, "FROM LOCALHOST/x", "is this machine"),
    ("FROM registry.localhost/x\n", 1, "FROM registry.localhost/x", "is this machine"),
    ("ARG BASE=10.1.2.3:5000/ui\nFROM $BASE\n", 2, "FROM $BASE (which is 10.1.2.3:5000/ui)", "is an IP address"),
    ("ARG BASE\nFROM ${BASE:-localhost/ui}\n", 2, "FROM ${BASE:-localhost/ui} (which is localhost/ui)", "is this machine"),
    ("FROM debian\nCOPY --from=192.168.0.2:5000/assets /a /b\n", 2, "COPY --from=192.168.0.2:5000/assets", "IP address"),
    ("# syntax=127.0.0.1:5000/frontend\nFROM debian\n", 1, "# syntax=127.0.0.1:5000/frontend", "IP address"),
    ("FROM debian\nRUN --mount=type=bind,from=localhost/x,target=/x true\n", 2, "RUN --mount=from=localhost/x",
     "this machine"),
    ("FROM debian AS a\nONBUILD COPY --from=127.0.0.1:5000/x /a /b\n", 2, "ONBUILD COPY --from=127.0.0.1:5000/x",
     "IP address"),
])
def test_an_image_from_an_address_or_this_machine_is_refused(dockerfile, line, shown, why):
    [refusal] = refusals(dockerfile)
    assert refusal.startswith(f"Dockerfile:{line}: {shown}: its registry"), refusal
    assert why in refusal and "outside the build proxy" in refusal


def test_build_arguments_in_from_are_resolved_or_refused():
    assert images("ARG TAG=bookworm-slim\nFROM debian:${TAG}\n") == [(2, "FROM", "debian:bookworm-slim")]
    # The launcher gives builds the proxy's address in these: not the Dockerfile's to choose an image by.
    [refusal] = refusals("ARG http_proxy\nFROM ${http_proxy}/x\n")
    assert refusal.startswith("Dockerfile:2: FROM ${http_proxy}/x: $http_proxy is given to builds by the launcher")
    # An escape character that makes the name read differently under `\` and under the backtick.
    [refusal] = refusals("FROM deb\\ian\n")
    assert "escape character" in refusal


def test_a_parser_directive_counts_only_at_the_top():
    later = "FROM debian\n# syntax=127.0.0.1:5000/x\n"
    assert refusals(later) == [] and images(later) == [(1, "FROM", "debian")]


def test_the_base_images_environment_and_onbuild_triggers_are_checked_when_known():
    def base(image):
        return BaseImage("sha256:" + "a" * 64, env=("URL=http://127.0.0.1:8000/", "HOME=/root"),
                         onbuild=("ADD $URL /x", "COPY --from=10.0.0.9:5000/x /a /b"))

    # An ARG's default loses to the base image's ENV of the same name, as in the engine.
    dockerfile = "FROM ui-base\nARG URL=/safe\nADD $URL /x\nADD $HOME/app /app\n"
    assert refusals(dockerfile) == []  # without the base image: nothing known to refuse yet
    found = refusals(dockerfile, base)
    assert found == [
        "Dockerfile:1: FROM ui-base: its trigger ONBUILD ADD $URL (which is http://127.0.0.1:8000/): a remote "
        "source: the Docker engine would fetch it itself, from the host's network, outside the build proxy and "
        "unrecorded. Fetch it in a RUN step (curl, wget), which goes through the proxy",
        "Dockerfile:1: FROM ui-base: its trigger ONBUILD COPY --from=10.0.0.9:5000/x: its registry 10.0.0.9 is "
        "an IP address, and the engine pulls images from the host's network, outside the build proxy. Name a "
        "registry by its public name",
        "Dockerfile:3: ADD $URL (which is http://127.0.0.1:8000/): a remote source: the Docker engine would fetch "
        "it itself, from the host's network, outside the build proxy and unrecorded. Fetch it in a RUN step "
        "(curl, wget), which goes through the proxy"]
    assert (1, "ONBUILD COPY --from", "10.0.0.9:5000/x") in images(dockerfile, base)


def test_a_variable_nothing_sets_is_refused_once_the_base_image_is_known():
    def base(image):
        return BaseImage("sha256:" + "b" * 64, env=("HOME=/root",))

    assert refusals("FROM debian\nADD $HOME/app /app\n", base) == []  # the control: the base image sets it
    [refusal] = refusals("FROM debian\nADD $https_proxy/x /x\n", base)
    assert refusal.startswith("Dockerfile:2: ADD $https_proxy/x: $https_proxy is given to builds by the launcher")


def test_not_utf8_and_unparseable_dockerfiles_are_refused():
    assert [str(p) for p in examine(b"FROM debian\n\xff\n", "Dockerfile").problems] == [
        "Dockerfile:2: is not UTF-8 text"]


def test_registries_as_the_engine_reads_them():
    assert registry_of("debian:bookworm-slim") is None
    assert registry_of("someone/ui:1") is None
    assert registry_of("ghcr.io/someone/ui:1") == "ghcr.io"
    assert registry_of("registry:5000/ui") == "registry"
    assert registry_of("localhost/ui") == "localhost"
    assert registry_of("Registry/ui") == "Registry"
    assert registry_of("[fd00::1]:5000/ui") == "fd00::1"


def test_a_registry_that_resolves_to_this_machine_or_no_public_address_is_refused():
    assert "127.0.0.1, a loopback address" in registry_refusal("localhost:5000/x", ())
    host = "192.0.2.7"  # stands for one of the host's addresses
    assert "an address of the host" in registry_refusal(f"{host}:5000/x", (host,))
    assert "a private address" in registry_refusal("10.1.2.3:5000/x", ())
    # The owner's mirror networks open private ones, never the host's own addresses.
    assert registry_refusal("10.1.2.3:5000/x", (), ("10.1.2.0/24",)) is None
    assert registry_refusal("151.101.0.223:5000/x", ()) is None  # a public address
    assert registry_refusal("debian:bookworm-slim", ()) is None  # Docker Hub: the engine's own setting
    assert "does not resolve" in registry_refusal("registry.invalid/x", ())
    name = socket.gethostname()  # this machine's own name
    assert registry_refusal(f"{name}.:5000/x", tuple(a[4][0] for a in socket.getaddrinfo(name, 443))) is not None


def test_the_launchers_own_recipes_pass():
    from launcher.resources import IMAGES_DIR
    recipes = sorted(IMAGES_DIR.glob("*/Dockerfile*"))
    assert len(recipes) >= 7
    for dockerfile in recipes:
        assert refusals(dockerfile.read_text()) == [], dockerfile
