"""Every place a part can write has a size: the volumes (where the engine can
bound them), the tmpfs mounts, /dev/shm and the logs. Where the engine cannot
bound a volume, a policy must accept an unbounded data volume by name."""
from dataclasses import replace

import docker.errors
import pytest

from launcher.engine import DockerGateway
from launcher.plan import CREATE, Action, Plan
from launcher.policy import check_policy_file
from launcher.spec import AUDIT_VOLUME_SIZE, memory_bytes
from tests.conftest import FIXTURES
from tests.unit.helpers import make_policy, make_spec

CUSTOM = replace(make_policy().frontend, recipe=None, image="my-ui:1", data=None, user=1000)


@pytest.mark.parametrize("enforced", [True, False])
@pytest.mark.parametrize("frontend", ["recipe", "custom"])
def test_every_writable_place_of_every_part_has_a_size(enforced, frontend):
    policy = make_policy() if frontend == "recipe" else make_policy(frontend=CUSTOM)
    spec = make_spec(policy, volume_sizes_enforced=enforced)
    volumes = {v.name: v for v in spec.volumes}
    for c in spec.containers:
        assert c.read_only, c.name  # nothing written to the image's layers
        for target, options in c.tmpfs:
            sizes = [o for o in options.split(",") if o.startswith("size=")]
            assert sizes and memory_bytes(sizes[0][5:]) <= 2**30, (c.name, target)
        assert memory_bytes(c.shm_size) <= memory_bytes("64m"), c.name
        assert memory_bytes(c.log_max_size) * c.log_max_files <= 30 * 2**20, c.name
        assert ("core", 0, 0) in c.ulimits, c.name  # no core dump a host's handler could keep
        for m in c.mounts:
            if not m.read_only:
                assert m.kind == "volume" and m.source in volumes, (c.name, m.target)
    for v in spec.volumes:
        assert (v.size is not None) == enforced, v.name


def test_where_the_engine_bounds_volumes_the_data_volume_gets_the_policys_size_and_the_audit_its_own():
    spec = make_spec(make_policy(frontend=replace(make_policy().frontend, data_size="2g")),
                     volume_sizes_enforced=True)
    assert {v.part: v.size for v in spec.volumes} == {"audit": AUDIT_VOLUME_SIZE, "data": "2g"}
    assert make_spec(make_policy(), volume_sizes_enforced=True).volumes[1].size == "4g"  # the default


class VolumeApi:
    """The part of Docker's API a volume's creation uses, as the local driver
    answers it: a size only where it has quota support."""

    def __init__(self, quota: bool):
        self.quota = quota
        self.created: dict[str, dict] = {}
        self.removed: list[str] = []

    def create_volume(self, name, driver=None, driver_opts=None, labels=None):
        if (driver_opts or {}).get("size") and not self.quota:
            raise docker.errors.APIError("500", explanation=f"create {name}: quota size requested but no quota "
                                                            "support")
        self.created[name] = {"driver": driver, "driver_opts": driver_opts, "labels": labels}

    def remove_volume(self, name, force=False):
        self.removed.append(name)


class Client:
    def __init__(self, api):
        self.api = api


def test_volumes_are_created_with_the_size_option_where_the_engine_can_enforce_it():
    api = VolumeApi(quota=True)
    gateway = DockerGateway(Client(api))
    assert gateway.state.volume_sizes() == (True, "")
    assert api.removed and set(api.removed) == {n for n in api.created if n.startswith("sandbox-size-probe-")}
    spec = make_spec(volume_sizes_enforced=True)
    plan = Plan(tuple(Action(CREATE, "volume", v.name, "missing") for v in spec.volumes))
    gateway.applier.apply(spec, plan)
    assert api.created["sandbox-demo-data"]["driver_opts"] == {"size": "4g"}
    assert api.created["sandbox-demo-audit"]["driver_opts"] == {"size": AUDIT_VOLUME_SIZE}
    assert api.created["sandbox-demo-data"]["driver"] == "local"


def test_an_engine_without_quota_support_is_found_out_and_gets_no_size():
    api = VolumeApi(quota=False)
    enforced, why = DockerGateway(Client(api)).state.volume_sizes()
    assert not enforced and "no quota support" in why and "sandbox-size-probe" not in why
    spec = make_spec(volume_sizes_enforced=False)
    plan = Plan(tuple(Action(CREATE, "volume", v.name, "missing") for v in spec.volumes))
    DockerGateway(Client(api)).applier.apply(spec, plan)
    assert api.created["sandbox-demo-data"]["driver_opts"] is None


GOOD = FIXTURES / "good"


def refusals(text, tmp_path, enforced):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    _, problems = check_policy_file(path, check_port=False, check_model_files=False,
                                    volume_sizes_enforced=enforced)
    return [(p.line, p.field, p.message) for p in problems]


MINIMAL = (GOOD / "minimal.yaml").read_text()


def test_an_unbounded_data_volume_is_refused_at_its_line_with_the_way_to_accept_it(tmp_path):
    [(line, field, message)] = refusals(MINIMAL, tmp_path, enforced=False)
    assert MINIMAL.splitlines()[line - 1].strip() == "recipe: chat"  # the recipe gives it its volume
    assert field == "frontend.data_size"
    assert "cannot be bounded (4g)" in message and "accept_unbounded_volumes: [data]" in message
    sized = MINIMAL.replace("recipe: chat", "recipe: chat\n  data: /data\n  data_size: 2g")
    [(line, _, message)] = refusals(sized, tmp_path, enforced=False)
    assert sized.splitlines()[line - 1].strip() == "data_size: 2g" and "(2g)" in message


def test_accepted_by_name_or_bounded_or_without_data_it_is_not_refused(tmp_path):
    assert refusals(MINIMAL + "accept_unbounded_volumes: [data]\n", tmp_path, enforced=False) == []
    assert refusals(MINIMAL, tmp_path, enforced=True) == []
    assert refusals(MINIMAL, tmp_path, enforced=None) == []  # no engine in question: `validate`
    custom = MINIMAL.replace("recipe: chat", "image: my-ui:1")
    assert refusals(custom, tmp_path, enforced=False) == []


def test_the_policy_carries_the_size_and_the_acceptance(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(MINIMAL.replace("recipe: chat", "recipe: chat\n  data_size: 512m")
                    + "accept_unbounded_volumes: [data]\n")
    policy, problems = check_policy_file(path, check_port=False, check_model_files=False)
    assert problems == [] and policy.frontend.data_size == "512m"
    assert policy.accept_unbounded_volumes == ("data",)


class ImageApi:
    def __init__(self, volumes):
        self.volumes = volumes

    def inspect_image(self, tag):
        return {"Config": {"Volumes": self.volumes}}


def test_each_volume_an_image_declares_is_covered_by_a_bounded_tmpfs_of_the_parts_user():
    spec = make_spec()
    frontend = spec.container("frontend")  # mounts /data, has /tmp
    gateway = DockerGateway(Client(ImageApi({"/scratch": {}, "/data": {}, "/tmp/": {}})))
    tmpfs = gateway.applier._tmpfs_with_image_volumes_covered(frontend)
    assert set(tmpfs) == {"/tmp", "/scratch"}  # the data volume and /tmp were mounted already
    options = tmpfs["/scratch"].split(",")
    assert "size=64m" in options and "uid=65534" in options and "gid=65534" in options and "noexec" in options
    applier = DockerGateway(Client(ImageApi(None))).applier
    assert applier._tmpfs_with_image_volumes_covered(frontend) == dict(frontend.tmpfs)


class KeptVolumes:
    def __init__(self, limits):
        self.limits = limits
        self.state = self  # the one door of the gateway kept_volume_sizes uses

    def volume_usage(self, name, count_bytes=True):
        assert not count_bytes  # `up` does not wait for the engine to count every volume's bytes
        return [{"name": n, "part": "", "used_bytes": None, "limit_bytes": b} for n, b in self.limits.items()]


def test_up_says_when_a_kept_volume_has_another_size_than_the_policys():
    from launcher.commands.up import kept_volume_sizes
    spec = make_spec(volume_sizes_enforced=True)
    same = {"sandbox-demo-data": 4 * 2**30, "sandbox-demo-audit": memory_bytes(AUDIT_VOLUME_SIZE)}
    assert kept_volume_sizes(KeptVolumes(same), spec) == []
    [said] = kept_volume_sizes(KeptVolumes({**same, "sandbox-demo-data": None}), spec)
    assert "sandbox-demo-data keeps no size limit, not the 4g" in said and "down --volumes demo" in said
    assert kept_volume_sizes(KeptVolumes({}), spec) == []  # none made yet: made with the size
    assert kept_volume_sizes(KeptVolumes({"sandbox-demo-data": None}), make_spec()) == []  # accepted unbounded
