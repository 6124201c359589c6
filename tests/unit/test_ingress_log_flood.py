"""A stranger's flood of refused requests (any local process: no token is
needed to be refused) against the evidence `status` and `audit` read: the
last AUDIT_LINES lines of the ingress's log, where the owner's API calls and
the refusals share one stream. The ingress's real configuration under nginx
with njs (tests/unit/real_ingress.py), its two logs in one file as in the
image. The flood is sent and done before anything is read: nothing races."""
from __future__ import annotations

import socket
import threading

import pytest

from launcher.commands.audit import AUDIT_LINES, count_api_calls
from tests.unit.real_ingress import RealIngress, nginx_with_njs
from tests.unit.test_api_door import OWNER, TOKEN, API_KEY, ask, chat

pytestmark = pytest.mark.skipif(not nginx_with_njs(), reason="nginx with njs (Debian's nginx and "
                                "libnginx-mod-http-js, as in the ingress's image) is not installed")

# nginx's keepalive_requests: the requests one connection may carry.
PER_CONNECTION = 1000


def refused_flood(port: int, requests: int) -> int:
    """`requests` GETs of /v1/models with no token, pipelined, a thousand to
    a connection; returns how many answers came back (each a 401)."""
    one = f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    answered = 0
    for start in range(0, requests, PER_CONNECTION):
        count = min(PER_CONNECTION, requests - start)
        last = f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            # Sent from another thread while this one reads: neither side's
            # buffers fill up and stop the other.
            sender = threading.Thread(target=s.sendall, args=(one * (count - 1) + last,))
            sender.start()
            chunks = []
            while data := s.recv(1 << 20):
                chunks.append(data)
            sender.join()
        answered += b"".join(chunks).count(b"HTTP/1.1 401 ")
    return answered


@pytest.fixture
def ingress(tmp_path):
    door = RealIngress(tmp_path / "ingress", "demo", TOKEN, API_KEY, one_log=True)
    yield door
    door.close()


def test_a_flood_of_refusals_does_not_push_the_owners_calls_and_first_refusals_out_of_the_log(ingress):
    assert chat(ingress, {"model": "tiny", "messages": []}, {"User-Agent": "OpenAI/Python 1.99"})[0] == 200
    assert ask(ingress, "GET", "/v1/models", OWNER, host="evil.example")[0] == 421
    assert ask(ingress, "POST", "/", {"Sec-Fetch-Site": "cross-site", "Cookie": f"sandbox-demo={TOKEN}"}, b"")[0] == 403
    flood = AUDIT_LINES + 1000
    assert refused_flood(ingress.port, flood) == flood  # the control: the flood was all answered, refused
    ask(ingress, "GET", "/the-end-of-the-flood", host="evil.example")
    log = ingress.log(waiting_for="/the-end-of-the-flood").splitlines()
    read = log[-AUDIT_LINES:]  # what `status` and `audit` read of it
    assert count_api_calls(read) == [{"client": "openai-python", "model": "tiny", "calls": 1, "failed": 0}]
    first = [line for line in read if line.endswith(" nth=1")]
    assert [line.split(" reason=")[1].split(" ")[0] for line in first] == ["foreign-host", "cross-site", "no-token"]
    # The flood is still counted: its first ITEMISED refusals, then a line
    # each time their count doubled, the last at 51,200 of 100,001.
    no_token = [line.rpartition(" nth=")[2] for line in read if " reason=no-token " in line]
    assert no_token == [str(n) for n in range(1, 101)] + [str(100 * 2 ** k) for k in range(1, 10)]
    assert len(log) < 200
