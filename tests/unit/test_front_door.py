"""The front door tried from the host (launcher/front_door.py) against a real
HTTP server on 127.0.0.1: an ingress that tells the owner apart passes every
front-door row of the matrix, one that lets everything through fails them,
and one that is not there proves nothing (and raises nothing)."""
import socket

import pytest

from launcher import matrix
from launcher.front_door import _responses, slow_client_flood, try_front_door
from tests.unit.fake_ingress import StandInIngress

TOKEN = "k" * 43
DOOR_ROWS = ("DNS rebinding", "no credential", "cross-site request", "cross-site WebSocket",
             "smuggled proxy request", "slow clients")


def door_rows(front_door: dict) -> dict[str, matrix.Row]:
    rows = matrix.judge(matrix.Facts(front_door=front_door))
    return {r.attack: r for r in rows if r.attack in DOOR_ROWS}


def test_an_ingress_that_tells_the_owner_apart_passes_every_front_door_row():
    with StandInIngress("demo", TOKEN) as ingress:
        seen = try_front_door(ingress.port, "demo", TOKEN)
    assert seen["owner"] == seen["owner_cookie"] == {"status": 200, "refused": None}
    assert seen["foreign_host"] == {"status": 421, "refused": "foreign-host"}
    assert seen["wrong_token"] == {"status": 401, "refused": "no-token"}
    assert seen["cross_site_post"] == {"status": 403, "refused": "cross-site"}
    assert seen["pipelined"] == [{"status": 200, "refused": None}, {"status": 400, "refused": None}]
    assert seen["flood"]["opened"] == seen["flood"]["still_open"] == 300 and not seen["flood"]["error"]
    assert {attack: row.verdict for attack, row in door_rows(seen).items()} == dict.fromkeys(DOOR_ROWS, "PASS")


def test_an_ingress_that_passes_everything_on_fails_them():
    with StandInIngress("demo", TOKEN, open_door=True) as ingress:
        seen = try_front_door(ingress.port, "demo", TOKEN)
    verdicts = {attack: row.verdict for attack, row in door_rows(seen).items()}
    assert verdicts == {**dict.fromkeys(DOOR_ROWS, "FAIL"), "slow clients": "PASS"}
    assert "no token 200" in door_rows(seen)["no credential"].result


def test_an_ingress_that_is_not_there_is_no_pass_and_no_crash():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens on it
    seen = try_front_door(port, "demo", TOKEN)
    assert seen["owner"]["status"] is None and "refused" in seen["owner"]["error"].lower()
    assert seen["pipelined"][0]["status"] is None
    assert seen["flood"]["opened"] == 0 and seen["flood"]["error"]
    rows = door_rows(seen)
    assert not [r for r in rows.values() if r.verdict == "PASS"]
    assert rows["no credential"].verdict == "INCONCLUSIVE" and rows["slow clients"].verdict == "FAIL"


def test_the_owner_is_still_answered_during_a_small_flood():
    with StandInIngress("demo", TOKEN) as ingress:
        flood = slow_client_flood(ingress.port, TOKEN, connections=20)
    assert (flood["opened"], flood["still_open"]) == (20, 20)
    assert [a["status"] for a in flood["owner"]] == [200] * 5


INNER = b"HTTP/1.1 200 OK\r\nX-Sandbox-Refused: no\r\n\r\n"


@pytest.mark.parametrize("stream, expected", [
    # A body that holds a response's words is skipped by its length, not read as one.
    (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(INNER), INNER)
     + b"HTTP/1.1 400 Bad Request\r\n\r\n", [200, 400]),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11\r\nHTTP/1.1 200 OK\r\n\r\n0\r\n\r\n"
     b"HTTP/1.1 405 Not Allowed\r\n\r\n", [200, 405]),
    # No length: the body runs to the end of the stream.
    (b"HTTP/1.0 200 OK\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", [200]),
    (b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 401 Unauthorized\r\nX-Sandbox-Refused: no-token\r\n\r\n", [204, 401]),
    # After 101 the connection is no longer HTTP.
    (b"HTTP/1.1 101 Switching\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", [101]),
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", []),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", [200]),
])
def test_responses_are_read_head_by_head(stream, expected):
    assert [r["status"] for r in _responses(stream)] == expected


def test_a_refusal_reason_is_read_from_its_header():
    assert _responses(b"HTTP/1.1 421 Misdirected\r\nX-Sandbox-Refused: foreign-host\r\nContent-Length: 0\r\n\r\n") == [
        {"status": 421, "refused": "foreign-host"}]
