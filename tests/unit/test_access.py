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
