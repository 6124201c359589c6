"""`sandbox env`: what a script or an editor on this machine needs to use a
running sandbox's model through its front door's OpenAI-compatible API
(/v1/): the base URL and the access token as the API key, under the names
the openai SDK and the tools built on it read."""
from __future__ import annotations

import json

from launcher.commands.open import front_door
from launcher.engine import DockerGateway
from launcher.spec import BACKEND_CONFIG_ENV

BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"


def api_env(gateway: DockerGateway, target: str | None) -> dict:
    """The sandbox's name, the models its API serves (the policy's aliases)
    and the variables: {"OPENAI_BASE_URL": ..., "OPENAI_API_KEY": TOKEN}."""
    name, address, token = front_door(gateway, target, "env")
    return {"name": name, "models": served_models(gateway, name),
            "env": {BASE_URL_ENV: f"http://{address}/v1", API_KEY_ENV: token}}


def served_models(gateway: DockerGateway, name: str) -> list[str]:
    """The names the backend answers to (its /v1/models): the policy's
    model aliases, read from the configuration the backend runs with."""
    config = gateway.state.running_env(name, "backend", BACKEND_CONFIG_ENV)
    try:
        models = json.loads(config or "{}").get("models", [])
        return [m["model_alias"] for m in models if isinstance(m.get("model_alias"), str)]
    except (ValueError, AttributeError, TypeError):
        return []
