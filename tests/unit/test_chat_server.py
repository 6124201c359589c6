"""The `chat` front-end's server (images/chat/server.py) as a process on
loopback, in front of a fake backend: it accepts only JSON, caps what one
answer may cost, and keeps the history."""
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[2] / "images" / "chat" / "server.py"


class FakeBackend(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeBackend.seen.append(body)
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in ("hi", " there"):
                chunk = {"model": "m", "choices": [{"delta": {"content": piece}}]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
            if body["messages"][-1]["content"] != "be cut off":  # as a killed backend: the stream just ends
                self.wfile.write(b"data: [DONE]\n\n")
            return
        answer = json.dumps({"model": "m", "usage": {"completion_tokens": 1},
                             "choices": [{"message": {"role": "assistant", "content": "hi"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeBackend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = free_port()
    env = {"OPENAI_API_BASE_URL": f"http://127.0.0.1:{backend.server_address[1]}/v1", "OPENAI_API_KEY": "k",
           "CHAT_PORT": str(port), "CHAT_DATA": str(tmp_path_factory.mktemp("data"))}
    proc = subprocess.Popen([sys.executable, str(SERVER)], env=env, stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(5)
    backend.shutdown()


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/api/chat", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


CHAT = json.dumps({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 10**9}).encode()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_bodies_a_cross_site_form_can_send_are_refused(chat, content_type):
    FakeBackend.seen.clear()
    status, answer = post(chat, CHAT, content_type)
    assert status == 415 and "application/json" in answer["error"]
    assert FakeBackend.seen == []


def test_max_tokens_is_capped_and_the_answer_kept(chat):
    FakeBackend.seen.clear()
    status, answer = post(chat, CHAT, "application/json; charset=utf-8")
    assert status == 200 and answer["reply"]["content"] == "hi"
    assert FakeBackend.seen[0]["max_tokens"] == 2048
    with urllib.request.urlopen(chat + "/api/history", timeout=10) as response:
        assert json.load(response)["messages"][-2:] == [{"role": "user", "content": "hello"},
                                                        {"role": "assistant", "content": "hi"}]


@pytest.mark.parametrize("asked, sent", [(0, 0.0), (9, 2.0), (-1, 0.0), (None, "absent")])
def test_a_temperature_is_passed_on_within_bounds(chat, asked, sent):
    FakeBackend.seen.clear()
    body = json.dumps({"messages": [{"role": "user", "content": "hello"}], "temperature": asked}).encode()
    assert post(chat, body, "application/json")[0] == 200
    assert FakeBackend.seen[0].get("temperature", "absent") == sent


def test_an_answer_streams_as_server_sent_events_and_is_kept_whole(chat):
    body = json.dumps({"messages": [{"role": "user", "content": "stream please"}], "stream": True}).encode()
    request = urllib.request.Request(chat + "/api/chat", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        events = [json.loads(line[6:]) for line in response.read().decode().split("\n\n") if line]
    assert [e.get("delta") for e in events[:-1]] == ["hi", " there"] and events[-1]["done"]
    with urllib.request.urlopen(chat + "/api/history", timeout=10) as response:
        assert json.load(response)["messages"][-1] == {"role": "assistant", "content": "hi there"}


def test_an_answer_cut_off_is_told_as_an_error_not_as_done(chat):
    """A backend killed mid-answer closes its stream cleanly, without the
    [DONE] that ends a whole answer: the page is told it was cut off."""
    body = json.dumps({"messages": [{"role": "user", "content": "be cut off"}], "stream": True}).encode()
    request = urllib.request.Request(chat + "/api/chat", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        events = [json.loads(line[6:]) for line in response.read().decode().split("\n\n") if line]
    assert [e.get("delta") for e in events[:-1]] == ["hi", " there"]
    assert "done" not in events[-1] and events[-1]["error"].startswith("the backend stopped answering"), events


def test_a_body_over_the_limit_is_refused_before_it_is_read(chat):
    host, port = chat.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 2000000\r\n\r\n{}")
        assert s.recv(4096).split(b" ")[1] == b"413"
