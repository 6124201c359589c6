"""The probe: run inside a sandbox's network namespace, it tries
to get out and prints what happened as one JSON object. It judges nothing;
`sandbox verify` does (launcher/matrix.py).

The request (argv[1], JSON) may ask for:
  tcp:       [[host, port], ...]  addresses of this machine: connected or not
  outside:   [[host, port, "tcp"|"udp"], ...]  addresses off this machine
  dns:       [name, ...]          what the container's resolver answers
  by_name:   [[name, port], ...]  resolve, then TCP to each address as for `outside`
  ipv6:      [[address, port], ...]
  http:      [[host, port, request-line], ...]  the status line a server answers
  self:      true                 raw sockets, writing /, the Docker socket
  processes: true                 credentials of every process in view (`verify` runs this
                                  inside a gVisor front-end, whose processes the host cannot see)

A target off this machine is tried only when no packet to it can leave: when
the container has no route to it, its route goes through a gateway that
does not answer (no one holds that address: its ARP entry stays incomplete),
or through the sandbox's sink (`sink_gateway` in the request: the sink
records the attempt and forwards nothing; the outcome is then prefixed
"via-sink:"). Any other gateway that answers is itself reported, and the
target is not tried.
"""
import ipaddress
import json
import os
import socket
import struct
import sys


def _address(hex_value):
    return ipaddress.IPv4Address(struct.pack("<I", int(hex_value, 16)))


def routes():
    """(network, gateway or None) for each IPv4 route of the namespace."""
    table = []
    with open("/proc/net/route") as f:
        next(f)
        for line in f:
            fields = line.split()
            gateway = _address(fields[2])
            table.append((ipaddress.IPv4Network(f"{_address(fields[1])}/{_address(fields[7])}"),
                          None if int(gateway) == 0 else str(gateway)))
    return table


def route_for(address):
    matching = [r for r in routes() if ipaddress.IPv4Address(address) in r[0]]
    return max(matching, key=lambda r: r[0].prefixlen) if matching else None


def failure(e):
    """An OSError as the probe reports it: 'error:' and the system's words."""
    return f"error:{os.strerror(e.errno) if e.errno else e}"


def connect(host, port, timeout=3, family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return "connected"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return failure(e)
    finally:
        s.close()


def udp_dns(host, port, timeout=3):
    """Send a DNS query for example.com; 'answered' if anything comes back."""
    query = struct.pack("!HHHHHH", 0x5a5a, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00\x00\x01\x00\x01"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(query, (host, port))
        s.recvfrom(512)
        return "answered"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return failure(e)
    finally:
        s.close()


def neighbour_answers(address):
    """Whether `address`, on a directly attached network, answers ARP."""
    connect(address, 9, timeout=2)
    with open("/proc/net/arp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[0] == address:
                return int(fields[2], 16) & 0x2 != 0
    return False


def outside(host, port, protocol, sink_gateway=None):
    route = route_for(host)
    try_it = udp_dns if protocol == "udp" else connect
    if route is not None:
        network, gateway = route
        if gateway is None:
            return f"on-link:{network}"  # the target would be on the sandbox's own network
        if gateway == sink_gateway:
            return f"via-sink:{try_it(host, port)}"
        if neighbour_answers(gateway):
            return f"route-via-live-gateway:{gateway}"
    return try_it(host, port)


RTF_REJECT = 0x0200


def ipv6_default_route():
    """Whether an interface has a default IPv6 route (lo's reject route is none).
    Looked for whatever `all`'s disable_ipv6 says: the engine may set it on
    `all` and leave IPv6 on the container's own interface."""
    try:
        with open("/proc/net/ipv6_route") as f:
            for line in f:
                fields = line.split()
                if fields[0] == "0" * 32 and fields[1] == "00" and fields[9] != "lo" \
                        and not int(fields[8], 16) & RTF_REJECT:
                    return True
    except OSError:
        pass
    return False


def ipv6(address, port):
    try:
        with open("/proc/sys/net/ipv6/conf/all/disable_ipv6") as f:
            disabled = f.read().strip() == "1"
    except FileNotFoundError:
        disabled = True  # no IPv6 in this kernel namespace at all
    except OSError:
        disabled = None  # there, but unreadable: the launcher does not take it for disabled
    if ipv6_default_route():
        return {"disabled": disabled, "result": "has-default-route"}
    return {"disabled": disabled, "result": connect(address, port, family=socket.AF_INET6)}


def http(host, port, request_line):
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(request_line.encode() + b"\r\nHost: example.com\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n" not in data and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\r\n", 1)[0].decode(errors="replace")
    except OSError as e:
        return failure(e)


def own_restrictions():
    out = {}
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        out["raw_socket"] = "opened"
    except OSError as e:
        out["raw_socket"] = failure(e)
    try:
        with open("/sandbox-probe-write-test", "w") as f:
            f.write("x")
        os.remove("/sandbox-probe-write-test")
        out["write_root"] = "written"
    except OSError as e:
        out["write_root"] = failure(e)
    out["docker_socket"] = [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)]
    return out


def processes():
    """Credentials of every process this namespace shows."""
    found = {}
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
        except OSError:
            continue
        found[pid] = {"command": command, "uid": status.get("Uid", "").split(),
                      "cap_eff": status.get("CapEff"), "no_new_privs": status.get("NoNewPrivs"),
                      "seccomp": status.get("Seccomp")}
    return {"processes": found}


def main():
    request = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    result = {"routes": [f"{net} via {gw}" if gw else str(net) for net, gw in routes()]}
    result["tcp"] = {f"{h}:{p}": connect(h, p) for h, p in request.get("tcp", [])}
    sink = request.get("sink_gateway")
    result["outside"] = {f"{proto} {h}:{p}": outside(h, p, proto, sink) for h, p, proto in request.get("outside", [])}
    result["dns"] = {}
    for name in request.get("dns", []):
        try:
            result["dns"][name] = sorted({info[4][0] for info in socket.getaddrinfo(name, 80)})
        except socket.gaierror as e:
            result["dns"][name] = f"no-answer:{e.strerror}"
    result["by_name"] = {}
    for name, port in request.get("by_name", []):
        try:
            addresses = sorted({info[4][0] for info in socket.getaddrinfo(name, port, socket.AF_INET)})
        except socket.gaierror as e:
            result["by_name"][f"{name}:{port}"] = f"no-answer:{e.strerror}"
            continue
        result["by_name"][f"{name}:{port}"] = "; ".join(
            f"{a} {outside(a, port, 'tcp', sink)}" for a in addresses)
    result["ipv6"] = {f"[{a}]:{p}": ipv6(a, p) for a, p in request.get("ipv6", [])}
    result["http"] = {f"{h}:{p} {line}": http(h, p, line) for h, p, line in request.get("http", [])}
    if request.get("self"):
        result["self"] = own_restrictions()
    if request.get("processes"):
        result.update(processes())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
