"""`sandbox env`: what a script or an editor on this machine needs to use a
running sandbox's model through its front door's OpenAI-compatible API
(/v1/): the base URL and the API token (made of the access token, opening
the API only) as the API key, under the names the openai SDK and the tools
built on it read."""
from __future__ import annotations

import json

from launcher.access import api_token
from launcher.commands.open import front_door
from launcher.engine import DockerGateway
from launcher.spec import BACKEND_CONFIG_ENV

BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"
# No SDK reads one for embeddings: the alias to pass as `model`, where the
# policy has an embedding model (docs/editors.md).
EMBEDDING_MODEL_ENV = "SANDBOX_EMBEDDING_MODEL"


def api_env(gateway: DockerGateway, target: str | None) -> dict:
    """The sandbox's name, the models its API serves (the policy's aliases),
    its embedding model's alias (None: it has none) and the variables:
    {"OPENAI_BASE_URL": ..., "OPENAI_API_KEY": API_TOKEN}, and
    SANDBOX_EMBEDDING_MODEL where it has one."""
    name, address, token = front_door(gateway, target, "env")
    config = _backend_config(gateway, name)
    embedding_model = _embedding_model(config)
    return {"name": name, "models": served_models(config), "embedding_model": embedding_model,
            "env": {BASE_URL_ENV: f"http://{address}/v1", API_KEY_ENV: api_token(token),
                    **({EMBEDDING_MODEL_ENV: embedding_model} if embedding_model else {})}}


def _backend_config(gateway: DockerGateway, name: str) -> dict:
    """The configuration the backend runs with; {} where it cannot be read."""
    try:
        config = json.loads(gateway.state.running_env(name, "backend", BACKEND_CONFIG_ENV) or "{}")
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def served_models(config: dict) -> list[str]:
    """The names the backend's chat server answers to (its /v1/models): the
    policy's model aliases."""
    try:
        return [m["model_alias"] for m in config.get("models", []) if isinstance(m.get("model_alias"), str)]
    except (AttributeError, TypeError):
        return []


def _embedding_model(config: dict) -> str | None:
    """The alias of the embedding model's own server (/v1/embeddings)."""
    try:
        alias = config["embeddings"]["model"]["model_alias"]
    except (KeyError, TypeError):
        return None
    return alias if isinstance(alias, str) else None
