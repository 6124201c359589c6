"""Every part's healthcheck (issue 25): what the spec gives Docker, and the
ingress's check run against its real configuration (tests/unit/real_ingress.py)
on a listener that is not the door. The sink's own check, and that only it
goes unrecorded, are in tests/unit/test_dns_sink.py."""
from __future__ import annotations

import http.client
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.engine.applier import Applier
from launcher.render.compose import render as render_compose
from launcher.spec import (FRONTEND_HEALTH_INTERVAL_S, INGRESS_HEALTH_INTERVAL_S, INGRESS_HEALTH_PORT,
                           INGRESS_PORT, SINK_HEALTH_INTERVAL_S, SINK_HEALTH_NAME, ingress_healthcheck, spec_hash)
from tests.unit.helpers import make_policy, make_spec
from tests.unit.real_ingress import RealIngress, nginx_with_njs

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t" * 43
API_KEY = "k" * 43


def api_only():
    return make_spec(make_policy(frontend=None))


def custom():
    return make_spec(make_policy(frontend=replace(make_policy().frontend, recipe=None, image="my-ui:1")))


def test_every_part_of_a_recipes_sandbox_has_a_healthcheck_on_a_gentle_interval():
    spec = make_spec()
    checks = {c.part: (c.healthcheck, c.health_interval_s) for c in spec.containers}
    assert set(checks) == {"dns", "backend", "frontend", "ingress"}
    assert all(check for check, _ in checks.values())
    assert checks["backend"][1] is None  # every 2 s, as before
    assert checks["dns"] == (("CMD", "python3", "-I", "/opt/dns-sink/health.py"), SINK_HEALTH_INTERVAL_S)
    assert checks["ingress"] == (ingress_healthcheck(INGRESS_HEALTH_PORT), INGRESS_HEALTH_INTERVAL_S)
    frontend, interval = checks["frontend"]
    assert interval == FRONTEND_HEALTH_INTERVAL_S
    assert frontend[:4] == ("CMD", "python3", "-I", "-c")
    assert "HTTPConnection('127.0.0.1',8080" in frontend[4] and "'/health'" in frontend[4]
    assert all(10 <= s <= 30 for s in (SINK_HEALTH_INTERVAL_S, FRONTEND_HEALTH_INTERVAL_S, INGRESS_HEALTH_INTERVAL_S))


def test_the_frontends_check_asks_its_recipes_own_port_and_path():
    f = replace(make_policy().frontend, recipe="open-webui", port=8080, health_path="/health")
    check = make_spec(make_policy(frontend=f)).container("frontend").healthcheck
    script = check[4]
    # Run here against nothing: it fails rather than hanging or passing.
    assert subprocess.run(["python3", "-I", "-c", script.replace("8080", "1")], capture_output=True,
                          timeout=10).returncode != 0


def test_a_frontend_of_ones_own_has_no_healthcheck_but_the_others_do():
    spec = custom()
    assert spec.container("frontend").healthcheck is None
    assert spec.container("frontend").health_interval_s is None
    assert all(spec.container(p).healthcheck for p in ("dns", "backend", "ingress"))


def test_an_api_only_sandbox_checks_its_three_parts():
    spec = api_only()
    assert {c.part for c in spec.containers if c.healthcheck} == {"dns", "backend", "ingress"}
    ingress = spec.container("ingress")
    assert ingress.env_value("SANDBOX_UPSTREAM_HEALTH_PATH") is None  # it asks the backend's /v1/models


def test_the_ingress_health_listener_is_never_published():
    ingress = make_spec().container("ingress")
    assert INGRESS_HEALTH_PORT != INGRESS_PORT
    assert {p.container_port for p in ingress.ports} == {INGRESS_PORT}
    assert ingress.env_value("SANDBOX_HEALTH_PORT") == str(INGRESS_HEALTH_PORT)
    assert ingress.env_value("SANDBOX_UPSTREAM_HEALTH_PATH") == "/health"
    assert f"/dev/tcp/127.0.0.1/{INGRESS_HEALTH_PORT}" in ingress.healthcheck[3]


def test_the_interval_reaches_docker_and_compose(monkeypatch):
    seen = {}

    class Api:
        def __getattr__(self, name):
            def call(*args, **kwargs):
                if name == "create_container":
                    seen[kwargs["name"]] = kwargs["healthcheck"]
                    return {"Id": "x"}
                if name == "inspect_image":
                    return {"Config": {}}
                return {}
            return call

    spec = make_spec()
    applier = Applier(Api())
    for c in spec.containers:
        applier._create(spec, c)
    by_part = {c.part: seen[c.name] for c in spec.containers}
    assert by_part["backend"]["interval"] == 2 * 10**9
    assert by_part["dns"]["interval"] == SINK_HEALTH_INTERVAL_S * 10**9
    assert by_part["ingress"]["interval"] == INGRESS_HEALTH_INTERVAL_S * 10**9
    assert by_part["frontend"]["test"] == list(spec.container("frontend").healthcheck)
    rendered = render_compose(spec)["services"]
    ingress_test = next(s["healthcheck"]["test"] for s in rendered.values() if "/bin/bash" in s["healthcheck"]["test"])
    assert '"$$status"' in ingress_test[3] and '"$status"' not in ingress_test[3]  # not compose's variable
    services = rendered.values()
    intervals = {s.get("healthcheck", {}).get("interval") for s in services}
    assert intervals == {"2s", f"{SINK_HEALTH_INTERVAL_S}s", f"{INGRESS_HEALTH_INTERVAL_S}s"}


def test_the_backends_hash_is_the_one_it_had_before_the_interval_field():
    backend = make_spec().container("backend")
    assert spec_hash(backend) == spec_hash(replace(backend, health_interval_s=None))
    assert spec_hash(replace(backend, health_interval_s=30)) != spec_hash(backend)


def test_the_sinks_unrecorded_name_is_one_only_its_healthcheck_asks():
    sink = (ROOT / "images" / "dns-sink" / "sink.py").read_text()
    health = (ROOT / "images" / "dns-sink" / "health.py").read_text()
    assert f'HEALTH_NAME = "{SINK_HEALTH_NAME}"' in sink and f'HEALTH_NAME = "{SINK_HEALTH_NAME}"' in health
    assert SINK_HEALTH_NAME.endswith(".invalid")  # a reserved name: no real lookup is ever for it


# ---- the ingress's listener, with its real configuration --------------------

TEMPLATE = (ROOT / "images" / "ingress" / "nginx.conf.template").read_text()


def test_the_template_listens_on_the_door_and_on_127_0_0_1_for_health_and_nowhere_else():
    listens = re.findall(r"^\s*(listen [^\n]*|@LISTEN@)", TEMPLATE, re.M)
    assert listens == ["listen 127.0.0.1:@HEALTH_PORT@;", "@LISTEN@"]


def start_sh(**env) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "SANDBOX_NAME": "demo", "SANDBOX_ACCESS_TOKEN": TOKEN,
            "SANDBOX_PUBLIC_PORT": "18080", "SANDBOX_LISTEN_PORT": "8080", "SANDBOX_API_UPSTREAM": "backend:8000",
            "SANDBOX_API_KEY": API_KEY}
    return subprocess.run(["sh", str(ROOT / "images" / "ingress" / "start.sh")], env={**base, **env},
                          capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize("env, says", [
    ({}, "SANDBOX_HEALTH_PORT is missing"),
    ({"SANDBOX_HEALTH_PORT": "8080"}, "SANDBOX_HEALTH_PORT is the door's port"),
    ({"SANDBOX_HEALTH_PORT": "8081", "SANDBOX_UPSTREAM_HEALTH_PATH": "/h;return 200"}, "not a URL path"),
    ({"SANDBOX_HEALTH_PORT": "8081", "SANDBOX_UPSTREAM_HEALTH_PATH": "health"}, "not a URL path"),
])
def test_the_ingress_refuses_a_health_listener_on_the_door_or_a_path_nginx_would_read(env, says):
    run = start_sh(**env)
    assert run.returncode == 2 and says in run.stderr


needs_nginx = pytest.mark.skipif(not nginx_with_njs(), reason="nginx with njs (as in the ingress's image) "
                                 "is not installed")


def run_check(door: RealIngress) -> int:
    script = ingress_healthcheck(door.health_port)
    assert script[:3] == ("CMD", "/bin/bash", "-c")
    return subprocess.run(["bash", "-c", script[3]], timeout=15, capture_output=True).returncode


def ask_door(door: RealIngress, path: str, headers: dict | None = None) -> int:
    c = http.client.HTTPConnection("127.0.0.1", door.port, timeout=10)
    c.request("GET", path, headers={"Host": f"127.0.0.1:{door.port}", **(headers or {})})
    status = c.getresponse().status
    c.close()
    return status


@needs_nginx
def test_the_ingress_check_asks_the_ui_health_path_with_nothing_of_the_owners(tmp_path):
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, API_KEY) as door:
        assert run_check(door) == 0
        assert [s["path"] for s in door.ui.seen] == ["/health"]
        headers = {k.lower() for k in door.ui.seen[0]["headers"]}
        assert not headers & {"authorization", "cookie", "origin"}
        assert door.backend.seen == []
        # The UI failing: unhealthy.
        door.ui.answer = lambda seen: (500, [], b"down")
        assert run_check(door) != 0
        door.ui.shutdown()
        door.ui.server_close()
        assert run_check(door) != 0
        # Nothing of it is in the owner's logs.
        assert "health" not in door.log() and "health" not in door.api_log()


@needs_nginx
def test_an_api_only_ingress_check_asks_the_backends_models_by_the_apis_route(tmp_path):
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, API_KEY, ui=False) as door:
        assert run_check(door) == 0
        assert [s["path"] for s in door.backend.seen] == ["/v1/models"]
        assert door.backend.seen[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"
        assert door.ui.seen == []


@needs_nginx
def test_the_health_path_on_the_door_is_no_way_past_it(tmp_path):
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, API_KEY) as door:
        # Without the token, refused as any path is; with it, just a path of the UI's.
        assert ask_door(door, "/.sandbox-health") == 401
        assert door.ui.seen == []
        assert ask_door(door, "/.sandbox-health", {"Authorization": f"Bearer {TOKEN}"}) == 200
        assert [s["path"] for s in door.ui.seen] == ["/.sandbox-health"]
        # And the health listener serves that one path only, not the UI.
        c = http.client.HTTPConnection("127.0.0.1", door.health_port, timeout=10)
        c.request("GET", "/")
        assert c.getresponse().status == 404
        c.close()
