"""doctor's findings for engines of several kinds (a stand-in gateway: the
checks are logic over what the engine reports)."""
from launcher.commands import doctor as d
from launcher.errors import DockerUnavailable


class Engine:
    def __init__(self, version="20.10.24", runtimes=("runc",), cdi=(), base_image=True):
        self.info = {"version": version, "api_version": "1.41", "runtimes": list(runtimes), "cdi_spec_dirs": list(cdi)}
        self.base_image = base_image

    def engine(self):
        return self.info

    def image_present(self, tag):
        return self.base_image


def results(checks):
    return {c.name: c.result for c in checks if not c.name.startswith("port")}


def test_a_ready_machine(monkeypatch):
    monkeypatch.setattr(d, "route_localnet", lambda: {"all": "0", "eth0": "0"})
    checks = d.doctor(lambda: Engine(runtimes=("runc", "runsc", "nvidia")), ports=())
    assert results(checks) == {"engine": "ok", "base image": "ok", "gpu": "ok", "gvisor": "ok",
                               "loopback ports": "ok"}


def test_what_is_missing_is_said_with_a_fix(monkeypatch):
    monkeypatch.setattr(d, "route_localnet", lambda: {"all": "0", "eth0": "1"})
    checks = d.doctor(lambda: Engine(version="19.03.1", base_image=False), ports=())
    assert results(checks) == {"engine": "fail", "base image": "fail", "gpu": "warn", "gvisor": "warn",
                               "loopback ports": "fail"}
    assert all(c.fix for c in checks if c.result != "ok")
    assert "make-base-image.sh" in next(c.fix for c in checks if c.name == "base image")


def test_no_engine_is_a_finding_not_a_crash():
    def connect():
        raise DockerUnavailable("connection refused")
    checks = d.doctor(connect, ports=())
    assert [(c.name, c.result) for c in checks] == [("engine", "fail")]
    assert "sandbox doctor" in checks[0].detail and checks[0].fix
