"""The `chat` front-end: serves one page (with its script and style) and relays its calls to the backend's
OpenAI-compatible API (OPENAI_API_BASE_URL, OPENAI_API_KEY). The conversation
is kept in $CHAT_DATA/history.jsonl, so it survives a restart of the sandbox.
With "stream": true an answer comes as server-sent events as it is written."""
import http.client
import json
import os
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BASE_URL = os.environ.get("OPENAI_API_BASE_URL", "http://backend:8000/v1").rstrip("/")
API_KEY = os.environ.get("OPENAI_API_KEY", "")
PORT = int(os.environ.get("CHAT_PORT", "8080"))
HISTORY = os.path.join(os.environ.get("CHAT_DATA", "/data"), "history.jsonl")
HERE = os.path.dirname(__file__)
# The page, its script and its style, each a file of its own: the page has no
# inline script or style, so that its Content-Security-Policy can refuse every
# inline one (an answer rendered as HTML by mistake would run nothing).
FILES = {path: (open(os.path.join(HERE, name), "rb").read(), content_type) for path, name, content_type in (
    ("/", "index.html", "text/html; charset=utf-8"),
    ("/app.js", "app.js", "text/javascript; charset=utf-8"),
    ("/app.css", "app.css", "text/css; charset=utf-8"))}
# The same as the ingress's for this recipe (launcher/recipes.py): the page is
# kept to it even when served without the ingress.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_BODY = 1024 * 1024
# One answer may not hold the backend for long: a page (or a script) asking
# for more gets this many tokens.
MAX_TOKENS = 2048
history_lock = threading.Lock()


def backend(method, path, body=None, timeout=300):
    request = urllib.request.Request(
        BASE_URL + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def read_history():
    try:
        with open(HISTORY) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def append_history(*messages):
    try:
        with history_lock, open(HISTORY, "a") as f:
            for m in messages:
                f.write(json.dumps(m) + "\n")
    except OSError:
        pass  # no data volume: the conversation lives in the page only


class Handler(BaseHTTPRequestHandler):
    server_version = "chat"
    sys_version = ""

    def send_json(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path in FILES:
            body, content_type = FILES[self.path]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", PAGE_CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/health":
            self.send_json(200, {"status": "ok"})
        elif self.path == "/api/models":
            try:
                self.send_json(200, backend("GET", "/models", timeout=10))
            except (OSError, ValueError) as e:
                self.send_json(502, {"error": f"backend unavailable: {e}"})
        elif self.path == "/api/history":
            self.send_json(200, {"messages": read_history()})
        else:
            self.send_json(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/api/chat":
            self.send_json(404, {"error": "not found"})
            return
        # Only JSON: a cross-site form can send text/plain or form bodies
        # without asking first, but never application/json.
        if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
            self.send_json(415, {"error": "send application/json"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self.send_json(413, {"error": f"the body must be 1 to {MAX_BODY} bytes"})
            self.close_connection = True
            return
        try:
            request = json.loads(self.rfile.read(length))
            messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in request["messages"]]
            max_tokens = min(max(1, int(request.get("max_tokens", 256))), MAX_TOKENS)
            body = {"messages": messages, "max_tokens": max_tokens}
            if request.get("model"):
                body["model"] = str(request["model"])
            if request.get("temperature") is not None:  # 0: the same answer each time
                body["temperature"] = min(max(0.0, float(request["temperature"])), 2.0)
            stream = bool(request.get("stream"))
        except (ValueError, KeyError, TypeError):
            self.send_json(400, {"error": "expected {model, messages: [{role, content}]}"})
            return
        if stream:
            self.stream_answer(body, messages[-1])
            return
        try:
            answer = backend("POST", "/chat/completions", body)
            reply = answer["choices"][0]["message"]
        except urllib.error.HTTPError as e:
            self.send_json(502, {"error": f"backend answered {e.code}"})
            return
        except (OSError, ValueError, KeyError, IndexError) as e:
            self.send_json(502, {"error": f"backend unavailable: {e}"})
            return
        append_history(messages[-1], {"role": "assistant", "content": reply.get("content") or ""})
        self.send_json(200, {"reply": reply, "model": answer.get("model"), "usage": answer.get("usage")})

    def stream_answer(self, body: dict, question: dict) -> None:
        """The answer as server-sent events, a `delta` per piece as the model
        writes it, then `done` with the usage; the history gets the whole."""
        request = urllib.request.Request(
            BASE_URL + "/chat/completions", method="POST", data=json.dumps({**body, "stream": True}).encode(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        try:
            upstream = urllib.request.urlopen(request, timeout=300)
        except urllib.error.HTTPError as e:
            self.send_json(502, {"error": f"backend answered {e.code}"})
            return
        except OSError as e:
            self.send_json(502, {"error": f"backend unavailable: {e}"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.close_connection = True  # the stream ends with the connection
        pieces, model, finished = [], None, False
        try:
            with upstream:
                for line in upstream:
                    line = line.strip()
                    if line == b"data: [DONE]":
                        finished = True
                        break
                    if not line.startswith(b"data:"):
                        continue
                    chunk = json.loads(line[5:])
                    model = chunk.get("model", model)
                    delta = ((chunk.get("choices") or [{}])[0].get("delta") or {}).get("content")
                    if delta:
                        pieces.append(delta)
                        self.send_event({"delta": delta})
            if not finished:  # the backend's stream ends with [DONE]; without it, the answer was cut
                raise ConnectionError("its stream ended mid-answer")
            self.send_event({"done": True, "model": model, "completion_tokens": len(pieces)})
        except (OSError, ValueError, http.client.HTTPException) as e:
            try:
                self.send_event({"error": f"the backend stopped answering: {e}"})
            except OSError:
                pass  # the page is gone too
        append_history(question, {"role": "assistant", "content": "".join(pieces)})

    def send_event(self, payload: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()

    def log_message(self, fmt, *args):
        print(f"{self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    print(f"chat: listening on :{PORT}, backend {BASE_URL}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
