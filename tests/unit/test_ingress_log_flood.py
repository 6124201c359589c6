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

from launcher.commands.audit import AUDIT_LINES, count_api_calls, refusals_by_sender
from tests.unit.real_ingress import RealIngress, nginx_with_njs
from tests.unit.test_api_door import OWNER, TOKEN, API_KEY, ask, chat

pytestmark = pytest.mark.skipif(not nginx_with_njs(), reason="nginx with njs (Debian's nginx and "
                                "libnginx-mod-http-js, as in the ingress's image) is not installed")

# nginx's keepalive_requests: the requests one connection may carry.
PER_CONNECTION = 1000


def refused_flood(port: int, requests: int, head: bytes | None = None, status: int = 401) -> int:
    """`requests` requests with no token, pipelined, a thousand to a
    connection: `head` (a request line and headers, without the blank line
    that ends them), by default a GET of /v1/models; returns how many answers
    came back with `status`."""
    head = head or f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
    one, last = head + b"\r\n", head + b"Connection: close\r\n\r\n"
    answered = 0
    for start in range(0, requests, PER_CONNECTION):
        count = min(PER_CONNECTION, requests - start)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            # Sent from another thread while this one reads: neither side's
            # buffers fill up and stop the other.
            sender = threading.Thread(target=s.sendall, args=(one * (count - 1) + last,))
            sender.start()
            chunks = []
            while data := s.recv(1 << 20):
                chunks.append(data)
            sender.join()
        answered += b"".join(chunks).count(f"HTTP/1.1 {status} ".encode())
    return answered


@pytest.fixture
def ingress(tmp_path):
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, API_KEY, one_log=True) as door:
        yield door


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


# The most bytes a line of the ingress's log takes as nginx writes it: four
# fields a client controls (request line, Host, Origin, Sec-Fetch-Site) of at
# most 256 bytes each (sandbox.js, FIELD_KEPT), and the ingress's own text:
# the longest prefix, status and reason, an IPv6 peer and a 20-digit nth=
# come to under 180 more.
LINE_BOUND = 4 * 256 + 180


def test_oversized_refusals_write_short_lines_and_leave_the_owners_calls_in_the_log(ingress):
    """Tried as an attacker would: a refused request's line carried its
    request line, Host, Origin and Sec-Fetch-Site whole (each up to 16 KiB,
    every byte outside printable ASCII written as the four of \\xNN): 145
    requests with no token filled 20 MB and rotated the owner's API calls
    and earlier refusals out of the container's log (10 MB a file, three
    kept), and `sandbox status` showed no calls. Each field is now cut: of
    201 such requests, the 101 lines the refusal counter lets through (the
    first 100, then the 200th) take at most LINE_BOUND bytes each, about
    120 KB in all (they took 25 MB)."""
    assert chat(ingress, {"model": "tiny", "messages": []}, {"User-Agent": "OpenAI/Python 1.99"})[0] == 200
    ask(ingress, "GET", "/before-the-flood", host="evil.example")
    before = len(ingress.log(waiting_for="/before-the-flood").encode())
    big = b"\xff" * 15000  # under large_client_header_buffers' 16k, with room for the rest of its line
    head = (b"GET /v1/models?" + big + b" HTTP/1.1\r\nHost: " + big + b"\r\nOrigin: " + big
            + b"\r\nSec-Fetch-Site: " + big + b"\r\n")
    flood = 2 * 100 + 1
    # A connection each: pipelined behind one of these, nginx answered only
    # the first.
    answered = sum(refused_flood(ingress.port, 1, head, status=421) for _ in range(flood))
    assert answered == flood  # the control: all of it was refused
    assert chat(ingress, {"model": "tiny", "messages": []}, {"User-Agent": "curl/8.5"})[0] == 200
    ask(ingress, "GET", "/the-end-of-the-flood", host="evil.example")
    log = ingress.log(waiting_for="/the-end-of-the-flood")
    lines = log.splitlines()
    flooded = [line for line in lines if "\\xFF" in line]
    assert [line.rpartition(" nth=")[2] for line in flooded] == [str(n) for n in range(2, 101)] + ["200"]
    assert max(len(line.encode()) for line in lines) <= LINE_BOUND
    assert len(log.encode()) - before <= (len(flooded) + 3) * LINE_BOUND
    # Each field cut where the next byte would pass 256 with the mark.
    cut = "\\xFF" * 63 + "..."
    assert all(f'host="{cut}" origin="{cut}" fetch-site="{cut}" peer=127.0.0.1 ' in line for line in flooded)
    # The launcher reads the cut lines as it read whole ones: the owner's
    # calls, on either side of the flood, and each refusal's sender.
    assert count_api_calls(lines) == [{"client": "curl", "model": "tiny", "calls": 1, "failed": 0},
                                      {"client": "openai-python", "model": "tiny", "calls": 1, "failed": 0}]
    from_host, from_parts = refusals_by_sender(flooded, {"127.0.0.1": "frontend"})
    assert from_host == [] and [p["part"] for p in from_parts] == ["frontend"] * len(flooded)


def test_every_use_of_the_access_link_is_logged_past_the_itemised_count(ingress):
    """`sandbox open` in Firefox (no remote protocol) knows the window got to
    the sandbox by the access link's line (launcher/browser.py): the 150th
    use is logged like the first. Only the token's holder makes them."""
    for _ in range(150):
        assert ask(ingress, "GET", f"/?sandbox_token={TOKEN}", {"Sec-Fetch-Site": "none"})[0] == 302
    ask(ingress, "GET", "/the-end", host="evil.example")
    used = [line for line in ingress.log(waiting_for="/the-end").splitlines() if "access link used:" in line]
    assert [line.rpartition(" nth=")[2] for line in used] == [str(n) for n in range(1, 151)]
