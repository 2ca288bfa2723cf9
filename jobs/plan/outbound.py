"""MeshConfig ``outboundTrafficPolicy``: what a sidecar does with traffic to a host its
scope does not hold (jobs.plan.policy.sidecar). Read from the mesh ConfigMap's ``mesh`` key
as istiod reads it; pure. (Kept apart from jobs.plan.meshconfig, which reads the other mesh
fields, only so the two could be written at once; it belongs with them.)
"""

from __future__ import annotations

REGISTRY_ONLY = "REGISTRY_ONLY"
ALLOW_ANY = "ALLOW_ANY"
UNKNOWN_MODE = "UNKNOWN"
OUTBOUND_MODES = (REGISTRY_ONLY, ALLOW_ANY)  # enum order: REGISTRY_ONLY = 0, ALLOW_ANY = 1
DEFAULT_OUTBOUND_MODE = ALLOW_ANY  # pkg/config/mesh/mesh.go DefaultMeshConfig


def mesh_outbound_mode(mesh_yaml: object) -> tuple[str, str | None]:
    """MeshConfig ``outboundTrafficPolicy.mode`` from the mesh ConfigMap's ``mesh`` key, and
    what is wrong with it. Unset, unreadable or invalid: Istio's default ALLOW_ANY (istiod
    refuses a mesh config it cannot read and keeps its defaults; jobs.plan.meshconfig
    reports an unreadable document)."""
    from probe import yamlload

    if not isinstance(mesh_yaml, str) or len(mesh_yaml) > 1 << 20:
        return DEFAULT_OUTBOUND_MODE, None
    try:
        doc = yamlload.load_one(mesh_yaml, yamlload.Limits(1 << 20, max_depth=64))
    except yamlload.YamlLoadError:
        return DEFAULT_OUTBOUND_MODE, None
    otp = doc.get("outboundTrafficPolicy") if isinstance(doc, dict) else None
    if otp is None:
        return DEFAULT_OUTBOUND_MODE, None
    if not isinstance(otp, dict):
        return DEFAULT_OUTBOUND_MODE, "outboundTrafficPolicy is not a mapping"
    mode = otp.get("mode")
    if mode is None:
        return DEFAULT_OUTBOUND_MODE, None
    if mode in OUTBOUND_MODES:
        return str(mode), None
    if type(mode) is int and 0 <= mode < len(OUTBOUND_MODES):  # protobuf JSON takes numbers
        return OUTBOUND_MODES[mode], None
    return DEFAULT_OUTBOUND_MODE, (
        f"outboundTrafficPolicy.mode {str(mode)[:32]!r} is not REGISTRY_ONLY or ALLOW_ANY"
    )
