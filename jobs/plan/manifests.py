"""A ``ClusterSnapshot`` from YAML: the lab, and ``mtlsprobe plan --from-manifests``.

Files are what a user would ``kubectl apply``: multi-document YAML (or JSON),
``List`` kinds, objects without a namespace land in ``default``. Two things the
API server would do are done here so the plan matches what the cluster would run:

- workload controllers become pods (``expand_workload``): each pod gets a
  deterministic name, the template's labels, annotations, service account and
  ports, a Ready status and **no IP** - the lab assigns addresses itself
  (``jobs.plan.objects.set_pod_ip``);
- Istio's injection webhook is applied (``inject=True``): pods that would get a
  sidecar carry what an injected pod carries (``jobs.plan.injection.as_created``).

Kinds this package does not use (ServiceAccount, ConfigMaps other than Istio's,
a lab's ``LabScenario``) are ignored; a malformed object becomes a Problem.

Bounded on any input: files load through ``probe.yamlload`` (regular files of at
most 128 MiB, no alias bombs, no nesting beyond 100 levels, no duplicate keys; large
plain files through ``probe.yamlfast``, which gives the same values or steps aside), and
workload expansion is capped - at most ``MAX_REPLICAS`` pods per workload and
``MAX_COPIED_NODES`` template nodes copied per load - so a 300-byte Deployment
with ``replicas: 1000000000`` costs nothing; a cap that bites is a Problem.
"""

from __future__ import annotations

import contextlib
import copy
import signal
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from jobs.plan.discovery import SYSTEM_NAMESPACES
from jobs.plan.injection import as_created
from jobs.plan.meshroot import ROOT_CERT_CONFIGMAP, pick_root_cert, root_cert_of
from jobs.plan.objects import (
    DEFAULT_ISTIO_NAMESPACE,
    KINDS,
    ClusterSnapshot,
    KubeObject,
    Problem,
    labels_of,
    name,
    namespace,
    pick_mesh_config,
    set_revision_tags,
    spec,
)
from probe import yamlfast, yamlfile, yamlload
from probe.textsafe import bounded, line

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "ReplicaSet", "DaemonSet")
_NAMESPACED = frozenset(k for k in KINDS if k != "Namespace") | set(WORKLOAD_KINDS) | {"ConfigMap"}
_SUFFIXES = (".yaml", ".yml", ".json")

MANIFEST_LIMITS = yamlload.Limits(max_bytes=128 << 20, max_depth=100)
MAX_REPLICAS = 100  # pods planned per workload: replicas of one template plan alike
MAX_COPIED_NODES = 5_000_000  # template nodes copied into pods, per load (~0.5 GB)


class ManifestError(ValueError):
    """The manifests cannot be read at all; one line naming the file."""


def _where(p: Path) -> str:
    return line(str(p), 300)


def _files(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _SUFFIXES)
            if not found:
                raise ManifestError(f"{_where(p)}: no .yaml, .yml or .json files in this directory")
            out.extend(found)
        elif p.exists():
            out.append(p)  # not a directory: read_text refuses anything but a regular file
        else:
            raise ManifestError(f"{_where(p)}: no such file or directory")
    return out


def read_documents(paths: Sequence[Path]) -> list[tuple[str, object]]:
    """(origin, document) for every YAML document in ``paths`` (directories recursively).

    Many files with enough YAML between them load on every core (``_parallel_load``):
    parsing is most of ``plan --from-manifests`` on a large cluster dump. The result
    and the error (the first failing file in order) are the same either way."""
    files = _files(paths)
    loaded = _parallel_load(files) if len(files) > 1 else None
    if loaded is None:
        loaded = _load_group(files)
    docs: list[tuple[str, object]] = []
    for f, got in zip(files, loaded, strict=True):
        if isinstance(got, str):
            raise ManifestError(f"{_where(f)}: {got}")
        assert isinstance(got, list)  # workers' JSON was built in _parallel_load
        docs.extend((str(f), d) for d in got if d is not None)
    return docs


# Below this many bytes of YAML a second process costs more than it saves.
PARALLEL_MIN_BYTES = 8 << 20
_MAX_PROCESSES = 4
# This process's share of the files against a worker's (see _parallel_load).
_PARENT_SHARE = 0.55

# One file's documents, or the one-line reason it cannot be loaded, or (from a worker)
# the fast YAML road's JSON, node count, stream flag and keys (yamlfast.Emitted).
_Loaded = list[object] | str | tuple[str, int, bool, dict[str, object]]


def _load_group(files: Sequence[Path], *, emit: bool = False) -> list[_Loaded]:
    """Load ``files`` in order, one result each; after an error the rest are not read
    (a placeholder: an error earlier in file order is always the one reported). With
    ``emit`` (a worker), files on the fast YAML road come back as its JSON, packed."""
    out: list[_Loaded] = []
    for f in files:
        try:
            if emit:
                got = yamlfile.load_or_emit(f, MANIFEST_LIMITS)
                out.append(_emitted(got) if isinstance(got, yamlfast.Emitted) else got)
            else:
                out.append(yamlfile.load_file(f, MANIFEST_LIMITS, single=False, fast=True))
        except yamlload.YamlLoadError as exc:
            out.append(str(exc))
            break
    return out + ["not loaded"] * (len(files) - len(out))


def _emitted(e: yamlfast.Emitted) -> _Loaded:
    return (e.json, e.nodes, e.stream, e.keys)


def _built(f: Path, got: _Loaded) -> _Loaded:
    """A worker's result for ``f`` as values: the fast road's JSON built here, or, when
    JSON cannot carry them alike, the file loaded again the bounded way."""
    if not isinstance(got, tuple):
        return got
    docs = yamlfast.build(yamlfast.Emitted(*got))
    if docs is not None:
        return docs
    try:
        return yamlfile.load_file(f, MANIFEST_LIMITS, single=False)
    except yamlload.YamlLoadError as exc:
        return str(exc)


def _pack(loaded: list[_Loaded]) -> bytes:
    """A worker's results for the trip back: ``marshal`` (about 15x cheaper to write and
    2x to read than pickle, shared objects stay shared), or pickle for values marshal
    cannot carry (``!!timestamp``, ``!!binary``). One byte says which."""
    import marshal
    import pickle

    try:
        return b"m" + marshal.dumps(loaded)
    except ValueError:
        return b"p" + pickle.dumps(loaded, protocol=pickle.HIGHEST_PROTOCOL)


def _unpack(data: bytes) -> list[_Loaded]:
    import marshal
    import pickle

    # Our own forked worker's bytes, never the input: safe to unmarshal/unpickle.
    if data[:1] == b"m":
        got: list[_Loaded] = marshal.loads(data[1:])  # noqa: S302
        return got
    if data[:1] == b"p":
        got = pickle.loads(data[1:])  # noqa: S301
        return got
    raise ManifestError("a YAML loader process ended unexpectedly (out of memory?)")


def _parallel_load(files: Sequence[Path]) -> list[_Loaded] | None:
    """Every file's result, with the files split by size among this process and
    forked workers; None when one process is as good (little YAML, one core, or
    threads running, which ``fork`` must not copy).

    Plain ``fork`` and a temporary file per worker, not a process pool: a pool runs a
    thread in this process, and the fast YAML road (``probe.yamlfast``) steps aside when
    threads run (it briefly redirects fd 2)."""
    import os
    import tempfile
    import threading

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    n = min(cores, _MAX_PROCESSES, len(files))
    if n < 2 or threading.active_count() > 1:
        return None
    sizes: list[int] = []
    for f in files:
        try:
            sizes.append(f.stat().st_size)
        except OSError:
            sizes.append(0)  # load_file reports it
    if sum(sizes) < PARALLEL_MIN_BYTES:
        return None
    # Largest first onto the lightest group (LPT); each group keeps file order. Workers
    # hand back the fast YAML road's JSON and this process builds the values (about a
    # third of loading a file), so its own group is the lighter.
    groups: list[list[int]] = [[] for _ in range(n)]
    load = [0.0] * n
    share = [_PARENT_SHARE] + [1.0] * (n - 1)
    for i in sorted(range(len(files)), key=lambda i: -sizes[i]):
        lightest = min(range(n), key=lambda g: load[g] / share[g])
        groups[lightest].append(i)
        load[lightest] += sizes[i]
    for group in groups:
        group.sort()

    results: list[_Loaded] = ["not loaded"] * len(files)
    workers: list[tuple[int, str, list[int]]] = []
    try:
        for group in groups[1:]:
            if not group:
                continue
            fd, spool = tempfile.mkstemp(prefix="mtlsprobe-manifests-")
            pid = os.fork()
            if pid == 0:  # the worker: load, write, leave without running this process's exits
                code = 1
                try:
                    out = memoryview(_pack(_load_group([files[i] for i in group], emit=True)))
                    while out:
                        out = out[os.write(fd, out) :]
                    code = 0
                finally:
                    os._exit(code)
            os.close(fd)
            workers.append((pid, spool, group))
        for i, got in zip(groups[0], _load_group([files[i] for i in groups[0]]), strict=True):
            results[i] = got
        while workers:
            pid, spool, group = workers[0]
            _, status = os.waitpid(pid, 0)
            workers.pop(0)
            try:
                packed = Path(spool).read_bytes() if status == 0 else b""
            finally:
                os.unlink(spool)
            for i, got in zip(group, _unpack(packed), strict=True):
                results[i] = _built(files[i], got)
    finally:
        for pid, spool, _ in workers:  # interrupted: stop and reap the rest
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            with contextlib.suppress(OSError):
                os.unlink(spool)
    return results


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


def replicas(workload: KubeObject) -> int:
    """How many pods the workload asks for (a DaemonSet: one). ValueError if not a count."""
    if workload.get("kind") == "DaemonSet":
        return 1
    count: Any = spec(workload).get("replicas")
    if count is None:  # unset or null: the API server defaults it to 1
        count = 1
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"spec.replicas {bounded(count, 40)} is not a count")
    return count


def _template(workload: KubeObject) -> dict[str, Any]:
    template = spec(workload).get("template")
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        raise ValueError("spec.template.spec missing")
    return template


def expand_workload(workload: KubeObject, max_pods: int = MAX_REPLICAS) -> list[KubeObject]:
    """The pods a Deployment/StatefulSet/ReplicaSet/DaemonSet would run, without IPs.

    Names are ``<workload>-<index>`` (stable across runs, unlike a ReplicaSet's hash);
    a DaemonSet is planned as one pod; at most ``max_pods``. Raises ValueError when
    there is no pod template or replicas is not a count.
    """
    kind, ns = str(workload.get("kind")), namespace(workload) or "default"
    template = _template(workload)
    count = min(replicas(workload), max_pods)
    tmeta: dict[str, Any] = template.get("metadata") or {}
    if not isinstance(tmeta, dict):
        raise ValueError("spec.template.metadata is not a mapping")
    pods: list[KubeObject] = []
    for i in range(count):
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


def _nodes(value: object) -> int:
    """Nodes in a YAML value (scalars and collections), counted without recursion."""
    count, todo = 0, [value]
    while todo:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            todo.extend(item.values())
            count += len(item)  # keys
        elif isinstance(item, list):
            todo.extend(item)
    return count


class _Expansion:
    """The copy budget of one load: caps each workload's pods and says so."""

    def __init__(self) -> None:
        self.left = MAX_COPIED_NODES

    def pods(self, workload: KubeObject) -> tuple[list[KubeObject], str | None]:
        want = replicas(workload)
        cost = _nodes(_template(workload)) + 12  # + the metadata and status written
        allowed = min(want, MAX_REPLICAS, self.left // cost)
        self.left -= allowed * cost
        pods = expand_workload(workload, max_pods=allowed)
        if allowed >= want:
            return pods, None
        why = (
            f"at most {MAX_REPLICAS} pods are planned per workload"
            if allowed == MAX_REPLICAS
            else f"the manifests' pod templates exceed {MAX_COPIED_NODES} copied nodes"
        )
        return pods, f"spec.replicas {want}: planned {allowed} pods ({why})"


def snapshot_from_documents(
    docs: Iterable[tuple[str, object]],
    *,
    inject: bool = True,
    istio_namespace: str = DEFAULT_ISTIO_NAMESPACE,
    revision: str | None = None,
) -> ClusterSnapshot:
    snap = ClusterSnapshot()
    configmaps: list[KubeObject] = []
    webhooks: list[KubeObject] = []
    roots: list[tuple[str, str]] = []  # (namespace, PEM) of every istio-ca-root-cert
    pods: list[tuple[str, object]] = []
    expansion = _Expansion()
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
                expanded, capped = expansion.pods(doc)
            except ValueError as exc:
                capped, expanded = str(exc), []
            pods.extend((origin, p) for p in expanded)
            if capped is not None:
                snap.problems.append(
                    Problem(str(kind), namespace(doc) or None, name(doc) or None, capped)
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
        elif kind == "MutatingWebhookConfiguration":
            webhooks.append(doc)  # revision tags (jobs.plan.meshconfig)
        elif isinstance(kind, str) and kind in KINDS:
            snap.add(kind, doc)
    pick_mesh_config(snap, configmaps, istio_namespace, revision)  # only istiod's own
    set_revision_tags(snap, webhooks)
    snap.root_cert_pem, notes = pick_root_cert(roots, istio_namespace)  # only istiod's own
    snap.notes.extend(notes)
    ns_labels = {name(n): labels_of(n) for n in snap.namespaces}
    for _, raw_pod in pods:
        pod = raw_pod
        if inject and isinstance(pod, dict):
            pod = as_created(pod, ns_labels.get(namespace(pod), {}))
        snap.add("Pod", pod)
    snap.sort_as_listed()  # the live path lists in this order
    return snap


def planned_namespaces(snap: ClusterSnapshot, *, include_system: bool = False) -> set[str]:
    """Every namespace the manifests put objects in, without the system namespaces the
    live API path leaves out too (``jobs.plan.discovery.SYSTEM_NAMESPACES``) unless asked."""
    found = {name(n) for n in snap.namespaces}
    for objs in (snap.pods, snap.services, snap.endpointslices):
        found.update(namespace(o) for o in objs)
    found.discard("")
    return found if include_system else found - set(SYSTEM_NAMESPACES)
