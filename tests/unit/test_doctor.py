"""doctor's findings for engines of several kinds (a stand-in gateway: the
checks are logic over what the engine reports)."""
import pytest

from launcher.commands import doctor as d
from launcher.errors import DockerUnavailable


class Engine:
    def __init__(self, version="20.10.24", runtimes=("runc",), cdi=(), base_image=True, volume_sizes=True):
        self.info = {"version": version, "api_version": "1.41", "runtimes": list(runtimes), "cdi_spec_dirs": list(cdi)}
        self.base_image = base_image
        self.state = self  # the one door of the gateway doctor uses
        self.sizes = (True, "") if volume_sizes else (False, "create a test volume: quota size requested but no "
                                                             "quota support")

    def volume_sizes(self):
        return self.sizes

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
                               "volume sizes": "ok", "loopback ports": "ok"}


def test_what_is_missing_is_said_with_a_fix(monkeypatch):
    monkeypatch.setattr(d, "route_localnet", lambda: {"all": "0", "eth0": "1"})
    checks = d.doctor(lambda: Engine(version="19.03.1", base_image=False, volume_sizes=False), ports=())
    assert results(checks) == {"engine": "fail", "base image": "fail", "gpu": "warn", "gvisor": "warn",
                               "volume sizes": "warn", "loopback ports": "fail"}
    assert all(c.fix for c in checks if c.result != "ok")
    assert "make-base-image.sh" in next(c.fix for c in checks if c.name == "base image")


def test_volume_sizes_the_engine_cannot_enforce_are_said_with_the_way_to_accept(monkeypatch):
    monkeypatch.setattr(d, "route_localnet", lambda: {})
    [check] = [c for c in d.doctor(lambda: Engine(volume_sizes=False), ports=()) if c.name == "volume sizes"]
    assert "no quota support" in check.detail and "accept_unbounded_volumes: [data]" in check.detail
    assert "project quotas" in check.fix
    [bounded] = [c for c in d.doctor(lambda: Engine(), ports=()) if c.name == "volume sizes"]
    assert bounded.result == "ok" and "frontend.data_size" in bounded.detail


@pytest.mark.parametrize("values", [{}, {"all": "0", "eth0": None}])
def test_route_localnet_that_could_not_be_read_is_a_warning_never_ok(monkeypatch, values):
    monkeypatch.setattr(d, "route_localnet", lambda: values)
    [check] = [c for c in d.doctor(lambda: Engine(), ports=()) if c.name == "loopback ports"]
    assert check.result == "warn" and "could not be read" in check.detail and check.fix


def test_no_engine_is_a_finding_not_a_crash():
    def connect():
        raise DockerUnavailable("connection refused")
    checks = d.doctor(connect, ports=())
    assert [(c.name, c.result) for c in checks] == [("engine", "fail")]
    assert "sandbox doctor" in checks[0].detail and checks[0].fix
