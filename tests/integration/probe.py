"""Run inside a sandbox container (python3 -c): tries to get out and prints
what happened as JSON.

A target off this machine is tried only when no packet to it can leave: when
the container has no route to it, or its route goes through a gateway that
does not answer (nothing on the host holds that address: its ARP entry stays
incomplete). A gateway that answers is itself reported as the failure, and
the target is not tried."""
import ipaddress
import json
import socket
import struct
import sys

request = json.loads(sys.argv[1])


def _address(hex_value):
    return ipaddress.IPv4Address(struct.pack("<I", int(hex_value, 16)))


def routes():
    """(network, gateway or None) for each IPv4 route of the container."""
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


def neighbour_answers(address):
    """Whether `address` on a directly attached network answers ARP."""
    connect(address, 9, timeout=2)
    with open("/proc/net/arp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[0] == address:
                return int(fields[2], 16) & 0x2 != 0
    return False


def outside(host, port):
    route = route_for(host)
    if route is None:
        return connect(host, port)
    network, gateway = route
    if gateway is None:
        return f"on-link:{network}"  # another machine on the container's own network: never expected
    if neighbour_answers(gateway):
        return f"route-via-live-gateway:{gateway}"
    return connect(host, port)


def connect(host, port, timeout=3):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return "connected"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return f"refused-or-unreachable:{e.errno}"
    finally:
        s.close()


result = {"routes": [f"{net} via {gw}" if gw else str(net) for net, gw in routes()],
          "tcp": {}, "outside": {}, "dns": {}}
for host, port in request.get("tcp", []):  # addresses of this machine
    result["tcp"][f"{host}:{port}"] = connect(host, port)
for host, port in request.get("outside", []):  # addresses off this machine
    result["outside"][f"{host}:{port}"] = outside(host, port)
for name in request.get("dns", []):
    try:
        result["dns"][name] = sorted({info[4][0] for info in socket.getaddrinfo(name, 80)})
    except socket.gaierror as e:
        result["dns"][name] = f"no-answer:{e.errno}"
try:
    with open("/proc/sys/net/ipv6/conf/all/disable_ipv6") as f:
        result["ipv6_disabled"] = f.read().strip() == "1"
except OSError:
    result["ipv6_disabled"] = True  # no IPv6 stack at all
print(json.dumps(result))
