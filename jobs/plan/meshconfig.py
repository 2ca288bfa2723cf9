"""MeshConfig: the few fields of istiod's mesh ConfigMap that change a plan (trust
domain, root namespace, auto-mTLS, the default DestinationRule exportTo), read as
istiod reads them, and which ConfigMap that is. Pure: ``jobs.plan.objects`` applies
them to a snapshot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from probe.constants import DEFAULT_ISTIO_NAMESPACE, MESH_CONFIGMAP

MESH_KEY = "mesh"  # pkg/config/mesh/kubemesh/watcher.go MeshConfigKey
MESH_MAX_BYTES = 1 << 20
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
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
    # defaultConfig.interceptionMode (ProxyConfig): REDIRECT | TPROXY | NONE. The injection
    # template adds no istio-init (no iptables capture) for NONE.
    interception_mode: str | None = None
    # defaultServiceExportTo (push_context.go ``initDefaultExportMaps``): the exportTo of a
    # Service without the networking.istio.io/exportTo annotation; None: unset, ``*``.
    default_service_export_to: tuple[str, ...] | None = None


INTERCEPTION_MODES = frozenset({"REDIRECT", "TPROXY", "NONE"})


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
    if root is not None and not (isinstance(root, str) and DNS_LABEL.match(root)):
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
    svc_export = doc.get("defaultServiceExportTo")
    svc_export_to: tuple[str, ...] | None = None
    if svc_export is not None:
        if isinstance(svc_export, list) and all(isinstance(e, str) for e in svc_export):
            # An empty list is the unset field (a proto repeated field): ``*``.
            svc_export_to = tuple(e[:253] for e in svc_export[:1_000]) or None
        else:
            # istiod refuses the mesh config; the plan cannot know what is exported, so it
            # reads it as exporting Services to their own namespace only (narrowing).
            problems.append(
                "defaultServiceExportTo is not a list of strings: read as '.' (Services "
                "without an exportTo annotation seen only in their own namespace)"
            )
            svc_export_to = (".",)
    mode: str | None = None
    proxy = doc.get("defaultConfig")
    if isinstance(proxy, dict) and proxy.get("interceptionMode") is not None:
        raw = proxy.get("interceptionMode")
        if isinstance(raw, str) and raw in INTERCEPTION_MODES:
            mode = raw
        else:
            problems.append(
                f"defaultConfig.interceptionMode {str(raw)[:16]!r} is not REDIRECT, TPROXY or NONE"
            )
    return (
        MeshSettings(td or None, root or None, auto, export_to, mode, svc_export_to),
        problems,
    )


# ---- several control-plane revisions -------------------------------------------------------
#
# Each istiod revision reads its own mesh ConfigMap (``getMeshConfigMapName`` above) and
# pushes that MeshConfig to the proxies it injected and serves. A sidecar's inbound
# listener - the mode PeerAuthentication gives a port (whose root namespace is the
# revision's ``rootNamespace``) and the trust domain its certificate carries and its
# inbound accepts - follows *its own* revision's mesh config, not the one the plan was
# asked for. Which revision a pod belongs to is decided in ``jobs.plan.injection``
# (``pod_revision``); revision *tags* (istioctl/pkg/tag, the chart's
# templates/revision-tags-mwc.yaml: a MutatingWebhookConfiguration labelled
# ``istio.io/tag=<tag>`` and ``istio.io/rev=<revision>``) are aliases resolved here.
# Client-side settings (enableAutoMtls, defaultDestinationRuleExportTo) stay the plan's:
# they are read by the *probe's* sidecar, whose revision is the plan's.

TAG_LABEL = "istio.io/tag"  # on a revision tag's MutatingWebhookConfiguration
REV_LABEL = "istio.io/rev"
MAX_REVISIONS = 16  # distinct revisions looked up per plan; more is not a real mesh


def revision_name(revision: str | None) -> str:
    """``None`` and ``""`` are the default revision (the chart's ``revision: ""``)."""
    return revision or "default"


@dataclass(frozen=True)
class RevisionMesh:
    """The mesh settings a revision's proxies get, or why the plan cannot know them."""

    revision: str
    settings: MeshSettings | None  # None: unknown (``why``)
    why: str = ""


@dataclass
class Revisions:
    """What the plan knows about the control-plane revisions of a cluster.

    ``plan``: the revision whose mesh config is the snapshot's own (``--revision``,
    else ``default``). ``meshes``: settings of the other revisions whose ConfigMap was
    read; ``unknown``: revisions whose ConfigMap was looked for and could not be used,
    with why. ``tags``: revision tag -> revision; ``tags_read``: False when the tag
    webhooks were not (or could not be) read, so a name that is neither a known
    revision nor a known tag cannot be told apart from a missing revision.
    ``trust_domain`` / ``root_namespace``: values the user forced (``--trust-domain``,
    ``--root-namespace``): they hold for every revision."""

    plan: str = "default"
    meshes: dict[str, MeshSettings] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    tags_why: str = ""  # why the tags could not be read, if they could not
    istio_namespace: str = DEFAULT_ISTIO_NAMESPACE
    tag_clashes: set[str] = field(default_factory=set)
    trust_domain: str | None = None
    root_namespace: str | None = None

    def resolve(self, requested: str, *, is_tag_free: bool = False) -> str:
        """The revision behind a name a pod or namespace uses: a tag's revision, or the
        name itself. ``is_tag_free``: the name was written by the injector (the pod's
        ``istio.io/rev`` annotation is ``.Revision``, never a tag)."""
        if is_tag_free:
            return requested
        return self.tags.get(requested, requested)

    def mesh_of(
        self, requested: str, plan_settings: MeshSettings, *, is_tag_free: bool = False
    ) -> RevisionMesh:
        """The mesh settings of the revision ``requested`` names (``plan_settings``
        for the plan's own revision), or why they are unknown."""
        if not is_tag_free and requested in self.tag_clashes:
            return RevisionMesh(
                requested,
                None,
                f"revision tag {requested!r} is defined by webhooks naming different "
                "revisions: which one injects is not knowable",
            )
        rev = self.resolve(requested, is_tag_free=is_tag_free)
        if not DNS_LABEL.match(rev):
            # istiod-<rev> and istio-<rev> are object names: anything else names no
            # control plane (and is never put into an API path).
            return RevisionMesh(rev[:64], None, f"{rev[:64]!r} is not a revision name")
        if rev == self.plan:
            return RevisionMesh(rev, plan_settings)
        got = self.meshes.get(rev)
        if got is not None:
            return RevisionMesh(
                rev,
                MeshSettings(
                    self.trust_domain or got.trust_domain,
                    self.root_namespace or got.root_namespace,
                    got.enable_auto_mtls,
                    got.default_dr_export_to,
                    got.interception_mode,
                    got.default_service_export_to,
                ),
            )
        why = self.unknown.get(rev) or (
            f"no ConfigMap {self.istio_namespace}/{mesh_configmap_name(rev)} holds it"
        )
        if not is_tag_free and requested not in self.tags:
            why += f", and {requested!r} is no known revision tag"
            if self.tags_why:
                why += f" ({self.tags_why})"
        return RevisionMesh(rev, None, why)


def tags_from_webhooks(webhooks: list[dict[str, object]]) -> tuple[dict[str, str], list[str]]:
    """Revision tag -> revision from MutatingWebhookConfigurations labelled
    ``istio.io/tag`` (their ``istio.io/rev`` label names the revision; istioctl/pkg/tag
    ``GetWebhooksWithTag``), and the tags defined twice with different revisions (the
    plan cannot tell which webhook the API server calls: those are left unresolved)."""
    seen: dict[str, set[str]] = {}
    for wh in webhooks:
        md = wh.get("metadata")
        labels = md.get("labels") if isinstance(md, dict) else None
        if not isinstance(labels, dict):
            continue
        tag, rev = labels.get(TAG_LABEL), labels.get(REV_LABEL)
        if isinstance(tag, str) and tag and isinstance(rev, str) and rev:
            seen.setdefault(tag, set()).add(rev)
    tags = {t: next(iter(r)) for t, r in seen.items() if len(r) == 1}
    clashes = sorted(t for t, r in seen.items() if len(r) > 1)
    return tags, clashes


# MeshConfig ``outboundTrafficPolicy``: what a sidecar does with traffic to a host its
# scope does not hold (jobs.plan.policy.sidecar).
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
