"""MeshConfig: the few fields of istiod's mesh ConfigMap that change a plan (trust
domain, root namespace, auto-mTLS, the default DestinationRule exportTo), read as
istiod reads them, and which ConfigMap that is. Pure: ``jobs.plan.objects`` applies
them to a snapshot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from probe.constants import MESH_CONFIGMAP

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
