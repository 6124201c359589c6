"""`sandbox render`: the same SandboxSpec the Docker path applies, written out
for other engines: Kubernetes manifests and a compose file. Pure; no engine
is asked. Secrets are made fresh for the rendered sandbox."""
from __future__ import annotations

import secrets
from pathlib import Path

import yaml

from launcher import access
from launcher.images import images_for
from launcher.policy import Policy, load_policy
from launcher.render import compose, kubernetes
from launcher.spec import SandboxSpec, Secrets, build_spec, choose_subnet

TARGETS = ("kubernetes", "compose")


class _Dumper(yaml.SafeDumper):
    """No anchors and aliases: each object written out in full, as people read it."""

    def ignore_aliases(self, data) -> bool:
        return True


def spec_for(policy: Policy, gpus: int = 0) -> SandboxSpec:
    """The spec as `up` would make it on a machine with `gpus` GPUs (0: the
    CPU), with secrets of its own."""
    use = None
    if policy.backend.gpu != "none" and (gpus or isinstance(policy.backend.gpu, tuple)):
        use = policy.backend.gpu if isinstance(policy.backend.gpu, tuple) else "all"
    images = images_for(policy, use_gpu=use is not None, ca_bundle=None)
    made = Secrets(api_key=secrets.token_urlsafe(32), session_key=secrets.token_urlsafe(32),
                   access_token=access.new_token())
    return build_spec(policy, images, made, use, choose_subnet(policy.name, [], None))


def render(policy_file: str | Path, target: str, *, model_volume: str = "models", image_prefix: str = "",
           gpus: int = 0, data_size: str = "1Gi") -> tuple[str, SandboxSpec]:
    """The rendered text, and the spec it was rendered from."""
    # For a cluster the weights are the cluster's, checked there by an init
    # container; a compose file mounts this machine's, checked here.
    policy = load_policy(policy_file, check_port=False, check_model_files=target == "compose")
    spec = spec_for(policy, gpus)
    if target == "compose":
        return compose_text(spec), spec
    if policy.backend.gpu != "none" and isinstance(policy.backend.gpu, tuple):
        gpus = gpus or len(policy.backend.gpu)
    files = {f"/models/{m.alias}.gguf": m.path.name for m in policy.models}
    objects = kubernetes.render(spec, kubernetes.KubeOptions(model_volume=model_volume, image_prefix=image_prefix,
                                                             gpus=gpus, data_size=data_size), files)
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False), spec


def compose_text(spec: SandboxSpec) -> str:
    return yaml.dump(compose.render(spec), Dumper=_Dumper, sort_keys=False)
