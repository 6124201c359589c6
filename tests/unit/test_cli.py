"""The CLI's text and JSON output and exit codes, for commands that need no Docker."""
import json
import socket

import pytest

from typer.testing import CliRunner

from launcher.cli import app
from launcher.plan import Observed, ObservedContainer
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
    from launcher.commands.audit import contacts_by_destination
    contacts = [
        {"verdict": "allowed", "host": "mirror.example", "port": 80, "bytes_sent": 100, "bytes_received": 5000},
        {"verdict": "allowed", "host": "mirror.example", "port": 80, "bytes_sent": 50, "bytes_received": 1000},
        {"verdict": "refused", "host": "169.254.169.254", "port": 80, "reason": "a link-local address"},
        {"verdict": "refused", "host": "10.0.0.1", "port": 443, "reason": "a private address"},
    ]
    assert contacts_by_destination(contacts) == [
        {"verdict": "allowed", "host": "mirror.example", "port": 80, "reason": "", "count": 2, "bytes_sent": 150,
         "bytes_received": 6000},
        {"verdict": "refused", "host": "169.254.169.254", "port": 80, "reason": "a link-local address", "count": 1,
         "bytes_sent": 0, "bytes_received": 0},
        {"verdict": "refused", "host": "10.0.0.1", "port": 443, "reason": "a private address", "count": 1,
         "bytes_sent": 0, "bytes_received": 0},
    ]


# What a hostile part or build might print: an OSC 52 clipboard write, a CSI
# that clears the screen, a C1 CSI, a right-to-left override and an isolate.
HOSTILE = "\x1b]52;c;cHduZWQ=\x07 \x1b[2J \x9b31m \u202etxt.exe \u2066x\u2069"
RAW = "\x1b\x07\x9b\u202e\u2066\u2069"


def shown_escaped(text: str) -> bool:
    """Nothing raw that a terminal would obey, and the hostile text there, escaped."""
    return (not [c for c in text if c in RAW]
            and ("\\x1b]52;c;cHduZWQ=\\x07 \\x1b[2J \\x9b31m \\u202etxt.exe \\u2066x\\u2069" in text
                 or "\\u001b]52;c;cHduZWQ=\\u0007 \\u001b[2J \\u009b31m \\u202etxt.exe \\u2066x\\u2069" in text))


def hostile_audit() -> dict:
    return {"name": "demo", "builds": [{"image": "sandbox-ui:1", "parts": ["frontend"], "contacts": [
                {"verdict": "refused", "host": HOSTILE, "port": 80, "reason": HOSTILE}]}],
            "names": [{"name": HOSTILE, "parts": ["frontend"], "count": 1, "answer": None}],
            "lookups": [{"time": 1.0, "part": "frontend", "name": HOSTILE, "type": "A", "answer": None}],
            "destinations": [{"protocol": "tcp", "name": HOSTILE, "address": "198.18.0.5", "port": 80, "count": 1,
                              "parts": ["frontend"], "said": [HOSTILE], "bodies": [HOSTILE]}],
            "connections": [{"time": 1.0, "part": "frontend", "protocol": "tcp", "name": HOSTILE,
                             "address": "198.18.0.5", "port": 80, "said": HOSTILE,
                             "http": {"method": "POST", "host": HOSTILE, "path": "/", "body": HOSTILE}}],
            "ingress_refused": [f"refused no-token GET /{HOSTILE}"],
            "ingress_refused_from_parts": [{"part": "frontend", "line": f"refused no-token GET /{HOSTILE}"}]}


def test_audit_escapes_what_parts_sent_in_text_and_json(monkeypatch):
    import launcher.commands.audit
    monkeypatch.setattr("launcher.cli._gateway", lambda: None)
    monkeypatch.setattr(launcher.commands.audit, "audit", lambda gateway, target, since=None: hostile_audit())
    text = runner.invoke(app, ["audit"])
    assert text.exit_code == 0, text.output
    assert shown_escaped(text.stdout), text.stdout
    # Each record stays on its line: a newline in a name cannot forge another.
    assert "x\\u2069  (by frontend)" in text.stdout
    as_json = runner.invoke(app, ["audit", "--json"])
    assert as_json.exit_code == 0
    assert shown_escaped(as_json.stdout), as_json.stdout
    assert json.loads(as_json.stdout) == hostile_audit()  # programs get exactly what was recorded

    monkeypatch.setattr(launcher.commands.audit, "follow", lambda gateway, name: iter(hostile_audit()["connections"]))
    followed = runner.invoke(app, ["audit", "--follow", "--json"])
    assert shown_escaped(followed.stdout), followed.stdout
    assert [json.loads(line) for line in followed.stdout.splitlines()[-1:]] == hostile_audit()["connections"]


def test_a_builds_lines_and_its_failure_are_escaped(monkeypatch):
    import launcher.commands.up
    from launcher.errors import BuildFailure

    def hostile_build(gateway, policy, *, on_build_line, say, **options):
        on_build_line(HOSTILE)
        say(f"the build said {HOSTILE}")
        say("while starting, parts tried to reach 1 outside name(s): evil.example\n• sandbox demo is up")
        raise BuildFailure("sandbox-ui:1", "The command '/bin/sh -c printf' returned a non-zero code: 1", [HOSTILE])

    monkeypatch.setattr("launcher.cli._gateway", lambda: None)
    monkeypatch.setattr(launcher.commands.up, "up", hostile_build)
    for command in (["up", "policy.yaml"], ["up", "policy.yaml", "--json"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1
        assert shown_escaped(result.stderr), result.stderr
        assert "last lines of the build:\n  \\x1b]52" in result.stderr
        assert "evil.example\\x0a• sandbox demo is up" in result.stderr  # no line forged by a name
        assert "Traceback" not in result.output
    assert shown_escaped(result.stdout) and json.loads(result.stdout)["ok"] is False


def test_build_lines_on_a_terminal_are_escaped_in_the_spinner_too(monkeypatch):
    """On a terminal the build's last line is drawn by the spinner, outside print."""
    import io

    import launcher.views
    screen = io.StringIO()
    monkeypatch.setattr(launcher.views, "err", launcher.views.EscapingConsole(file=screen, force_terminal=True,
                                                                              emoji=False))
    progress = launcher.views.Progress()
    progress.say(f"building image sandbox-ui:1 {HOSTILE}")
    progress.build_line(f"[link=https://evil.example]{HOSTILE}")
    progress.close()  # stopping the spinner draws its last text, whatever the refresh timer did
    drawn = screen.getvalue()
    assert "\x1b]52" not in drawn and not [c for c in drawn if c in "\x07\x9b\u202e\u2066\u2069"], repr(drawn)
    assert "\\x1b]52;c;cHduZWQ=\\x07" in drawn and "[link=https://evil.example]" in drawn
    assert "\x1b]8;" not in drawn  # no hyperlink made of the line's markup


def test_logs_status_and_verify_escape_what_parts_wrote(monkeypatch):
    import launcher.commands.logs
    import launcher.commands.status
    import launcher.commands.verify
    from launcher.commands.verify import VerifyResult
    from launcher.matrix import Row
    monkeypatch.setattr("launcher.cli._gateway", lambda: None)
    monkeypatch.setattr(launcher.commands.logs, "logs", lambda *a, **k: iter([HOSTILE, "ready"]))
    sandboxes = [{"name": "demo", "url": "http://127.0.0.1:8080/", "healthy": False, "policy": "p.yaml",
                  "token": "t", "problems": [f"the front-end did not become ready: {HOSTILE}"],
                  "signed_by": {"principal": HOSTILE, "key": HOSTILE}, "attempts": 0,
                  "parts": [{"part": "frontend", "state": "running", "health": None, "restarts": 0}]}]
    monkeypatch.setattr(launcher.commands.status, "status", lambda *a, **k: sandboxes)
    verified = VerifyResult("demo", [Row("external DNS", "resolve", "PASS", f"the sink logged {HOSTILE}")],
                            drift=[f"recreate container x: {HOSTILE}"])
    monkeypatch.setattr(launcher.commands.verify, "verify", lambda *a, **k: verified)
    for command in (["logs", "frontend"], ["status"], ["status", "--json"], ["verify"], ["verify", "--json"]):
        result = runner.invoke(app, command)
        assert "Traceback" not in result.output, command
        assert shown_escaped(result.stdout), (command, result.stdout)
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["sandboxes"] == sandboxes


def test_a_part_that_never_became_ready_has_its_log_tail_escaped(monkeypatch):
    import launcher.commands.up
    from launcher.errors import NotReady

    def never_ready(gateway, policy, **options):
        raise NotReady("front-end", "timed out", [HOSTILE, "listening"])

    monkeypatch.setattr("launcher.cli._gateway", lambda: None)
    monkeypatch.setattr(launcher.commands.up, "up", never_ready)
    result = runner.invoke(app, ["up", "policy.yaml"])
    assert result.exit_code == 1 and shown_escaped(result.stderr), result.stderr
    assert "last lines of its log:\n  \\x1b]52" in result.stderr and "\n  listening" in result.stderr


def test_a_policys_own_text_in_its_problems_is_escaped(tmp_path):
    """A policy is someone else's file too: its keys come back in the problems."""
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nname: demo\n\u202eprivileged\u2066: true\n")
    result = runner.invoke(app, ["validate", "--no-port-check", str(policy)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "\\u202eprivileged\\u2066" in result.stderr
    assert not [c for c in result.stderr if c in RAW]


def test_a_policy_nested_a_thousand_levels_deep_is_a_message_not_a_traceback(monkeypatch):
    monkeypatch.chdir(FIXTURES / "bad")
    result = runner.invoke(app, ["validate", "--no-port-check", "nested-too-deep.yaml"])
    assert result.exit_code == 2
    assert result.stderr == ("nested-too-deep.yaml:10:41 is nested more than 32 levels deep; "
                             "a policy is a few levels deep\n")
    assert not isinstance(result.exception, RecursionError)


class StandInEngine:
    """In place of the Docker engine: the sandboxes it holds, and the logs asked for."""

    def __init__(self, *names: str, ports: dict[str, int] | None = None):
        self.names = names
        self.ports = ports or {}  # the host port each sandbox's ingress publishes
        self.logs_asked: list[str] = []
        self.state = self.containers = self  # the gateway's doors the commands use, in one stand-in

    def sandboxes(self) -> dict:
        return {name: {"policy": f"{name}.yaml", "containers": {}} for name in self.names}

    def container_state(self, container: str) -> dict | None:
        name = container.removeprefix("sandbox-").removesuffix("-ingress")
        if name not in self.names or not container.endswith("-ingress"):
            return None
        ports = [f"127.0.0.1:{self.ports[name]}"] if name in self.ports else []
        return {"name": container, "state": "running", "ports": ports, "image": "sandbox-ingress:1"}

    def observe(self, name: str) -> Observed:
        ingress = self.container_state(f"sandbox-{name}-ingress")
        return Observed(containers={ingress["name"]: ObservedContainer("", "running", ports=tuple(ingress["ports"]))}
                        if ingress else {})

    def engine(self) -> dict:
        return {"version": "27.1.0", "api_version": "1.46", "runtimes": ["runc"], "cdi_spec_dirs": []}

    def image_present(self, tag: str) -> bool:
        return True

    def volume_sizes(self) -> tuple[bool, str]:
        return True, ""

    def logs(self, container: str, tail: int = 100, follow: bool = False):
        self.logs_asked.append(container)
        return iter([f"a line of {container}"])


def logs_of(monkeypatch, engine: StandInEngine, *args: str):
    monkeypatch.setattr("launcher.cli._gateway", lambda: engine)
    result = runner.invoke(app, ["logs", *args])
    assert "Traceback" not in result.output
    return result


def test_logs_names_the_sandbox_first_as_every_command_does(monkeypatch):
    engine = StandInEngine("ux-myui", "other", "quickstart")
    result = logs_of(monkeypatch, engine, "ux-myui", "dns")
    assert result.exit_code == 0, result.output
    assert engine.logs_asked == ["sandbox-ux-myui-dns"]
    assert result.stdout == "a line of sandbox-ux-myui-dns\n"


def test_logs_keeps_the_older_form_with_the_part_first(monkeypatch):
    engine = StandInEngine("ux-myui", "other")
    assert logs_of(monkeypatch, engine, "dns", "-s", "ux-myui").exit_code == 0
    assert logs_of(monkeypatch, engine, "-s", "other", "frontend").exit_code == 0
    assert logs_of(monkeypatch, engine, "ux-myui", "dns", "-s", "ux-myui").exit_code == 0
    assert engine.logs_asked == ["sandbox-ux-myui-dns", "sandbox-other-frontend", "sandbox-ux-myui-dns"]


def test_a_lone_part_name_is_the_part_of_the_only_sandbox(monkeypatch):
    engine = StandInEngine("quickstart")
    assert logs_of(monkeypatch, engine, "ingress").exit_code == 0
    assert engine.logs_asked == ["sandbox-quickstart-ingress"]


def test_logs_without_a_part_or_with_two_sandboxes_says_what_to_type(monkeypatch):
    engine = StandInEngine("ux-myui", "other")
    alone = logs_of(monkeypatch, engine, "ux-myui")
    assert alone.exit_code == 1, alone.output
    assert "name a part of sandbox ux-myui: `sandbox logs ux-myui dns`" in alone.stderr
    twice = logs_of(monkeypatch, engine, "ux-myui", "dns", "-s", "other")
    assert twice.exit_code != 0 and "`sandbox logs ux-myui dns`" in twice.stderr
    assert engine.logs_asked == []


def test_several_sandboxes_and_none_named_shows_the_command_that_names_one(monkeypatch):
    engine = StandInEngine("b-ui", "a-ui")
    result = logs_of(monkeypatch, engine, "dns")
    assert result.exit_code != 0
    assert "several sandboxes exist (a-ui, b-ui); name one: `sandbox logs a-ui dns`" in result.stderr
    monkeypatch.setattr("launcher.cli._gateway", lambda: engine)
    for command in ("down", "open", "verify", "audit"):
        said = runner.invoke(app, [command])
        assert f"name one: `sandbox {command} a-ui`" in said.stderr, (command, said.output)


def test_a_build_refused_its_mirror_prints_the_setting_with_the_mirrors_real_address():
    from launcher.engine.builder import _egress_hint
    from launcher.errors import BuildFailure
    failure = BuildFailure("sandbox-ui:1", "apt-get update failed", ["E: 403 Forbidden"])
    contacts = [{"verdict": "refused", "host": "mirror.lan", "port": 80, "addresses": ["10.1.2.3"],
                 "reason": "10.1.2.3 is a private address (the LAN, the host's bridges)"},
                {"verdict": "refused", "host": "10.9.8.7", "port": 80, "addresses": ["10.9.8.7"],
                 "reason": "10.9.8.7 is a private address (the LAN, the host's bridges)"},
                {"verdict": "refused", "host": "mirror.lan", "port": 443, "addresses": ["10.1.2.3"],
                 "reason": "10.1.2.3 is a private address (the LAN, the host's bridges)"}]
    hint = _egress_hint(failure, contacts, "http://10.213.0.2:3128")
    assert "SANDBOX_BUILD_ALLOW_NETWORKS=10.1.2.3/32,10.9.8.7/32 (" in hint
    assert "ADDRESS" not in hint


@pytest.fixture
def busy_port():
    """A port on 127.0.0.1 that something listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_doctor_names_the_sandbox_that_holds_a_port(monkeypatch, busy_port):
    monkeypatch.setattr("launcher.cli._gateway", lambda: StandInEngine("other", "quickstart",
                                                                       ports={"quickstart": busy_port}))
    monkeypatch.setattr("launcher.commands.doctor.route_localnet", lambda: {"all": "0"})
    result = runner.invoke(app, ["doctor", "--port", str(busy_port)])
    assert f"port {busy_port} is used by sandbox quickstart (`sandbox down quickstart` frees it)" in result.stdout


def test_up_on_a_port_another_sandbox_holds_names_it_and_how_to_free_it(monkeypatch, tmp_path, busy_port):
    policy = tmp_path / "mine.yaml"
    policy.write_text((FIXTURES / "good" / "minimal.yaml").read_text().replace("18080", str(busy_port)).replace(
        "../models/", f"{FIXTURES / 'models'}/"))
    monkeypatch.setattr("launcher.cli._gateway", lambda: StandInEngine("quickstart", ports={"quickstart": busy_port}))
    result = runner.invoke(app, ["up", str(policy)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (f"ingress.port: port {busy_port} on 127.0.0.1 is used by sandbox quickstart: `sandbox down quickstart` "
            "frees it, or pick another port here") in result.stderr


def test_down_help_says_volumes_deletes_the_audit_records_too():
    shown = " ".join(runner.invoke(app, ["down", "--help"]).stdout.replace("│", " ").split())
    assert "Also delete the front-end's data (chat history), the audit records and the access token." in shown


def test_audit_answers_what_was_tried_while_running_before_what_the_builds_contacted(monkeypatch):
    import launcher.commands.audit
    recorded = {"name": "demo", "builds": [{"image": "sandbox-ui:1", "parts": ["frontend"], "contacts": [
                    {"verdict": "allowed", "host": "deb.example", "port": 80, "bytes_sent": 1, "bytes_received": 2}]}],
                "names": [{"name": "evil.example", "parts": ["frontend"], "count": 2, "answer": None}],
                "lookups": [], "destinations": [], "connections": [], "ingress_refused": [],
                "ingress_refused_from_parts": []}
    monkeypatch.setattr("launcher.cli._gateway", lambda: None)
    monkeypatch.setattr(launcher.commands.audit, "audit", lambda gateway, target, since=None: recorded)
    shown = runner.invoke(app, ["audit"]).stdout
    assert shown.index("evil.example") < shown.index("deb.example")
    assert json.loads(runner.invoke(app, ["audit", "--json"]).stdout) == recorded
    recorded["names"] = []
    shown = runner.invoke(app, ["audit"]).stdout
    assert shown.index("nothing tried to get out while running") < shown.index("deb.example")


def test_render_writes_for_its_owner_only_and_says_how_to_start_it(tmp_path, monkeypatch):
    monkeypatch.chdir(FIXTURES / "good")
    output = tmp_path / "compose.yaml"
    result = runner.invoke(app, ["render", "minimal.yaml", "--target", "compose", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"wrote {output}: `docker-compose -p sandbox-minimal -f {output} up -d`, then open "
                                    "http://127.0.0.1:18080/?sandbox_token=")
    assert output.stat().st_mode & 0o777 == 0o600 and "services:" in output.read_text()
    wrong = runner.invoke(app, ["render", "minimal.yaml", "--target", "nomad"])
    assert wrong.exit_code == 1 and "--target must be one of kubernetes, compose, not 'nomad'" in wrong.stderr


def test_audit_since_takes_a_duration_or_a_time_and_says_which_otherwise(monkeypatch):
    import datetime
    import time

    from launcher.commands.audit import since_time
    assert abs(since_time("2h") - (time.time() - 7200)) < 5
    assert since_time("2026-11-29T17:00") == datetime.datetime(2026, 11, 29, 17, 0).timestamp()
    monkeypatch.setattr("launcher.cli._gateway", lambda: StandInEngine("demo"))
    result = runner.invoke(app, ["audit", "--since", "yesterday"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr == "error: --since 'yesterday': give a duration (10m, 2h, 1d) or a time (2026-11-29T17:00)\n"
