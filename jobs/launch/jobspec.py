"""The Kubernetes objects of one ``mtlsprobe run``, as plain API bodies. Pure: no I/O.

Per source namespace: one ConfigMap holding the targets file, and two Jobs owned by
it (deleting the ConfigMap cascades to the Jobs, and Jobs own their pods):

- ``sidecar``: injected (label ``sidecar.istio.io/inject: "true"``), checks that go
  through the probe's own sidecar (mesh, xfcc-spoof, self); waits for the sidecar and
  stops it on exit (``--quit-sidecar``), or runs it as a native sidecar.
- ``plain``: not injected (label ``sidecar.istio.io/inject: "false"``), checks that
  need a raw connection to the pod IP (plaintext, peer-cert, foreign-client).

Every pod meets the ``restricted`` Pod Security Standard and mounts the mesh root
from Istio's ``istio-ca-root-cert`` ConfigMap for the chain checks. Above a threshold
a Job is Indexed: each shard's targets are in a ConfigMap of their own (one ConfigMap
holds at most 1 MiB, about 3,800 targets), all projected into the pod, and each index
reads its file, ``targets-$(JOB_COMPLETION_INDEX).yaml`` (the kubelet expands the
variable the Job controller sets).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from probe.checks.base import Settings
from probe.cliargs import span
from probe.constants import (
    ENVOY_ADMIN,
    INJECT_LABEL,
    PROBE_POD_LABELS,
    PROBE_SERVICE_ACCOUNT,
    ROLE_LABEL,
    ROOT_CERT_CONFIGMAP,
    ROOT_CERT_KEY,
)
from probe.model import Source, TargetsFile
from probe.spiffe import istio_identity

_PROBE = Settings()  # the probe's own defaults: flags are passed only to differ from them

Obj = dict[str, Any]

LABEL_RUN = "mtlsprobe.dev/run-id"
LABEL_ROLE = ROLE_LABEL
LABEL_SHARDS = "mtlsprobe.dev/shards"
NATIVE_ANNOTATION = "sidecar.istio.io/nativeSidecar"
CONTAINER = "probe"
TARGETS_KEY = "targets.yaml"
TARGETS_DIR = "/etc/mtlsprobe"
TARGETS_PATH = f"{TARGETS_DIR}/{TARGETS_KEY}"
ROOT_DIR = f"{TARGETS_DIR}/root"
TMP = "/tmp"  # noqa: S108  # an emptyDir: the root filesystem is read-only
RUN_AS = 65532  # "nonroot" in distroless-style images; numeric so kubelet can verify it
PROXY_CONFIG_ANNOTATION = "proxy.istio.io/config"
# The probe sidecar's ProxyConfig. holdApplicationUntilProxyStarts: Envoy first, then the
# probe (--wait-for-sidecar still guards the window). proxyStatsMatcher: Istio keeps only
# a few Envoy stats (pkg/bootstrap/config.go, requiredEnvoyStatsMatcherInclusionPrefixes)
# and the mesh check proves mTLS from this sidecar's outbound cluster counters
# (probe/clusterstats.py: cluster.outbound|<port>||<host>.ssl.handshake, ...). ProxyConfig
# is the current way to ask (istio/api annotation/annotations.yaml marks
# sidecar.istio.io/statsInclusionPrefixes deprecated; getStatsOptions still reads that
# annotation and lets it replace, not extend, the ProxyConfig list, so it is not set).
# k8s/overlays/continuous/agents.yaml carries the same value (tests/test_k8s_manifests.py).
PROBE_PROXY_CONFIG: dict[str, Any] = {
    "holdApplicationUntilProxyStarts": True,
    "proxyStatsMatcher": {"inclusionPrefixes": ["cluster.outbound"]},
}


@dataclass(frozen=True)
class Role:
    name: str
    checks: tuple[str, ...]
    sidecar: bool


ROLES: tuple[Role, ...] = (
    Role("sidecar", ("mesh", "xfcc-spoof", "self"), sidecar=True),
    Role("plain", ("plaintext", "peer-cert", "foreign-client"), sidecar=False),
)
AUTHZ = "authz"
# Opt-in, only with the node capture agent installed (jobs.launch.wire): the sidecar Job
# makes the marked calls (``--wire-claim``) and run judges them from the agent's reports.
WIRE = "wire"
# ``mtlsprobe run``'s roles: authz runs behind the probe's own sidecar (Istio's identity
# is the pod's), so it joins that role. The lab adds it to its sidecar pod itself.
RUN_ROLES: tuple[Role, ...] = tuple(
    replace(r, checks=(*r.checks, AUTHZ)) if r.sidecar else r for r in ROLES
)


@dataclass(frozen=True)
class RunSpec:
    """What the flags decided, shared by every object of the run."""

    run_id: str
    image: str
    service_account: str = PROBE_SERVICE_ACCOUNT
    deadline: int = 300  # activeDeadlineSeconds of each Job
    ttl: int = 600  # ttlSecondsAfterFinished: the cluster cleans up if we cannot
    sidecar_wait: float = 60.0
    native_sidecar: bool = False
    timeout: float = 5.0  # per network operation in the probe
    concurrency: int = _PROBE.concurrency  # the probe's checks in flight
    min_remaining: timedelta = _PROBE.min_remaining  # the probe's certificate window
    max_lifetime: timedelta = _PROBE.max_lifetime
    root_cert: bool = True  # mount istio-ca-root-cert and chain-check against it
    cpu_request: str = "50m"
    cpu_limit: str = "500m"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"


def configmap_name(run_id: str) -> str:
    return f"mtlsprobe-{run_id}"


def impersonation_role(index: int) -> Role:
    """The role of the ``index``-th ``--impersonate`` probe: authz only, behind its own
    sidecar. A distinct name per probe (pods are matched to Jobs by role label)."""
    return Role(f"as-{index}", (AUTHZ,), sidecar=True)


def impersonation_configmap_name(run_id: str, index: int) -> str:
    """Its own targets file (its own ``source.identity``): the run's ConfigMap in that
    namespace, if any, is another identity's."""
    return f"mtlsprobe-{run_id}-as-{index}"


def shard_configmap_name(run_id: str, role: str, index: int) -> str:
    return f"mtlsprobe-{run_id}-{role}-{index}"


def shard_path(index: int | str) -> str:
    return f"{TARGETS_DIR}/targets-{index}.yaml"


INDEX_VAR = "$(JOB_COMPLETION_INDEX)"


def job_name(run_id: str, role: str) -> str:
    return f"mtlsprobe-{run_id}-{role}"


def labels(spec: RunSpec, role: str | None = None) -> dict[str, str]:
    out = {
        **PROBE_POD_LABELS,
        LABEL_RUN: spec.run_id,
    }
    if role is not None:
        out[LABEL_ROLE] = role
    return out


def run_selector(run_id: str) -> str:
    return f"{LABEL_RUN}={run_id}"


def pod_targets(
    plan: TargetsFile, namespace: str, spec: RunSpec, service_account: str | None = None
) -> TargetsFile:
    """The plan as the probe pods in ``namespace`` running as ``service_account`` (the
    run's by default) see it: their own SPIFFE ID (the mesh checks match it against XFCC,
    authz against its sidecar's certificate), their sidecar's admin for ``self``, the
    root, and only the ``authz`` cases whose ``source`` is that identity."""
    identity = istio_identity(plan.trust_domain, namespace, service_account or spec.service_account)
    root = Path(ROOT_DIR, ROOT_CERT_KEY) if spec.root_cert else None  # a path inside the pod
    targets = tuple(
        replace(t, authz=tuple(c for c in t.authz if c.source == identity)) if t.authz else t
        for t in plan.targets
    )
    return replace(
        plan,
        targets=targets,
        source=Source(identity=identity, sidecar_admin=ENVOY_ADMIN),
        root_cert_file=root,
    )


def configmap(spec: RunSpec, namespace: str, targets_yaml: str, name: str | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name or configmap_name(spec.run_id),
            "namespace": namespace,
            "labels": labels(spec),
        },
        "data": {TARGETS_KEY: targets_yaml},
    }


def _owner_refs(owner: Obj) -> list[Obj]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "blockOwnerDeletion": False,
        }
    ]


def shard_configmap(
    spec: RunSpec, namespace: str, role: str, index: int, targets_yaml: str, owner: Obj
) -> Obj:
    """One shard's targets file, owned by the run's ConfigMap."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": shard_configmap_name(spec.run_id, role, index),
            "namespace": namespace,
            "labels": labels(spec, role),
            "ownerReferences": _owner_refs(owner),
        },
        "data": {TARGETS_KEY: targets_yaml},
    }


def shard_count(work: int, threshold: int) -> int:
    """Shards for ``work`` units (endpoints) at most ``threshold`` per shard."""
    if threshold < 1 or work <= threshold:
        return 1
    return math.ceil(work / threshold)


def probe_args(role: Role, checks: tuple[str, ...], spec: RunSpec, shards: int) -> list[str]:
    path = shard_path(INDEX_VAR) if shards > 1 else TARGETS_PATH
    # --timing: each line carries the check's real start and end, for run's traces.
    args = ["check", "-f", path, "--checks", ",".join(checks), "-o", "jsonl", "--timing"]
    args += ["--timeout", f"{spec.timeout:g}"]
    if spec.concurrency != _PROBE.concurrency:
        args += ["--concurrency", str(spec.concurrency)]
    if spec.min_remaining != _PROBE.min_remaining:
        args += ["--min-remaining", span(spec.min_remaining)]
    if spec.max_lifetime != _PROBE.max_lifetime:
        args += ["--max-lifetime", span(spec.max_lifetime)]
    if role.sidecar:
        args += ["--wait-for-sidecar", f"{spec.sidecar_wait:g}"]
        if not spec.native_sidecar:
            args.append("--quit-sidecar")
    return args


def _security_context() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def job(
    spec: RunSpec,
    namespace: str,
    role: Role,
    checks: tuple[str, ...],
    owner: Obj,
    *,
    shards: int = 1,
    parallelism: int = 4,
    service_account: str | None = None,
) -> Obj:
    """One probe Job. ``owner`` is the ConfigMap holding its targets file, as created
    (name and uid); ``service_account``: the pods' (``--impersonate``), else the run's.
    No pod mounts an API token, whatever its service account."""
    pod_labels = labels(spec, role.name)
    pod_labels[INJECT_LABEL] = "true" if role.sidecar else "false"
    annotations: dict[str, str] = {}
    if role.sidecar:
        annotations[PROXY_CONFIG_ANNOTATION] = json.dumps(PROBE_PROXY_CONFIG)
        if spec.native_sidecar:
            annotations[NATIVE_ANNOTATION] = "true"
    targets: Obj = {
        "name": "targets",
        "configMap": {
            "name": owner["metadata"]["name"],
            "items": [{"key": TARGETS_KEY, "path": TARGETS_KEY}],
        },
    }
    if shards > 1:
        targets = {
            "name": "targets",
            "projected": {
                "sources": [
                    {
                        "configMap": {
                            "name": shard_configmap_name(spec.run_id, role.name, i),
                            "items": [{"key": TARGETS_KEY, "path": f"targets-{i}.yaml"}],
                        }
                    }
                    for i in range(shards)
                ]
            },
        }
    volumes: list[Obj] = [targets, {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    mounts: list[Obj] = [
        {"name": "targets", "mountPath": TARGETS_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": TMP},
    ]
    if spec.root_cert:
        volumes.append(
            {
                "name": "mesh-root",
                "configMap": {
                    "name": ROOT_CERT_CONFIGMAP,
                    "items": [{"key": ROOT_CERT_KEY, "path": ROOT_CERT_KEY}],
                },
            }
        )
        mounts.append({"name": "mesh-root", "mountPath": ROOT_DIR, "readOnly": True})
    args = probe_args(role, checks, spec, shards)
    if WIRE in checks:  # the pod makes the calls, run judges them (the lab captures in-pod)
        args.append("--wire-claim")
    container: Obj = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["mtlsprobe"],
        "args": args,
        "env": [
            {"name": "HOME", "value": TMP},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        "resources": {
            "requests": {"cpu": spec.cpu_request, "memory": spec.memory_request},
            "limits": {"cpu": spec.cpu_limit, "memory": spec.memory_limit},
        },
        "securityContext": _security_context(),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    job_spec: Obj = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": spec.deadline,
        "ttlSecondsAfterFinished": spec.ttl,
        "template": {
            "metadata": {"labels": pod_labels, "annotations": annotations},
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": service_account or spec.service_account,
                # The probe never talks to the API server; Istio uses its own projected token.
                "automountServiceAccountToken": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": RUN_AS,
                    "runAsGroup": RUN_AS,
                    "fsGroup": RUN_AS,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [container],
                "volumes": volumes,
            },
        },
    }
    if shards > 1:
        job_spec.update(
            completionMode="Indexed",
            completions=shards,
            parallelism=max(1, min(parallelism, shards)),
            # A shard that finds a failing edge exits 1; with a Job-wide backoffLimit of 0
            # that would fail the Job and kill the other shards mid-probe. Per index: a
            # shard is never retried (no duplicate probing) and the others run on.
            backoffLimitPerIndex=0,
        )
        del job_spec["backoffLimit"]
    job_labels = labels(spec, role.name)
    job_labels[LABEL_SHARDS] = str(shards)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec.run_id, role.name),
            "namespace": namespace,
            "labels": job_labels,
            "ownerReferences": _owner_refs(owner),
        },
        "spec": job_spec,
    }
