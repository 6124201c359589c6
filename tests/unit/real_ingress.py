"""The ingress's own configuration (images/ingress: nginx.conf.template and
sandbox.js) run by this machine's nginx with njs, as images/ingress/start.sh
fills it in, in front of a stand-in backend and UI that record what reaches
them: the rules are checked without an engine. The image runs Debian's
nginx and njs; tests/unit/test_api_door.py says which it needs here."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from launcher.access import api_token, launcher_mark

INGRESS = Path(__file__).resolve().parents[2] / "images" / "ingress"
NGINX = "/usr/sbin/nginx"
JS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"


def nginx_with_njs() -> bool:
    return Path(NGINX).is_file() and Path(JS_MODULE).is_file()


class Recorder(ThreadingHTTPServer):
    """A stand-in part on 127.0.0.1: records each request it gets (method,
    path, headers, body) and answers as `answer` says."""

    daemon_threads = True

    def __init__(self, answer):
        self.seen: list[dict] = []
        self.answer = answer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                        "header_list": list(self.headers.items()), "body": body}
                self.server.seen.append(seen)
                status, headers, payload = self.server.answer(seen)
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_OPTIONS = do_PUT = do_DELETE = _serve

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


def backend_answer(seen: dict) -> tuple[int, list, bytes]:
    """As llama-cpp-python's server answers: with CORS headers for any
    Origin, and the body it was sent, echoed for the test to read."""
    headers = [("Content-Type", "application/json"), ("Access-Control-Allow-Origin", "*"),
               ("Access-Control-Allow-Credentials", "true"), ("Set-Cookie", "backend=1")]
    return 200, headers, json.dumps({"echo": seen["body"].decode("utf-8", "replace")}).encode()


def ui_answer(seen: dict) -> tuple[int, list, bytes]:
    return 200, [("Content-Type", "text/plain")], b"the UI"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RealIngress:
    """nginx running the ingress's configuration on 127.0.0.1:`port`, with
    `backend` and `ui` as its upstreams; `log()` is its refusal log."""

    def __init__(self, directory: Path, name: str, token: str, api_key: str, embeddings: bool = True,
                 ui: bool = True, one_log: bool = False, csp: str = "default-src 'self'", ui_answer=ui_answer,
                 signed_in_as: tuple[str, str] | None = None):
        """`embeddings`: the policy has an embedding model, whose server is
        `self.embeddings` (else None, and the ingress has no such upstream).
        `ui` False: an API-only sandbox's ingress (`frontend: none`), with no
        upstream for its pages (the stand-in UI is there, to show that
        nothing reaches it). `one_log`: the API calls go into the refusal
        log, as in the image, where both are the container's log. `csp`:
        the UI's Content-Security-Policy, as the launcher gives it;
        `ui_answer`: what the stand-in UI answers. `signed_in_as`: who the
        owner is to the UI (a recipe's user and role), as the launcher gives it."""
        self.name, self.token, self.api_key = name, token, api_key
        self.directory = directory
        self.backend, self.ui = Recorder(backend_answer), Recorder(ui_answer)
        self.embeddings = Recorder(backend_answer) if embeddings else None
        self.port = free_port()
        # The healthcheck's listener, on 127.0.0.1 as in the image (where the
        # door is on the container's other addresses, here on 127.0.0.1 too).
        self.health_port = free_port()
        (directory / "body").mkdir(parents=True)
        shutil.copyfile(INGRESS / "sandbox.js", directory / "sandbox.js")
        values = {"NAME": name, "TOKEN": token, "PUBLIC_PORT": str(self.port),
                  "LISTEN": f"listen 127.0.0.1:{self.port} default_server;", "UPSTREAM": self.ui.address if ui else "",
                  "API_UPSTREAM": self.backend.address, "API_KEY": api_key,
                  "EMBEDDINGS_UPSTREAM": self.embeddings.address if self.embeddings else "",
                  "HEALTH_PORT": str(self.health_port), "UPSTREAM_HEALTH_PATH": "/health",
                  "CHAT_MODEL": "tiny", "EMBEDDING_MODEL": "embed" if self.embeddings else "", "CSP": csp,
                  "LAUNCHER_MARK": launcher_mark(token, api_key), "API_TOKEN": api_token(token),
                  "UI_USER": signed_in_as[0] if signed_in_as else "", "UI_ROLE": signed_in_as[1] if signed_in_as else ""}
        text = (INGRESS / "nginx.conf.template").read_text()
        for key, value in values.items():
            text = text.replace(f"@{key}@", value)
        text = (text.replace("/opt/ingress/sandbox.js", str(directory / "sandbox.js"))
                .replace("pid /tmp/nginx.pid;", f"pid {directory}/nginx.pid;")
                .replace("/tmp/nginx/", f"{directory}/")
                .replace("access_log /dev/stdout api_calls",
                         f"access_log {directory}/{'refused' if one_log else 'api'}.log api_calls")
                .replace("access_log /dev/stdout", f"access_log {directory}/refused.log"))
        if os.geteuid() == 0:  # nginx's workers would otherwise become nobody, who cannot read these files
            text = "user root;\n" + text
        (directory / "nginx.conf").write_text(text)
        self.process = subprocess.Popen([NGINX, "-e", "stderr", "-p", str(directory), "-c",
                                         str(directory / "nginx.conf"), "-g", "daemon off;"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"nginx did not start: {self.process.stderr.read().decode()}")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api_log(self, waiting_for: str = "", seconds: float = 10) -> str:
        """The log of the owner's API calls (in the image, on stdout with
        the refusals), as `log` reads the refusals'."""
        return self.log(waiting_for, seconds, "api.log")

    def log(self, waiting_for: str = "", seconds: float = 10, file: str = "refused.log") -> str:
        """The refusal log; with `waiting_for`, once it holds that (nginx
        logs a refused request only when it is done with its connection)."""
        path = self.directory / file
        deadline = time.monotonic() + seconds
        while True:
            text = path.read_text() if path.exists() else ""
            if waiting_for in text or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def __enter__(self) -> "RealIngress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process.stderr.close()
        for part in (self.backend, self.ui, self.embeddings):
            if part is not None:
                part.shutdown()
                part.server_close()
