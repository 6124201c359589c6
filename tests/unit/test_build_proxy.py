"""The build proxy's decision, where it is made: before any connection, from
the name's resolved addresses. No test here sends a packet anywhere."""
import importlib.util
import ipaddress
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
