"""The build proxy: the only way out of an image build (docs/threats.md, "The
build step"). Builds run on an internal network where this proxy is the one
thing they can reach; it is given to them as http_proxy / https_proxy.

It serves CONNECT (for https) and absolute-URI requests (for plain http, one
request per connection). Before it connects anywhere it resolves the name
itself and refuses any destination that is not a public address: loopback,
private, link-local (cloud metadata), shared, multicast and reserved ranges,
and the host's own addresses (SANDBOX_HOST_ADDRESSES). It then connects to
the very address it checked, so a name cannot change its answer in between.
A policy may narrow it further to a list of hosts (SANDBOX_ALLOW_HOSTS); the
machine's owner may let it reach package mirrors on non-public networks
(SANDBOX_ALLOW_NETWORKS), never loopback, link-local or the host itself.
Every attempt is logged as one JSON line: host, port, addresses, verdict,
and the bytes each way."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import sys
import time

LISTEN_PORT = int(os.environ.get("SANDBOX_PROXY_PORT", "3128"))
PORTS = (80, 443)
MAX_HEAD = 64 * 1024
HEAD_TIMEOUT = 30
IDLE_TIMEOUT = 300


def allowed_host(host: str, allow: list[str]) -> bool:
    """No list: any host. Else the host itself, or under a `*.suffix` entry."""
    if not allow:
        return True
    host = host.lower().rstrip(".")
    for entry in allow:
        entry = entry.lower().rstrip(".")
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


def address_refusal(address: str, host_addresses: frozenset[str], mirrors: tuple = ()) -> str | None:
    """Why a connection to `address` must not be made, or None. `mirrors`
    are networks the machine's owner trusts for package mirrors."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if str(ip) in host_addresses:
        return "an address of the host"
    if ip.is_loopback or ip.is_unspecified:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_multicast or ip.is_reserved:
        return "not a public address (multicast or reserved)"
    if any(ip in network for network in mirrors if network.version == ip.version):
        return None
    if ip.is_private:
        return "a private address (the LAN, the host's bridges)"
    if not ip.is_global:
        return "not a public address"
    return None


def decide(host: str, port: int, addresses: list[str], allow: list[str],
           host_addresses: frozenset[str], mirrors: tuple = ()) -> tuple[str | None, str]:
    """(the address to connect to, or None; the reason). Pure: every
    refusal is decided here, before any connection is made."""
    if port not in PORTS:
        return None, f"port {port} is not 80 or 443"
    if not allowed_host(host, allow):
        return None, "not in the policy's build.allow_hosts"
    if not addresses:
        return None, "the name does not resolve"
    for address in addresses:
        why = address_refusal(address, host_addresses, mirrors)
        if why:
            return None, f"{address} is {why}"
    return addresses[0], "allowed"


def log(**entry) -> None:
    print(json.dumps({"time": round(time.time(), 3), **entry}), flush=True)


async def resolve(host: str, port: int) -> list[str]:
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    seen = []
    for *_, sockaddr in infos:
        if sockaddr[0] not in seen:
            seen.append(sockaddr[0])
    return seen


def split_authority(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = authority.partition(":")
    return host, int(port) if port else default_port


async def pipe(reader, writer, counter: list, index: int) -> None:
    try:
        while data := await asyncio.wait_for(reader.read(65536), timeout=IDLE_TIMEOUT):
            counter[index] += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.TimeoutError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def answer(writer, status: str, text: str) -> None:
    body = (text + "\n").encode()
    writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + body)
    try:
        await writer.drain()
    finally:
        writer.close()


async def handle(client_reader, client_writer) -> None:
    allow = [h for h in os.environ.get("SANDBOX_ALLOW_HOSTS", "").split(",") if h]
    host_addresses = frozenset(a for a in os.environ.get("SANDBOX_HOST_ADDRESSES", "").split(",") if a)
    mirrors = tuple(ipaddress.ip_network(n, strict=False)
                    for n in os.environ.get("SANDBOX_ALLOW_NETWORKS", "").split(",") if n)
    try:
        head = await asyncio.wait_for(client_reader.readuntil(b"\r\n\r\n"), timeout=HEAD_TIMEOUT)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        client_writer.close()
        return
    request_line, _, header_block = head.decode("latin-1").partition("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        log(verdict="refused", reason="not an HTTP request", request=request_line[:200])
        await answer(client_writer, "400 Bad Request", "not an HTTP request")
        return
    method, target, _version = parts
    if method == "CONNECT":
        host, port = split_authority(target, 443)
    elif target.startswith("http://"):
        host, port = split_authority(target[len("http://"):].split("/", 1)[0], 80)
    else:
        log(verdict="refused", reason="not a proxy request", request=request_line[:200])
        await answer(client_writer, "400 Bad Request", "this is the build proxy: use it as http_proxy/https_proxy")
        return
    addresses = await resolve(host, port)
    address, reason = decide(host, port, addresses, allow, host_addresses, mirrors)
    if address is None:
        log(verdict="refused", host=host, port=port, addresses=addresses, reason=reason, method=method)
        await answer(client_writer, "403 Forbidden", f"the build proxy refused {host}:{port}: {reason}")
        return
    try:
        upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection(address, port), 15)
    except (OSError, asyncio.TimeoutError) as e:
        log(verdict="failed", host=host, port=port, addresses=addresses, reason=str(e), method=method)
        await answer(client_writer, "502 Bad Gateway", f"could not reach {host}:{port}")
        return
    counter = [0, 0]  # bytes sent, bytes received
    if method == "CONNECT":
        client_writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await client_writer.drain()
    else:
        # One request per connection: the next one may be for another host.
        kept = [line for line in header_block.split("\r\n") if line and not line.lower().startswith(
            ("proxy-connection:", "connection:", "keep-alive:", "proxy-authorization:"))]
        forwarded = "\r\n".join([request_line, *kept, "Connection: close"]) + "\r\n\r\n"
        upstream_writer.write(forwarded.encode("latin-1"))
        counter[0] += len(forwarded)
    started = time.monotonic()
    await asyncio.gather(pipe(client_reader, upstream_writer, counter, 0),
                         pipe(upstream_reader, client_writer, counter, 1))
    log(verdict="allowed", host=host, port=port, addresses=addresses, address=address, method=method,
        bytes_sent=counter[0], bytes_received=counter[1], seconds=round(time.monotonic() - started, 3))


async def main() -> None:
    server = await asyncio.start_server(handle, "0.0.0.0", LISTEN_PORT, limit=MAX_HEAD)
    log(event="listening", port=LISTEN_PORT)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
