"""`sandbox render`: the sandbox a policy describes, written for another
engine (Kubernetes manifests or a compose file), and how to start it there."""
from __future__ import annotations

from pathlib import Path

from launcher.errors import SandboxError
from launcher.spec import SandboxSpec


def render_for(policy: Path, target: str, **options) -> tuple[str, SandboxSpec]:
    """The text for `target`, and the spec it was made from."""
    from launcher.render import TARGETS
    from launcher.render import render
    if target not in TARGETS:
        raise SandboxError(f"--target must be one of {', '.join(TARGETS)}, not {target!r}")
    return render(policy, target, **options)


def write_rendered(output: Path, text: str, spec: SandboxSpec, target: str) -> str:
    """Write `text` readable by its owner only (it holds the sandbox's
    secrets), and say how to start it and open its UI."""
    from launcher.private import write_private
    write_private(output, text)
    token = spec.container("ingress").env_value("SANDBOX_ACCESS_TOKEN")
    port = spec.url.rsplit(":", 1)[1].strip("/")
    if target == "kubernetes":
        return (f"wrote {output}: `kubectl apply -f {output}`, then `kubectl -n sandbox-{spec.name} "
                f"port-forward svc/ingress {port}:8080` and open {spec.url}?sandbox_token={token}")
    return (f"wrote {output}: `docker-compose -p sandbox-{spec.name} -f {output} up -d`, then open "
            f"{spec.url}?sandbox_token={token}")
