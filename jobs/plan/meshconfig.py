"""MeshConfig: the few fields of istiod's mesh ConfigMap that change a plan (trust
domain, root namespace, auto-mTLS, the default DestinationRule exportTo), read as
istiod reads them, and which ConfigMap that is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.plan.admission import Problem
from jobs.plan.fields import KubeObject, name, namespace
from probe.constants import DEFAULT_ISTIO_NAMESPACE, MESH_CONFIGMAP

if TYPE_CHECKING:
    from jobs.plan.objects import ClusterSnapshot

MESH_KEY = "mesh"  # pkg/config/mesh/kubemesh/watcher.go MeshConfigKey
MESH_MAX_BYTES = 1 << 20
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}\Z")  # SPIFFE ID spec: trust domain chars


def mesh_configmap_name(revision: str | None = None) -> str:
    """The ConfigMap istiod reads its MeshConfig from, in its own namespace:
    ``istio``, or ``istio-<rev>`` for a revision other than ``default``
    (pilot/pkg/bootstrap/mesh.go ``getMeshConfigMapName``). A ConfigMap of that name in
    any other namespace is nobody's mesh config."""
    if not revision or revision == "default":
        return MESH_CONFIGMAP
    return f"{MESH_CONFIGMAP}-{revision}"


@dataclass(frozen=True)
class MeshSettings:
    """The MeshConfig fields the plan depends on; None: absent, Istio's default applies
    (pkg/config/mesh/mesh.go ``DefaultMeshConfig``: trustDomain cluster.local,
    rootNamespace istio-system, enableAutoMtls true, defaultDestinationRuleExportTo *)."""

    trust_domain: str | None = None
    root_namespace: str | None = None
    enable_auto_mtls: bool | None = None
    default_dr_export_to: tuple[str, ...] | None = None


def read_mesh_config(mesh_yaml: object) -> tuple[MeshSettings, list[str]]:
    """The settings in the ``mesh`` key of the mesh ConfigMap (MeshConfig as YAML), and
    what is wrong with it. A field with a value Istio could not use is reported and
    left at its default (istiod refuses such a mesh config and keeps its defaults)."""
    from probe import yamlload

    if not isinstance(mesh_yaml, str):
        return MeshSettings(), [f"key {MESH_KEY!r} missing"]
    if len(mesh_yaml) > MESH_MAX_BYTES:  # a ConfigMap holds at most 1 MiB
        return MeshSettings(), [f"key {MESH_KEY!r} is larger than {MESH_MAX_BYTES} bytes"]
    try:  # bounded: the string is as hostile as the manifest that carried it
        doc = yamlload.load_one(mesh_yaml, yamlload.Limits(MESH_MAX_BYTES, max_depth=64))
    except yamlload.YamlLoadError as exc:
        return MeshSettings(), [f"key {MESH_KEY!r} is not valid YAML ({exc})"]
    if doc is None:
        return MeshSettings(), []
    if not isinstance(doc, dict):
        return MeshSettings(), [f"key {MESH_KEY!r} is not a YAML mapping"]
    problems: list[str] = []
    td = doc.get("trustDomain")
    if td is not None and not (isinstance(td, str) and _TRUST_DOMAIN.match(td)):
        problems.append(f"trustDomain {str(td)[:64]!r} is not a SPIFFE trust domain")
        td = None
    root = doc.get("rootNamespace")
    if root is not None and not (isinstance(root, str) and _DNS_LABEL.match(root)):
        problems.append(f"rootNamespace {str(root)[:64]!r} is not a namespace name")
        root = None
    auto = doc.get("enableAutoMtls")
    if auto is not None and not isinstance(auto, bool):
        problems.append(f"enableAutoMtls {str(auto)[:16]!r} is not true or false")
        auto = None
    export = doc.get("defaultDestinationRuleExportTo")
    export_to: tuple[str, ...] | None = None
    if export is not None:
        if isinstance(export, list) and all(isinstance(e, str) for e in export):
            export_to = tuple(export)
        else:
            problems.append("defaultDestinationRuleExportTo is not a list of strings")
    return (
        MeshSettings(td or None, root or None, auto, export_to),
        problems,
    )


def apply_mesh_config(snap: ClusterSnapshot, cm: Mapping[str, Any] | None, where: str) -> None:
    """Read the mesh ConfigMap ``cm`` (found at ``where``, "<ns>/<name>") into ``snap``."""
    if cm is None:
        return
    data = cm.get("data")
    settings, problems = read_mesh_config(data.get(MESH_KEY) if type(data) is dict else None)
    ns, _, cm_name = where.partition("/")
    snap.problems.extend(Problem("ConfigMap", ns, cm_name, p) for p in problems)
    snap.mesh_config = where
    snap.trust_domain = settings.trust_domain or snap.trust_domain
    snap.root_namespace = settings.root_namespace or snap.root_namespace
    if settings.enable_auto_mtls is not None:
        snap.enable_auto_mtls = settings.enable_auto_mtls
    if settings.default_dr_export_to is not None:
        snap.default_dr_export_to = settings.default_dr_export_to


def pick_mesh_config(
    snap: ClusterSnapshot,
    configmaps: list[KubeObject],
    istio_namespace: str = DEFAULT_ISTIO_NAMESPACE,
    revision: str | None = None,
) -> None:
    """From ConfigMaps read out of YAML, apply the one istiod would read and say why the
    others named like it are not the mesh config (a tenant's ``istio`` ConfigMap with a
    ``mesh`` key looks like an attempt to change the mesh's trust domain or root)."""
    want = mesh_configmap_name(revision)
    chosen: Mapping[str, Any] | None = None
    for cm in configmaps:
        n, ns = name(cm), namespace(cm)
        if n == want and ns == istio_namespace:
            if chosen is not None:
                snap.notes.append(
                    f"ConfigMap {ns}/{n} appears more than once: the last one is read, as "
                    "kubectl apply would leave it"
                )
            chosen = cm
        elif n == MESH_CONFIGMAP or n.startswith(f"{MESH_CONFIGMAP}-"):
            data = cm.get("data")
            if type(data) is dict and MESH_KEY in data:
                snap.notes.append(
                    f"ConfigMap {ns}/{n} is not the mesh config (istiod reads only "
                    f"{istio_namespace}/{want}): ignored"
                )
    apply_mesh_config(snap, chosen, f"{istio_namespace}/{want}")
