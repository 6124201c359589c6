"""What the front door's checks cost per request, side by side: the ingress
image run with its real configuration (Host, Origin, Fetch Metadata and the
access token checked on every request; one ingress given the token as a
bearer token, one as the cookie) and the same image and nginx with a plain
pass-through configuration, all three in front of the same tiny upstream.
Rounds alternate between them so that machine noise falls on all. Prints the median and p90 latency of a request
on a kept-alive connection and of one on a new connection, and the ratios.
A fourth ingress, the pass-through one with its connections to the upstream
kept alive (an `upstream` block with `keepalive`, which resolves the name once,
at start), shows what a new connection from the ingress to the UI for every
request costs (docs/benchmarks.md, "The front door's checks").
Needs the engine and the images (`sandbox up` once).

    python benchmarks/ingress.py [--requests 2000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import sys
import time
import uuid
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from launcher.images import recipe_image  # noqa: E402
from launcher.recipes import CUSTOM_FRONTEND, content_security_policy  # noqa: E402

TOKEN = "b" * 43
UPSTREAM = r"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Its headers and body go out in two writes: with Nagle's algorithm the
    # second waits for the ACK of the first, which nginx delays (40 ms) on a
    # connection it keeps alive; the kept-alive upstream would time that.
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""
# The baseline: the same nginx, passing everything to the same upstream,
# found as the ingress finds it, by name at request time: a new connection
# to the upstream for each request.
PLAIN = r"""
mkdir -p /tmp/nginx && cat > /tmp/nginx/nginx.conf <<'EOF'
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr warn;
events { worker_connections 2048; }
http {
    access_log off;
    client_body_temp_path /tmp/nginx/body;
    proxy_temp_path /tmp/nginx/proxy;
    fastcgi_temp_path /tmp/nginx/fastcgi;
    uwsgi_temp_path /tmp/nginx/uwsgi;
    scgi_temp_path /tmp/nginx/scgi;
    server {
        listen 8080;
        resolver 127.0.0.11 ipv6=off valid=10s;
        set $upstream "frontend:8080";
        location / {
            proxy_pass http://$upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
exec nginx -e stderr -c /tmp/nginx/nginx.conf -g 'daemon off;'
"""
# The same, its upstream connections kept alive between requests.
KEPT = (PLAIN.replace('        set $upstream "frontend:8080";\n', '')
        .replace("    server {\n", "    upstream kept { server frontend:8080; keepalive 16; }\n    server {\n", 1)
        .replace("proxy_pass http://$upstream;", "proxy_pass http://kept;"))
assert KEPT != PLAIN and "$upstream" not in KEPT
PASS_THROUGH = {"no checks": PLAIN, "no checks, upstream kept alive": KEPT}
HARDENED = dict(read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"], user="65534:65534",
                tmpfs={"/tmp": "rw,noexec,nosuid,nodev,size=16m"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answering(port: int, headers: dict) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/", headers=headers)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"nothing answered on 127.0.0.1:{port}")


def kept_alive(port: int, headers: dict, requests: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    seconds = []
    for _ in range(requests):
        started = time.perf_counter()
        connection.request("GET", "/", headers=headers)
        response = connection.getresponse()
        response.read()
        seconds.append(time.perf_counter() - started)
        assert response.status == 200, response.status
    connection.close()
    return seconds


def new_connections(port: int, headers: dict, requests: int) -> list[float]:
    seconds = []
    for _ in range(requests):
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/", headers={**headers, "Connection": "close"})
        response = connection.getresponse()
        response.read()
        connection.close()
        seconds.append(time.perf_counter() - started)
        assert response.status == 200, response.status
    return seconds


def summary(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return statistics.median(ordered) * 1e6, ordered[int(len(ordered) * 0.9)] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round and kind")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    client = docker.from_env()
    ca = Path(os.environ["SANDBOX_CA_BUNDLE"]) if os.environ.get("SANDBOX_CA_BUNDLE") else None
    ingress, chat = recipe_image("ingress", ca_bundle=ca).tag, recipe_image("chat", ca_bundle=ca).tag
    for tag in (ingress, chat):
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            raise SystemExit(f"{tag} is missing: run `sandbox up policies/quickstart.yaml` once first")

    run = uuid.uuid4().hex[:8]
    labels = {"io.sandbox.name": f"bench-{run}"}
    network = client.networks.create(f"sandbox-bench-{run}", labels=labels)
    containers = []
    try:
        upstream = client.containers.run(chat, entrypoint=["python3", "-c", UPSTREAM], detach=True,
                                         name=f"sandbox-bench-{run}-up", labels=labels, **HARDENED)
        containers.append(upstream)
        network.connect(upstream, aliases=["frontend"])
        # One ingress per kind, so that each carries the same load.
        ports = {kind: free_port() for kind in ("no checks", "no checks, upstream kept alive", "token as bearer",
                                                "token as cookie")}
        for kind, port in ports.items():
            checked = kind not in PASS_THROUGH
            containers.append(client.containers.run(
                ingress, entrypoint=None if checked else ["/bin/sh", "-c", PASS_THROUGH[kind]], detach=True,
                name=f"sandbox-bench-{run}-{kind.replace(' ', '-').replace(',', '')}", labels=labels,
                network=network.name,
                environment={"SANDBOX_NAME": "bench", "SANDBOX_UPSTREAM": "frontend:8080",
                             "SANDBOX_API_UPSTREAM": "backend:8000", "SANDBOX_API_KEY": "B" * 32,
                             "SANDBOX_HEALTH_PORT": "8081",
                             "SANDBOX_CSP": content_security_policy(CUSTOM_FRONTEND, port),
                             "SANDBOX_LISTEN_PORT": "8080", "SANDBOX_PUBLIC_PORT": str(port),
                             "SANDBOX_ACCESS_TOKEN": TOKEN} if checked else {},
                ports={"8080/tcp": ("127.0.0.1", port)}, **HARDENED))
        own = {kind: f"127.0.0.1:{port}" for kind, port in ports.items()}
        kinds = {
            "no checks": (ports["no checks"], {"Host": own["no checks"]}),
            "no checks, upstream kept alive": (ports["no checks, upstream kept alive"],
                                               {"Host": own["no checks, upstream kept alive"]}),
            "token as bearer": (ports["token as bearer"], {"Host": own["token as bearer"],
                                                           "Authorization": f"Bearer {TOKEN}"}),
            "token as cookie": (ports["token as cookie"], {"Host": own["token as cookie"],
                                                           "Cookie": f"theme=dark; sandbox-bench={TOKEN}",
                                                           "Origin": f"http://{own['token as cookie']}",
                                                           "Sec-Fetch-Site": "same-origin"}),
        }
        for port, headers in kinds.values():
            wait_until_answering(port, headers)
        results = {kind: {"kept-alive": [], "new connection": []} for kind in kinds}
        for _ in range(args.rounds):
            for kind, (port, headers) in kinds.items():
                results[kind]["kept-alive"] += kept_alive(port, headers, args.requests)
                results[kind]["new connection"] += new_connections(port, headers, args.requests // 4)
    finally:
        for container in containers:
            container.remove(force=True)
        network.remove()

    print(f"{'request':<16}{'ingress':<32}{'median us':>10}{'p90 us':>10}{'ratio':>8}")
    for mode in ("kept-alive", "new connection"):
        base, _ = summary(results["no checks"][mode])
        for kind in kinds:
            median, p90 = summary(results[kind][mode])
            print(f"{mode:<16}{kind:<32}{median:>10.0f}{p90:>10.0f}{median / base:>8.2f}")


if __name__ == "__main__":
    main()
