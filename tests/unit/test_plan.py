"""Whole plans for a spec and an observed state, without Docker."""
from dataclasses import replace

from launcher.plan import Observed, ObservedContainer, make_plan
from launcher.spec import spec_hash
from tests.unit.helpers import make_policy, make_spec


def observed_from(spec, state="running", **overrides) -> Observed:
    """What the engine would report after `spec` was applied."""
    base = dict(
        networks={n.name: spec_hash(n) for n in spec.networks},
        volumes=frozenset(v.name for v in spec.volumes),
        containers={c.name: ObservedContainer(spec_hash(c), state) for c in spec.containers},
        images=frozenset(i.tag for i in spec.images.all()))
    base.update(overrides)
    return Observed(**base)


def rows(plan):
    return [(a.verb, a.kind, a.name) for a in plan.actions]


def changed_rows(plan):
    return [(a.verb, a.kind, a.name) for a in plan.changes]


def test_nothing_there_creates_everything_in_order():
    spec = make_spec()
    assert rows(make_plan(spec, Observed())) == [
        ("build", "image", "sandbox-dns-sink:ddd"),
        ("build", "image", "sandbox-llama-cpp:aaa"),
        ("build", "image", "sandbox-chat:bbb"),
        ("build", "image", "sandbox-ingress:ccc"),
        ("create", "network", "sandbox-demo-internal"),
        ("create", "network", "sandbox-demo-ingress"),
        ("create", "volume", "sandbox-demo-audit"),
        ("create", "volume", "sandbox-demo-data"),
        ("create", "container", "sandbox-demo-dns"),
        ("create", "container", "sandbox-demo-backend"),
        ("create", "container", "sandbox-demo-frontend"),
        ("create", "container", "sandbox-demo-ingress"),
    ]


def test_applied_spec_plans_no_change():
    spec = make_spec()
    plan = make_plan(spec, observed_from(spec))
    assert plan.changes == ()
    assert {a.verb for a in plan.actions} == {"keep"}


def test_a_new_key_recreates_every_part_that_shares_it():
    """Tried as a new user would: with the backend gone and the front-end kept,
    up gave the backend a new key and left the front-end with the old one.
    The ingress asks the backend's API with it too (/v1/)."""
    spec = make_spec(api_key="old")
    assert [(a.verb, a.name) for a in make_plan(make_spec(api_key="new"), observed_from(spec)).changes] == [
        ("recreate", "sandbox-demo-backend"), ("recreate", "sandbox-demo-frontend"),
        ("recreate", "sandbox-demo-ingress")]
    assert make_plan(make_spec(api_key="old"), observed_from(spec)).changes == ()


def test_changed_backend_recreates_only_the_backend():
    before = make_spec()
    after = make_spec(make_policy(backend=replace(make_policy().backend, memory="3g")))
    assert [(a.verb, a.name, a.reason) for a in make_plan(after, observed_from(before)).changes] == [
        ("recreate", "sandbox-demo-backend", "its spec changed")]


def test_changed_recipe_builds_and_recreates_the_frontend_only():
    before = make_spec()
    images = replace(before.images, frontend=replace(before.images.frontend, tag="sandbox-chat:ddd"))
    after = make_spec(images=images)
    assert changed_rows(make_plan(after, observed_from(before))) == [
        ("build", "image", "sandbox-chat:ddd"), ("recreate", "container", "sandbox-demo-frontend")]


def test_changed_network_recreates_the_containers_on_it():
    spec = make_spec()
    observed = observed_from(spec)
    observed = replace(observed, networks={**observed.networks, "sandbox-demo-internal": "stale"})
    assert changed_rows(make_plan(spec, observed)) == [
        ("recreate", "network", "sandbox-demo-internal"),
        ("recreate", "container", "sandbox-demo-dns"),
        ("recreate", "container", "sandbox-demo-backend"),
        ("recreate", "container", "sandbox-demo-frontend"),
        ("recreate", "container", "sandbox-demo-ingress"),
    ]


def test_stopped_container_is_recreated_with_its_state_as_reason():
    spec = make_spec()
    observed = observed_from(spec)
    containers = dict(observed.containers)
    containers["sandbox-demo-frontend"] = replace(containers["sandbox-demo-frontend"], state="exited")
    changes = make_plan(spec, replace(observed, containers=containers)).changes
    assert [(a.verb, a.name, a.reason) for a in changes] == [("recreate", "sandbox-demo-frontend", "it is exited")]


def test_leftovers_are_removed_but_data_is_kept():
    spec = make_spec(make_policy(frontend=replace(make_policy().frontend, data=None)))
    observed = observed_from(make_spec())
    observed = replace(observed, containers={**observed.containers,
                                             "sandbox-demo-old": ObservedContainer("x", "running")})
    changes = changed_rows(make_plan(spec, observed))
    assert ("remove", "container", "sandbox-demo-old") in changes
    assert ("recreate", "container", "sandbox-demo-frontend") in changes
    volume = [a for a in make_plan(spec, observed).actions if a.kind == "volume"]
    assert [(a.verb, a.name) for a in volume] == [("keep", "sandbox-demo-audit"), ("keep", "sandbox-demo-data")]


def test_users_own_image_is_never_built():
    spec = make_spec()
    images = replace(spec.images, frontend=replace(spec.images.frontend, tag="my-ui:1", context=None))
    spec = make_spec(images=images)
    assert ("keep", "image", "my-ui:1") in rows(make_plan(spec, Observed()))


def test_a_kept_volume_says_what_it_holds():
    spec = make_spec()
    reasons = {a.name: a.reason for a in make_plan(spec, observed_from(spec)).actions if a.kind == "volume"}
    assert reasons == {"sandbox-demo-audit": "holds the audit records: what the parts tried to reach",
                       "sandbox-demo-data": "holds the front-end's data"}
