"""A command reads its policy once and looks at the engine once: counted on
a stand-in engine for a no-change `up` of a quick-start sandbox."""
import builtins
import socket
from pathlib import Path

import docker.errors
import pytest
from typer.testing import CliRunner

import launcher.commands.prepare
import launcher.commands.up
import launcher.commands.verify
from launcher.commands.prepare import prepare, replan
from launcher.commands.audit import parts_by_address
from launcher.commands.up import part_of_address_seen, up, wait_until_ready
from launcher.commands.validate import validate
from launcher.commands.verify import verify
from launcher.errors import NotFound
from launcher.engine import DockerGateway
from launcher.cli import app
from launcher.plan import KEEP
from launcher.policy import loader
from tests.unit.fake_engine import FakeApi, FakeClient
from tests.unit.helpers import quickstart_policy

# What a no-change `up` costs now; a change that makes it cost more fails here.
POLICY_READS = 1
POLICY_PARSES = 1
ENGINE_REQUESTS = 24


@pytest.fixture
def quickstart(tmp_path, monkeypatch):
    """A quick-start sandbox that is up as its policy says, on a stand-in
    engine; its ingress port is held (as a running ingress holds it)."""
    api = FakeApi()
    policy, port = quickstart_policy(tmp_path, monkeypatch, api)
    gateway = DockerGateway(FakeClient(api))
    first = up(gateway, policy, timeout=5)
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        yield api, policy, first


def _count_reads(monkeypatch, policy: Path) -> tuple[list, list]:
    """The opens of `policy` and the YAML parses made from now on."""
    reads, parses = [], []
    real_open, real_parse = builtins.open, loader.parse

    def counting_open(file, *args, **kwargs):
        if Path(str(file)) == policy:
            reads.append(file)
        return real_open(file, *args, **kwargs)

    def counting_parse(text, name):
        parses.append(name)
        return real_parse(text, name)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(loader, "parse", counting_parse)
    return reads, parses


def test_a_no_change_up_reads_its_policy_once_and_asks_the_engine_no_more_than_it_must(quickstart, monkeypatch):
    api, policy, _ = quickstart
    reads, parses = _count_reads(monkeypatch, policy)
    api.calls.clear()
    result = up(DockerGateway(FakeClient(api)), policy, timeout=5)  # each command has a gateway of its own
    assert all(action.verb == KEEP for action in result.prepared.plan.actions), result.prepared.plan
    requests = api.requests()
    print(f"policy reads {len(reads)}, parses {len(parses)}, engine requests {len(requests)}: {requests}")
    assert len(reads) <= POLICY_READS, reads
    assert len(parses) <= POLICY_PARSES, parses
    assert len(requests) <= ENGINE_REQUESTS, requests


def test_verify_after_up_in_the_same_command_does_not_prepare_the_policy_again(quickstart, monkeypatch):
    api, _, first = quickstart

    def prepare_again(*args, **kwargs):
        raise AssertionError("the policy was read, checked and planned again")

    monkeypatch.setattr(launcher.commands.verify, "prepare", prepare_again)
    assert replan(DockerGateway(FakeClient(api)), first.prepared).plan.changes == ()  # no drift right after up
    api.containers_held["sandbox-minimal-dns"]["State"]["Status"] = "exited"  # verify stops at its first look
    with pytest.raises(NotFound, match="the dns of sandbox minimal is not running"):
        verify(DockerGateway(FakeClient(api)), "minimal", prepared=first.prepared)


def test_up_verify_hands_what_up_prepared_to_verify(monkeypatch):
    handed = []
    result = launcher.commands.up.UpResult("demo", "http://127.0.0.1:1/", prepared=object())
    monkeypatch.setattr("launcher.cli._gateway", lambda: None)
    monkeypatch.setattr(launcher.commands.up, "up", lambda *a, **k: result)
    monkeypatch.setattr(launcher.commands.verify, "verify", lambda *a, **k: handed.append(k.get("prepared")))
    CliRunner().invoke(app, ["up", "policy.yaml", "--verify", "--json"])
    assert handed == [result.prepared]


def test_the_parts_addresses_up_names_lookups_by_are_those_the_engine_gives(quickstart):
    api, _, first = quickstart
    gateway = DockerGateway(FakeClient(api))
    seen = wait_until_ready(gateway, first.prepared.spec, timeout=5, say=lambda _m: None)
    by_address = part_of_address_seen(first.prepared.spec, seen)
    assert sorted(by_address.values()) == ["backend", "dns", "frontend", "ingress"]
    assert by_address == parts_by_address(gateway, "minimal")


class SubnetTakenMeanwhile(FakeApi):
    """An engine on which another network takes the sandbox's subnet while
    its images are built, once."""

    def create_network(self, name, **kwargs):
        config = (kwargs.get("ipam") or {}).get("Config") or []
        if config and "other" not in self.networks_held:
            subnet = config[0]["Subnet"]
            self.networks_held["other"] = {"Name": "other", "Id": "other", "Labels": {}, "Containers": {},
                                           "IPAM": {"Config": [{"Subnet": subnet}]}}
            raise docker.errors.APIError(f"Pool overlaps with other one on this address space ({subnet})")
        return super().create_network(name, **kwargs)


def test_a_subnet_taken_meanwhile_is_chosen_again_without_checking_the_policy_again(tmp_path, monkeypatch):
    api = SubnetTakenMeanwhile()
    policy, _ = quickstart_policy(tmp_path, monkeypatch, api)
    loads, said = [], []
    real_load = launcher.commands.prepare.load_policy
    monkeypatch.setattr(launcher.commands.prepare, "load_policy",
                        lambda *a, **k: loads.append(a) or real_load(*a, **k))
    result = up(DockerGateway(FakeClient(api)), policy, timeout=5, say=said.append)
    taken = api.networks_held["other"]["IPAM"]["Config"][0]["Subnet"]
    internal = api.networks_held["sandbox-minimal-internal"]["IPAM"]["Config"][0]["Subnet"]
    assert internal != taken and internal in [n.subnet for n in result.prepared.spec.networks]
    assert any(f"its subnet {taken} was taken meanwhile" in line for line in said), said
    assert len(loads) == 1, "the policy (and its models' hashes) was checked again"
    assert {c["State"]["Status"] for c in api.containers_held.values()} == {"running"}


@pytest.mark.parametrize("strict", [False, True])
def test_validate_reads_its_policy_once(tmp_path, monkeypatch, strict):
    policy, _ = quickstart_policy(tmp_path, monkeypatch, FakeApi())
    reads, parses = _count_reads(monkeypatch, policy)
    [checked] = validate([policy], connect=lambda: None, check_port=False, strict=strict)
    assert [p.message for p in checked.problems] == (
        [f"--strict needs a lock: {policy}.lock: no such lock; `sandbox lock` writes it"] if strict else [])
    assert (len(reads), len(parses)) == (1, 1)


def test_prepare_looks_at_each_part_of_the_sandbox_once(quickstart):
    api, policy, _ = quickstart
    api.calls.clear()
    prepared = prepare(DockerGateway(FakeClient(api)), policy)
    inspected = [args[0] for name, args, _ in api.calls if name == "inspect_container"]
    assert sorted(inspected) == sorted(c.name for c in prepared.spec.containers), inspected
    assert [name for name, _, _ in api.calls].count("containers") == 1
