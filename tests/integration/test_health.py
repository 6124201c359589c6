"""Every part's own healthcheck on a running quick-start sandbox (issue 25):
Docker reports each part healthy by its own check, `sandbox status` shows it,
and the sink's check is never in the audit, while the same name asked by a
part is."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from launcher.cli import app
from launcher.spec import INGRESS_HEALTH_PORT, SINK_HEALTH_NAME, ingress_healthcheck
from tests.integration.conftest import poll

runner = CliRunner()
PARTS = ("dns", "backend", "frontend", "ingress")


def engine_health(docker_client, name: str) -> dict[str, str]:
    out = {}
    for part in PARTS:
        state = docker_client.api.inspect_container(f"sandbox-{name}-{part}")["State"]
        out[part] = (state.get("Health") or {}).get("Status")
    return out


def test_docker_reports_each_part_healthy_and_status_shows_it(sandbox, docker_client):
    result, _ = sandbox
    # The sink's and the front-end's checks first run 30 s after their start.
    poll(lambda: set(engine_health(docker_client, result.name).values()) == {"healthy"},
         lambda: f"every part healthy: {engine_health(docker_client, result.name)}", seconds=180)
    run = runner.invoke(app, ["status", result.name, "--json"])
    assert run.exit_code == 0, run.output
    [report] = json.loads(run.stdout)["sandboxes"]
    assert report["healthy"]
    assert {p["part"]: (p["health"], p["health_by"]) for p in report["parts"]} == {
        part: ("healthy", "engine") for part in PARTS}


def test_the_sinks_own_check_is_never_an_attempt_but_a_parts_lookup_of_its_name_is(sandbox, docker_client):
    result, _ = sandbox
    sink = docker_client.api.inspect_container(f"sandbox-{result.name}-dns")["State"]
    poll(lambda: len((docker_client.api.inspect_container(f"sandbox-{result.name}-dns")["State"].get("Health")
                      or {}).get("Log") or []) >= 2, "two runs of the sink's healthcheck", seconds=180)
    log = docker_client.api.inspect_container(f"sandbox-{result.name}-dns")["State"]["Health"]["Log"]
    assert all(run["ExitCode"] == 0 for run in log), log
    assert sink["Running"]

    def names() -> list[dict]:
        return json.loads(runner.invoke(app, ["audit", result.name, "--json"]).stdout)["names"]
    assert all(n["name"] != SINK_HEALTH_NAME for n in names())
    # A part asking the same name (through Docker's resolver, to the sink's
    # address on the internal network) is recorded as any other lookup.
    docker_client.containers.get(f"sandbox-{result.name}-frontend").exec_run(
        ["python3", "-c", f"import socket\ntry: socket.getaddrinfo('{SINK_HEALTH_NAME}', 443)\nexcept OSError: pass"])
    entry = poll(lambda: next((n for n in names() if n["name"] == SINK_HEALTH_NAME), None),
                 "a part's lookup of the health name in the audit")
    assert entry["parts"] == ["frontend"]


def test_no_part_reaches_the_ingress_health_listener(sandbox, docker_client):
    result, _ = sandbox
    ingress = docker_client.api.inspect_container(f"sandbox-{result.name}-ingress")
    addresses = [n["IPAddress"] for n in ingress["NetworkSettings"]["Networks"].values() if n["IPAddress"]]
    assert addresses
    # A connection to its address outside the sandbox's network goes the way
    # of every outside address, to the sink, which accepts it, records it and
    # answers nothing; inside it, nothing listens on that port. Either way no
    # HTTP answer: nginx's listener is on the ingress's 127.0.0.1 only.
    probe = ("import socket,sys\nfor a in sys.argv[1:]:\n"
             "    s=socket.socket(); s.settimeout(5)\n"
             "    try:\n"
             f"        s.connect((a,{INGRESS_HEALTH_PORT}))\n"
             "        s.sendall(b'GET /.sandbox-health HTTP/1.0\\r\\nHost: health\\r\\n\\r\\n')\n"
             "        print(a, repr(s.recv(64)))\n"
             "    except OSError as e:\n"
             "        print(a, 'refused', e.errno)\n")
    code, output = docker_client.containers.get(f"sandbox-{result.name}-frontend").exec_run(
        ["python3", "-c", probe, *addresses])
    assert code == 0, output
    lines = output.decode().splitlines()
    assert len(lines) == len(addresses) and not any("HTTP/" in line for line in lines), output
    # Control: inside the ingress, the healthcheck's own request is answered.
    code, output = docker_client.containers.get(f"sandbox-{result.name}-ingress").exec_run(
        list(ingress_healthcheck(INGRESS_HEALTH_PORT)[1:]))
    assert code == 0, output
    # And the host, which has a route to the ingress's own network (and none
    # to the internal one): refused there.
    import socket
    for network, settings in ingress["NetworkSettings"]["Networks"].items():
        if not network.endswith("-ingress"):
            continue
        address = settings["IPAddress"]
        with socket.socket() as s:
            s.settimeout(5)
            assert s.connect_ex((address, INGRESS_HEALTH_PORT)) != 0, address
