"""The access token's home: a file only its owner reads, kept across
`down`/`up`, forgotten with `down --volumes`."""
import stat

from launcher import access


def test_token_is_saved_for_its_owner_only_and_forgotten(tmp_path, monkeypatch):
    monkeypatch.setenv("SANDBOX_STATE_DIR", str(tmp_path))
    assert access.saved_token("demo") is None
    token = access.new_token()
    access.save_token("demo", token)
    path = access.token_file("demo")
    assert path == tmp_path / "demo" / "access-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert access.saved_token("demo") == token
    access.save_token("demo", "replaced-" + token)
    assert access.saved_token("demo") == "replaced-" + token
    access.forget_token("demo")
    assert access.saved_token("demo") is None and not path.parent.exists()


def test_state_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("SANDBOX_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert access.token_file("x") == tmp_path / "sandbox" / "x" / "access-token"


def test_tokens_are_long_url_safe_and_fingerprinted_without_being_shown():
    token = access.new_token()
    assert len(token) >= 43 and all(c.isalnum() or c in "-_" for c in token)
    assert access.new_token() != token
    assert token not in access.token_id(token) and len(access.token_id(token)) == 12
    assert access.access_link("http://127.0.0.1:8080/", token) == f"http://127.0.0.1:8080/?sandbox_token={token}"
    assert access.cookie_name("demo") == "sandbox-demo"


def test_requests_to_the_ui_never_go_through_a_proxy_from_the_environment(monkeypatch):
    """Tried as a new user would: with http_proxy set, up waited for its timeout."""
    import http.server
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(self.headers.get("Authorization", "")[:2].encode() or b"--")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        with access.open_ui(f"http://127.0.0.1:{server.server_address[1]}/health", "tok", timeout=5) as r:
            assert r.status == 200 and r.read() == b"Be"
    finally:
        server.shutdown()


def test_names_that_are_not_sandbox_names_never_become_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("SANDBOX_STATE_DIR", str(tmp_path / "state"))
    for name in ("../../etc/x", "/abs", "UPPER", ""):
        assert not access.is_sandbox_name(name)
        assert access.saved_token(name) is None
    from launcher.locks import sandbox_lock
    with sandbox_lock("../../escape"):
        pass
    assert not (tmp_path / "escape.lock").exists() and not (tmp_path / "state").exists()


def test_one_command_at_a_time_per_sandbox(tmp_path, monkeypatch):
    import threading
    import time

    from launcher.locks import sandbox_lock
    monkeypatch.setenv("SANDBOX_STATE_DIR", str(tmp_path))
    order, said = [], []

    def second():
        with sandbox_lock("demo", said.append):
            order.append("second")

    with sandbox_lock("demo"):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first done")
        with sandbox_lock("other"):  # another sandbox is not held up
            order.append("other")
    thread.join(5)
    assert order == ["first done", "other", "second"]
    assert said == ["waiting for another sandbox command on demo to finish"]
