"""The backend image's start (images/llama-cpp/backend.py): each model file is
hashed and compared with the policy's sha256 before the server loads it, so a
backend that Docker restarts by itself does not load a file changed on the host
meanwhile. The server itself is not run here: `os.execv` is where it would
start."""
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "backend_entry", Path(__file__).resolve().parents[2] / "images" / "llama-cpp" / "backend.py")
backend = importlib.util.module_from_spec(spec)
spec.loader.exec_module(backend)


@pytest.fixture
def started(tmp_path, monkeypatch):
    """A model file, the configuration that names it with its sha256, and
    what the start did: the server it ran, or how long it paused."""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"weights" * 1000)
    config = {"host": "0.0.0.0", "port": 8000,
              "models": [{"model": str(model), "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
                          "model_alias": "m", "n_ctx": 2048}]}
    monkeypatch.setenv("SANDBOX_BACKEND_CONFIG", json.dumps(config))
    monkeypatch.setenv("SANDBOX_API_KEY", "key")
    monkeypatch.setattr(backend, "CONFIG_PATH", str(tmp_path / "server.json"))
    did = {}
    monkeypatch.setattr(backend.os, "execv", lambda path, argv: did.setdefault("ran", argv))
    monkeypatch.setattr(backend.time, "sleep", lambda seconds: did.setdefault("paused", seconds))
    return model, tmp_path / "server.json", did


def test_an_unchanged_model_is_loaded_and_the_server_gets_its_own_settings_only(started, capsys):
    model, server_config, did = started
    backend.serve()
    assert did["ran"][-2:] == ["--config_file", str(server_config)] and "paused" not in did
    [entry] = json.loads(server_config.read_text())["models"]
    assert entry["model"] == str(model) and "sha256" not in entry  # llama's settings refuse unknown keys
    assert f"backend: {model}: sha256 checked" in capsys.readouterr().err


def test_a_model_changed_on_the_host_is_refused_and_the_server_never_runs(started, capsys):
    model, server_config, did = started
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF  # one byte, in place: same size, same name
    model.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exited:
        backend.serve()
    assert exited.value.code == 2 and "ran" not in did and not server_config.exists()
    # It waits before exiting, so that Docker's restarts do not hash a large model without end.
    assert did["paused"] == backend.REFUSED_PAUSE_SECONDS
    err = capsys.readouterr().err
    assert f"backend: refusing to start: {model}: its sha256 is {hashlib.sha256(bytes(data)).hexdigest()}" in err
    assert "changed on the host" in err


def test_a_model_without_a_sha256_or_unreadable_is_refused(started, monkeypatch, tmp_path, capsys):
    model, _, did = started
    config = json.loads(backend.os.environ["SANDBOX_BACKEND_CONFIG"])
    config["models"].append({"model": str(tmp_path / "gone.gguf"), "sha256": "0" * 64, "model_alias": "gone"})
    config["models"].append({"model": str(model), "model_alias": "unchecked"})
    monkeypatch.setenv("SANDBOX_BACKEND_CONFIG", json.dumps(config))
    assert backend.check() == 2
    err = capsys.readouterr().err
    assert f"refusing to start: {tmp_path / 'gone.gguf'}: cannot be read (No such file or directory)" in err
    assert f"refusing to start: {model}: no sha256 was given to check it against" in err
    assert "ran" not in did
