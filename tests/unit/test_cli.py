"""The CLI's text and JSON output and exit codes, for commands that need no Docker."""
import json

from typer.testing import CliRunner

from launcher.cli import app
from tests.conftest import FIXTURES

runner = CliRunner()


def test_validate_good_policy(monkeypatch):
    monkeypatch.chdir(FIXTURES / "good")
    result = runner.invoke(app, ["validate", "--no-port-check", "minimal.yaml"])
    assert result.exit_code == 0
    assert result.stdout == "minimal.yaml: ok (sandbox minimal)\n"


def test_validate_reports_every_problem_of_every_file_and_exits_2(monkeypatch):
    monkeypatch.chdir(FIXTURES / "bad")
    result = runner.invoke(app, ["validate", "--no-port-check", "wrong-types.yaml", "root-user.yaml"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "wrong-types.yaml:8:8 backend.gpu: must be one of auto, all, none, or a list of GPU device ids such as [0, 1]",
        "wrong-types.yaml:9:9 backend.cpus: must be a number, not 'two'",
        "wrong-types.yaml:10:11 backend.memory: must be a size such as 512m or 8g",
        "wrong-types.yaml:14:9 ingress.port: must be at most 65535",
        "root-user.yaml:9:9 frontend.user: must be a uid from 1 up; the front-end never runs as root",
    ]
    assert "Traceback" not in result.output


def test_validate_json(monkeypatch):
    monkeypatch.chdir(FIXTURES / "bad")
    result = runner.invoke(app, ["validate", "--json", "--no-port-check", "root-user.yaml"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["files"][0]["problems"] == [{"file": "root-user.yaml", "line": 9, "column": 9,
                                             "field": "frontend.user",
                                             "message": "must be a uid from 1 up; the front-end never runs as root"}]


def test_help_explains_each_command():
    for command in ("validate", "plan", "up", "status", "logs", "down", "doctor"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, command
        assert "Usage" in result.stdout


def test_build_contacts_are_shown_one_line_per_destination():
    from launcher.cli import _contacts_by_destination
    contacts = [
        {"verdict": "allowed", "host": "mirror.example", "port": 80, "bytes_sent": 100, "bytes_received": 5000},
        {"verdict": "allowed", "host": "mirror.example", "port": 80, "bytes_sent": 50, "bytes_received": 1000},
        {"verdict": "refused", "host": "169.254.169.254", "port": 80, "reason": "a link-local address"},
        {"verdict": "refused", "host": "10.0.0.1", "port": 443, "reason": "a private address"},
    ]
    assert _contacts_by_destination(contacts) == [
        {"verdict": "allowed", "host": "mirror.example", "port": 80, "reason": "", "count": 2, "bytes_sent": 150,
         "bytes_received": 6000},
        {"verdict": "refused", "host": "169.254.169.254", "port": 80, "reason": "a link-local address", "count": 1,
         "bytes_sent": 0, "bytes_received": 0},
        {"verdict": "refused", "host": "10.0.0.1", "port": 443, "reason": "a private address", "count": 1,
         "bytes_sent": 0, "bytes_received": 0},
    ]
