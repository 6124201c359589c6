"""Files and output that someone else may have made, nested deep enough to
exhaust Python's stack (json.loads and YAML's composer recurse once per
level): each gives a clean error, or is passed over as unreadable, never a
RecursionError traceback."""
import hashlib
from types import SimpleNamespace

from typer.testing import CliRunner

from launcher.cli import app

DEEP_JSON = "[" * 100_000 + "]" * 100_000
# The scanner slows with each open level before the composer gives up: a
# thousand is plenty.
DEEP_YAML = "a: " + "[" * 1000 + "]" * 1000 + "\n"

runner = CliRunner()


def test_a_config_file_nested_too_deep_is_an_error_naming_it(tmp_path, monkeypatch):
    config = tmp_path / "config" / "sandbox" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(DEEP_YAML)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SANDBOX_MODEL_DIR", raising=False)
    result = runner.invoke(app, ["model", "list"])
    assert not isinstance(result.exception, RecursionError)
    assert result.exit_code == 2
    assert result.stderr == f"error: {config}: nested too deeply to be a config file\n"


def test_a_policy_to_fill_in_nested_too_deep_is_refused_at_its_place(tmp_path, monkeypatch):
    monkeypatch.setenv("SANDBOX_MODEL_DIR", str(tmp_path / "store"))
    policy = tmp_path / "team.yaml"
    policy.write_text("version: 1\nmodels:\n  - alias: tiny\n" + DEEP_YAML)
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    result = runner.invoke(app, ["model", "pull", str(model), "--policy", str(policy)])
    assert not isinstance(result.exception, RecursionError)
    assert result.exit_code == 2
    assert result.stderr == (f"error: {policy}:4:35 is nested more than 32 levels deep; "
                             f"a policy is a few levels deep\n")


def test_state_files_nested_too_deep_read_as_unreadable(tmp_path, monkeypatch):
    from launcher.models import store
    from launcher.policy.files import cache_path, sha256_of
    cache_path().parent.mkdir(parents=True, exist_ok=True)
    cache_path().write_text(DEEP_JSON)
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    assert sha256_of(model) == hashlib.sha256(b"GGUF").hexdigest()  # the cache is passed over
    store.provenance_path(model).write_text(DEEP_JSON)
    assert store.read_provenance(model) is None


def test_records_of_parts_nested_too_deep_are_passed_over():
    from launcher.commands.audit import attempts
    from launcher.text import json_records
    assert list(json_records([DEEP_JSON, '{"name": "a.example"}'], "name")) == [{"name": "a.example"}]

    class Sink:
        def read_file(self, container: str, path: str) -> bytes:
            return DEEP_JSON.encode()

    assert attempts(SimpleNamespace(containers=Sink()), "demo") == 0


def test_a_front_end_whose_python_prints_nesting_too_deep_is_read_as_having_none(monkeypatch):
    """Under gVisor, the front-end's processes are read by its image's own python3."""
    from launcher.commands.verify import _read_processes_inside
    from launcher.matrix import Facts

    class FrontEnd:
        def exec_in(self, container: str, command: list[str], user: str = "") -> tuple[int, str]:
            return 0, DEEP_JSON + "\n"

    facts = Facts()
    _read_processes_inside(SimpleNamespace(containers=FrontEnd()), "sandbox-demo-frontend", facts)
    assert "no python3" in facts.processes_note
