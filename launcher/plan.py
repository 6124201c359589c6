"""SandboxSpec x observed Docker state -> Plan. Pure: the planner never talks
to Docker, so whole plans are tested without an engine.

Docker labels are the only state: every resource carries the hash of the spec
it was made from, and a different hash means recreate."""
from __future__ import annotations

from dataclasses import dataclass, field

from launcher.spec import PARTS, SandboxSpec, spec_hash

BUILD, CREATE, RECREATE, KEEP, REMOVE = "build", "create", "recreate", "keep", "remove"

# What each kind of volume (its VolumeSpec.part) holds, for the plan's reasons.
VOLUME_HOLDS = {"data": "holds the front-end's data", "audit": "holds the audit records: what the parts tried to reach"}


@dataclass(frozen=True)
class Action:
    verb: str  # build | create | recreate | keep | remove
    kind: str  # image | network | volume | container
    name: str
    reason: str

    def to_dict(self) -> dict:
        return {"action": self.verb, "kind": self.kind, "name": self.name, "reason": self.reason}


@dataclass(frozen=True)
class ObservedContainer:
    spec_hash: str
    state: str  # Docker's State.Status: running, exited, restarting, created...
    env: dict = field(default_factory=dict, compare=False)  # the environment it was made with
    ports: tuple = ()  # the host ports it publishes, "IP:PORT"


@dataclass(frozen=True)
class Observed:
    """What the engine has for one sandbox, found by its label."""

    networks: dict = field(default_factory=dict)  # name -> spec hash
    volumes: frozenset = frozenset()  # names
    containers: dict = field(default_factory=dict)  # name -> ObservedContainer
    images: frozenset = frozenset()  # tags present on the engine
    # Of those, the tags built here whose image the launcher did not build
    # here (a bundle loaded it, or it predates the launcher's records): built
    # again from their inputs rather than run.
    build_again: frozenset = frozenset()

    def env(self, container: str, variable: str) -> str | None:
        """A variable a container of the sandbox was made with, if it is there."""
        found = self.containers.get(container)
        return found.env.get(variable) if found else None


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.verb != KEEP)

    def verb_of(self, kind: str, name: str) -> str | None:
        return next((a.verb for a in self.actions if a.kind == kind and a.name == name), None)


def make_plan(spec: SandboxSpec, observed: Observed) -> Plan:
    actions: list[Action] = []

    for image in spec.images.all():
        if image.built_here and image.tag in observed.build_again:
            actions.append(Action(BUILD, "image", image.tag, "present, but not built here from its inputs: "
                                                             "built again"))
        elif image.tag in observed.images:
            actions.append(Action(KEEP, "image", image.tag, "present"))
        elif image.built_here:
            actions.append(Action(BUILD, "image", image.tag, "not built yet"))
        else:
            # The user's own image: the gateway reports it missing, with advice.
            actions.append(Action(KEEP, "image", image.tag, "the front-end's own image, must be present"))

    changed_networks: set[str] = set()
    for net in spec.networks:
        have = observed.networks.get(net.name)
        if have is None:
            actions.append(Action(CREATE, "network", net.name, "missing"))
            changed_networks.add(net.name)
        elif have != spec_hash(net):
            actions.append(Action(RECREATE, "network", net.name, "its settings changed"))
            changed_networks.add(net.name)
        else:
            actions.append(Action(KEEP, "network", net.name, "up to date"))

    for volume in spec.volumes:
        if volume.name in observed.volumes:
            actions.append(Action(KEEP, "volume", volume.name, VOLUME_HOLDS.get(volume.part, "kept")))
        else:
            actions.append(Action(CREATE, "volume", volume.name, "missing"))

    for container in sorted(spec.containers, key=lambda c: PARTS.index(c.part)):
        have = observed.containers.get(container.name)
        moved = [a.network for a in container.networks if a.network in changed_networks]
        if have is None:
            actions.append(Action(CREATE, "container", container.name, "missing"))
        elif have.spec_hash != spec_hash(container):
            actions.append(Action(RECREATE, "container", container.name, "its spec changed"))
        elif moved:
            actions.append(Action(RECREATE, "container", container.name, f"network {moved[0]} is new"))
        elif have.state != "running":
            actions.append(Action(RECREATE, "container", container.name, f"it is {have.state}"))
        else:
            actions.append(Action(KEEP, "container", container.name, "up to date and running"))

    wanted_containers = {c.name for c in spec.containers}
    for name in sorted(set(observed.containers) - wanted_containers):
        actions.append(Action(REMOVE, "container", name, "not in the policy any more"))
    wanted_networks = {n.name for n in spec.networks}
    for name in sorted(set(observed.networks) - wanted_networks):
        actions.append(Action(REMOVE, "network", name, "not in the policy any more"))
    for name in sorted(observed.volumes - {v.name for v in spec.volumes}):
        actions.append(Action(KEEP, "volume", name, "data is kept; `sandbox down --volumes` removes it"))
    return Plan(tuple(actions))
