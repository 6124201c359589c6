"""The backend's OpenAI-compatible API at a live sandbox's front door
(/v1/), used by the official `openai` package as an editor or a script
would, with what `sandbox env` prints; and refused, with real curl, to
everyone without the bearer token. Each refusal is followed by its control:
the owner's same request, which the backend answers."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from launcher.commands.audit import audit
from launcher.commands.env import api_env
from launcher.commands.status import status
from launcher.spec import BACKEND_PORT, resource_name
from tests.integration.conftest import QUICKSTART_ALIAS, backend_server_pids, poll
from tests.support.api_bodies import flood_body

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def api(sandbox, gateway):
    """The `sandbox env` settings of the module's running sandbox."""
    result, _ = sandbox
    return api_env(gateway, result.name)["env"]


@pytest.fixture(scope="module")
def client(api):
    return openai.OpenAI(base_url=api["OPENAI_BASE_URL"], api_key=api["OPENAI_API_KEY"], max_retries=0,
                         timeout=120)


def curl(*args: str) -> tuple[int, dict, str]:
    """The status, headers and body curl got."""
    program = shutil.which("curl")
    if program is None:
        pytest.skip("curl is not installed")
    run = subprocess.run([program, "-s", "-i", "--max-time", "60", *args], capture_output=True, text=True,
                         timeout=90)
    head, _, body = run.stdout.replace("\r\n", "\n").partition("\n\n")
    status_line, *lines = head.split("\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def test_the_openai_package_lists_the_policys_models(client):
    assert [m.id for m in client.models.list()] == [QUICKSTART_ALIAS]


def test_the_openai_package_streams_a_chat(client):
    stream = client.chat.completions.create(
        model=QUICKSTART_ALIAS, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, stream=True)
    chunks = [c for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 2 and text.strip(), chunks
    # A plain completion too, its max_tokens kept as asked.
    done = client.completions.create(model=QUICKSTART_ALIAS, prompt="Once upon a time", max_tokens=4)
    assert 1 <= done.usage.completion_tokens <= 4


def test_without_an_embedding_model_an_embedding_is_answered_404_by_the_ingress(client, api):
    """The quick-start policy has no model with `role: embeddings`: the
    ingress says so itself, to the owner only, and never asks the chat
    model's server for vectors."""
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model=QUICKSTART_ALIAS, input="a sandboxed sentence")
    assert "x-sandbox-refused" not in missing.value.response.headers
    assert missing.value.body["code"] == "no_embedding_model", missing.value.body
    assert "no embedding model" in missing.value.body["message"]
    status, headers, body = curl("-H", f"Authorization: Bearer {api['OPENAI_API_KEY']}", "-H",
                                 "Content-Type: application/json", "-d", json.dumps({"input": "x"}),
                                 api["OPENAI_BASE_URL"] + "/embeddings")
    assert status == 404 and "x-sandbox-refused" not in headers, (status, body)
    assert json.loads(body)["error"]["code"] == "no_embedding_model"
    # A stranger learns nothing of it: refused as on every route.
    status, headers, body = curl("-H", "Content-Type: application/json", "-d", json.dumps({"input": "x"}),
                                 api["OPENAI_BASE_URL"] + "/embeddings")
    assert (status, headers.get("x-sandbox-refused")) == (401, "no-token") and "embedding" not in body


def test_a_wrong_key_is_refused(api):
    stranger = openai.OpenAI(base_url=api["OPENAI_BASE_URL"], api_key="x" * 43, max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.models.list()
    assert refused.value.response.headers["x-sandbox-refused"] == "bad-token"


def owner_reaches_the_backend(api) -> None:
    status, headers, body = curl("-H", f"Authorization: Bearer {api['OPENAI_API_KEY']}",
                                 api["OPENAI_BASE_URL"] + "/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == QUICKSTART_ALIAS


def test_no_token_is_refused(api):
    status, headers, _ = curl(api["OPENAI_BASE_URL"] + "/models")
    assert (status, headers.get("x-sandbox-refused")) == (401, "no-token")
    owner_reaches_the_backend(api)


def test_the_browsers_cookie_alone_is_refused(sandbox, api):
    result, _ = sandbox
    cookie = f"Cookie: sandbox-{result.name}={result.token}"
    status, headers, _ = curl("-H", cookie, api["OPENAI_BASE_URL"] + "/models")
    assert (status, headers.get("x-sandbox-refused")) == (401, "no-token")
    status, headers, _ = curl("-H", cookie, "-H", f"Origin: {result.url.rstrip('/')}", "-H",
                              "Sec-Fetch-Site: same-origin", "-H", "Content-Type: application/json", "-d",
                              json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
                              api["OPENAI_BASE_URL"] + "/chat/completions")
    assert (status, headers.get("x-sandbox-refused")) == (401, "no-token")
    # The control: the same cookie opens the UI.
    status, _, _ = curl("-H", cookie, result.url + "api/history")
    assert status == 200


def test_a_foreign_host_is_refused_even_with_the_token(api):
    port = api["OPENAI_BASE_URL"].split(":")[2].split("/")[0]
    bearer = f"Authorization: Bearer {api['OPENAI_API_KEY']}"
    status, headers, _ = curl("-H", f"Host: evil.example:{port}", "-H", bearer, api["OPENAI_BASE_URL"] + "/models")
    assert (status, headers.get("x-sandbox-refused")) == (421, "foreign-host")
    owner_reaches_the_backend(api)


@pytest.mark.parametrize("query", ["sandbox_token", "api_key", "key"])
def test_the_token_in_the_address_is_refused(sandbox, api, query):
    result, _ = sandbox
    for token in (api["OPENAI_API_KEY"], result.token):
        for extra in ((), ("-H", f"Authorization: Bearer {token}")):
            status, headers, _ = curl(*extra, f"{api['OPENAI_BASE_URL']}/models?{query}={token}")
            assert (status, headers.get("x-sandbox-refused")) == (401, "token-elsewhere")
    owner_reaches_the_backend(api)


def test_the_api_token_opens_the_api_only_and_never_passes_for_the_browser(sandbox, api):
    """Tried as an attacker would: a client given the key for the API (then
    the access token itself) sent it as the browser's cookie, with the UI's
    Origin, to the chat UI's own chat route, where the API's bound of 4
    calls in progress does not hold (the browser's requests are not
    bounded): 12 to 30 such chats at once held the model, and the UI's own
    chat timed out. The key `sandbox env` gives is now the API token, made
    of the access token: it opens /v1/ and nothing else."""
    result, _ = sandbox
    key, origin = api["OPENAI_API_KEY"], result.url.rstrip("/")
    assert key != result.token and result.token not in key
    chat = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    as_the_browser = ("-H", f"Origin: {origin}", "-H", "Sec-Fetch-Site: same-origin",
                      "-H", "Content-Type: application/json", "-d", chat, result.url + "api/chat")
    status, headers, _ = curl("-H", f"Cookie: sandbox-{result.name}={key}", *as_the_browser)
    assert (status, headers.get("x-sandbox-refused")) == (401, "no-token")
    # Nor the UI's routes with the key as the bearer (there, the owner's chats are read) ...
    status, headers, _ = curl("-H", f"Authorization: Bearer {key}", result.url + "api/history")
    assert (status, headers.get("x-sandbox-refused")) == (401, "no-token")
    # ... nor the access link: no cookie is traded for it.
    status, headers, _ = curl(f"{result.url}?sandbox_token={key}")
    assert (status, headers.get("x-sandbox-refused"), headers.get("set-cookie")) == (401, "bad-token", None)
    # Control: the access token as the cookie is the browser, and chats; the key opens the API.
    status, _, body = curl("-H", f"Cookie: sandbox-{result.name}={result.token}", *as_the_browser)
    assert status == 200, body
    owner_reaches_the_backend(api)


def backend_started_at(docker_client, result) -> tuple[str, int]:
    """When the backend's container last started, and how often Docker
    restarted it: a server process that ends takes the container with it."""
    attrs = docker_client.containers.get(f"sandbox-{result.name}-backend").attrs
    return attrs["State"]["StartedAt"], attrs["RestartCount"]


ANSWER_SCHEMA_OF = {
    "response_format": lambda schema: {"response_format": {"type": "json_object", "schema": schema}},
    "tools": lambda schema: {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": schema}, "required": ["a"]}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}},
}


@pytest.mark.parametrize("place", sorted(ANSWER_SCHEMA_OF))
@pytest.mark.parametrize("schema", [
    {"type": "string", "pattern": "^\\q$"},  # llama.cpp cannot parse the grammar: its server ended (SIGSEGV)
    {"type": "string", "maxLength": 100000},  # 100,000 nested groups: its parser's stack
    {"type": "string", "pattern": "^a{0,+100000}$"},  # the same, in a number a digits-only check let by
    # Each within the bound, but a grammar of some 600 MB as it was built: the server killed for its memory.
    {"type": "string", "pattern": "^" + ".{0,1000}" * 60_000 + "$"},
    # Names that come out alike: the converter looked past every rule for a free name, 111 s for 27,000
    # (a schema that large is now over the bound on a body's values; 5,000 are within it, and over this one).
    {"type": "object", "properties": {f"!{i}": {"const": i} for i in range(5_000)}},
], ids=["unparsable-pattern", "deep-repetition", "signed-repetition", "repetitions-in-all", "properties-in-all"])
def test_a_schema_that_llama_cpp_cannot_take_is_refused_and_the_backend_goes_on(sandbox, docker_client, client,
                                                                               place, schema):
    """Tried as an attacker would: the owner's API client sends
    `response_format` with a JSON schema whose pattern is "^\\q$" (or a
    function's parameters with one): llama-cpp-python made it a grammar
    llama.cpp could not parse and used what it got back; the backend's
    server ended (502, RestartCount 0 -> 1), and every chat with it."""
    result, _ = sandbox
    before = backend_started_at(docker_client, result)
    messages = [{"role": "user", "content": "Say a word."}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=QUICKSTART_ALIAS, messages=messages, max_tokens=4,
                                       **ANSWER_SCHEMA_OF[place](schema))
    assert "refused as a grammar" in str(refused.value), refused.value
    # Control, at once and on the same server: a schema it can take, as deep as allowed, constrains an answer.
    answer = client.chat.completions.create(model=QUICKSTART_ALIAS, messages=messages, max_tokens=8,
                                            **ANSWER_SCHEMA_OF[place]({"type": "string", "maxLength": 1000}))
    assert answer.choices, answer
    assert backend_started_at(docker_client, result) == before


def backend_said(gateway, result) -> list[str]:
    return [line for line in gateway.containers.logs(f"sandbox-{result.name}-backend", tail="all")
            if line.startswith("backend:")]


def answered_after(client, messages):
    """A chat answered by the same server: the model is free again."""
    answer = client.chat.completions.create(model=QUICKSTART_ALIAS, messages=messages, max_tokens=2)
    assert answer.choices and answer.usage.completion_tokens >= 1, answer


def test_a_pattern_read_in_too_many_ways_ends_the_server_which_comes_back(sandbox, docker_client, gateway, client):
    """Tried as an attacker would: `"pattern": "^(a{0,1000}){0,1000}$"`,
    within every bound on a schema, yet a string of a's can be read in a
    number of ways past counting: llama.cpp's grammar sampler worked on one
    token for over 9 minutes at full CPU, holding the model, and every chat
    of the UI timed out while the backend's healthcheck (which does not wait
    for the model) said healthy. No token boundary comes to end the call at,
    so past its budget and a token's overrun of CPU the server ends, says
    why, Docker restarts the backend, and chats are answered again."""
    result, _ = sandbox
    _, restarts = backend_started_at(docker_client, result)
    messages = [{"role": "user", "content": "Say aaaa."}]
    slow = client.with_options(timeout=600)  # a bound on the wait, not on speed: the server ends long before
    with pytest.raises(openai.InternalServerError):  # the ingress's 502: its backend ended under the call
        slow.chat.completions.create(model=QUICKSTART_ALIAS, messages=messages, max_tokens=3, response_format={
            "type": "json_object", "schema": {"type": "string", "pattern": "^(a{0,1000}){0,1000}$"}})

    def answered():
        try:
            return client.chat.completions.create(model=QUICKSTART_ALIAS, messages=messages, max_tokens=2)
        except (openai.InternalServerError, openai.APIConnectionError):
            return None
    poll(answered, "the backend back after its restart", 300)
    assert backend_started_at(docker_client, result)[1] == restarts + 1
    logged = backend_said(gateway, result)
    assert any("inside one token" in line for line in logged), logged[-40:]


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_a_pattern_costly_on_every_token_is_ended_at_the_calls_budget_and_the_server_goes_on(
        sandbox, docker_client, gateway, client, stream):
    """Tried as an attacker would: `"pattern": "^(a{0,20}){55}a{1000}$"`
    costs the grammar sampler seconds of CPU on each token, each under the
    old per-token bound of 30 s: with max_tokens 2048 it held the model for
    hours (before: this call was still running when the client gave up).
    Now the call's CPU outside the model is summed, and past its budget the
    call is ended between two tokens with a 400 that says so; the same
    server answers the next chat. A stream's pieces are made on whichever of
    the server's threads, summed all the same; its last event is the error."""
    result, _ = sandbox
    before = backend_started_at(docker_client, result)
    messages = [{"role": "user", "content": "Say aaaa."}]
    outcome = []

    def call():
        try:
            answer = client.with_options(timeout=600).chat.completions.create(
                model=QUICKSTART_ALIAS, messages=messages, max_tokens=2048, stream=stream, response_format={
                    "type": "json_object", "schema": {"type": "string", "pattern": "^(a{0,20}){55}a{1000}$"}})
            outcome.append(list(answer) if stream else answer)
        except openai.APIError as e:
            outcome.append(e)
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(600)  # a bound on the wait, not on speed: the budget ends the call long before
    assert outcome, "the call was still running after 600 s"
    [ended] = outcome
    assert isinstance(ended, openai.APIError if stream else openai.BadRequestError), ended
    assert ended.body["code"] == "call_cpu_budget", ended.body
    assert "the call used its 60 s of CPU outside the model" in ended.body["message"]
    answered_after(client, messages)
    assert backend_started_at(docker_client, result) == before
    assert any("used its 60 s of CPU outside the model: ended" in line for line in backend_said(gateway, result))


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_a_stop_list_of_many_strings_is_refused_before_any_token(sandbox, docker_client, client, stream):
    """Tried as an attacker would: `"stop": ["ac"] * 170000` (850 KB, within
    the 1 MiB body) made llama-cpp-python look for each string after every
    token, 0.6 s of CPU a token in its Python: with max_tokens 2048 (and
    strings the answer never holds) the model was held for tens of minutes
    (before: the list was taken, the answer and the stream's tokens came).
    Now more than 64 stop strings are refused before any token: 400 for an
    answer; a stream, already answered 200, has the error as its one
    event. (A list that long is now over the bound on a body's values:
    10,000 strings are within it.)"""
    result, _ = sandbox
    before = backend_started_at(docker_client, result)
    messages = [{"role": "user", "content": "Tell a long story."}]
    with pytest.raises(openai.APIError) as refused:
        answer = client.chat.completions.create(model=QUICKSTART_ALIAS, messages=messages, max_tokens=2048,
                                                stop=["ac"] * 10_000, stream=stream)
        for chunk in answer if stream else ():
            assert not (chunk.choices and chunk.choices[0].delta.content), "a token came: the stop list was taken"
        pytest.fail(f"answered: {answer}")
    # A stream's error comes as its last event, after the 200.
    assert isinstance(refused.value, openai.APIError if stream else openai.BadRequestError), refused.value
    assert refused.value.body["code"] == "too_many_stop_strings", refused.value.body
    assert refused.value.body["message"] == "refused: 10000 stop strings, at most 64", refused.value.body
    answered_after(client, messages)
    # Control: 64 stop strings are taken.
    client.chat.completions.create(model=QUICKSTART_ALIAS, messages=messages, max_tokens=4, stop=["ac"] * 64)
    assert backend_started_at(docker_client, result) == before


# A streamed answer of 2,048 tokens, some 400 KB.
LONG_STORY = {"model": QUICKSTART_ALIAS, "stream": True, "max_tokens": 2048,
              "messages": [{"role": "user", "content": "Tell a long story."}],
              # No end of its answer but its length: <|endoftext|> and <|im_end|> are never chosen.
              "logit_bias": {"0": -100, "2": -100}}


def raw_chat(api, payload: bytes) -> bytes:
    """A chat call as the owner's client sends it at the door, whole, for a
    socket of a test's own: Host, the API token, the body and its length."""
    door = api["OPENAI_BASE_URL"].removeprefix("http://").split("/")[0]
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {door}\r\nAuthorization: Bearer {api['OPENAI_API_KEY']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            ).encode() + payload


class SlowReader(threading.Thread):
    """A client of the API that reads its stream 4 KiB every 5 s (never idle
    for the ingress's send_timeout), through a small receive buffer, from
    the ingress's own address: the port Docker publishes on 127.0.0.1 is
    relayed by its userland proxy, whose socket buffers on the host's side
    took megabytes before the reader was ever slow."""

    def __init__(self, api, address: tuple[str, int], body: dict):
        super().__init__(daemon=True)
        self.request = raw_chat(api, json.dumps(body).encode())
        self.address, self.started_reading = address, threading.Event()
        self.sock = socket.socket()

    def run(self):
        with self.sock:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            self.sock.connect(self.address)
            self.sock.sendall(self.request)
            try:
                while self.sock.recv(4096):
                    self.started_reading.set()
                    time.sleep(5)
            except OSError:  # closed by close()
                pass

    def close(self):
        """Gone, as a client that gives up: a failed test leaves no stream holding the model."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


SMALL_TCP_BUFFERS = {"net.ipv4.tcp_rmem": "4096 8192 16384", "net.ipv4.tcp_wmem": "4096 8192 16384"}


@contextlib.contextmanager
def small_tcp_buffers(docker_client, containers: list[str]):
    """The containers' network namespaces with small TCP buffers, as on a
    machine short of memory: a stream outgrows them in seconds. Put back
    after."""
    namespaces = [["nsenter", "-t", str(docker_client.containers.get(name).attrs["State"]["Pid"]), "-n"]
                  for name in containers]
    before = [{key: subprocess.run([*enter, "sysctl", "-n", key], capture_output=True, text=True,
                                   check=True).stdout.split() for key in SMALL_TCP_BUFFERS} for enter in namespaces]
    try:
        for enter in namespaces:
            subprocess.run([*enter, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in SMALL_TCP_BUFFERS.items())],
                           check=True)
        yield
    finally:
        for enter, values in zip(namespaces, before):
            subprocess.run([*enter, "sysctl", "-q", "-w", *(f"{k}={' '.join(v)}" for k, v in values.items())],
                           check=True)


def test_a_stream_read_slowly_is_ended_once_it_has_waited_its_bound_and_the_model_is_freed(
        sandbox, docker_client, gateway, client, api):
    """Tried as an attacker would: a streamed answer of 2,048 tokens (some
    400 KB), read 4 KiB every 5 s:
    the server lets the model go only once the stream's last chunk is taken,
    so once the answer outgrew the buffers between them, the model, and
    every chat of the UI, was held for as long as the reader liked (before:
    the next chat was not answered within 300 s). Now a stream waits for
    its reader 60 s in all, and is then cut off; the next chat is answered,
    by the same server."""
    result, _ = sandbox
    before = backend_started_at(docker_client, result)
    reader = SlowReader(api, ingress_address(docker_client, result), LONG_STORY)
    try:
        with small_tcp_buffers(docker_client, [f"sandbox-{result.name}-ingress", f"sandbox-{result.name}-backend"]):
            reader.start()
            assert reader.started_reading.wait(120), "the stream never began"
            # Held at the point under test: the stream waits on its reader once
            # the answer fills the buffers, however fast the model writes it.
            # A bound on the wait, not on speed: held, the stream would go on
            # for an hour or more.
            poll(lambda: any("reader took its chunks too slowly" in line for line in backend_said(gateway, result)),
                 "the stream, cut off once it has waited for its reader 60 s in all", 900)
    finally:
        reader.close()
    answered_after(client, [{"role": "user", "content": "Say a word."}])
    assert backend_started_at(docker_client, result) == before


def ingress_connections_at_the_backend(docker_client, result) -> list[int]:
    """The connections the backend's server has from the ingress, open on
    its side (established, or closed by the ingress and not yet by the
    server), read from the kernel's table in its network namespace: the
    bytes of each that the server has yet to read."""
    ingress = docker_client.containers.get(f"sandbox-{result.name}-ingress").attrs["NetworkSettings"]["Networks"]
    addresses = {socket.inet_aton(n["IPAddress"])[::-1].hex().upper() for n in ingress.values() if n["IPAddress"]}
    table = docker_client.containers.get(f"sandbox-{result.name}-backend").exec_run(["cat", "/proc/net/tcp"])
    unread = []
    for line in table.output.decode().splitlines()[1:]:
        local, remote, state, queues = line.split()[1:5]
        if local.endswith(f":{BACKEND_PORT:04X}") and remote.split(":")[0] in addresses and state in ("01", "08"):
            unread.append(int(queues.split(":")[1], 16))  # ESTABLISHED, CLOSE_WAIT
    return unread


def test_calls_whose_client_left_are_dropped_while_they_wait_for_the_model(sandbox, docker_client, gateway, client,
                                                                            api):
    """Tried as an attacker would: 4 callers each sending a chat of 30,000
    messages and hanging up 1.5 s later, in a loop: the ingress let each
    call go when its client did (so never more than 4 in progress there),
    but the backend's server kept every call it had been given, each waiting
    for the model with its body: 365 calls in 2 minutes, the backend killed
    for its memory 5 times, and the model answered forgotten calls for 10
    minutes after the attacker stopped. Now a call whose client has gone is
    dropped while it waits. Held at the point under test: a stream read
    slowly holds the model (see the test above) for a minute, and two
    rounds of 3 calls (the API's bound, less the stream), more than the
    bound in all, are sent, seen whole at the backend and given up; each is
    dropped by the backend while the stream still holds the model (before:
    none was; each waited until the model was free)."""
    result, _ = sandbox
    before = backend_started_at(docker_client, result)
    address = ingress_address(docker_client, result)
    request = raw_chat(api, json.dumps({"model": QUICKSTART_ALIAS, "max_tokens": 8,
                                        "messages": [{"role": "user", "content": "hello " * 20}] * 200}).encode())

    def said(what: str) -> int:
        return sum(what in line for line in backend_said(gateway, result))

    def dropped() -> int:
        return said("client left before it had the model")
    dropped_before, cut_off_before = dropped(), said("reader took its chunks too slowly")
    reader = SlowReader(api, address, LONG_STORY)
    try:
        with small_tcp_buffers(docker_client, [f"sandbox-{result.name}-ingress", f"sandbox-{result.name}-backend"]):
            reader.start()
            assert reader.started_reading.wait(120), "the stream never began"
            for round_ in range(1, 3):
                calls = [socket.create_connection(address, timeout=60) for _ in range(3)]
                for call in calls:
                    call.sendall(request)
                # Each call whole in the server's hands (none of its bytes left unread), behind the stream.
                poll(lambda: ingress_connections_at_the_backend(docker_client, result) == [0] * 4,
                     lambda: f"the calls at the backend: {ingress_connections_at_the_backend(docker_client, result)}",
                     60)
                for call in calls:
                    call.close()
                poll(lambda: dropped() - dropped_before == 3 * round_,
                     lambda: f"the calls dropped (seen: {dropped() - dropped_before})", 60)
            assert said("reader took its chunks too slowly") == cut_off_before, \
                "the stream let the model go before the calls were dropped: nothing was shown"
    finally:
        reader.close()
    answered_after(client, [{"role": "user", "content": "Say a word."}])
    assert backend_started_at(docker_client, result) == before


@pytest.mark.parametrize("call", ["completion", "chat", "chat-stream"])
def test_logprobs_are_refused_before_any_work_and_the_backend_goes_on(sandbox, docker_client, client, call):
    """Tried as an attacker would: `{"prompt": "hello " * 1950, "max_tokens":
    50, "logprobs": 1}` on /v1/completions (or a chat's `logprobs` with
    `top_logprobs` 1): the server kept the logits of every position of the
    context (the context times the vocabulary, some 400 MB) and worked out
    logprobs over all of them; the backend was killed for its memory (502,
    restarted), and in a loop every UI chat got 502. Now the server keeps
    the last position's only, and logprobs are refused (400) before any
    work; the same server answers the next chat."""
    result, _ = sandbox
    before = backend_started_at(docker_client, result)
    with pytest.raises(openai.APIError) as refused:
        if call == "completion":
            client.completions.create(model=QUICKSTART_ALIAS, prompt="hello " * 1950, max_tokens=50, logprobs=1)
        else:
            answer = client.chat.completions.create(
                model=QUICKSTART_ALIAS, messages=[{"role": "user", "content": "hello " * 1900}], max_tokens=50,
                logprobs=True, top_logprobs=1, stream=call == "chat-stream")
            for _ in answer if call == "chat-stream" else ():
                pass
        pytest.fail("answered")
    assert isinstance(refused.value, openai.APIError if call == "chat-stream" else openai.BadRequestError)
    assert refused.value.body["code"] == "logprobs_not_served", refused.value.body
    answered_after(client, [{"role": "user", "content": "Say a word."}])
    assert backend_started_at(docker_client, result) == before


def test_calls_refused_for_their_length_leave_no_memory_behind(sandbox, gateway, docker_client, client):
    """Tried as an attacker would: calls of 30,000 empty messages (within
    the 1 MiB body; each refused for the context's length after its chat
    template) grew the backend's memory by some 32 MiB a call, never given
    back, until it was killed for it (twice in 8 minutes). Now each call's
    garbage is collected once it has ended. Such a body is now over the
    bound on a body's values; within it, 5,000 messages left some 3 MiB a
    call: after the first calls, 10 more leave the memory where it was
    (before: some 27 MiB more)."""
    result, _ = sandbox
    before_start = backend_started_at(docker_client, result)
    empty = [{"role": "user", "content": ""}] * 5000

    def calls(count: int) -> None:
        for _ in range(count):
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model=QUICKSTART_ALIAS, messages=empty, max_tokens=8)
            assert refused.value.body["code"] == "context_length_exceeded", refused.value.body
        answered_after(client, [{"role": "user", "content": "Say a word."}])  # a call's end: the last one's garbage goes

    def used() -> int:
        return gateway.state.memory_usage(resource_name(result.name, "backend"))
    calls(2)  # what the first such calls leave (the server's own caches) is not the point
    before = used()
    calls(10)
    grown = used() - before
    assert grown < 12 * 2**20, f"the backend grew {grown / 2**20:.0f} MiB over 10 calls"
    assert backend_started_at(docker_client, result) == before_start


def ingress_address(docker_client, result) -> tuple[str, int]:
    """The ingress's own address and port, past Docker's userland proxy on
    127.0.0.1 (see SlowReader)."""
    ingress = docker_client.containers.get(f"sandbox-{result.name}-ingress").attrs
    [port] = {int(published.split("/")[0]) for published in ingress["NetworkSettings"]["Ports"]}
    return ingress["NetworkSettings"]["Networks"][f"sandbox-{result.name}-ingress"]["IPAddress"], port


def test_bodies_of_too_many_values_are_refused_at_the_door_and_the_api_goes_on(sandbox, docker_client, api, client):
    """Tried as an attacker would, with the API's token: 4 bodies at once of
    `{"a":[{},{},...]}` (349,000 empty objects, under 1 MiB): the ingress's
    one worker parsed each into some 30 MB and was killed for its memory
    (128 MiB), with every request in flight; nginx kept the dead worker's
    API slots, and every later call was 429 until the sandbox was
    restarted. Now the ingress counts a body's values before it parses it
    and refuses more than 16,384 (400, in the API's form of error)."""
    result, _ = sandbox
    address, port = ingress_address(docker_client, result)
    ingress = docker_client.containers.get(f"sandbox-{result.name}-ingress")
    logged_before = len(ingress.logs().splitlines())
    request = raw_chat(api, flood_body())
    answers = []

    def send() -> None:
        with socket.create_connection((address, port), timeout=120) as s:
            s.sendall(request)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
            answers.append(answer)
    for _ in range(2):
        senders = [threading.Thread(target=send) for _ in range(4)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    assert len(answers) == 8 and all(a.startswith(b"HTTP/1.1 400 ") and b"too-many-values" in a for a in answers), \
        [a[:200] for a in answers]
    said = ingress.logs().decode(errors="replace").splitlines()[logged_before:]
    assert not [line for line in said if "exited on signal" in line]
    # The API's slots were given back: the next calls are answered.
    for _ in range(5):
        assert client.models.list().data


DIRECT_CHAT = """
import json, os, sys, urllib.error, urllib.request
body = json.dumps({"messages": [{"role": "x"}] * int(sys.argv[1])}).encode()
request = urllib.request.Request("http://127.0.0.1:%d/v1/chat/completions" % int(sys.argv[2]), data=body, headers={
    "Authorization": "Bearer " + os.environ["SANDBOX_API_KEY"], "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=300) as answer:
        status, text = answer.status, answer.read()
except urllib.error.HTTPError as e:
    status, text = e.code, e.read()
try:
    code = json.loads(text)["error"]["code"]
except (ValueError, KeyError, TypeError):
    code = None
print(json.dumps({"status": status, "length": len(text), "code": code, "start": text[:300].decode(errors="replace")}))
"""


def test_messages_of_no_kind_are_answered_in_a_line_and_the_backend_goes_on(sandbox, docker_client, gateway, client):
    """Tried as an attacker would: `{"messages": [{"role": "x"}] * 60000}`
    (900 KB): the backend's server validated each message against every
    kind of message and wrote each failure with its input into one answer
    (1.9 KB a message): the backend was killed for its memory, in a loop as
    often as the call was sent, and 4 callers of 12,000 such messages held
    the server's event loop, and the UI's chats, for 45 s. Now the first
    wrong message is answered, in a line (400); such a body is over the
    bound on values at the door, and at the backend too, where the UI's
    requests come (sent here from inside the backend's container)."""
    result, _ = sandbox
    before = backend_started_at(docker_client, result)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=QUICKSTART_ALIAS, messages=[{"role": "x"}] * 8000)
    assert refused.value.body["code"] == "invalid_request" and "body.messages.0." in refused.value.body["message"]
    assert len(json.dumps(refused.value.body)) < 1000, refused.value.body
    backend = docker_client.containers.get(f"sandbox-{result.name}-backend")
    for count, code in ((8000, "invalid_request"), (60000, "too-many-values")):
        run = backend.exec_run(["/opt/venv/bin/python", "-c", DIRECT_CHAT, str(count), str(BACKEND_PORT)],
                               user="65534")
        said = json.loads(run.output.decode().strip().splitlines()[-1]) if run.exit_code == 0 else run.output
        assert (said["status"], said["code"]) == (400, code) and said["length"] < 1000, said
    answered_after(client, [{"role": "user", "content": "Say a word."}])
    assert backend_started_at(docker_client, result) == before


# A body sent to the backend's server as the UI would send it (from inside
# the sandbox; here from inside the backend's container): argv[1] "declared"
# gives a length of 900 MiB and sends none of it, "chunked" sends 4 MiB and
# one byte, the bound and one past it, and no end; either way the server is
# held waiting for the rest until it answers. The status line, or "none".
BIG_BODY = """
import os, socket, sys
way, port = sys.argv[1], int(sys.argv[2])
head = ("POST /v1/chat/completions HTTP/1.1\\r\\nHost: backend\\r\\nContent-Type: application/json\\r\\n"
        "Authorization: Bearer " + os.environ["SANDBOX_API_KEY"] + "\\r\\n")
connection = socket.create_connection(("127.0.0.1", port))
if way == "declared":
    connection.sendall((head + "Content-Length: %d\\r\\n\\r\\n" % (900 * 2**20)).encode())
else:
    connection.sendall((head + "Transfer-Encoding: chunked\\r\\n\\r\\n").encode())
    for size in (2**20,) * 4 + (1,):
        connection.sendall(b"%x\\r\\n" % size + b" " * size + b"\\r\\n")
connection.settimeout(60)  # the server before the bound waited for the rest
try:
    answer = connection.recv(65536)
except socket.timeout:
    answer = b"none"
print(answer.split(b"\\r\\n")[0].decode())
"""


@pytest.mark.parametrize("way", ["declared", "chunked"])
def test_a_body_over_the_backends_bound_is_refused_as_it_is_read_and_the_backend_goes_on(sandbox, docker_client,
                                                                                        client, way):
    """Tried as an attacker would, as the UI (which reaches the backend's
    server directly, past the ingress's 1 MiB): one request of 900 MiB of
    spaces was read whole into memory and the backend was killed for it
    (its 1 GiB), the model gone for the API's clients too, as often as the
    UI sent it. Now the server refuses a body over 4 MiB (413): at its
    declared length, before any of it is read, or, sent in chunks, at the
    first byte past the bound."""
    result, _ = sandbox
    before = backend_started_at(docker_client, result)
    backend = docker_client.containers.get(f"sandbox-{result.name}-backend")
    run = backend.exec_run(["/opt/venv/bin/python", "-c", BIG_BODY, way, str(BACKEND_PORT)], user="65534")
    assert run.exit_code == 0 and run.output.decode().strip().splitlines()[-1].startswith("HTTP/1.1 413 "), \
        run.output.decode()[-500:]
    answered_after(client, [{"role": "user", "content": "Say a word."}])
    assert backend_started_at(docker_client, result) == before


@pytest.mark.parametrize("key", ["1" * 5000, "49152"], ids=["5000-digits", "past-the-vocabulary"])
def test_a_logit_bias_key_that_is_no_token_of_the_model_is_refused(client, key):
    """Tried as an attacker would: a key of 5,000 digits passed the check
    that keys are token ids, and Python's int() refused it inside the call
    (500). Now it is refused 400 `logit_bias` before any work, as is a key
    past the model's vocabulary (49,152 tokens), which names no token (it
    was taken and did nothing)."""
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=QUICKSTART_ALIAS, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=2, logit_bias={key: 1})
    assert refused.value.body["code"] == "logit_bias", refused.value.body
    # Control: a key within the vocabulary is taken.
    client.chat.completions.create(model=QUICKSTART_ALIAS, messages=[{"role": "user", "content": "Hi"}],
                                   max_tokens=2, logit_bias={"49151": 1})


def test_a_body_over_one_mib_is_refused(api, tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"model": QUICKSTART_ALIAS, "input": "x" * (1024 * 1024)}))
    status, _, _ = curl("-H", f"Authorization: Bearer {api['OPENAI_API_KEY']}", "-H",
                        "Content-Type: application/json", "--data-binary", f"@{big}",
                        api["OPENAI_BASE_URL"] + "/embeddings")
    assert status == 413
    owner_reaches_the_backend(api)


def test_a_cors_preflight_is_refused_with_no_cors_answer(api):
    status, headers, _ = curl("-X", "OPTIONS", "-H", "Origin: http://evil.example", "-H",
                              "Access-Control-Request-Method: POST", "-H",
                              "Access-Control-Request-Headers: authorization, content-type",
                              api["OPENAI_BASE_URL"] + "/chat/completions")
    assert status in (403, 405) and not any(k.startswith("access-control-") for k in headers), headers
    # The backend's own server answers a preflight with CORS headers for any
    # origin: the owner's requests never bring them back.
    status, headers, _ = curl("-H", f"Authorization: Bearer {api['OPENAI_API_KEY']}",
                              api["OPENAI_BASE_URL"] + "/models")
    assert status == 200 and not any(k.startswith("access-control-") for k in headers), headers


def test_the_refusals_are_in_the_audit(sandbox, gateway):
    result, _ = sandbox
    deadline = time.monotonic() + 60
    while True:
        refused = [line for line in audit(gateway, result.name)["ingress_refused"] if "/v1/" in line]
        reasons = {line.split("reason=")[1].split(" ")[0] for line in refused}
        if {"no-token", "foreign-host", "token-elsewhere", "too-large", "bad-token"} <= reasons:
            break
        assert time.monotonic() < deadline, refused
        time.sleep(0.5)
    assert not any(result.token in line for line in refused)


def test_status_counts_the_owners_calls_by_client_and_model_never_their_contents(sandbox, gateway, client, api):
    """Calls of the openai package and of curl are counted by kind and
    model; refused requests are not calls."""
    result, _ = sandbox

    def counted() -> dict:
        [shown] = status(gateway, result.name)
        assert "a private word" not in json.dumps(shown)  # (status gives the token by design: not checked)
        return {(c["client"], c["model"]): c for c in shown["api_calls"]}
    empty = {"calls": 0, "failed": 0}
    # nginx logs a call once its answer has gone, so an earlier test's last
    # call may not be in the log yet: one call of a kind no other test
    # makes, seen counted, says every earlier one is.
    bearer = f"Authorization: Bearer {api['OPENAI_API_KEY']}"
    synced = counted().get(("openai-node", "-"), empty)["calls"] + 1
    curl("-H", bearer, "-A", "OpenAI/JS 4.0", api["OPENAI_BASE_URL"] + "/models")
    poll(lambda: counted().get(("openai-node", "-"), empty)["calls"] == synced, "the marker call counted", 60)
    before = counted()
    client.chat.completions.create(model=QUICKSTART_ALIAS, messages=[{"role": "user", "content": "a private word"}],
                                   max_tokens=2)
    curl("-H", bearer, api["OPENAI_BASE_URL"] + "/models")
    curl("-H", bearer, "-H", "Content-Type: application/json", "-d", json.dumps({"input": "x"}),
         api["OPENAI_BASE_URL"] + "/embeddings")  # no embedding model: 404, a call that failed
    curl(api["OPENAI_BASE_URL"] + "/models")  # refused: no call
    deadline = time.monotonic() + 60
    while True:
        after = counted()
        chats, curls = after.get(("openai-python", QUICKSTART_ALIAS), empty), after.get(("curl", "-"), empty)
        if chats["calls"] > before.get(("openai-python", QUICKSTART_ALIAS), empty)["calls"] \
                and curls["calls"] >= before.get(("curl", "-"), empty)["calls"] + 2:
            break
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.5)
    assert curls["calls"] == before.get(("curl", "-"), empty)["calls"] + 2
    assert curls["failed"] == before.get(("curl", "-"), empty)["failed"] + 1


def test_the_bearer_on_the_uis_routes_is_counted_as_a_call_and_the_browsers_cookie_is_not(sandbox, gateway, api):
    """Scripts may use the UI's own routes with the bearer: those are the
    owner's calls too (route=ui), bounded with the API's; the browser's
    requests are not calls."""
    result, _ = sandbox

    def scripts() -> dict:
        [shown] = status(gateway, result.name)
        return next((c for c in shown["api_calls"] if (c["client"], c["model"]) == ("python", "-")), {"calls": 0})
    before = scripts()["calls"]
    agent = "User-Agent: python-requests/2.32"
    assert curl("-H", agent, "-H", f"Cookie: sandbox-{result.name}={result.token}",
                result.url + "api/history")[0] == 200  # the browser's: logged before the next, never counted
    bearer = f"Authorization: Bearer {result.token}"  # the access token's: the API token opens no UI route
    assert curl("-H", agent, "-H", bearer, result.url + "api/history")[0] == 200
    poll(lambda: scripts()["calls"] >= before + 1, lambda: f"the bearer's UI call counted: {scripts()}")
    assert scripts()["calls"] == before + 1


def test_a_strangers_oversize_bodies_write_a_bounded_number_of_nginxs_own_lines(sandbox, gateway, api):
    """nginx turns away a Content-Length over the bound before any rule runs,
    and said so in its own log line for each: any local program, with no
    token, could flood the log `status` and `audit` read with them. The
    first 100 are kept; each is a refusal line (counted, bounded)."""
    result, _ = sandbox
    port = int(api["OPENAI_BASE_URL"].split(":")[2].split("/")[0])
    for path in ["/v1/chat/completions", "/"] * 60:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 500000000\r\n"
                      f"Connection: close\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 413 ")
    # Refused as a foreign Host, whose first refusals are logged (the no-token
    # ones above are past their first 100), after them.
    curl("-H", "Host: evil.example", f"http://127.0.0.1:{port}/after-the-oversize-bodies")

    def log() -> list[str]:
        return list(gateway.containers.logs(resource_name(result.name, "ingress"), tail=1000))
    poll(lambda: any("/after-the-oversize-bodies" in line for line in log()), "the last refusal logged")
    assert 0 < len([line for line in log() if "client intended to send too large body" in line]) <= 100
    assert [line for line in log() if line.startswith("ingress: refused status=413 ")]


def test_the_llm_cli_set_up_as_docs_editors_says_answers_and_is_counted_as_llm(sandbox, gateway, api, tmp_path):
    """`llm` (llm.datasette.io) with the sandbox as an OpenAI-compatible
    model, configured exactly as docs/editors.md shows: its own directory
    (LLM_USER_PATH, so the user's is never read or changed), the model in
    extra-openai-models.yaml, the token stored with `llm keys set`."""
    pytest.importorskip("llm")
    result, _ = sandbox
    directory = tmp_path / "llm"
    directory.mkdir()
    (directory / "extra-openai-models.yaml").write_text(yaml.safe_dump([{
        "model_id": "sandbox", "model_name": QUICKSTART_ALIAS, "api_base": api["OPENAI_BASE_URL"],
        "api_key_name": "sandbox",
        # llm calls through the openai package, whose User-Agent it keeps:
        # this names the client as llm in `sandbox status`.
        "headers": {"User-Agent": "llm/sandbox"}}]))
    environment = {**os.environ, "LLM_USER_PATH": str(directory)}
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LLM_OPENAI_SHOW_RESPONSES"):
        environment.pop(name, None)  # the stored key and the file alone must be enough
    llm = [sys.executable, "-m", "llm"]
    # The token on stdin, as `llm keys set` asks for it: never on a command
    # line, which every local user can read.
    subprocess.run([*llm, "keys", "set", "sandbox"], input=api["OPENAI_API_KEY"] + "\n", text=True,
                   env=environment, capture_output=True, timeout=60, check=True)

    def counted() -> int:
        [shown] = status(gateway, result.name)
        return sum(c["calls"] for c in shown["api_calls"] if c["client"] == "llm")
    before = counted()
    run = subprocess.run([*llm, "-m", "sandbox", "say hi"], env=environment, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and run.stdout.strip(), (run.returncode, run.stdout, run.stderr)
    assert api["OPENAI_API_KEY"] not in run.stdout + run.stderr
    poll(lambda: counted() == before + 1, what=lambda: f"one more llm call than {before}: {counted()}")


FLOOD_CONNECTIONS = 2100
# Request headers of 15,800 bytes: each takes one of nginx's large header buffers.
HALF_A_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\n" + b"".join(
    b"X-Filler-%d: " % i + b"a" * 15_800 + b"\r\n" for i in range(4))


@pytest.mark.skipif(os.geteuid() != 0, reason="holding the backend's server from the host takes root")
def test_half_sent_requests_with_large_headers_cannot_kill_the_ingress_under_the_owners_answer(
        sandbox, docker_client, gateway, api):
    """Tried as an attacker would, with no token: 2,100 connections, each
    sending a request line, the Host and four 15.8 KB headers and then
    nothing, while the owner's streamed answer was coming: nginx's worker was
    killed for memory (the container's 128 MiB), the owner's answer ended
    with no more bytes, and it was never counted. The answer is held at its
    first piece (the backend's server stopped) for as long as the flood is
    in place, so the flood meets it in progress."""
    import resource
    result, _ = sandbox
    port = int(api["OPENAI_BASE_URL"].split(":")[2].split("/")[0])
    backend = docker_client.containers.get(f"sandbox-{result.name}-backend")
    ingress = f"sandbox-{result.name}-ingress"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FLOOD_CONNECTIONS + 100:
        pytest.skip(f"this process may open {hard} files, fewer than the flood's connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, FLOOD_CONNECTIONS + 100), hard))

    def logged_since_start() -> list[str]:
        return list(gateway.containers.logs(ingress, tail="all"))[before:]
    before = len(list(gateway.containers.logs(ingress, tail="all")))
    answer = socket.create_connection(("127.0.0.1", port), timeout=120)
    body = json.dumps({"model": QUICKSTART_ALIAS, "messages": [{"role": "user", "content": "Tell a story."}],
                       "max_tokens": 64, "stream": True}).encode()
    answer.sendall(raw_chat(api, body))
    servers = backend_server_pids(backend)
    received = b""
    while b"data: " not in received:  # the answer has begun
        received += answer.recv(65536)
    for pid in servers:
        os.kill(pid, signal.SIGSTOP)
    flood = []
    try:
        for _ in range(FLOOD_CONNECTIONS):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                flood.append(s)
                s.sendall(HALF_A_REQUEST.replace(b"PORT", b"%d" % port))
            except OSError:
                pass
        # Held until nginx has taken all it can: it says so when a connection finds no room.
        poll(lambda: any("worker_connections are not enough" in line or "exited on signal" in line
                         for line in logged_since_start()),
             "the ingress to be full", 60)
        # And while the flood is held, each connection nginx took has its headers read into its buffers.
        poll(lambda: docker_client.api.stats(ingress, stream=False)["memory_stats"]["usage"] > 60 * 2**20
             or any("exited on signal" in line for line in logged_since_start()),
             "the flood's headers in the ingress's memory", 60)
    finally:
        for pid in servers:
            os.kill(pid, signal.SIGCONT)
    try:
        while chunk := answer.recv(65536):
            received += chunk
    finally:
        answer.close()
        for s in flood:
            s.close()
    logged = logged_since_start()
    assert not [line for line in logged if "exited on signal" in line]
    assert b"data: [DONE]" in received, received[-300:]
    assert sum("worker_connections are not enough" in line for line in logged) <= 110  # 100, then at each doubling
