"""The SandboxSpec carries every guarantee of docs/threats.md; these tests read it."""
import json
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.policy.model import Model
from launcher.spec import labels_for, resolve_gpus, spec_hash
from tests.unit.helpers import make_policy, make_spec

SPECS = {
    "cpu": lambda: make_spec(),
    "gpu": lambda: make_spec(make_policy(), gpus=("0",)),
    "custom-frontend": lambda: make_spec(make_policy(frontend=replace(
        make_policy().frontend, recipe=None, image="my-ui:1", data=None, user=1000))),
}


@pytest.mark.parametrize("variant", SPECS)
def test_every_container_is_hardened(variant):
    for c in SPECS[variant]().containers:
        assert c.cap_drop == ("ALL",), c.name
        assert "no-new-privileges:true" in c.security_opt, c.name
        assert c.read_only and not c.privileged, c.name
        if c.part == "dns":
            # The one exception: the sink starts as root with the capabilities to set up its
            # own network namespace, and gives them all up before it reads from the sandbox.
            assert c.user == "0:0" and c.cap_add == ("NET_ADMIN", "SETUID", "SETGID"), c.name
        else:
            assert not c.user.startswith("0") and c.user.split(":")[0] != "root" and not c.cap_add, c.name
        assert c.pids_limit <= 512 and c.memory and c.cpus > 0, c.name
        assert c.restart[0] == "unless-stopped", c.name
        assert any(target == "/tmp" for target, _ in c.tmpfs), c.name
        assert not any("docker.sock" in m.source for m in c.mounts), c.name
        assert c.log_max_size == "10m" and c.log_max_files == 3, c.name


def test_networks_have_no_route_out():
    spec = make_spec()
    internal, ingress = spec.networks
    # The internal network's route out leads to the sink: its gateway is an address the host does
    # not have (no address for the bridge on the host) and nothing is masqueraded.
    assert ("com.docker.network.bridge.inhibit_ipv4", "true") in internal.options
    assert ("com.docker.network.bridge.enable_ip_masquerade", "false") in internal.options
    assert internal.gateway == "10.213.7.1" and spec.container("dns").env_value("SANDBOX_SINK_GATEWAY") == "10.213.7.1"
    assert not ingress.internal and ("com.docker.network.bridge.enable_ip_masquerade", "false") in ingress.options


def test_every_container_resolves_through_the_sink_only():
    spec = make_spec()
    sink = spec.container("dns")
    assert sink.networks[0].ipv4_address == "10.213.7.53"
    assert spec.networks[0].subnet == "10.213.7.0/24"
    assert sink.cap_drop == ("ALL",) and dict(sink.sysctls) == {"net.ipv4.ip_unprivileged_port_start": "53"}
    for c in spec.containers:
        if c.part != "dns":
            assert c.dns == ("10.213.7.53",), c.name


def test_the_audit_setting_reaches_the_sink_and_changes_only_the_sink():
    default, answering = make_spec(), make_spec(make_policy(audit="connections"))
    assert default.container("dns").env_value("SANDBOX_SINK_ANSWERS") == "lookups"
    assert answering.container("dns").env_value("SANDBOX_SINK_ANSWERS") == "connections"
    assert answering.container("dns").env_value("SANDBOX_SINK_ANSWER_RANGE") == "198.18.0.0/15"
    # Its own answers must not shadow the sandbox's network: the range lies outside it.
    import ipaddress
    assert not ipaddress.ip_network("198.18.0.0/15").overlaps(ipaddress.ip_network(default.networks[0].subnet))
    changed = [c.part for c, d in zip(answering.containers, default.containers) if spec_hash(c) != spec_hash(d)]
    assert changed == ["dns"]


def test_subnet_choice_keeps_the_current_one_and_avoids_taken_ones():
    from launcher.spec import choose_subnet
    first = choose_subnet("demo", [], None)
    assert first.startswith("10.213.") and first.endswith(".0/24")
    assert choose_subnet("demo", [first], "10.213.99.0/24") == "10.213.99.0/24"
    second = choose_subnet("demo", [first, "172.17.0.0/16", "fd00::/64"], None)
    assert second != first
    with pytest.raises(ValueError):
        choose_subnet("demo", ["10.0.0.0/8"], None)


def test_only_the_ingress_touches_the_ingress_network_and_binds_loopback():
    spec = make_spec()
    for c in spec.containers:
        networks = [a.network for a in c.networks]
        if c.part == "ingress":
            assert networks == ["sandbox-demo-ingress", "sandbox-demo-internal"]
            # UDP too, held where nothing listens (a page's WebTransport to its own origin would go there).
            assert [(p.host_ip, p.host_port, p.protocol) for p in c.ports] == [("127.0.0.1", 18080, "tcp"),
                                                                               ("127.0.0.1", 18080, "udp")]
        else:
            assert networks == ["sandbox-demo-internal"]
            assert c.ports == ()
    assert spec.url == "http://127.0.0.1:18080/"


def test_weights_are_mounted_read_only_and_only_into_the_backend():
    spec = make_spec()
    backend = spec.container("backend")
    assert [(m.source, m.target, m.read_only) for m in backend.mounts] == [
        ("/models/tiny.gguf", "/models/tiny.gguf", True), ("/models/other.gguf", "/models/other.gguf", True)]
    assert all(m.kind == "volume" for m in spec.container("frontend").mounts)
    assert spec.container("ingress").mounts == ()


def test_the_backend_keeps_no_logits_of_the_whole_context():
    """Kept (the server's default), they are the context times the
    vocabulary; a call with logprobs over a long prompt had the backend
    killed for its memory."""
    config = json.loads(make_spec(with_embeddings()).container("backend").env_value("SANDBOX_BACKEND_CONFIG"))
    assert [m["logits_all"] for m in config["models"]] == [False, False]
    assert config["embeddings"]["model"]["logits_all"] is False


def test_backend_config_serves_every_model():
    config = json.loads(make_spec().container("backend").env_value("SANDBOX_BACKEND_CONFIG"))
    assert [(m["model_alias"], m["n_ctx"], m["n_gpu_layers"]) for m in config["models"]] == [
        ("tiny", 2048, 0), ("other", 4096, 0)]
    assert config["models"][1]["chat_format"] == "chatml"
    assert "api_key" not in config  # the key travels apart, so it stays out of hashes
    # A stream is not cut short by the next request (the health check's every 2 s).
    assert config["interrupt_requests"] is False


def test_the_backend_is_given_the_sha256_of_each_file_it_mounts():
    backend = make_spec().container("backend")
    config = json.loads(backend.env_value("SANDBOX_BACKEND_CONFIG"))
    assert [(m["model"], m["sha256"]) for m in config["models"]] == [(m.target, m.sha256) for m in backend.mounts]
    assert all(len(m["sha256"]) == 64 for m in config["models"])


def test_frontend_gets_backend_url_and_key_and_nothing_overrides_them():
    f = make_spec(api_key="secret").container("frontend")
    assert f.env_value("OPENAI_API_BASE_URL") == "http://backend:8000/v1"
    assert f.env_value("OPENAI_API_KEY") == "secret"
    assert f.env_value("THEME") == "dark"


def test_open_webui_recipe_locks_its_offline_switches():
    policy = make_policy(frontend=replace(make_policy().frontend, recipe="open-webui",
                                          env=(("OFFLINE_MODE", "false"),)))
    f = make_spec(policy).container("frontend")
    assert f.env_value("OFFLINE_MODE") == "true"
    assert f.env_value("ENABLE_PERSISTENT_CONFIG") == "False"


def test_open_webuis_owner_is_a_user_signed_in_by_the_ingress_and_no_other_ui_is_told_who():
    """Open WebUI makes its first account an admin, to whom it shows Attach
    Webpage and dictation whatever its switches say: the owner is a user,
    named by the ingress's headers, which a policy cannot point elsewhere."""
    policy = make_policy(frontend=replace(make_policy().frontend, recipe="open-webui", env=(
        ("WEBUI_AUTH_TRUSTED_EMAIL_HEADER", "X-Forwarded-User"), ("WEBUI_AUTH_TRUSTED_ROLE_HEADER", ""))))
    spec = make_spec(policy)
    f, ingress = spec.container("frontend"), spec.container("ingress")
    assert f.env_value("WEBUI_AUTH_TRUSTED_EMAIL_HEADER") == "X-Sandbox-User"
    assert f.env_value("WEBUI_AUTH_TRUSTED_ROLE_HEADER") == "X-Sandbox-Role"
    assert (ingress.env_value("SANDBOX_UI_USER"), ingress.env_value("SANDBOX_UI_ROLE")) == ("admin@localhost", "user")
    assert make_spec().container("ingress").env_value("SANDBOX_UI_USER") is None


def test_gpus_go_to_the_backend_only():
    spec = make_spec(gpus=("0", "2"))
    backend = spec.container("backend")
    assert backend.gpus == ("0", "2") and backend.gpu_capabilities == ("compute", "utility")
    assert json.loads(backend.env_value("SANDBOX_BACKEND_CONFIG"))["models"][0]["n_gpu_layers"] == -1
    assert all(c.gpus is None for c in spec.containers if c.part != "backend")


@pytest.mark.parametrize("asked, engine_has_gpu, gets", [
    ("auto", True, "all"), ("auto", False, None), ("none", True, None), ("all", False, "all"),
    (("1",), True, ("1",))])
def test_resolve_gpus(asked, engine_has_gpu, gets):
    policy = make_policy(backend=replace(make_policy().backend, gpu=asked))
    assert resolve_gpus(policy, engine_has_gpu) == gets


def test_hash_holds_no_secret_value_but_tells_when_the_shared_key_changed():
    a, b = make_spec(api_key="one" * 11), make_spec(api_key="two" * 11)
    assert "one" * 11 not in json.dumps([labels_for(a, c) for c in a.containers])
    changed = [c.part for c, d in zip(a.containers, b.containers) if spec_hash(c) != spec_hash(d)]
    assert changed == ["backend", "frontend", "ingress"]
    assert a.container("backend").env_value("SANDBOX_API_KEY_ID") == a.container("frontend").env_value(
        "SANDBOX_API_KEY_ID") == a.container("ingress").env_value("SANDBOX_API_KEY_ID")
    changed = make_spec(make_policy(backend=replace(make_policy().backend, cpus=3.0)), api_key="one" * 11)
    assert spec_hash(changed.container("backend")) != spec_hash(a.container("backend"))
    assert spec_hash(changed.container("frontend")) == spec_hash(a.container("frontend"))


def test_the_ingress_asks_the_backend_with_its_own_key_kept_out_of_the_hash():
    """For the API at the front door (/v1/): the ingress is given the key
    the backend and the front-end share, never the other way round."""
    spec = make_spec(api_key="shared" * 8, token="a" * 43)
    ingress = spec.container("ingress")
    assert ingress.env_value("SANDBOX_API_UPSTREAM") == "backend:8000"
    assert ingress.env_value("SANDBOX_API_KEY") == spec.container("backend").env_value("SANDBOX_API_KEY")
    assert "SANDBOX_API_KEY" in ingress.secret_env
    assert "shared" * 8 not in json.dumps([spec_hash(c) for c in spec.containers])
    assert all("a" * 43 not in json.dumps(c.env) for c in spec.containers if c.part != "ingress")


def test_the_ingress_knows_the_sandbox_origin_and_token_but_the_hash_does_not_hold_the_token():
    spec = make_spec(token="a" * 43)
    ingress = spec.container("ingress")
    assert ingress.env_value("SANDBOX_NAME") == "demo"
    assert ingress.env_value("SANDBOX_PUBLIC_PORT") == "18080"
    assert ingress.env_value("SANDBOX_ACCESS_TOKEN") == "a" * 43
    assert "SANDBOX_ACCESS_TOKEN" in ingress.secret_env
    assert "a" * 43 not in json.dumps([spec_hash(c) for c in spec.containers])
    # Only the front door's token: no other part is given it.
    assert all("a" * 43 not in dict(c.env).values() for c in spec.containers if c.part != "ingress")
    # A new token recreates the ingress (and nothing else).
    other = make_spec(token="b" * 43)
    changed = [c.part for c, o in zip(spec.containers, other.containers) if spec_hash(c) != spec_hash(o)]
    assert changed == ["ingress"]


def with_embeddings(recipe="open-webui", **frontend):
    base = make_policy()
    embedder = Model("embed", Path("/models/embed.gguf"), "2" * 64, 512, None, role="embeddings")
    return make_policy(models=base.models + (embedder,),
                       frontend=replace(base.frontend, recipe=recipe, **frontend))


def test_the_embedding_model_has_a_server_of_its_own_with_the_same_checks():
    backend = make_spec(with_embeddings()).container("backend")
    config = json.loads(backend.env_value("SANDBOX_BACKEND_CONFIG"))
    # Not a chat model: the chat server never loads it, so documents never make the chat model reload.
    assert [m["model_alias"] for m in config["models"]] == ["tiny", "other"]
    assert config["embeddings"]["port"] == 8001 and config["embeddings"]["port"] != config["port"]
    model = config["embeddings"]["model"]
    assert (model["model_alias"], model["n_ctx"], model["embedding"]) == ("embed", 512, True)
    # Mounted read-only like every model, with the sha256 the backend checks it against.
    [mount] = [m for m in backend.mounts if m.target == model["model"]]
    assert mount.read_only and mount.kind == "bind" and mount.sha256 == model["sha256"] == "2" * 64


def test_the_ingress_sends_embeddings_to_the_embedding_server_only_where_the_policy_has_one():
    assert make_spec(with_embeddings()).container("ingress").env_value("SANDBOX_EMBEDDINGS_UPSTREAM") == "backend:8001"
    # None: the ingress answers /v1/embeddings itself (images/ingress/nginx.conf.template).
    assert make_spec().container("ingress").env_value("SANDBOX_EMBEDDINGS_UPSTREAM") is None


def test_open_webui_gets_the_embedding_server_locked_and_its_key_as_a_secret():
    f = make_spec(with_embeddings(env=(("RAG_OPENAI_API_BASE_URL", "https://api.openai.com/v1"),)),
                  api_key="secret").container("frontend")
    assert f.env_value("RAG_OPENAI_API_BASE_URL") == "http://backend:8001/v1"
    assert f.env_value("RAG_OPENAI_API_KEY") == "secret" and "RAG_OPENAI_API_KEY" in f.secret_env
    assert f.env_value("RAG_EMBEDDING_MODEL") == "embed" and f.env_value("RAG_EMBEDDING_ENGINE") == "openai"
    assert f.env_value("VECTOR_DB") == "chroma"  # in its data volume, not a database outside
    assert f.env_value("SANDBOX_EMBEDDINGS_BASE_URL") == "http://backend:8001/v1"


def test_open_webui_searches_a_document_with_the_users_message_unless_the_policy_says_otherwise():
    # Query generation by the chat model is off by default (the quick-start
    # model's queries came back empty: nothing retrieved); not a lock.
    f = make_spec(with_embeddings()).container("frontend")
    assert f.env_value("ENABLE_RETRIEVAL_QUERY_GENERATION") == "false"
    f = make_spec(with_embeddings(env=(("ENABLE_RETRIEVAL_QUERY_GENERATION", "true"),))).container("frontend")
    assert f.env_value("ENABLE_RETRIEVAL_QUERY_GENERATION") == "true"
    # Open WebUI's alone: no other UI is given it.
    assert make_spec().container("frontend").env_value("ENABLE_RETRIEVAL_QUERY_GENERATION") is None


def test_open_webui_takes_attach_webpage_out_of_its_users_menu_unless_the_policy_says_otherwise():
    f = make_spec(with_embeddings()).container("frontend")
    assert json.loads(f.env_value("UI_VISIBILITY")) == {"chat.attach_webpage": False}
    f = make_spec(with_embeddings(env=(("UI_VISIBILITY", '{"chat.compare": false}'),))).container("frontend")
    assert f.env_value("UI_VISIBILITY") == '{"chat.compare": false}'
    assert make_spec().container("frontend").env_value("UI_VISIBILITY") is None


def test_open_webui_without_an_embedding_model_still_never_points_its_documents_at_a_cloud():
    policy = make_policy(frontend=replace(make_policy().frontend, recipe="open-webui"))
    f = make_spec(policy).container("frontend")
    assert f.env_value("RAG_OPENAI_API_BASE_URL") == "http://backend:8000/v1"
    assert f.env_value("RAG_EMBEDDING_MODEL") is None and f.env_value("SANDBOX_EMBEDDINGS_MODEL") is None
    assert "embeddings" not in json.loads(make_spec(policy).container("backend").env_value("SANDBOX_BACKEND_CONFIG"))


def test_a_frontend_of_ones_own_gets_the_embedding_server_and_alias():
    f = make_spec(with_embeddings(recipe=None, image="my-ui:1")).container("frontend")
    assert f.env_value("SANDBOX_EMBEDDINGS_BASE_URL") == "http://backend:8001/v1"
    assert f.env_value("SANDBOX_EMBEDDINGS_MODEL") == "embed"
    assert f.env_value("RAG_OPENAI_API_BASE_URL") is None


# Open WebUI's features that reach past the sandbox by default: each group is
# set by the recipe (below: to what) whatever a policy asks, and a policy that
# names one of them is refused. The values a policy tries are the ones that
# would turn the feature back on.
OPEN_WEBUI_POLICY = """version: 1
name: locks
models:
  - alias: tiny
    path: ../models/tiny.gguf
    sha256: a72e6bbd78ef78a366bec092d08c37f0fac9e649d452a61eed6434409d2ecb46
frontend:
  recipe: open-webui
  env:
{env}ingress:
  port: 18080
"""


# Each networked feature of Open WebUI that the recipe locks off (docs/frontends.md):
# the recipe's values, and what a policy tries instead (a switch turned on, or,
# where given, a cloud engine or an outside address).
OPEN_WEBUI_LOCKS = {
    "web search and fetching a web page": {
        "ENABLE_WEB_SEARCH": "false", "USER_PERMISSIONS_FEATURES_WEB_SEARCH": "false",
        "USER_PERMISSIONS_CHAT_WEB_UPLOAD": "false"},
    "image generation and editing": {
        "ENABLE_IMAGE_GENERATION": "false", "ENABLE_IMAGE_EDIT": "false",
        "USER_PERMISSIONS_FEATURES_IMAGE_GENERATION": "false"},
    "code execution and the code interpreter": {
        "ENABLE_CODE_EXECUTION": "false", "ENABLE_CODE_INTERPRETER": "false",
        "USER_PERMISSIONS_FEATURES_CODE_INTERPRETER": "false"},
    "speech to text: no cloud engine, no model to download": {
        "AUDIO_STT_ENGINE": ("", "openai"), "WHISPER_MODEL": ("", "base"), "WHISPER_MODEL_AUTO_UPDATE": "false",
        "USER_PERMISSIONS_CHAT_STT": "false"},
    "text to speech and voice calls: no server engine": {
        "AUDIO_TTS_ENGINE": ("", "transformers"), "AUDIO_REALTIME_ENABLED": "false",
        "USER_PERMISSIONS_CHAT_TTS": "false", "USER_PERMISSIONS_CHAT_CALL": "false"},
    "direct connections": {
        "ENABLE_DIRECT_CONNECTIONS": "false", "ENABLE_DIRECT_INTEGRATIONS": "false",
        "USER_PERMISSIONS_FEATURES_DIRECT_TOOL_SERVERS": "false"},
    "tool and terminal servers, none can be added": {
        "ENABLE_TOOL_SERVERS": "false",
        "TOOL_SERVER_CONNECTIONS": ("[]", '[{"url": "https://tools.example.com", "type": "openapi"}]'),
        "TERMINAL_SERVER_CONNECTIONS": ("[]", '[{"url": "https://terminal.example.com"}]')},
    "Google Drive and OneDrive": {
        "ENABLE_GOOGLE_DRIVE_INTEGRATION": "false", "ENABLE_ONEDRIVE_INTEGRATION": "false"},
    "webhooks for sign-ups or chats": {
        "WEBHOOK_URL": ("", "https://hooks.example.com/signups"), "ENABLE_USER_WEBHOOKS": "false",
        "USER_PERMISSIONS_FEATURES_USER_WEBHOOKS": "false"},
    "sign-in through an outside provider or directory": {
        "ENABLE_OAUTH": "false", "ENABLE_OAUTH_SIGNUP": "false", "ENABLE_LDAP": "false"},
    "uploads kept in its volume, no telemetry exported": {
        "STORAGE_PROVIDER": ("local", "s3"), "ENABLE_OTEL": "false"},
}


@pytest.mark.parametrize("feature", OPEN_WEBUI_LOCKS)
def test_an_open_webui_feature_that_reaches_for_the_network_is_off_and_stays_off(tmp_path, feature):
    from launcher.policy import check_policy_file
    from launcher.recipes import FRONTEND_RECIPES
    pairs = {name: value if isinstance(value, tuple) else (value, "true")
             for name, value in OPEN_WEBUI_LOCKS[feature].items()}
    locked = {name: pair[0] for name, pair in pairs.items()}
    tried = {name: pair[1] for name, pair in pairs.items()}
    recipe = FRONTEND_RECIPES["open-webui"]
    assert {name: recipe.locked_env.get(name) for name in locked} == locked
    assert set(locked) <= recipe.locked_names
    # In the spec: the recipe's value, over whatever the policy's env said.
    policy = make_policy(frontend=replace(make_policy().frontend, recipe="open-webui", env=tuple(tried.items())))
    f = make_spec(policy).container("frontend")
    assert {name: f.env_value(name) for name in locked} == locked
    # In validation: a policy that names one is refused, each at its own line.
    path = tmp_path / "p.yaml"
    path.write_text(OPEN_WEBUI_POLICY.format(env="".join(f"    {k}: {json.dumps(v)}\n" for k, v in tried.items())))
    policy, problems = check_policy_file(path, check_port=False, check_model_files=False)
    assert policy is None
    assert sorted((p.field, p.message) for p in problems) == sorted(
        (f"frontend.env.{name}", "is fixed by the open-webui recipe to keep it offline; remove it") for name in tried)


def test_the_ingress_can_hold_its_most_connections_within_its_memory():
    """Tried as an attacker would: 2,100 connections of a local program,
    each half a request with four 15.8 KB headers, filled the header buffers
    of nginx's 2,048 connections (136 MiB) past the ingress's 128 MiB: its
    worker was killed for memory, and the owner's answer in progress with
    it. Every connection nginx takes may hold its buffers at once; with its
    /tmp (a tmpfs, counted in the same memory) and 24 MiB for nginx itself,
    that must fit."""
    import re
    from launcher.spec import memory_bytes
    template = (Path(__file__).resolve().parents[2] / "images" / "ingress" / "nginx.conf.template").read_text()
    kib = {"k": 1024, "m": 1024 * 1024}

    def size(text: str) -> int:
        return int(text[:-1]) * kib[text[-1]]
    connections = int(re.search(r"worker_connections (\d+);", template)[1])
    first = size(re.search(r"client_header_buffer_size (\d+[km]);", template)[1])
    count, large = re.search(r"large_client_header_buffers (\d+) (\d+[km]);", template).groups()
    ingress = make_spec(make_policy()).container("ingress")
    tmpfs = memory_bytes(dict(ingress.tmpfs)["/tmp"].rpartition("size=")[2])
    worst = connections * (first + int(count) * size(large)) + tmpfs + 24 * 2**20
    assert worst <= memory_bytes(ingress.memory), f"{worst / 2**20:.0f} MiB"


def test_the_published_ports_read_back_tcp_first_and_udp_marked():
    """As `status`, `open` and `verify` read the ingress's bindings: the TCP
    one first and as "IP:PORT", whatever order the engine gives."""
    from launcher.engine.state import _published
    attrs = {"HostConfig": {"PortBindings": {"8080/udp": [{"HostIp": "127.0.0.1", "HostPort": "3000"}],
                                             "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "3000"}]}}}
    assert _published(attrs) == ["127.0.0.1:3000", "127.0.0.1:3000/udp"]
    assert _published({"HostConfig": {"PortBindings": None}}) == []
