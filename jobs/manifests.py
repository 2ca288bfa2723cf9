"""A ``ClusterSnapshot`` from YAML: the lab, and ``mtlsprobe plan --from-manifests``.

Files are what a user would ``kubectl apply``: multi-document YAML (or JSON),
``List`` kinds, objects without a namespace land in ``default``. Two things the
API server would do are done here so the plan matches what the cluster would run:

- workload controllers become pods (``expand_workload``): each pod gets a
  deterministic name, the template's labels, annotations, service account and
  ports, a Ready status and **no IP** - the lab assigns addresses itself
  (``jobs.objects.set_pod_ip``);
- Istio's injection webhook is applied (``inject=True``): pods that would get a
  sidecar carry what an injected pod carries (``jobs.injection.as_created``).

Kinds this package does not use (ServiceAccount, ConfigMaps other than Istio's,
a lab's ``LabScenario``) are ignored; a malformed object becomes a Problem.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from jobs.injection import as_created
from jobs.meshroot import ROOT_CERT_CONFIGMAP, pick_root_cert, root_cert_of
from jobs.objects import (
    DEFAULT_ISTIO_NAMESPACE,
    KINDS,
    ClusterSnapshot,
    KubeObject,
    Problem,
    labels_of,
    name,
    namespace,
    pick_mesh_config,
    spec,
)

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "ReplicaSet", "DaemonSet")
_NAMESPACED = frozenset(k for k in KINDS if k != "Namespace") | set(WORKLOAD_KINDS) | {"ConfigMap"}
_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    """The manifests cannot be read at all; one line naming the file."""


def _files(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _SUFFIXES)
            if not found:
                raise ManifestError(f"{p}: no .yaml, .yml or .json files in this directory")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ManifestError(f"{p}: no such file or directory")
    return out


def read_documents(paths: Sequence[Path]) -> list[tuple[str, object]]:
    """(origin, document) for every YAML document in ``paths`` (directories recursively)."""
    docs: list[tuple[str, object]] = []
    for f in _files(paths):
        try:
            text = f.read_text(encoding="utf-8")
        except OSError as exc:
            raise ManifestError(f"{f}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ManifestError(f"{f}: not UTF-8 text") from None
        try:
            docs.extend((str(f), d) for d in yaml.safe_load_all(text) if d is not None)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ManifestError(f"{f}: invalid YAML{where}") from None
    return docs


def load_manifests(
    paths: Sequence[Path],
    *,
    inject: bool = True,
    istio_namespace: str = DEFAULT_ISTIO_NAMESPACE,
    revision: str | None = None,
) -> ClusterSnapshot:
    return snapshot_from_documents(
        read_documents(paths), inject=inject, istio_namespace=istio_namespace, revision=revision
    )


def _flatten(docs: Iterable[tuple[str, object]]) -> Iterable[tuple[str, object]]:
    for origin, doc in docs:
        if (
            isinstance(doc, dict)
            and doc.get("kind") == "List"
            and isinstance(doc.get("items"), list)
        ):
            yield from ((origin, item) for item in doc["items"])
        else:
            yield origin, doc


def expand_workload(workload: KubeObject) -> list[KubeObject]:
    """The pods a Deployment/StatefulSet/ReplicaSet/DaemonSet would run, without IPs.

    Names are ``<workload>-<index>`` (stable across runs, unlike a ReplicaSet's hash);
    a DaemonSet is planned as one pod. Raises ValueError when there is no pod template.
    """
    kind, ns = str(workload.get("kind")), namespace(workload) or "default"
    template = spec(workload).get("template")
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        raise ValueError("spec.template.spec missing")
    replicas: Any = spec(workload).get("replicas", 1)
    if kind == "DaemonSet":
        replicas = 1
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"spec.replicas {replicas!r} is not a count")
    tmeta: dict[str, Any] = template.get("metadata") or {}
    if not isinstance(tmeta, dict):
        raise ValueError("spec.template.metadata is not a mapping")
    pods: list[KubeObject] = []
    for i in range(replicas):
        md: dict[str, Any] = {
            "name": f"{name(workload)}-{i}",
            "namespace": ns,
            "labels": dict(tmeta.get("labels") or {}),
            "annotations": dict(tmeta.get("annotations") or {}),
            "ownerReferences": [{"kind": kind, "name": name(workload)}],
        }
        created = (workload.get("metadata") or {}).get("creationTimestamp")
        if created:
            md["creationTimestamp"] = created
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": md,
                "spec": copy.deepcopy(template["spec"]),
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
    return pods


def snapshot_from_documents(
    docs: Iterable[tuple[str, object]],
    *,
    inject: bool = True,
    istio_namespace: str = DEFAULT_ISTIO_NAMESPACE,
    revision: str | None = None,
) -> ClusterSnapshot:
    snap = ClusterSnapshot()
    configmaps: list[KubeObject] = []
    roots: list[tuple[str, str]] = []  # (namespace, PEM) of every istio-ca-root-cert
    pods: list[tuple[str, object]] = []
    for origin, raw in _flatten(docs):
        if not isinstance(raw, dict):
            snap.problems.append(Problem("document", None, None, f"{origin}: not a mapping"))
            continue
        doc: KubeObject = raw
        kind = doc.get("kind")
        if kind in _NAMESPACED and isinstance(doc.get("metadata"), dict) and not namespace(doc):
            doc = {**doc, "metadata": {**doc["metadata"], "namespace": "default"}}
        if kind in WORKLOAD_KINDS:
            try:
                pods.extend((origin, p) for p in expand_workload(doc))
            except ValueError as exc:
                snap.problems.append(
                    Problem(str(kind), namespace(doc) or None, name(doc) or None, str(exc))
                )
        elif kind == "Pod":
            pods.append((origin, doc))
        elif kind == "ConfigMap":
            data: dict[str, Any] = doc.get("data") or {}
            if not isinstance(data, dict):
                continue
            if name(doc) == ROOT_CERT_CONFIGMAP:
                pem = root_cert_of(doc)
                if pem is not None:
                    roots.append((namespace(doc), pem))
            else:
                configmaps.append(doc)
        elif isinstance(kind, str) and kind in KINDS:
            snap.add(kind, doc)
    pick_mesh_config(snap, configmaps, istio_namespace, revision)  # only istiod's own
    snap.root_cert_pem, notes = pick_root_cert(roots, istio_namespace)  # only istiod's own
    snap.notes.extend(notes)
    ns_labels = {name(n): labels_of(n) for n in snap.namespaces}
    for _, raw_pod in pods:
        pod = raw_pod
        if inject and isinstance(pod, dict):
            pod = as_created(pod, ns_labels.get(namespace(pod), {}))
        snap.add("Pod", pod)
    return snap
