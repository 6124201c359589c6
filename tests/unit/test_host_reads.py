"""What `verify` reads of the host (launcher/hostnet.py), read here on this
machine's own files and processes; and `python -m launcher`."""
import os
import socket
import subprocess
import sys

from launcher.hostnet import (Canary, container_process, host_ipv4_addresses, host_resolvers, process_status,
                              route_localnet)


def test_resolvers_are_the_ipv4_nameservers_of_resolv_conf(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# made by hand\nnameserver 10.0.0.53\nnameserver ::1\nnameserver not-an-address\n"
                    "search example\nnameserver 192.0.2.1\n")
    assert host_resolvers(str(conf)) == ["10.0.0.53", "192.0.2.1"]
    assert host_resolvers(str(tmp_path / "none")) == []


def test_the_hosts_addresses_leave_loopback_out():
    found = host_ipv4_addresses()
    assert all(not address.startswith("127.") for address in found)
    assert all(len(address.split(".")) == 4 for address in found)


def test_route_localnet_is_read_per_interface():
    values = route_localnet()
    if os.path.isdir("/proc/sys/net/ipv4/conf"):
        assert "all" in values and values["all"] in ("0", "1", None)


def test_a_process_is_read_with_its_credentials_as_its_namespace_sees_them():
    own = os.getpid()
    cgroup = open(f"/proc/{own}/cgroup").read().strip()
    seen = container_process(own, cgroup[-8:])  # a part of its own cgroup stands for the container's ID
    assert seen is not None and seen["uid"][0] == str(os.getuid())
    assert "python" in seen["command"] and seen["cap_eff"] == process_status(own)["CapEff"]
    assert container_process(own, "not-this-container") is None
    assert container_process(2**22 + 1, "x") is None and process_status(2**22 + 1) is None  # no such PID


def test_the_canary_names_every_peer_that_reached_it_and_not_its_own_marker():
    with Canary() as canary:
        with socket.create_connection(("127.0.0.1", canary.port)) as peer:
            me = f"127.0.0.1:{peer.getsockname()[1]}"
            hits = canary.hits_until_now(timeout=10)
    assert hits == [me]


def test_python_dash_m_launcher_is_the_command_line(tmp_path):
    shown = subprocess.run([sys.executable, "-m", "launcher", "--help"], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "Usage" in shown.stdout and "verify" in shown.stdout
    wrong = subprocess.run([sys.executable, "-m", "launcher", "nosuch"], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
