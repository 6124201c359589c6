"""`sandbox render`: every policy in policies/ (and variants with a GPU, gVisor
and a front-end image of the user's) rendered for Kubernetes and compose,
checked offline against Kubernetes' own schemas, Pod Security `restricted`,
the network rules, and `docker-compose config`; and what the outputs grant,
part by part, equal to what the spec grants."""
import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from launcher.policy import load_policy
from launcher.render import compose, compose_text, kubernetes, render, spec_for
from launcher.spec import LABEL_HASH, spec_hash
from tests.conftest import FIXTURES
from tests.support import grants

kubernetes_validate = pytest.importorskip("kubernetes_validate")
ROOT = FIXTURES.parents[1]
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))


def variants(tmp_path: Path) -> list[tuple[Path, int]]:
    """Each vetted policy, and the quick start with a GPU, gVisor, and a UI image."""
    out = [(p, 0) for p in POLICIES]
    base = yaml.safe_load((ROOT / "policies" / "quickstart.yaml").read_text())
    for name, change, gpus in (("gpu", {"backend": {"gpu": "all", "memory": "8g"}}, 1),
                               ("gvisor", {"frontend": {"recipe": "chat", "runtime": "gvisor"}}, 0),
                               ("image", {"frontend": {"image": "my-ui:1.0", "port": 3000, "data": "/data"}}, 0)):
        policy = copy.deepcopy(base)
        policy.update(change)
        policy["name"] = name
        policy["models"][0]["path"] = str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(policy))
        out.append((path, gpus))
    return out


def quick_start(rendered):
    """The quick start's renders: a sandbox with every part (policies/ also
    holds one with no front-end)."""
    return next(r for r in rendered if Path(r[0]).name == "quickstart.yaml")


@pytest.fixture
def rendered(tmp_path):
    out = []
    for path, gpus in variants(tmp_path):
        policy = load_policy(path, check_port=False, check_model_files=False)
        spec = spec_for(policy, gpus)
        files = {f"/models/{m.alias}.gguf": m.path.name for m in policy.models}
        objects = kubernetes.render(spec, kubernetes.KubeOptions(model_volume="models", gpus=gpus), files)
        out.append((path.name, spec, objects, compose.render(spec)))
    return out


def test_every_manifest_passes_the_kubernetes_schema(rendered):
    version = kubernetes_validate.utils.latest_version()
    for name, _, objects, _ in rendered:
        for o in objects:
            kubernetes_validate.validate(o, version, strict=True)  # raises on any unknown or wrong field
    # Control: the validator does refuse a wrong manifest.
    broken = copy.deepcopy(next(o for o in quick_start(rendered)[2] if o["kind"] == "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def restricted_violations(pod: dict) -> list[str]:
    """Pod Security Standards `restricted` (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    bad = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            bad.append(key)
    pod_context = pod.get("securityContext", {})
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            bad.append(f"sysctl {sysctl['name']}")
    for volume in pod.get("volumes", []):
        if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
            bad.append(f"volume {volume['name']}")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        context = {**pod_context, **c.get("securityContext", {})}
        if context.get("privileged"):
            bad.append(f"{c['name']}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{c['name']}: allowPrivilegeEscalation")
        if context.get("runAsNonRoot") is not True or context.get("runAsUser") == 0:
            bad.append(f"{c['name']}: runAsNonRoot")
        if (context.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{c['name']}: seccompProfile")
        caps = context.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{c['name']}: capabilities")
        if c.get("ports") and any(p.get("hostPort") for p in c["ports"]):
            bad.append(f"{c['name']}: hostPort")
    return bad


def test_every_pod_meets_pod_security_restricted_and_is_hardened_as_on_docker(rendered):
    for name, spec, objects, _ in rendered:
        [namespace] = [o for o in objects if o["kind"] == "Namespace"]
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        for d in (o for o in objects if o["kind"] == "Deployment"):
            pod = d["spec"]["template"]["spec"]
            assert restricted_violations(pod) == [], (name, d["metadata"]["name"])
            assert pod["automountServiceAccountToken"] is False and pod["dnsConfig"]["nameservers"] == ["127.0.0.1"]
            for c in pod["containers"] + pod.get("initContainers", []):
                assert c["securityContext"]["readOnlyRootFilesystem"] is True
                assert c["resources"]["limits"] == {k: v for k, v in c["resources"]["requests"].items()} or \
                    "nvidia.com/gpu" in c["resources"]["limits"]
            part = d["metadata"]["name"]
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert labels[LABEL_HASH] == spec_hash(spec.container(part))  # tied to the spec it came from
    # Control: the check does see a privileged pod with a host path.
    assert len(restricted_violations({"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
                                      "containers": [{"name": "x", "securityContext": {"privileged": True}}]})) >= 6


def test_the_weights_are_read_only_and_checked_before_the_backend_starts(rendered):
    """The backend checks each file it loads against the sha256 in its
    configuration, at every start (images/llama-cpp/backend.py): on every
    target, that configuration carries the policy's sha256 for the file
    mounted at that path."""
    _, spec, objects, compose_file = quick_start(rendered)
    backend = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "backend")
    pod = backend["spec"]["template"]["spec"]
    model = spec.container("backend").mounts[0]
    [env] = [e["value"] for e in pod["containers"][0]["env"] if e["name"] == "SANDBOX_BACKEND_CONFIG"]
    for config in (env, compose_file["services"]["backend"]["environment"]["SANDBOX_BACKEND_CONFIG"]):
        assert [(m["model"], m["sha256"]) for m in json.loads(config)["models"]] == [(model.target, model.sha256)]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "models"]
    assert mount == {"name": "models", "mountPath": model.target, "subPath": Path(model.source).name,
                     "readOnly": True}
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]


def test_no_pod_reaches_anything_but_its_peers(rendered):
    for name, _, objects, _ in rendered:
        policies = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy"]
        assert {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]} in policies, name
        for p in policies:
            for rule in p.get("egress", []) + p.get("ingress", []):
                for peer in rule.get("to", []) + rule.get("from", []):
                    # Only pods of this namespace: no ipBlock (the internet, the API server), no
                    # namespaceSelector (kube-dns, other namespaces).
                    assert set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"], (name, peer)
                assert "ports" not in rule or rule["ports"]


def test_secrets_are_in_the_secret_only(rendered):
    _, spec, objects, _ = quick_start(rendered)
    [secret] = [o for o in objects if o["kind"] == "Secret"]
    values = set(secret["stringData"].values())
    assert len(values) == 3
    text = yaml.safe_dump_all([o for o in objects if o["kind"] != "Secret"])
    assert not any(v in text for v in values)


def test_the_outputs_grant_what_the_spec_grants(rendered):
    for name, spec, objects, compose_file in rendered:
        intended = grants.from_spec(spec)
        assert grants.from_kubernetes(objects) == grants.on_kubernetes(intended), name
        assert grants.from_compose(compose_file) == intended, name
    # Control: a manifest that grants more is told apart.
    _, spec, objects, compose_file = quick_start(rendered)
    looser = copy.deepcopy(objects)
    frontend = next(o for o in looser if o["kind"] == "Deployment" and o["metadata"]["name"] == "frontend")
    frontend["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    assert grants.from_kubernetes(looser) != grants.from_spec(spec)
    wider = copy.deepcopy(compose_file)
    wider["services"]["backend"]["cap_add"] = ["NET_RAW"]
    assert grants.from_compose(wider)["backend"].capabilities == {"NET_RAW"}


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="needs docker-compose (Debian: apt-get install "
                                                                "docker-compose); .ci/run installs it")
def test_every_compose_file_passes_docker_compose_config(tmp_path, rendered):
    # From the spec, as `render` writes it, without the model files `render`
    # checks for compose: the unit suite runs before any model is fetched.
    for name, spec, _, _ in rendered:
        text = compose_text(spec)
        out = tmp_path / f"{Path(name).stem}.compose.yaml"
        out.write_text(text)
        run = subprocess.run(["docker-compose", "-f", str(out), "config", "-q"], capture_output=True, text=True,
                             check=False)
        assert run.returncode == 0, (name, run.stderr)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("read_only: true", "read_only: maybe", 1))
    assert subprocess.run(["docker-compose", "-f", str(bad), "config", "-q"], capture_output=True,
                          check=False).returncode != 0


def test_the_embedding_server_is_reached_at_its_own_port_on_a_cluster_too(rendered):
    [(_, spec, objects, _)] = [r for r in rendered if r[0] == "open-webui.yaml"]
    [service] = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "backend"]
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 8000), ("embeddings", 8001)]
    [deployment] = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "frontend"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RAG_OPENAI_API_BASE_URL"]["value"] == "http://$(BACKEND_SERVICE_HOST):8001/v1"
    assert "secretKeyRef" in env["RAG_OPENAI_API_KEY"]["valueFrom"]
