"""The front door of a live sandbox: only the person who started it gets in.
The requests of the issue that opened this door, another local user, and the
access token's life across down, up and --new-token."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from launcher import access
from launcher.commands.audit import audit
from launcher.commands.down import down
from launcher.commands.status import status
from launcher.commands.up import up
from launcher.spec import INGRESS_PORT, resource_name
from tests.integration.conftest import ca_bundle, ui_json, write_policy


def test_a_foreign_host_gets_no_history(sandbox):
    """curl -H 'Host: evil.example:8080' http://127.0.0.1:8080/api/history"""
    result, _ = sandbox
    ui_json(result, "api/chat", {"messages": [{"role": "user", "content": "a secret"}], "max_tokens": 4})
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    answer = subprocess.run([curl, "-s", "-i", "-H", "Host: evil.example:8080", result.url + "api/history"],
                            capture_output=True, text=True, timeout=30).stdout
    assert answer.startswith("HTTP/1.1 421") and "a secret" not in answer, answer
    # The negative control: the same request with the token and the right Host.
    answer = subprocess.run([curl, "-s", "-H", f"Authorization: Bearer {result.token}", result.url + "api/history"],
                            capture_output=True, text=True, timeout=30).stdout
    assert "a secret" in answer


KNOCK_FROM_INSIDE = """
import socket, sys
host, port, origin = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(("POST / HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nOrigin: " + origin
                   + "\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n").encode())
        print("answered:", s.recv(200).split(b"\\r\\n")[0].decode())
except OSError as e:
    print("not reached:", type(e).__name__)
"""


def test_a_part_cannot_reach_the_ingress_from_inside_to_pass_for_a_browser(sandbox, gateway, docker_client):
    """Tried as an attacker would: the front-end reached the ingress from
    inside and made "refused" records that read like a browser's
    cross-site attempts."""
    result, _ = sandbox
    frontend = docker_client.containers.get(resource_name(result.name, "frontend"))
    ingress = docker_client.containers.get(resource_name(result.name, "ingress"))
    inside = ingress.attrs["NetworkSettings"]["Networks"][resource_name(result.name, "internal")]["IPAddress"]
    for host in ("ingress", inside):  # by its name and by its address on the sandbox's network
        code, output = frontend.exec_run(["python3", "-c", KNOCK_FROM_INSIDE, host, str(INGRESS_PORT),
                                          "http://inside-knock.example"])
        assert output.decode().startswith("not reached: ConnectionRefusedError"), output
    # The negative control: the same request from this machine is refused by
    # the ingress and recorded as the host's; the owner still gets in.
    request = urllib.request.Request(result.url, data=b"", method="POST",
                                     headers={"Origin": "http://host-knock.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30)
    assert refused.value.code == 403
    deadline = time.monotonic() + 60
    while True:
        found = audit(gateway, result.name)
        if any("host-knock" in line for line in found["ingress_refused"]):
            break
        assert time.monotonic() < deadline, found["ingress_refused"]
        time.sleep(0.5)
    assert not any("inside-knock" in line for line in found["ingress_refused"])
    assert found["ingress_refused_from_parts"] == []
    assert ui_json(result, "api/history", timeout=30) is not None


def test_status_gives_the_owner_the_link_and_token(sandbox, gateway):
    result, _ = sandbox
    [report] = status(gateway, result.name)
    assert report["token"] == result.token and report["access_link"] == result.access_link
    assert report["access_link"] == f"{result.url}?sandbox_token={result.token}"


AS_OTHER_USER = """
import json, sys, urllib.error, urllib.request
url, token_file = sys.argv[1], sys.argv[2]
seen = {}
try:
    open(token_file).read()
    seen["token_file"] = "read"
except OSError as e:
    seen["token_file"] = type(e).__name__
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(url + "api/history", timeout=30) as r:
        seen["status"], seen["body"] = r.status, r.read().decode()
except urllib.error.HTTPError as e:
    seen["status"], seen["body"] = e.code, e.read().decode()
print(json.dumps(seen))
"""


def test_another_local_user_gets_401_and_cannot_read_the_token(sandbox, other_user):
    result, _ = sandbox
    ui_json(result, "api/chat", {"messages": [{"role": "user", "content": "mine only"}], "max_tokens": 4})
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable  # one the other user may run
    run = subprocess.run([python, "-c", AS_OTHER_USER, result.url, str(access.token_file(result.name))],
                         user=other_user.pw_uid, group=other_user.pw_gid, extra_groups=[],
                         capture_output=True, text=True, timeout=60, cwd="/")
    seen = json.loads(run.stdout)
    assert seen["status"] == 401 and "mine only" not in seen["body"], seen
    assert seen["token_file"] == "PermissionError", seen
    # The negative control: the owner, with the token, reads it.
    assert "mine only" in json.dumps(ui_json(result, "api/history", timeout=30))


def test_the_token_outlives_down_and_up_and_can_be_replaced(gateway, tmp_path):
    path = write_policy(tmp_path)
    first = up(gateway, path, ca_bundle=ca_bundle())
    name = first.name
    try:
        assert access.saved_token(name) == first.token
        down(gateway, name)
        assert access.saved_token(name) == first.token  # kept for the owner
        second = up(gateway, path, ca_bundle=ca_bundle())
        assert second.token == first.token
        ui_json(second, "api/history", timeout=30)

        third = up(gateway, path, ca_bundle=ca_bundle(), new_token=True)
        assert third.token != first.token and access.saved_token(name) == third.token
        recreated = [a.name for a in third.prepared.plan.changes]
        assert recreated == [f"sandbox-{name}-ingress"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            ui_json(first, "api/history", timeout=30)
        assert refused.value.code == 401
        ui_json(third, "api/history", timeout=30)
    finally:
        down(gateway, name, volumes=True)
    assert access.saved_token(name) is None
