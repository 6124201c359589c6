"""SandboxSpec -> Kubernetes manifests with the same isolation as on Docker
(docs/kubernetes.md). Pure: a list of objects, in the order to apply them.

How each guarantee is carried over:
- the wall: a Namespace enforcing Pod Security `restricted`, a default-deny
  NetworkPolicy for ingress and egress, and one allow among the parts that
  share the internal network on Docker; so no pod reaches kube-dns, the API
  server, another namespace or the internet;
- names without DNS: a part finds its peer by the address Kubernetes puts
  in its environment (`$(BACKEND_SERVICE_HOST)`), and every lookup goes to a
  DNS sink beside it in its pod (127.0.0.1), which answers nothing and logs;
- hardening: the same user, read-only root, no capabilities, no privilege
  escalation, the runtime's seccomp profile, memory and CPU limits, /tmp in
  memory, no service account token;
- the weights: read-only from the volume the user names, checked by sha256
  by the backend itself each time it starts, as on Docker (images/llama-cpp);
- secrets: the API key, session key and access token in a Secret;
- the front door: the ingress Service is cluster-internal; the owner reaches
  it with `kubectl port-forward` on 127.0.0.1, with the access token."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from launcher.access import TOKEN_ENV
from launcher.spec import (BACKEND_ALIAS, FRONTEND_ALIAS, INTERNAL_SUBNET_ENV, LABEL_HASH, LABEL_PART,
                           LABEL_SANDBOX, NOBODY, ContainerSpec, SandboxSpec, spec_hash)

NAMESPACE_PREFIX = "sandbox-"
LABEL_INTERNAL = "io.sandbox.internal"
ANNOTATION_POLICY = "io.sandbox/policy"
SECRET = "sandbox-secrets"
# Env names whose values are secrets -> the key in the Secret.
SECRET_KEYS = {"SANDBOX_API_KEY": "api-key", "SANDBOX_SESSION_KEY": "session-key", TOKEN_ENV: "access-token"}
SERVED = ("backend", "frontend", "ingress")  # parts that are pods; the DNS sink rides in each


@dataclass(frozen=True)
class KubeOptions:
    model_volume: str  # a PersistentVolumeClaim in the namespace holding the model files by name
    image_prefix: str = ""  # where the cluster pulls the images from: REGISTRY/PATH/
    gpus: int = 0  # nvidia.com/gpu for the backend
    data_size: str = "1Gi"


def namespace(spec: SandboxSpec) -> str:
    return NAMESPACE_PREFIX + spec.name


def render(spec: SandboxSpec, options: KubeOptions, model_files: dict[str, str]) -> list[dict]:
    """`model_files` maps each model mount's target to its file name in the volume."""
    ns = namespace(spec)
    labels = {LABEL_SANDBOX: spec.name}
    objects: list[dict] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": ns, "labels": {**labels,
                                             "pod-security.kubernetes.io/enforce": "restricted",
                                             "pod-security.kubernetes.io/enforce-version": "latest",
                                             "pod-security.kubernetes.io/warn": "restricted",
                                             "pod-security.kubernetes.io/audit": "restricted"},
                      "annotations": {ANNOTATION_POLICY: spec.policy_file}}},
        _secret(spec, ns, labels),
        *_network_policies(ns, labels),
    ]
    # An API-only sandbox (`frontend: none`) has no front-end, nor its data.
    served = [part for part in SERVED if any(c.part == part for c in spec.containers)]
    if any(m.kind == "volume" for c in spec.containers if c.part == "frontend" for m in c.mounts):
        objects.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "data", "namespace": ns, "labels": {**labels, LABEL_PART: "data"}},
                        "spec": {"accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": options.data_size}}}})
    # Services first: a pod gets the addresses of the Services that exist when it starts.
    for part in served:
        ports = [{"name": name, "port": port, "targetPort": port, "protocol": "TCP"}
                 for name, port in _ports(spec, part)]
        objects.append({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": part, "namespace": ns, "labels": {**labels, LABEL_PART: part}},
                        "spec": {"type": "ClusterIP", "selector": {**labels, LABEL_PART: part}, "ports": ports}})
    for part in served:
        objects.append(_deployment(spec, spec.container(part), ns, labels, options, model_files))
    return objects


def _ports(spec: SandboxSpec, part: str) -> list[tuple[str, int]]:
    """The ports a part serves, by name: the backend's embedding server's too."""
    if part == "backend":
        config = json.loads(spec.container("backend").env_value("SANDBOX_BACKEND_CONFIG"))
        embeddings = config.get("embeddings")
        return [("http", int(config["port"]))] + ([("embeddings", int(embeddings["port"]))] if embeddings else [])
    if part == "frontend":
        return [("http", int(spec.container("ingress").env_value("SANDBOX_UPSTREAM").rsplit(":", 1)[1]))]
    return [("http", int(spec.container("ingress").env_value("SANDBOX_LISTEN_PORT")))]


def secret_keys(spec: SandboxSpec) -> dict[str, str]:
    """Each secret value of the spec -> its key in the Secret. A part may
    know a secret under its own variable name (the UI's OPENAI_API_KEY is the
    backend's SANDBOX_API_KEY)."""
    keys = {}
    for c in spec.containers:
        for name in c.secret_env:
            if name in SECRET_KEYS and c.env_value(name) is not None:
                keys[c.env_value(name)] = SECRET_KEYS[name]
    return keys


def _secret(spec: SandboxSpec, ns: str, labels: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": SECRET, "namespace": ns, "labels": labels},
            "stringData": {key: value for value, key in sorted(secret_keys(spec).items(), key=lambda kv: kv[1])}}


def _network_policies(ns: str, labels: dict) -> list[dict]:
    internal = {"matchLabels": {**labels, LABEL_INTERNAL: "true"}}
    return [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "default-deny", "namespace": ns, "labels": labels},
         "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
        # As on Docker's internal network: the parts reach each other, nothing else.
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "internal", "namespace": ns, "labels": labels},
         "spec": {"podSelector": internal, "policyTypes": ["Ingress", "Egress"],
                  "ingress": [{"from": [{"podSelector": internal}]}],
                  "egress": [{"to": [{"podSelector": internal}]}]}},
    ]


def _deployment(spec: SandboxSpec, c: ContainerSpec, ns: str, labels: dict, options: KubeOptions,
                model_files: dict[str, str]) -> dict:
    uid, gid = (int(x) for x in c.user.split(":"))
    pod_labels = {**labels, LABEL_PART: c.part, LABEL_HASH: spec_hash(c), LABEL_INTERNAL: "true"}
    volumes: list[dict] = []
    main = _container(c, c.part, options, volumes, secret_keys(spec))
    if c.part == "backend":
        main["readinessProbe"] = {"exec": {"command": list(c.healthcheck[1:])}, "periodSeconds": 5,
                                  "failureThreshold": 3}
    model_mounts = [m for m in c.mounts if m.kind == "bind"]
    if model_mounts:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": options.model_volume,
                                                                   "readOnly": True}})
        main["volumeMounts"] += [{"name": "models", "mountPath": m.target, "subPath": model_files[m.target],
                                  "readOnly": True} for m in model_mounts]
    for m in c.mounts:
        if m.kind == "volume":
            volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": "data"}})
            main["volumeMounts"].append({"name": "data", "mountPath": m.target})
    if options.gpus and c.gpus:
        main["resources"]["limits"]["nvidia.com/gpu"] = str(options.gpus)
    # Pod Security `restricted` allows no added capability: on a cluster the
    # sink is the DNS sink only, unprivileged, and the NetworkPolicies are
    # what stops connections (docs/kubernetes.md, "What is not covered").
    sink = _container(replace(spec.container("dns"), user=NOBODY, cap_add=()), "dns", options, volumes, {})
    for m in spec.container("dns").mounts:  # its records: for the pod's life (`kubectl logs -c dns` has them too)
        volumes.append({"name": "audit", "emptyDir": {"sizeLimit": "64Mi"}})
        sink["volumeMounts"].append({"name": "audit", "mountPath": m.target})
    pod = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": True,  # the peers' addresses, in place of DNS
        "dnsPolicy": "None",
        "dnsConfig": {"nameservers": ["127.0.0.1"], "searches": [], "options": [{"name": "ndots", "value": "1"}]},
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid, "fsGroup": gid,
                            "seccompProfile": {"type": "RuntimeDefault"},
                            # The sink listens on port 53 without a capability, as on Docker.
                            "sysctls": [{"name": k, "value": v} for k, v in spec.container("dns").sysctls]},
        "containers": [main, sink],
        "volumes": volumes,
    }
    if c.runtime == "runsc":
        pod["runtimeClassName"] = "gvisor"
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": c.part, "namespace": ns, "labels": {**labels, LABEL_PART: c.part}},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": {**labels, LABEL_PART: c.part}},
                     "template": {"metadata": {"labels": pod_labels}, "spec": pod}}}


def _container(c: ContainerSpec, name: str, options: KubeOptions, volumes: list[dict],
               secrets: dict[str, str]) -> dict:
    uid, gid = (int(x) for x in c.user.split(":"))
    mounts = []
    for i, (target, opts) in enumerate(c.tmpfs):
        volume = f"{name}-tmp{i}"
        size = re.search(r"size=(\d+)([kmg])", opts)
        limit = f"{size[1]}{ {'k': 'Ki', 'm': 'Mi', 'g': 'Gi'}[size[2]] }" if size else None
        volumes.append({"name": volume, "emptyDir": {"medium": "Memory", **({"sizeLimit": limit} if limit else {})}})
        mounts.append({"name": volume, "mountPath": target})
    env = []
    for key, value in c.env:
        if key == INTERNAL_SUBNET_ENV:
            continue  # a pod has one address, in the cluster's network, not in this one: the ingress listens on it
        if key in c.secret_env:
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": secrets[value]}}})
        else:
            env.append({"name": key, "value": _peer_addresses(value)})
    out = {**_hardened(name, options.image_prefix + c.image, uid, gid), "env": env,
           "resources": _resources(c.memory, c.cpus), "volumeMounts": mounts}
    if c.command:
        out["args"] = list(c.command)
    return out


def _peer_addresses(value: str) -> str:
    """A peer named as on Docker's network, by the address Kubernetes gives
    its Service in every pod's environment."""
    for alias in (BACKEND_ALIAS, FRONTEND_ALIAS):
        value = re.sub(rf"(?<![\w.-]){alias}:(\d+)", rf"$({alias.upper()}_SERVICE_HOST):\1", value)
    return value


def _hardened(name: str, image: str, uid: int, gid: int) -> dict:
    return {"name": name, "image": image, "imagePullPolicy": "IfNotPresent",
            "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid,
                                "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                "privileged": False, "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"}}}


def _resources(memory: str, cpus: float) -> dict:
    size = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)", memory.lower())
    quantity = f"{size[1]}{ {'': '', 'k': 'Ki', 'm': 'Mi', 'g': 'Gi'}[size[2]] }"
    limits = {"memory": quantity, "cpu": f"{int(cpus * 1000)}m"}
    return {"limits": dict(limits), "requests": dict(limits)}
