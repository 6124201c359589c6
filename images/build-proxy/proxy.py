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
The host a request is for is the host it reaches: a plain-HTTP request's
Host header, and the TLS server name (SNI) a tunnel's client sends first,
must name the host it asked the proxy for, so that one host's address (a
CDN's, shared by many sites) cannot carry a request for another (domain
fronting). With SANDBOX_ALLOW_HOSTS, a tunnel whose first bytes name no
server is refused too, since nothing says which host it reaches.
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
MAX_HELLO = 64 * 1024  # a ClientHello with post-quantum key shares is some 2 KiB
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


def same_host(a: str, b: str) -> bool:
    return a.lower().rstrip(".") == b.lower().rstrip(".")


def host_header_refusal(host: str, port: int, header_block: str) -> str | None:
    """Why a plain-HTTP request for host:port must not be passed on, or
    None: its Host header, when it has one, must name that host and port."""
    named = []
    for line in header_block.split("\r\n"):
        if line[:1] in (" ", "\t"):
            return "a folded header line, which servers read in different ways"
        name, _, value = line.partition(":")
        if name.strip().lower() == "host":
            named.append(value.strip())
    if len(named) > 1:
        return "more than one Host header"
    if not named:
        return None
    try:
        named_host, named_port = split_authority(named[0], 80)
    except ValueError:
        return f"its Host header {named[0]!r} is not a host and port"
    if not same_host(named_host, host) or named_port != port:
        return f"its Host header names {named[0]}, not {host}:{port}, the host it asked for (domain fronting)"
    return None


def tls_handshake(data: bytes) -> tuple[bytes, int]:
    """The handshake bytes carried by the TLS records at the start of `data`
    (a ClientHello may span several), and how many more bytes to read to
    have the whole first handshake message: 0 when it is there, or when
    `data` is not TLS."""
    handshake = b""
    i = 0
    while True:
        if len(data) < i + 5:
            return handshake, i + 5 - len(data)
        if data[i] != 0x16 or data[i + 1] != 0x03:  # a handshake record, TLS 1.x
            return handshake, 0
        end = i + 5 + int.from_bytes(data[i + 3:i + 5], "big")
        handshake += data[i + 5:end]
        if len(data) < end:
            return handshake, end - len(data)
        if len(handshake) >= 4 and len(handshake) >= 4 + int.from_bytes(handshake[1:4], "big"):
            return handshake, 0
        i = end


class _Short(Exception):
    pass


def _take(data: bytes, at: int, size: int) -> tuple[bytes, int]:
    if at + size > len(data):
        raise _Short()
    return data[at:at + size], at + size


def _number(data: bytes, at: int, size: int) -> tuple[int, int]:
    raw, at = _take(data, at, size)
    return int.from_bytes(raw, "big"), at


def server_name(handshake: bytes) -> str | None:
    """The one host name a ClientHello's server_name extension gives (SNI),
    or None for anything else: not a ClientHello, cut short, lengths that
    do not add up, an extension given twice, no name or more than one.
    Strict, since what it returns decides where a tunnel may go."""
    try:
        kind, at = _number(handshake, 0, 1)
        size, at = _number(handshake, at, 3)
        body, _ = _take(handshake, at, size)
        if kind != 1:
            return None
        at = 2 + 32  # version, random
        for length_size in (1, 2, 1):  # session id, cipher suites, compression methods
            length, at = _number(body, at, length_size)
            _, at = _take(body, at, length)
        length, at = _number(body, at, 2)
        if at + length != len(body):
            return None
        seen, names = set(), []
        while at < len(body):
            extension, at = _number(body, at, 2)
            length, at = _number(body, at, 2)
            data, at = _take(body, at, length)
            if extension in seen:
                return None
            seen.add(extension)
            if extension == 0:  # server_name: a list of (type, name); type 0 is a host name
                listed, i = _number(data, 0, 2)
                if listed != len(data) - 2:
                    return None
                while i < len(data):
                    name_type, i = _number(data, i, 1)
                    length, i = _number(data, i, 2)
                    name, i = _take(data, i, length)
                    if name_type != 0:
                        return None
                    names.append(name)
        if len(names) != 1 or not names[0].isascii():
            return None
        return names[0].decode("ascii")
    except _Short:
        return None


def tunnel_refusal(host: str, first_bytes: bytes, allow: list[str]) -> tuple[str | None, str | None]:
    """(the TLS server name the tunnel's client gave first, or None; why the
    tunnel to `host` must go no further, or None)."""
    handshake, _ = tls_handshake(first_bytes)
    name = server_name(handshake)
    if name is None:
        if allow:
            return None, ("its first bytes are no TLS ClientHello naming one server (SNI), so nothing says "
                          "which host it reaches, and build.allow_hosts is set")
        return None, None
    if not same_host(name, host):
        return name, f"its TLS server name (SNI) is {name}, not {host}, the host it asked for (domain fronting)"
    return name, None


async def first_bytes(reader) -> bytes:
    """What a tunnel's client sends first: whole TLS records up to the end of
    its ClientHello, or the first bytes of anything else. Nothing if it
    waits for the server to speak first."""
    data = b""
    try:
        while len(data) < MAX_HELLO:
            _, more = tls_handshake(data)
            if not more:
                break
            chunk = await asyncio.wait_for(reader.read(min(more, MAX_HELLO - len(data))), HEAD_TIMEOUT)
            if not chunk:
                break
            data += chunk
    except (asyncio.TimeoutError, ConnectionError):
        pass
    return data


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
        authority = target
        host, port = split_authority(target, 443)
    elif target.startswith("http://"):
        authority = target[len("http://"):].split("/", 1)[0]
        host, port = split_authority(authority, 80)
        fronted = host_header_refusal(host, port, header_block)
        if fronted:
            log(verdict="refused", host=host, port=port, reason=fronted, method=method)
            await answer(client_writer, "403 Forbidden", f"the build proxy refused {host}:{port}: {fronted}")
            return
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
    counter = [0, 0]  # bytes sent, bytes received
    tls_name = None
    if method == "CONNECT":
        # Which host a tunnel reaches is the name its client's TLS asks for:
        # read before anything is connected, and held to the CONNECT's host.
        client_writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await client_writer.drain()
        first = await first_bytes(client_reader)
        tls_name, fronted = tunnel_refusal(host, first, allow)
        if fronted:
            log(verdict="refused", host=host, port=port, addresses=addresses, reason=fronted, method=method,
                server_name=tls_name)
            client_writer.close()
            return
        forwarded = first
    else:
        # One request per connection: the next one may be for another host.
        kept = [line for line in header_block.split("\r\n") if line and not line.lower().startswith(
            ("proxy-connection:", "connection:", "keep-alive:", "proxy-authorization:"))]
        if not any(line.partition(":")[0].strip().lower() == "host" for line in kept):
            kept.append(f"Host: {authority}")  # HTTP/1.0 may leave it out; the host asked for is the one
        forwarded = ("\r\n".join([request_line, *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")
    try:
        upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection(address, port), 15)
    except (OSError, asyncio.TimeoutError) as e:
        log(verdict="failed", host=host, port=port, addresses=addresses, reason=str(e), method=method)
        if method == "CONNECT":
            client_writer.close()  # the tunnel was already promised; closing it is all that is left to say
        else:
            await answer(client_writer, "502 Bad Gateway", f"could not reach {host}:{port}")
        return
    upstream_writer.write(forwarded)
    counter[0] += len(forwarded)
    started = time.monotonic()
    await asyncio.gather(pipe(client_reader, upstream_writer, counter, 0),
                         pipe(upstream_reader, client_writer, counter, 1))
    log(verdict="allowed", host=host, port=port, addresses=addresses, address=address, method=method,
        server_name=tls_name, bytes_sent=counter[0], bytes_received=counter[1],
        seconds=round(time.monotonic() - started, 3))


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
