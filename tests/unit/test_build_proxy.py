"""The build proxy's decision, where it is made: before any connection, from
the name's resolved addresses, the Host header and the TLS server name. No
test here sends a packet off this machine."""
import importlib.util
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "build_proxy", Path(__file__).resolve().parents[2] / "images" / "build-proxy" / "proxy.py")
proxy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(proxy)

HOST = frozenset({"192.0.2.2", "198.18.7.7", "172.17.0.1"})
PUBLIC = "151.101.0.223"


@pytest.mark.parametrize("address, why", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"), ("0.0.0.0", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("::ffff:169.254.169.254", "link-local"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("100.64.0.1", "not a public"), ("224.0.0.1", "not a public"), ("240.0.0.1", "not a public"),
    ("172.17.0.1", "the host"), ("198.18.7.7", "the host"),
])
def test_addresses_that_are_not_public_or_are_the_hosts_are_refused(address, why):
    refusal = proxy.address_refusal(address, HOST)
    assert refusal and why in refusal


def test_a_public_address_is_allowed_and_pinned():
    assert proxy.address_refusal(PUBLIC, HOST) is None
    assert proxy.decide("packages.example", 443, [PUBLIC], [], HOST) == (PUBLIC, "allowed")


def test_a_name_with_one_bad_address_among_good_ones_is_refused():
    # A name that resolves to the metadata address too must not be tried at all.
    address, why = proxy.decide("evil.example", 80, [PUBLIC, "169.254.169.254"], [], HOST)
    assert address is None and "169.254.169.254" in why


def test_only_web_ports_and_resolvable_names():
    assert proxy.decide("packages.example", 22, [PUBLIC], [], HOST) == (None, "port 22 is not 80 or 443")
    assert proxy.decide("gone.example", 443, [], [], HOST) == (None, "the name does not resolve")


def test_the_policys_allow_list_narrows_it():
    allow = ["packages.example", "*.files.example"]
    assert proxy.decide("packages.example", 443, [PUBLIC], allow, HOST)[0] == PUBLIC
    assert proxy.decide("cdn.files.example", 443, [PUBLIC], allow, HOST)[0] == PUBLIC
    assert proxy.decide("evil.example", 443, [PUBLIC], allow, HOST) == (None, "not in the policy's build.allow_hosts")
    assert proxy.decide("files.example.evil", 443, [PUBLIC], allow, HOST)[0] is None


def test_the_owners_mirror_networks_open_private_ranges_but_never_loopback_metadata_or_the_host():
    mirrors = (ipaddress.ip_network("10.9.0.0/16"), ipaddress.ip_network("172.17.0.0/16"))
    assert proxy.address_refusal("10.9.1.1", HOST, mirrors) is None
    assert proxy.address_refusal("10.8.1.1", HOST, mirrors) is not None
    assert "the host" in proxy.address_refusal("172.17.0.1", HOST, mirrors)
    assert proxy.address_refusal("127.0.0.1", HOST, (ipaddress.ip_network("127.0.0.0/8"),)) is not None
    assert proxy.address_refusal("169.254.169.254", HOST, (ipaddress.ip_network("169.254.0.0/16"),)) is not None


def test_authorities_are_split_with_default_ports():
    assert proxy.split_authority("example.org", 443) == ("example.org", 443)
    assert proxy.split_authority("example.org:8443", 443) == ("example.org", 8443)
    assert proxy.split_authority("[2001:db8::1]:80", 443) == ("2001:db8::1", 80)


# ---- the host a request reaches is the host it asked for ---------------

def client_hello(server_name: str | None) -> bytes:
    """The first bytes Python's own TLS client sends, naming `server_name`."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def in_two_records(hello: bytes) -> bytes:
    """The same ClientHello, its handshake message split over two TLS records."""
    handshake = hello[5:]
    cut = len(handshake) // 2
    return b"".join(hello[:3] + len(part).to_bytes(2, "big") + part for part in (handshake[:cut], handshake[cut:]))


def test_the_tls_server_name_is_read_from_a_real_client_hello():
    hello = client_hello("pypi.org")
    assert proxy.tunnel_refusal("pypi.org", hello, ["pypi.org"]) == ("pypi.org", None)
    assert proxy.tunnel_refusal("PyPI.org.", in_two_records(hello), ["pypi.org"]) == ("pypi.org", None)
    # How much more to read: byte by byte, it asks for exactly what the records hold.
    for split in (hello, in_two_records(hello)):
        data = b""
        while (more := proxy.tls_handshake(data)[1]):
            data += split[len(data):len(data) + 1]
        assert data == split


def test_a_tunnel_whose_tls_names_another_host_is_refused():
    name, why = proxy.tunnel_refusal("pypi.org", client_hello("evil.example"), ["pypi.org"])
    assert name == "evil.example" and "domain fronting" in why
    # Without an allow list too: the audit must say where the tunnel went.
    assert proxy.tunnel_refusal("pypi.org", client_hello("evil.example"), [])[1] is not None


def test_a_tunnel_that_names_no_server_is_refused_only_under_an_allow_list():
    for first in (client_hello(None), b"SSH-2.0-OpenSSH_9.2\r\n", b"", client_hello("pypi.org")[:60]):
        name, why = proxy.tunnel_refusal("pypi.org", first, ["pypi.org"])
        assert name is None and "no TLS ClientHello naming one server" in why
        assert proxy.tunnel_refusal("pypi.org", first, []) == (None, None)


def with_extensions(handshake: bytes, rewrite) -> bytes:
    """A ClientHello with its extensions, as (type, data) pairs, rewritten,
    and every length made to add up again."""
    body = handshake[4:]
    at = 2 + 32
    at += 1 + body[at]
    at += 2 + int.from_bytes(body[at:at + 2], "big")
    at += 1 + body[at]
    extensions, i = [], at + 2
    while i < len(body):
        length = int.from_bytes(body[i + 2:i + 4], "big")
        extensions.append((body[i:i + 2], body[i + 4:i + 4 + length]))
        i += 4 + length
    block = b"".join(kind + len(data).to_bytes(2, "big") + data for kind, data in rewrite(extensions))
    body = body[:at] + len(block).to_bytes(2, "big") + block
    return b"\x01" + len(body).to_bytes(3, "big") + body


def server_names(*names: bytes) -> bytes:
    entries = b"".join(b"\x00" + len(name).to_bytes(2, "big") + name for name in names)
    return len(entries).to_bytes(2, "big") + entries


def test_a_client_hello_that_does_not_add_up_names_nobody():
    handshake = proxy.tls_handshake(client_hello("pypi.org"))[0]
    assert proxy.server_name(handshake) == "pypi.org"

    def names(*given):
        return lambda extensions: [(k, server_names(*given) if k == b"\x00\x00" else d) for k, d in extensions]

    assert proxy.server_name(with_extensions(handshake, names(b"pypi.org"))) == "pypi.org"  # the control
    # Servers differ in which of two names they take, and in which of two extensions.
    assert proxy.server_name(with_extensions(handshake, names(b"pypi.org", b"evil.example"))) is None
    assert proxy.server_name(with_extensions(handshake, lambda e: e + [(b"\x00\x00", server_names(b"evil.example"))])) is None
    assert proxy.server_name(with_extensions(handshake, names(b"pypi.org\xff"))) is None
    assert proxy.server_name(handshake[:-1]) is None  # cut short
    assert proxy.server_name(b"\x02" + handshake[1:]) is None  # a ServerHello


def test_a_plain_http_requests_host_header_must_name_the_host_asked_for():
    assert proxy.host_header_refusal("pypi.org", 80, "Host: pypi.org\r\nAccept: */*\r\n\r\n") is None
    assert proxy.host_header_refusal("pypi.org", 80, "host: PyPI.org.:80\r\n\r\n") is None
    assert proxy.host_header_refusal("pypi.org", 80, "Accept: */*\r\n\r\n") is None  # HTTP/1.0: the proxy adds it
    assert "domain fronting" in proxy.host_header_refusal("pypi.org", 80, "Host: evil.example\r\n\r\n")
    assert "domain fronting" in proxy.host_header_refusal("pypi.org", 80, "Host: pypi.org:8080\r\n\r\n")
    assert "more than one" in proxy.host_header_refusal("pypi.org", 80, "Host: pypi.org\r\nHost: evil.example\r\n")
    assert "folded" in proxy.host_header_refusal("pypi.org", 80, "Host: pypi.org\r\n evil.example\r\n")
    assert "not a host and port" in proxy.host_header_refusal("pypi.org", 80, "Host: pypi.org:http\r\n")


@pytest.fixture
def running_proxy(monkeypatch):
    """The proxy itself on loopback, narrowed to one public address, so a
    tunnel to it passes every check before the TLS server name."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SANDBOX_PROXY_PORT": str(port), "SANDBOX_ALLOW_HOSTS": PUBLIC}
    process = subprocess.Popen([sys.executable, spec.origin], stdout=subprocess.PIPE, text=True, env=env)
    assert json.loads(process.stdout.readline())["event"] == "listening"
    yield port, process
    process.terminate()
    process.wait(5)


def test_the_proxy_closes_a_fronted_tunnel_before_connecting_anywhere(running_proxy):
    port, process = running_proxy
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"CONNECT {PUBLIC}:443 HTTP/1.1\r\nHost: {PUBLIC}:443\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 200 ")
        s.sendall(client_hello("evil.example"))
        assert s.recv(100) == b""  # closed, with nothing from anywhere
    record = json.loads(process.stdout.readline())
    assert record["verdict"] == "refused" and record["server_name"] == "evil.example", record
    assert "domain fronting" in record["reason"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET http://{PUBLIC}/simple/ HTTP/1.1\r\nHost: evil.example\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 403 ")
    assert "domain fronting" in json.loads(process.stdout.readline())["reason"]
