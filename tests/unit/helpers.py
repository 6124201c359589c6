"""Policies and specs for unit tests, made without Docker or model files."""
import socket
from dataclasses import replace
from pathlib import Path

import yaml

import launcher.access
from launcher import build_records
from launcher.images import ImageBuild, PartImages, images_for
from launcher.policy import load_policy
from launcher.policy.model import Backend, Frontend, Model, Policy
from launcher.spec import Secrets, build_spec
from tests.conftest import FIXTURES


def make_policy(**changes) -> Policy:
    policy = Policy(
        file=Path("/policies/p.yaml"), name="demo",
        models=(Model("tiny", Path("/models/tiny.gguf"), "0" * 64, 2048, None),
                Model("other", Path("/models/other.gguf"), "1" * 64, 4096, "chatml")),
        backend=Backend(gpu="none", gpu_layers=-1, memory="2g", cpus=2.0),
        frontend=Frontend(recipe="chat", build_context=None, build_dockerfile="Dockerfile", image=None,
                          port=8080, backend_url_env="OPENAI_API_BASE_URL", backend_key_env="OPENAI_API_KEY",
                          env=(("THEME", "dark"),), data="/data", user=65534, health_path="/health",
                          memory="256m", cpus=1.0),
        ingress_port=18080)
    return replace(policy, **changes)


IMAGES = PartImages(dns=ImageBuild("sandbox-dns-sink:ddd", Path("/images/dns-sink")),
                    backend=ImageBuild("sandbox-llama-cpp:aaa", Path("/images/llama-cpp")),
                    frontend=ImageBuild("sandbox-chat:bbb", Path("/images/chat")),
                    ingress=ImageBuild("sandbox-ingress:ccc", Path("/images/ingress")))


TOKEN = "t" * 43


def make_spec(policy=None, gpus=None, api_key="key-1", images=IMAGES, token=TOKEN, volume_sizes_enforced=False):
    return build_spec(policy or make_policy(), images,
                      Secrets(api_key=api_key, session_key="s-" + api_key, access_token=token), gpus,
                      "10.213.7.0/24", volume_sizes_enforced=volume_sizes_enforced)


def policy_for_model(directory: Path, model: Path, context: int = 2048, memory: str = "1g") -> Path:
    """p.yaml in `directory`, naming `model` (beside it) with its sha256, for
    the commands that read a model's facts."""
    import hashlib
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    policy = directory / "p.yaml"
    policy.write_text(f"""version: 1
name: models
models:
  - alias: m
    path: {model.name}
    sha256: {sha}
    context_length: {context}
backend:
  gpu: none
  memory: {memory}
frontend:
  recipe: chat
ingress:
  port: 18099
""")
    return policy


class Answered:
    status = 200

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def quickstart_policy(tmp_path, monkeypatch, api, frontend: str | None = None) -> tuple[Path, int]:
    """A quick-start policy whose images the stand-in engine `api` has (built
    here before), on a free port; with `frontend` (say "none") in place of
    its own."""
    monkeypatch.setenv("SANDBOX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("SANDBOX_ALLOWED_SIGNERS", raising=False)
    monkeypatch.setattr(launcher.access, "open_ui", lambda *a, **k: Answered())  # the UI answers at once
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    policy = tmp_path / "quickstart.yaml"
    policy.write_text((FIXTURES / "good" / "minimal.yaml").read_text().replace("18080", str(port)).replace(
        "../models/", f"{FIXTURES / 'models'}/"))
    if frontend is not None:
        data = yaml.safe_load(policy.read_text())
        data["frontend"] = frontend
        policy.write_text(yaml.safe_dump(data))
    for image in images_for(load_policy(policy, check_port=False), use_gpu=False, ca_bundle=None).all():
        build_records.save(image.tag, [], api.add_image(image.tag))
    return policy, port
