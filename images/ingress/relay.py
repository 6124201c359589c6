"""The ingress relay: every connection goes to one upstream, SANDBOX_UPSTREAM
(host:port), fixed at start. It cannot be used as a forward proxy: it opens no
connection anywhere else, and a request that asks for one (CONNECT, or an
absolute URI such as `GET http://example.com/`) is refused before anything is
forwarded. Bytes after the first request line pass through untouched, so
keep-alive and WebSockets work; they can only ever reach the same upstream."""
import asyncio
import os
import re
import sys

UPSTREAM_HOST, _, UPSTREAM_PORT = os.environ["SANDBOX_UPSTREAM"].rpartition(":")
LISTEN_PORT = int(os.environ.get("SANDBOX_LISTEN_PORT", "8080"))
MAX_REQUEST_LINE = 8192
REQUEST_LINE = re.compile(rb"^([A-Z]{1,16}) (\S{1,8000}) HTTP/1\.[01]\r?\n$")


def log(message):
    print(f"ingress: {message}", flush=True)


async def refuse(writer, status, reason):
    body = f"{status} {reason}: this relay only serves the sandbox's UI\n".encode()
    writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (status, reason.encode(), len(body), body))
    try:
        await writer.drain()
    finally:
        writer.close()


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(client_reader, client_writer):
    peer = client_writer.get_extra_info("peername")
    try:
        first = await asyncio.wait_for(client_reader.readuntil(b"\n"), timeout=30)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        client_writer.close()
        return
    match = REQUEST_LINE.match(first)
    if not match:
        log(f"{peer}: refused a request that is not HTTP/1.x")
        await refuse(client_writer, 400, "Bad Request")
        return
    method, target = match.group(1), match.group(2)
    if method == b"CONNECT" or not (target.startswith(b"/") or target == b"*"):
        log(f"{peer}: refused {method.decode()} {target.decode(errors='replace')} (not a request for the UI)")
        await refuse(client_writer, 405 if method == b"CONNECT" else 400,
                     "Method Not Allowed" if method == b"CONNECT" else "Bad Request")
        return
    try:
        upstream_reader, upstream_writer = await asyncio.wait_for(
            asyncio.open_connection(UPSTREAM_HOST, int(UPSTREAM_PORT)), timeout=10)
    except (OSError, asyncio.TimeoutError) as e:
        log(f"{peer}: upstream unavailable: {e}")
        await refuse(client_writer, 502, "Bad Gateway")
        return
    upstream_writer.write(first)
    await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))


async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", LISTEN_PORT, limit=MAX_REQUEST_LINE)
    log(f"listening on :{LISTEN_PORT}, upstream {UPSTREAM_HOST}:{UPSTREAM_PORT}")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
