"""The access token's home: a file only its owner reads, kept across
`down`/`up`, forgotten with `down --volumes`."""
import stat

import pytest

from launcher import access
from launcher.errors import SandboxError
from tests.support import recording_browser as recording


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
    from launcher.mutex import one_command_at_a_time
    with one_command_at_a_time("../../escape"):
        pass
    assert not (tmp_path / "escape.lock").exists() and not (tmp_path / "state").exists()


def test_one_command_at_a_time_per_sandbox(tmp_path, monkeypatch):
    import threading

    from launcher.mutex import one_command_at_a_time
    monkeypatch.setenv("SANDBOX_STATE_DIR", str(tmp_path))
    order, said = [], []
    waiting = threading.Event()

    def second():
        def say(message):
            said.append(message)
            waiting.set()
        with one_command_at_a_time("demo", say):
            order.append("second")

    with one_command_at_a_time("demo"):
        thread = threading.Thread(target=second)
        thread.start()
        # The lock says it waits only once it found the lock held: the second
        # command is then at the point under test, however slow its start.
        assert waiting.wait(60), "the second command never said it waits"
        order.append("first done")
        with one_command_at_a_time("other"):  # another sandbox is not held up
            order.append("other")
    thread.join(60)
    assert order == ["first done", "other", "second"]
    assert said == ["waiting for another sandbox command on demo to finish"]


@pytest.fixture
def recording_browser(tmp_path, monkeypatch):
    import webbrowser
    environment, record = recording.install(tmp_path)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SANDBOX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(webbrowser, "_tryorder", None)  # so that it reads BROWSER afresh
    return lambda: recording.recorded(record)


def test_open_starts_the_browser_on_an_owner_only_page_never_with_the_token(recording_browser, monkeypatch):
    from typer.testing import CliRunner

    import launcher.commands.open
    from launcher.cli import app
    token = access.new_token()
    link = access.access_link("http://127.0.0.1:8080/", token)
    monkeypatch.setattr("launcher.cli._gateway", lambda: None)
    monkeypatch.setattr(launcher.commands.open, "access_link", lambda gateway, target: ("demo", link))
    result = CliRunner().invoke(app, ["open", "demo", "--system-browser"])
    assert result.exit_code == 0, result.output
    assert token not in result.stdout and "opened sandbox demo in your usual browser" in result.stderr
    # It says, in one line, what that browser cannot stop.
    assert "can still navigate it, open popups and send WebRTC datagrams" in result.stderr.replace("\n", " ")
    seen = recording_browser()
    page = access.open_page("demo")
    assert seen["cmdline"][-1] == page.as_uri() and not any(token in arg for arg in seen["cmdline"])
    assert seen["mode"] == 0o600 and seen["directory_mode"] == 0o700
    assert f'<meta http-equiv="refresh" content="0;url={link}">' in seen["page"]
    # `--print` is the owner asking for the link on their own terminal: it opens nothing.
    printed = CliRunner().invoke(app, ["open", "demo", "--print"])
    assert printed.stdout.strip() == link
    # `down --volumes` forgets the page with the token.
    access.forget_token("demo")
    assert not page.exists() and not page.parent.exists()


def test_the_link_on_the_browsers_command_line_is_there_for_every_local_user(recording_browser):
    """Control: how `open` started the browser before, with the link as its argument."""
    import webbrowser
    token = access.new_token()
    assert webbrowser.open(access.access_link("http://127.0.0.1:8080/", token))
    assert any(token in arg for arg in recording_browser()["cmdline"])


def test_the_open_page_is_made_new_and_never_written_through_a_link(tmp_path, monkeypatch):
    monkeypatch.setenv("SANDBOX_STATE_DIR", str(tmp_path / "state"))
    page = access.write_open_page("demo", "http://127.0.0.1:8080/?sandbox_token=x")
    assert stat.S_IMODE(page.stat().st_mode) == 0o600 and stat.S_IMODE(page.parent.stat().st_mode) == 0o700
    page.unlink()
    elsewhere = tmp_path / "elsewhere.html"
    elsewhere.write_text("someone else's file\n")
    page.symlink_to(elsewhere)
    with pytest.raises(SandboxError) as refused:
        access.write_open_page("demo", "http://127.0.0.1:8080/?sandbox_token=x")
    assert "symbolic link" in str(refused.value) and elsewhere.read_text() == "someone else's file\n"
