"""Each row of the attack matrix judged on facts where the attack is stopped
(PASS) and on facts where it got through (FAIL): no check that cannot fail."""
import json
from dataclasses import replace

import pytest

from launcher import front_door, matrix as v

NAME = "sandbox-verify-abc.example.com"
PROC = {"command": "python3 server.py", "uid": ["65534"] * 4, "cap_eff": "0000000000000000",
        "no_new_privs": "1", "seccomp": "2"}


FORWARDED = {"status": 200, "refused": None}
# The front-end's container as the engine describes it.
CONFIG = {"id": "c0ffee", "privileged": False, "cap_add": [], "cap_drop": ["ALL"],
          "security_opt": ["no-new-privileges:true"], "read_only": True, "networks": ["sandbox-x-internal"],
          "mounts": [{"type": "volume", "source": "/var/lib/docker/volumes/sandbox-x-data/_data",
                      "destination": "/data", "rw": True}]}


def refused(status: int, reason: str) -> dict:
    return {"status": status, "refused": reason}


FRONT_DOOR = {
    "owner": FORWARDED, "owner_cookie": FORWARDED, "own_post": {"status": 404, "refused": None},
    "own_websocket": FORWARDED,
    "foreign_host": refused(421, "foreign-host"), "rebound_host_with_cookie": refused(421, "foreign-host"),
    "no_token": refused(401, "no-token"), "wrong_token": refused(401, "no-token"),
    "cross_site_post": refused(403, "cross-site"), "same_site_post": refused(403, "cross-site"),
    "no_origin_post": refused(403, "no-origin"), "cross_site_websocket": refused(403, "foreign-origin"),
    "pipelined": [FORWARDED, {"status": 400, "refused": None}],
    "flood": {"opened": 300, "still_open": 300, "error": "",
              "owner": [{**FORWARDED, "seconds": 0.01}] * 5},
}


def door_with(**changes) -> v.Facts:
    return replace(safe(), front_door={**FRONT_DOOR, **changes})


def safe() -> v.Facts:
    return v.Facts(
        probe={
            # Every way out leads to the sink, which takes it and records it.
            "tcp": {"172.17.0.1:4000": "connected", "192.0.2.2:4000": "connected",
                    "10.213.9.2:8000": "connected"},
            "outside": {"tcp 1.1.1.1:443": "via-sink:connected", "tcp 169.254.169.254:80": "via-sink:connected",
                        "udp 10.0.0.53:53": "via-sink:timeout", f"tcp {v.ADDRESS_TARGET}:40001": "via-sink:connected",
                        f"udp {v.ADDRESS_TARGET}:40002": "via-sink:timeout"},
            "dns": {NAME: "no-answer:Name or service not known"},
            "ipv6": {"[2606:4700:4700::1111]:443": {"disabled": True, "result": "error:Cannot assign"}},
            "http": {"10.213.7.4:8080 CONNECT example.com:443 HTTP/1.1": "HTTP/1.1 405 Method Not Allowed"},
            "self": {"raw_socket": "error:Operation not permitted", "write_root": "error:Read-only file system",
                     "docker_socket": []},
        },
        frontend_config=CONFIG, internal_network="sandbox-x-internal", processes={"1": PROC, "7": PROC},
        canary_port=4000, host_targets=["172.17.0.1", "192.0.2.2"], other_sandbox_targets=["10.213.9.2:8000"],
        unique_name=NAME, sink_names=[NAME],
        ingress_from_host={"GET http://example.com/ HTTP/1.1": "HTTP/1.1 400 Bad Request"},
        weights_write="EACCES EROFS EBUSY", weights_sha_before="a" * 64, weights_sha_after="a" * 64,
        expected_sha="a" * 64, limits={"frontend": {"pids": 512, "memory": 2**28}},
        ingress_bindings=["127.0.0.1:8080"], route_localnet={"all": "0", "eth0": "0"}, front_door=FRONT_DOOR,
        caught=[["tcp", "172.17.0.1", 4000], ["tcp", "192.0.2.2", 4000], ["tcp", "10.213.9.2", 8000],
                ["tcp", "1.1.1.1", 443], ["tcp", "169.254.169.254", 80], ["udp", "10.0.0.53", 53],
                ["tcp", v.ADDRESS_TARGET, 40001], ["udp", v.ADDRESS_TARGET, 40002]])


def not_caught(facts: v.Facts, *keys) -> v.Facts:
    """The same facts, but the sink did not record these attempts."""
    return replace(facts, caught=[c for c in facts.caught if tuple(c) not in keys])


def config_with(**changes) -> v.Facts:
    return replace(safe(), frontend_config={**CONFIG, **changes})


def processes_with(**changes) -> v.Facts:
    return replace(safe(), processes={"1": PROC, "7": {**PROC, **changes}})


def probe_with(**changes) -> v.Facts:
    facts = safe()
    return replace(facts, probe={**facts.probe, **changes})


def test_all_rows_pass_on_a_safe_sandbox():
    assert [(r.attack, r.verdict) for r in v.judge(safe()) if r.verdict != "PASS"] == []
    assert len(v.judge(safe())) == 23


BREACHES = {
    "external DNS": [probe_with(dns={NAME: ["93.184.216.34"]}), replace(safe(), sink_names=[])],
    "DNS leak via host resolver": [not_caught(probe_with(outside={"udp 10.0.0.53:53": "answered"}),
                                              ("udp", "10.0.0.53", 53)),
                                   replace(safe(), sink_names=["other.example"])],
    "raw IP egress": [not_caught(safe(), ("tcp", "1.1.1.1", 443)),
                      probe_with(outside={"tcp 1.1.1.1:443": "route-via-live-gateway:172.18.0.1"}),
                      probe_with(outside={})],
    "attempt by address": [not_caught(safe(), ("tcp", v.ADDRESS_TARGET, 40001)),
                           not_caught(safe(), ("udp", v.ADDRESS_TARGET, 40002)),
                           probe_with(outside={"tcp 1.1.1.1:443": "via-sink:connected"})],
    "metadata": [not_caught(safe(), ("tcp", "169.254.169.254", 80))],
    "host services": [not_caught(safe(), ("tcp", "172.17.0.1", 4000)),
                      replace(safe(), canary_hits=["172.18.0.3:5555"]), probe_with(tcp={})],
    "other sandboxes": [not_caught(safe(), ("tcp", "10.213.9.2", 8000))],
    "IPv6": [probe_with(ipv6={"[::1]:1": {"disabled": False, "result": "has-default-route"}}),
             probe_with(ipv6={"[::1]:1": {"disabled": True, "result": "connected"}})],
    "use the ingress as proxy": [probe_with(http={"x CONNECT": "HTTP/1.1 200 Connection established"}),
                                 replace(safe(), ingress_from_host={"GET http://x/": "HTTP/1.0 200 OK"}),
                                 # From the host a refused connection is an ingress that is down, not a refusal.
                                 replace(safe(), ingress_from_host={"GET http://x/": "error:Connection refused"})],
    "raw sockets": [probe_with(self={**safe().probe["self"], "raw_socket": "opened"}),
                    config_with(cap_add=["NET_RAW"]), config_with(cap_drop=["NET_ADMIN"]),
                    config_with(privileged=True), replace(safe(), frontend_config={})],
    "privileges": [processes_with(cap_eff="00000000a80425fb"), processes_with(no_new_privs="0"),
                   processes_with(uid=["0", "0", "0", "0"]), processes_with(seccomp="0"),
                   config_with(privileged=True), config_with(cap_add=["NET_ADMIN"]), config_with(cap_drop=[]),
                   config_with(security_opt=[]), config_with(security_opt=["no-new-privileges", "seccomp=unconfined"]),
                   replace(safe(), frontend_config={})],
    "network attachments": [config_with(networks=["sandbox-x-internal", "bridge"]), config_with(networks=["bridge"]),
                            replace(safe(), frontend_config={})],
    "write the weights": [replace(safe(), weights_write="WROTE EROFS EROFS"),
                          replace(safe(), weights_sha_after="b" * 64), replace(safe(), weights_write="")],
    "write the root fs": [probe_with(self={**safe().probe["self"], "write_root": "written"}),
                          config_with(read_only=False), config_with(read_only=None),
                          replace(safe(), frontend_config={})],
    "Docker socket": [probe_with(self={**safe().probe["self"], "docker_socket": ["/var/run/docker.sock"]}),
                      config_with(mounts=[*CONFIG["mounts"], {"type": "bind", "source": "/var/run/docker.sock",
                                                              "destination": "/tmp/d.sock", "rw": True}]),
                      config_with(mounts=[{"type": "bind", "source": "/run/", "destination": "/host-run",
                                           "rw": False}]),
                      replace(safe(), frontend_config={})],
    "fork bomb / memory bomb": [replace(safe(), limits={"frontend": {"pids": None, "memory": 2**28}}),
                                replace(safe(), limits={"frontend": {"pids": 512, "memory": 0}}),
                                # The engine's "unlimited" (`--pids-limit -1`), which is no limit.
                                replace(safe(), limits={"frontend": {"pids": -1, "memory": 2**28}}),
                                replace(safe(), limits={"frontend": {"pids": 512, "memory": -1}})],
    "LAN reach of the UI": [replace(safe(), ingress_bindings=["0.0.0.0:8080"]),
                            replace(safe(), route_localnet={"all": "0", "eth0": "1"}),
                            replace(safe(), ingress_bindings=[])],
    # Each front-door row fails when the attack is passed on, or refused the wrong way.
    "DNS rebinding": [door_with(foreign_host=FORWARDED), door_with(rebound_host_with_cookie=FORWARDED),
                      door_with(foreign_host=refused(403, "cross-site"))],
    "no credential": [door_with(no_token=FORWARDED), door_with(wrong_token={"status": 200, "refused": None}),
                      door_with(no_token={"status": 501, "refused": None})],
    "cross-site request": [door_with(cross_site_post={"status": 404, "refused": None}),
                           door_with(same_site_post=FORWARDED), door_with(no_origin_post=FORWARDED),
                           door_with(cross_site_post={"status": 501, "refused": None},
                                     own_post={"status": 501, "refused": None})],
    "cross-site WebSocket": [door_with(cross_site_websocket={"status": 101, "refused": None})],
    "smuggled proxy request": [door_with(pipelined=[FORWARDED, FORWARDED]),
                               door_with(pipelined=[FORWARDED, {"status": 400, "refused": None}, FORWARDED]),
                               door_with(pipelined=[FORWARDED])],
    "slow clients": [door_with(flood={**FRONT_DOOR["flood"], "owner": [{"status": None, "refused": None}] * 5}),
                     door_with(flood={**FRONT_DOOR["flood"], "owner": []})],
}


def answering() -> v.Facts:
    """A safe sandbox with `audit: connections`: the name resolved to the
    sink, and the connection to it was recorded under that name."""
    facts = probe_with(dns={NAME: ["198.18.40.2"]}, by_name={f"{NAME}:41000": "via-sink:connected"})
    return replace(facts, answers="connections", caught=[*facts.caught, ["tcp", "198.18.40.2", 41000, NAME]])


def test_all_rows_pass_in_connections_mode_too():
    assert [(r.attack, r.verdict) for r in v.judge(answering()) if r.verdict != "PASS"] == []


@pytest.mark.parametrize("breach", [
    # A real resolver answered: the name got out.
    lambda f: replace(f, probe={**f.probe, "dns": {NAME: ["93.184.216.34"]}}),
    lambda f: replace(f, probe={**f.probe, "dns": {NAME: ["198.18.40.2", "93.184.216.34"]}}),
    lambda f: replace(f, probe={**f.probe, "dns": {NAME: "no-answer:Name or service not known"}}),
    lambda f: replace(f, sink_names=[]),
    # The connection to the answer did not end at the sink.
    lambda f: replace(f, caught=[c for c in f.caught if len(c) < 4]),
    lambda f: replace(f, caught=[*[c for c in f.caught if len(c) < 4], ["tcp", "198.18.40.2", 41000, None]]),
])
def test_connections_mode_fails_when_the_name_or_its_connection_got_out(breach):
    row = next(r for r in v.judge(breach(answering())) if r.attack == "external DNS")
    assert row.verdict == "FAIL", row.result


@pytest.mark.parametrize("attack, index", [(a, i) for a, cases in BREACHES.items() for i in range(len(cases))])
def test_row_fails_when_the_attack_gets_through(attack, index):
    verdicts = {r.attack: r.verdict for r in v.judge(BREACHES[attack][index])}
    assert verdicts[attack] == "FAIL"


def test_other_sandboxes_is_skipped_when_there_is_none():
    row = v.other_sandboxes(replace(safe(), other_sandbox_targets=[]))
    assert (row.verdict, row.result) == ("SKIP", "no other sandbox is running")


def test_every_row_of_the_matrix_has_a_breach_case():
    assert set(BREACHES) == {r.attack for r in v.judge(safe())}


def test_privileges_under_gvisor_are_read_inside_and_on_the_host():
    inside = {**PROC, "no_new_privs": None, "seccomp": "0"}  # what gVisor's /proc shows
    facts = replace(safe(), processes={"1": inside}, processes_by=v.FRONTEND_WORD)
    assert v.privileges(facts).verdict == "FAIL"  # not under gVisor: that is a breach
    sentry = {"NoNewPrivs": "1", "Seccomp": "2"}
    row = v.privileges(replace(facts, gvisor_sentry=sentry))
    assert row.verdict == "PASS"
    # What the front-end said of itself is shown as such.
    assert row.checked_by == ("engine", "front-end's word", "host") and "the front-end's word" in row.result
    assert v.privileges(replace(facts, gvisor_sentry={**sentry, "Seccomp": "0"})).verdict == "FAIL"
    root = replace(facts, processes={"1": {**inside, "uid": ["0"] * 4}})
    assert v.privileges(replace(root, gvisor_sentry=sentry)).verdict == "FAIL"


def test_an_ingress_that_does_not_listen_inside_is_no_proxy_from_inside():
    facts = probe_with(http={"10.0.0.4:8080 CONNECT example.com:443 HTTP/1.1": "error:Connection refused"})
    assert v.ingress_proxy(facts).verdict == "PASS"


def test_every_row_says_where_it_was_checked():
    rows = v.judge(safe())
    assert all(r.checked_by and set(r.checked_by) <= {"engine", "host", "probe", "sink", "backend"} for r in rows)
    by = {r.attack: r.checked_by for r in rows}
    # Judged from outside the front-end: the engine and the host's /proc, not the probe.
    assert by["privileges"] == ("engine", "host")
    assert by["network attachments"] == ("engine",) and by["fork bomb / memory bomb"] == ("engine",)
    assert by["raw IP egress"] == ("probe", "sink") and by["raw sockets"] == ("probe", "engine")
    assert v.judge(safe())[0].to_dict()["checked_by"] == ["probe", "sink"]


def test_privileges_not_read_at_all_is_inconclusive_never_a_pass():
    row = v.privileges(replace(safe(), processes={}))
    assert row.verdict == "INCONCLUSIVE" and "/proc" in row.result
    # A root process is a FAIL even when others could not be read.
    assert v.privileges(processes_with(uid=["0"] * 4)).verdict == "FAIL"


# The owner's own request was not passed on to the UI, or got no answer: the
# row proves nothing either way, and says so.
UNSETTLED = {
    "DNS rebinding": [door_with(owner=refused(421, "foreign-host")), replace(safe(), front_door={})],
    "no credential": [door_with(owner_cookie=refused(401, "no-token")),
                      door_with(no_token={"status": None, "refused": None, "error": "refused"})],
    "cross-site request": [door_with(own_post=refused(403, "cross-site")),
                           door_with(own_post={"status": None, "refused": None, "error": "no answer"}),
                           door_with(own_post={"status": 502, "refused": None})],
    "cross-site WebSocket": [door_with(own_websocket={"status": 502, "refused": None})],
    "smuggled proxy request": [door_with(pipelined=[refused(401, "no-token"), {"status": 400, "refused": None}]),
                               door_with(pipelined=[])],
}


@pytest.mark.parametrize("attack, index", [(a, i) for a, cases in UNSETTLED.items() for i in range(len(cases))])
def test_a_row_whose_control_got_no_answer_is_inconclusive(attack, index):
    row = next(r for r in v.judge(UNSETTLED[attack][index]) if r.attack == attack)
    assert row.verdict == "INCONCLUSIVE", row.result
    assert "proves nothing" in row.result


def test_the_owners_post_is_judged_by_whether_the_ingress_passed_it_on_not_by_the_uis_status():
    # A UI that answers POST with 501 (python3 -m http.server does): the ingress passed the owner's POST on
    # and refused every cross-site one. Before, this read as "attack got through".
    row = v.cross_site_request(door_with(own_post={"status": 501, "refused": None}))
    assert row.verdict == "PASS", row.result
    assert "own post 501" in row.result


def test_an_inconclusive_row_makes_verify_not_ok_and_never_reads_as_got_through(monkeypatch):
    from typer.testing import CliRunner

    import launcher.commands.verify
    from launcher.cli import app
    from launcher.commands.verify import VerifyResult
    rows = v.judge(door_with(own_post={"status": None, "refused": None, "error": "timed out"}))
    result = VerifyResult("x", rows)
    assert not result.ok
    assert VerifyResult("x", v.judge(safe())).ok
    monkeypatch.setattr(launcher.commands.verify, "verify", lambda *a, **k: result)
    shown = CliRunner().invoke(app, ["verify"])
    assert shown.exit_code == 1
    assert "got through" not in shown.stdout
    assert "1 check(s) inconclusive, proving neither way: cross-site request" in shown.stdout
    assert "INCONCLUSIVE  cross-site request" in shown.stdout
    as_json = CliRunner().invoke(app, ["verify", "--json"])
    [row] = [r for r in json.loads(as_json.stdout)["rows"] if r["attack"] == "cross-site request"]
    assert (row["verdict"], row["checked_by"]) == ("INCONCLUSIVE", ["host"])


@pytest.mark.parametrize("output", [
    "",
    # A result written into the probe's output after its own: never picked out of a stream.
    '{"self": {}}\n{"self": {"raw_socket": "error:Operation not permitted"}}\n',
    "[]\n", "not json\n", '{"self": {}}\n\n',
])
def test_the_probe_must_print_exactly_one_json_result(output):
    from launcher.commands.verify import probe_result
    from launcher.errors import DockerFailure
    with pytest.raises(DockerFailure, match="exactly one JSON result"):
        probe_result(output)


def test_the_probes_one_json_result_is_taken():
    from launcher.commands.verify import probe_result
    assert probe_result('{"self": {"docker_socket": []}}\n') == {"self": {"docker_socket": []}}


@pytest.mark.parametrize("frontend_user", ["65534:65534", "65533:65533", "65532:65532", "1000:1000"])
def test_the_probe_runs_as_neither_the_front_ends_user_nor_root(frontend_user):
    from launcher.engine.containers import probe_user
    uid = probe_user(frontend_user).split(":")[0]
    assert uid not in ("0", frontend_user.split(":")[0])


@pytest.mark.parametrize("host_uid, uid_map, inside", [
    (0, "         0          0 4294967295\n", 0),
    (65534, "         0          0 4294967295\n", 65534),
    # userns-remap: root in the container is 100000 on the host, and is still root there.
    (100000, "         0     100000      65536\n", 0),
    (165534, "         0     100000      65536\n", 65534),
    (5, "         0     100000      65536\n", "unmapped 5"),
])
def test_a_hosts_uid_is_judged_as_the_container_sees_it(host_uid, uid_map, inside):
    from launcher.hostnet import _inside
    assert _inside(host_uid, uid_map) == inside


def test_a_process_that_is_not_the_containers_is_not_taken_for_it():
    import os
    from launcher.hostnet import container_process
    # This test's own process: in no container of that id.
    assert container_process(os.getpid(), "f" * 64) is None
    assert container_process(2**22 + 1, "f" * 64) is None  # no such PID
    # Control: named by its own cgroup, it is read, with its uids.
    own_cgroup = open("/proc/self/cgroup").read().splitlines()[0].split(":", 2)[2]
    seen = container_process(os.getpid(), own_cgroup)
    assert seen is not None and seen["uid"][0] == str(os.getuid())


def test_a_row_that_fails_only_for_want_of_the_sinks_record_is_inconclusive_when_the_sink_was_full():
    unrecorded = not_caught(safe(), ("tcp", "1.1.1.1", 443))
    assert v.raw_egress(unrecorded).verdict == "FAIL"
    full = replace(unrecorded, sink_not_itemised=1200)
    row = next(r for r in v.judge(full) if r.attack == "raw IP egress")
    assert row.verdict == "INCONCLUSIVE" and "summary was full" in row.result
    # Control: with room in the summary the same facts stay a FAIL.
    assert next(r for r in v.judge(unrecorded) if r.attack == "raw IP egress").verdict == "FAIL"


def test_a_real_escape_stays_a_fail_however_full_the_sink_was():
    escaped = replace(probe_with(outside={"tcp 1.1.1.1:443": "route-via-live-gateway:172.18.0.1"}),
                      sink_not_itemised=1200)
    assert next(r for r in v.judge(escaped) if r.attack == "raw IP egress").verdict == "FAIL"
    # A row the sink does not judge is not touched by it either.
    root = replace(processes_with(uid=["0"] * 4), sink_not_itemised=1200)
    assert next(r for r in v.judge(root) if r.attack == "privileges").verdict == "FAIL"


NO_PORT = "error:Cannot assign requested address"  # every ephemeral port bound by a part sharing the netns
# Each row that judges the probe's attempts, with every attempt it reads failed on the probe's own side.
NEVER_LEFT = {
    "raw IP egress": probe_with(outside={**safe().probe["outside"], "tcp 1.1.1.1:443": f"via-sink:{NO_PORT}",
                                         "udp 10.0.0.53:53": "via-sink:error:Resource temporarily unavailable"}),
    "attempt by address": not_caught(
        probe_with(outside={**safe().probe["outside"], f"tcp {v.ADDRESS_TARGET}:40001": f"via-sink:{NO_PORT}"}),
        ("tcp", v.ADDRESS_TARGET, 40001)),
    "metadata": probe_with(outside={**safe().probe["outside"],
                                    "tcp 169.254.169.254:80": "via-sink:error:Too many open files"}),
    "host services": probe_with(tcp={**safe().probe["tcp"], "172.17.0.1:4000": NO_PORT}),
    "other sandboxes": probe_with(tcp={**safe().probe["tcp"], "10.213.9.2:8000": "error:No buffer space available"}),
    "DNS leak via host resolver": probe_with(outside={**safe().probe["outside"],
                                                      "udp 10.0.0.53:53": "via-sink:error:Cannot allocate memory"}),
    "use the ingress as proxy": probe_with(http={"10.213.7.4:8080 CONNECT example.com:443 HTTP/1.1": NO_PORT}),
}


@pytest.mark.parametrize("attack", NEVER_LEFT)
def test_an_attempt_that_never_left_the_probe_makes_its_row_inconclusive_never_a_pass(attack):
    """Before: with every ephemeral port bound by the front-end, each connect
    failed locally and raw egress, metadata, host services and other
    sandboxes said PASS; the ingress row said FAIL."""
    row = next(r for r in v.judge(NEVER_LEFT[attack]) if r.attack == attack)
    assert row.verdict == "INCONCLUSIVE", row.result
    assert "failed inside the probe" in row.result


def test_an_attempt_that_never_left_the_probe_hides_no_escape_beside_it():
    # An attempt the sink did not record, beside those that never left.
    facts = probe_with(outside={**NEVER_LEFT["raw IP egress"].probe["outside"], "tcp 8.8.8.8:53": "via-sink:connected"})
    assert next(r for r in v.judge(facts) if r.attack == "raw IP egress").verdict == "FAIL"
    host = replace(NEVER_LEFT["host services"], canary_hits=["172.18.0.3:5555"])
    assert next(r for r in v.judge(host) if r.attack == "host services").verdict == "FAIL"


def test_an_attempt_that_never_left_is_inconclusive_in_connections_mode_too():
    facts = answering()
    facts = replace(facts, probe={**facts.probe, "by_name": {f"{NAME}:41000": f"198.18.40.2 via-sink:{NO_PORT}"}},
                    caught=[c for c in facts.caught if len(c) < 4])
    row = next(r for r in v.judge(facts) if r.attack == "external DNS")
    assert row.verdict == "INCONCLUSIVE", row.result


def response(status: int, body: bytes, *headers: str) -> bytes:
    return (f"HTTP/1.1 {status} X\r\n" + "".join(f"{h}\r\n" for h in headers)).encode() + b"\r\n" + body


# A UI's answer whose body reads like two more responses.
POSING_BODY = b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\nX-Sandbox-Refused: cross-site\r\n\r\n"
REFUSALS = (response(400, b"400 refused\n", "Content-Length: 12", "X-Sandbox-Refused: proxy-request")
            + response(405, b"", "Content-Length: 0"))


@pytest.mark.parametrize("first", [
    response(200, POSING_BODY, f"Content-Length: {len(POSING_BODY)}"),
    response(200, b"%x\r\n%s\r\n0\r\n\r\n" % (len(POSING_BODY), POSING_BODY), "Transfer-Encoding: chunked"),
])
def test_a_body_that_reads_like_a_response_is_skipped_not_taken_for_one(first):
    """Before: the stream was split on "HTTP/1.1 ", and a UI whose page held
    that text made "FAIL smuggled proxy request host 200, 200, 400"."""
    assert front_door._responses(first + REFUSALS) == [
        {"status": 200, "refused": None}, {"status": 400, "refused": "proxy-request"},
        {"status": 405, "refused": None}]


def test_a_body_to_the_end_of_the_stream_is_one_response():
    assert front_door._responses(response(200, POSING_BODY, "Connection: close")) == [{"status": 200, "refused": None}]


@pytest.mark.parametrize("owner", [{"status": 403, "refused": "cross-site"}, {"status": 502, "refused": None}])
def test_slow_clients_is_inconclusive_when_the_owners_request_was_not_passed_on(owner):
    """Before: a UI answering 403 (or 502) made "FAIL slow clients: owner answered 0/5"."""
    row = v.slow_clients(door_with(flood={**FRONT_DOOR["flood"], "owner": [{**owner, "seconds": 0.01}] * 5}))
    assert row.verdict == "INCONCLUSIVE", row.result
    # The control: an owner who got no answer at all while the flood held is shut out.
    row = v.slow_clients(door_with(flood={**FRONT_DOOR["flood"], "owner": [{"status": None, "refused": None}] * 5}))
    assert row.verdict == "FAIL", row.result


def test_slow_clients_is_inconclusive_when_the_flood_did_not_hold():
    row = v.slow_clients(door_with(flood={**FRONT_DOOR["flood"], "still_open": 3}))
    assert row.verdict == "INCONCLUSIVE" and "did not hold" in row.result, row.result


def test_a_process_seen_before_or_while_the_probe_runs_is_judged_though_gone_after():
    """A root process that exits when it sees the probe's sockets (the front-end
    shares the probe's network) was never read: verify read after the probe."""
    from launcher.commands.verify import watching_processes
    root = {**PROC, "command": "sleep 600", "uid": ["0"] * 4}
    readings = iter([{"1": PROC, "9": root}])
    result, seen = watching_processes(lambda: next(readings, {"1": PROC}), lambda: "probe output")
    assert result == "probe output" and seen == {"1": PROC, "9": root}
    row = v.privileges(replace(safe(), processes=seen))
    assert row.verdict == "FAIL" and "pid 9 (sleep 600): uid 0" in row.result, row.result
    # The control: with no such process at any reading, privileges passes.
    _, seen = watching_processes(lambda: {"1": PROC}, lambda: "probe output")
    assert v.privileges(replace(safe(), processes=seen)).verdict == "PASS"


def _without_host_resolvers() -> v.Facts:
    facts = safe()
    outside = {k: o for k, o in facts.probe["outside"].items() if not (k.startswith("udp ") and k.endswith(":53"))}
    return probe_with(outside=outside)


@pytest.mark.parametrize("attack, unread", [
    # Before, each of these passed: a fact that was never read was taken for a safe one.
    ("LAN reach of the UI", replace(safe(), route_localnet={})),
    ("LAN reach of the UI", replace(safe(), route_localnet={"all": "0", "eth0": None})),
    ("LAN reach of the UI", replace(safe(), route_localnet={"all": None, "eth0": None})),
    ("DNS leak via host resolver", _without_host_resolvers()),
    ("IPv6", probe_with(ipv6={"[2606:4700:4700::1111]:443": {"disabled": None, "result": "error:Network is unreachable"}})),
])
def test_a_fact_that_could_not_be_read_makes_its_row_inconclusive_never_a_pass(attack, unread):
    row = next(r for r in v.judge(unread) if r.attack == attack)
    assert row.verdict == "INCONCLUSIVE", row.result
    assert "proves nothing" in row.result or "could not be read" in row.result


@pytest.mark.parametrize("breach", [
    replace(safe(), route_localnet={"all": None, "eth0": "1"}),
    replace(safe(), route_localnet={}, ingress_bindings=["0.0.0.0:8080"]),
])
def test_an_unread_fact_hides_no_breach_beside_it(breach):
    assert v.lan_reach(breach).verdict == "FAIL"


def _probe_module():
    import importlib.util
    from launcher.resources import IMAGES_DIR
    spec = importlib.util.spec_from_file_location("probe", IMAGES_DIR / "probe" / "probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LO_REJECT = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 " \
            "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
ETH0_DEFAULT = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 " \
               "fd155dda000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n"


@pytest.mark.parametrize("disable_ipv6, routes, result", [
    # What the engine gave a container on a bridge network with IPv6: `all` says disabled, eth0 has a
    # default route (before: "disabled", then a connect whose SYN left through that route: PASS).
    ("1\n", LO_REJECT + ETH0_DEFAULT, "has-default-route"),
    ("0\n", LO_REJECT + ETH0_DEFAULT, "has-default-route"),
    # lo's reject route, which every namespace has, is no way out: the address is tried.
    ("1\n", LO_REJECT, "tried"),
])
def test_the_probe_finds_an_ipv6_default_route_whatever_all_disable_ipv6_says(
        monkeypatch, disable_ipv6, routes, result):
    import io
    probe = _probe_module()
    files = {"/proc/sys/net/ipv6/conf/all/disable_ipv6": disable_ipv6, "/proc/net/ipv6_route": routes}
    monkeypatch.setattr(probe, "open", lambda path, *a, **k: io.StringIO(files[path]), raising=False)
    monkeypatch.setattr(probe, "connect", lambda *a, **k: "tried")
    assert probe.ipv6("2606:4700:4700::1111", 443) == {"disabled": disable_ipv6 == "1\n", "result": result}


def test_the_probe_says_an_unreadable_disable_ipv6_is_unknown_not_disabled(monkeypatch):
    import io
    probe = _probe_module()

    def unreadable(path, *a, **k):
        if path.endswith("disable_ipv6"):
            raise PermissionError(13, "Permission denied")
        return io.StringIO(LO_REJECT)
    monkeypatch.setattr(probe, "open", unreadable, raising=False)
    monkeypatch.setattr(probe, "connect", lambda *a, **k: "error:Network is unreachable")
    assert probe.ipv6("2606:4700:4700::1111", 443)["disabled"] is None


def test_the_canary_counts_every_connection_made_before_it_is_asked():
    import socket
    from launcher.hostnet import Canary
    with Canary() as canary:
        peers = []
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", canary.port)) as s:
                peers.append(f"127.0.0.1:{s.getsockname()[1]}")
        assert canary.hits_until_now() == peers


def test_a_connection_the_sink_took_reads_taken_by_the_sink_and_one_it_did_not_reads_connected():
    rows = {r.attack: r for r in v.judge(safe())}
    assert rows["host services"].result == "172.17.0.1:4000 taken by the sink; 192.0.2.2:4000 taken by the sink"
    assert rows["other sandboxes"].result == "10.213.9.2:8000 taken by the sink"
    breach = {r.attack: r for r in v.judge(not_caught(safe(), ("tcp", "172.17.0.1", 4000)))}["host services"]
    assert breach.verdict == "FAIL" and breach.result == "172.17.0.1:4000 connected"
