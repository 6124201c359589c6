"""Open WebUI from its recipe, offline, behind the ingress. Its image is large
(about 2.5 GB, long to build), so this test is marked slow: `pytest -m slow`."""
from __future__ import annotations

import pytest
import yaml

from launcher.commands.down import down
from launcher.commands.up import up
from launcher.front_door import try_front_door
from launcher.matrix import forwarded
from tests.integration.conftest import ca_bundle, ui, write_policy


@pytest.mark.slow
def test_open_webui_comes_up_offline_and_lists_the_local_model(gateway, tmp_path):
    path = write_policy(tmp_path, frontend={"recipe": "open-webui", "env": {"WEBUI_AUTH": "False"}})
    policy = yaml.safe_load(path.read_text())
    result = up(gateway, path, ca_bundle=ca_bundle(), timeout=1800)
    try:
        with ui(result, "health", timeout=30) as response:
            assert response.status == 200
        # The front door holds for Open WebUI too, whose own login is off here.
        port = result.url.rsplit(":", 1)[1].strip("/")
        door = try_front_door(int(port), result.name, result.token)
        assert door["foreign_host"]["status"] == 421 and door["no_token"]["status"] == 401, door
        assert door["cross_site_post"]["status"] == 403 and door["cross_site_websocket"]["status"] == 403, door
        assert forwarded(door["owner"]) and forwarded(door["own_websocket"]), door
        with ui(result, timeout=30) as response:
            assert b"<html" in response.read().lower()
        backend_log = "\n".join(gateway.containers.logs(f"sandbox-{policy['name']}-backend", tail=200))
        assert "GET /v1/models" in backend_log
    finally:
        down(gateway, result.name, volumes=True)
