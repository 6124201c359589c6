"""The ingress's log filter (images/ingress/log-filter.awk), which everything
nginx writes passes through on its way to the container's log, run by awk
as start.sh runs it: the token never written, in long lines too, and the
"too large body" lines kept for the first 100 only. What it costs per byte
of a line is benchmarks/log_filter.py's to measure (nginx's one worker waits
on it: it was quadratic in a line's length)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

FILTER = Path(__file__).resolve().parents[2] / "images" / "ingress" / "log-filter.awk"
# Letters, digits, "_" and "-", as start.sh checks it: "-" and "_" show that
# the filter reads the token as text, not a pattern.
TOKEN = "Ab3_-" * 9
API_TOKEN = "0f" * 32  # made of the access token by start.sh: hex
LEFT_OUT = "ingress: a line of nginx's log left out: it carries the access token"


def filtered(lines: list[bytes]) -> list[bytes]:
    # The image's awk is mawk; elsewhere, the system's.
    awk = shutil.which("mawk") or "awk"
    run = subprocess.run([awk, "-f", str(FILTER)], input=b"".join(line + b"\n" for line in lines),
                         env={**os.environ, "LC_ALL": "C", "SANDBOX_ACCESS_TOKEN": TOKEN,
                              "SANDBOX_API_TOKEN": API_TOKEN},
                         capture_output=True, timeout=60, check=True)
    return run.stdout.split(b"\n")[:-1]


def encoded(text: str, layers: int = 1, upper: bool = True) -> str:
    for _ in range(layers):
        text = "".join(f"%{ord(c):02X}" if upper else f"%{ord(c):02x}" for c in text)
    return text


def test_the_token_is_never_written_in_a_long_line_wherever_it_falls():
    """The token at the start and end of a 240 KB line, twice in a row, and
    across each power of two from 1 KiB to 128 KiB (where a cut of the
    line would fall), among bytes of every kind: each is written as "...",
    and the rest of the line as it came."""
    filler = bytes(range(1, 256)).replace(b"\n", b"").replace(b"%", b"") * 1000
    line = bytearray(filler[:240_000])
    for at in sorted((2 ** k - 20 for k in range(10, 18)), reverse=True):
        line[at:at] = TOKEN.encode()
    line = TOKEN.encode() + bytes(line) + (TOKEN * 2).encode()
    [out] = filtered([line])
    assert TOKEN.encode() not in out
    assert out == line.replace(TOKEN.encode(), b"...")
    assert out.count(b"...") >= 11  # the control: each one was there to be left out


def test_a_long_line_that_carries_the_token_encoded_is_left_out_whole():
    """Encoded once (either case) or three times over, at the end of a
    240 KB line of escapes that are not the token's, and split across a
    place where a cut would fall: the whole line is left out. A line of the
    same escapes without the token is kept as it came (the control)."""
    noise = "%41%2x" * 40_000  # 240 KB of "A" and a malformed escape, decoded each round
    lines = [noise + encoded(TOKEN), noise + encoded(TOKEN, upper=False), noise + encoded(TOKEN, layers=3),
             noise[:6 * 680] + encoded(TOKEN) + noise, noise]  # the token from byte 4080 to 4215
    out = filtered([line.encode() for line in lines])
    assert out == [LEFT_OUT.encode()] * 4 + [noise.encode()]


def test_the_api_token_is_never_written_either():
    """The API token (`sandbox env`'s key) opens the API: nginx's own lines
    quote a request line that may carry it. Literal, it is written as
    "..."; encoded, the line is left out whole; the control: the same line
    with neither token is kept as it came."""
    line = f"2026/12/01 10:00:00 [error] 7#7: *1 client intended to send too large body, request: \"GET /v1/models?key="
    out = filtered([(line + API_TOKEN + '"').encode(), (line + encoded(API_TOKEN) + '"').encode(),
                    (line + "nothing" + '"').encode()])
    assert out == [(line + '..."').encode(), LEFT_OUT.encode(), (line + 'nothing"').encode()]


def test_each_kind_of_nginxs_own_lines_is_kept_for_its_first_100_then_at_each_doubling():
    """Tried as an attacker would: 2,100 connections held open, each half a
    request, against nginx's 1,024: it wrote "worker_connections are not
    enough" for each one it could not take, as a flood of bodies over the
    bound writes "client intended to send too large body", any local
    program as often as it likes: the owner's records were pushed out of
    the log. Kept: the first 100 of each kind, then the 128th, 256th, ...
    whatever numbers and client text each line carries."""
    too_large = (b"2026/12/01 10:00:00 [error] 7#7: *N client intended to send too large body: "
                 b"SIZE bytes, client: 127.0.0.1, server: _, request: \"POST /?" + TOKEN.encode()
                 + b" HTTP/1.1\", host: \"" + encoded(TOKEN).encode() + b"\"")
    not_enough = b"2026/12/01 10:00:00 [alert] 7#7: 1024 worker_connections are not enough while accepting new connection"
    other = b"2026/12/01 10:00:01 [error] 7#7: *999 connect() failed (111: Connection refused)"
    lines = [too_large.replace(b"*N", b"*%d" % n).replace(b"SIZE", b"%d" % (2 ** 20 + n)) for n in range(1, 301)]
    lines += [not_enough] * 600 + [other]
    out = filtered(lines)
    assert out == [LEFT_OUT.encode()] * 102 + [not_enough] * 103 + [other]  # 100, 128, 256; 100, 128, 256, 512
