"""Sidecars as Istio's injector decides them, and whether a pod really has one.

Pure functions over raw pod and namespace bodies. Sources followed (istio/istio):

- ``pkg/kube/inject/inject.go`` ``injectRequired``: host-network pods and the
  ``IgnoredNamespaces`` of ``pkg/kube/inject/webhook.go`` (kube-system, kube-public,
  kube-node-lease, local-path-storage) are never injected; the pod's
  ``sidecar.istio.io/inject`` *label* is read, else the (deprecated) annotation of
  the same name; the value is lower-cased and only ``y``, ``yes``, ``true``, ``on``
  mean inject, an empty or absent value means the policy default (``enabled`` in
  every stock install), anything else means do not inject.
- ``manifests/charts/istio-control/istio-discovery/templates/mutatingwebhook.yaml``:
  which webhook the API server calls at all. Namespace ``istio-injection=enabled``
  (exact value) or, when that label is absent, namespace ``istio.io/rev``: every pod
  whose *label* ``sidecar.istio.io/inject`` is not exactly ``false``. In a namespace
  with neither label: pods labelled ``istio.io/rev``, or labelled
  ``sidecar.istio.io/inject=true`` (exact value). ``istio-injection`` with any other
  value (``disabled``) matches no webhook. Label selectors compare exact strings,
  so ``"False"`` reaches the webhook, which then lower-cases it and skips injection.
- ``pkg/kube/inject/inject.go`` (``IntoObject``) and the sidecar templates: an
  injected pod runs a container named ``istio-proxy`` - or, with native sidecars,
  an init container of that name with ``restartPolicy: Always``. The
  ``sidecar.istio.io/status`` annotation is only a record the injector writes; it
  is copied along with templates and says nothing about what runs.

Not modelled (not discoverable without reading the injector's ConfigMap and
webhook configurations): ``neverInjectSelector`` / ``alwaysInjectSelector``, an
``enableNamespacesByDefault`` install, and whether the named revision exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from jobs.plan.fields import (
    KubeObject,
    annotation_map,
    annotations_of,
    label_map,
    labels_of,
    namespace,
    spec,
)

# INJECT_LABEL: read as a label (current API), else as the deprecated annotation.
from probe.constants import AMBIENT_REDIRECTION, INJECT_LABEL, PROXY_CONTAINER, TLS_MODE_LABEL

REVISION_LABEL = "istio.io/rev"
NAMESPACE_INJECTION_LABEL = "istio-injection"
SIDECAR_STATUS = "sidecar.istio.io/status"
_STATUS_MAX = 1 << 16  # the injector writes a few hundred bytes
DATAPLANE_MODE = "istio.io/dataplane-mode"
# pkg/kube/inject/webhook.go IgnoredNamespaces.
NEVER_INJECTED_NAMESPACES = frozenset(
    {"kube-system", "kube-public", "kube-node-lease", "local-path-storage"}
)
# inject.go injectRequired: strings.ToLower(value) in these (yaml.org/type/bool.html).
_INJECT_WORDS = frozenset({"y", "yes", "true", "on"})


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    """A proxy runs next to the app: container ``istio-proxy``, or the native-sidecar
    init container ``istio-proxy`` with ``restartPolicy: Always``. Annotations and
    labels alone never count: anyone can copy them."""
    s = spec(pod)
    for c in s.get("containers") or ():
        if type(c) is dict and c.get("name") == PROXY_CONTAINER:
            return True
    for c in s.get("initContainers") or ():
        if (
            type(c) is dict
            and c.get("name") == PROXY_CONTAINER
            and c.get("restartPolicy") == "Always"
        ):
            return True
    return False


def inject_choice(pod: Mapping[str, Any]) -> bool | None:
    """The pod's own choice as ``injectRequired`` reads it: True (inject), False (do
    not), None (no choice: the injector's default policy applies). The label wins
    over the annotation when present, even when empty."""
    labels = label_map(pod)
    raw: object = (
        labels[INJECT_LABEL] if INJECT_LABEL in labels else annotation_map(pod).get(INJECT_LABEL)
    )
    value = raw if isinstance(raw, str) else ""
    if value == "":
        return None
    return value.lower() in _INJECT_WORDS


def webhook_called(pod: Mapping[str, Any], ns_labels: Mapping[str, str]) -> bool:
    """Whether one of the stock injection webhooks' selectors matches the pod at all
    (mutatingwebhook.yaml: namespace., object., rev.namespace., rev.object.)."""
    labels = label_map(pod)
    opted_out = labels.get(INJECT_LABEL) == "false"  # NotIn ["false"]: exact, labels only
    if NAMESPACE_INJECTION_LABEL in ns_labels:
        return ns_labels[NAMESPACE_INJECTION_LABEL] == "enabled" and not opted_out
    # A revision label names the revision's webhook (``In [<rev>]``); an empty one names
    # none, and its mere presence still keeps the default webhooks away (DoesNotExist).
    if REVISION_LABEL in ns_labels:
        return ns_labels[REVISION_LABEL] != "" and not opted_out
    if REVISION_LABEL in labels:
        return labels[REVISION_LABEL] != "" and not opted_out
    return labels.get(INJECT_LABEL) == "true"


def would_inject(pod: Mapping[str, Any], ns_labels: Mapping[str, str]) -> bool:
    """Whether Istio would add a sidecar to this pod when it is created (stock
    install, default policy ``enabled``)."""
    if spec(pod).get("hostNetwork") is True:
        return False
    if namespace(pod) in NEVER_INJECTED_NAMESPACES:
        return False
    if not webhook_called(pod, ns_labels):
        return False
    choice = inject_choice(pod)
    return True if choice is None else choice


def requested_revision(pod: Mapping[str, Any], ns_labels: Mapping[str, str]) -> str | None:
    """The revision (or revision tag) whose webhook selects the pod, by the selectors of
    mutatingwebhook.yaml / revision-tags-mwc.yaml: ``istio-injection=enabled`` and the
    pod label ``sidecar.istio.io/inject=true`` go to the ``namespace.`` / ``object.``
    webhooks of the default revision (or of the ``default`` tag); a namespace's
    ``istio.io/rev`` (only without ``istio-injection``) beats the pod's own. None when
    no webhook selects the pod (``webhook_called``: e.g. the pod's
    ``sidecar.istio.io/inject=false`` label keeps every webhook away)."""
    if not webhook_called(pod, ns_labels):
        return None
    labels = label_map(pod)
    if NAMESPACE_INJECTION_LABEL in ns_labels:
        return "default" if ns_labels[NAMESPACE_INJECTION_LABEL] == "enabled" else None
    if REVISION_LABEL in ns_labels:
        return ns_labels[REVISION_LABEL] or None
    if REVISION_LABEL in labels:
        return labels[REVISION_LABEL] or None
    return "default" if labels.get(INJECT_LABEL) == "true" else None


def _status_revision(raw: object) -> str | None:
    """``revision`` of the injector's ``sidecar.istio.io/status`` JSON
    (pkg/kube/inject/inject.go ``SidecarInjectionStatus``), if it names one."""
    if not isinstance(raw, str) or len(raw) > _STATUS_MAX or '"revision"' not in raw:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON; nested past the parser's stack
        return None
    rev = doc.get("revision") if isinstance(doc, dict) else None
    return rev if isinstance(rev, str) and rev else None


def pod_revision(
    pod: Mapping[str, Any], ns_labels: Mapping[str, str], sidecar: bool | None = None
) -> tuple[str, bool] | None:
    """The control-plane revision whose proxy runs in the pod, and whether that name was
    written by the injector (then it is a revision, never a tag): the injection template
    annotates ``istio.io/rev: {{ .Revision }}`` (files/injection-template.yaml), and the
    status annotation records ``revision`` too. A sidecar without either (hand-made, or a
    pod from manifests not yet created) belongs to the webhook its labels select. None:
    no sidecar, or nothing names a revision (a hand-made proxy): the plan's revision -
    the one the user named with ``--revision`` - is assumed. ``sidecar``: ``has_sidecar(pod)``,
    when the caller knows it already."""
    if not (has_sidecar(pod) if sidecar is None else sidecar):
        return None
    ann = annotation_map(pod)
    rev = ann.get(REVISION_LABEL)
    if isinstance(rev, str) and rev:
        return rev, True
    rev = _status_revision(ann.get(SIDECAR_STATUS))
    if rev is not None:
        return rev, True
    requested = requested_revision(pod, ns_labels)
    return (requested, False) if requested else None


def needed_revisions(
    pods: Iterable[Mapping[str, Any]], ns_labels: Mapping[str, Mapping[str, str]]
) -> set[tuple[str, bool]]:
    """The (revision name, written by the injector) of every pod with a sidecar."""
    out: set[tuple[str, bool]] = set()
    for p in pods:
        got = pod_revision(p, ns_labels.get(namespace(p), {}))
        if got is not None:
            out.add(got)
    return out


def injected(pod: KubeObject) -> KubeObject:
    """A copy of ``pod`` as the injector leaves it: the proxy container, the status
    annotation and the ``security.istio.io/tlsMode: istio`` label auto-mTLS reads."""
    out = dict(pod)
    md = dict(out.get("metadata") or {})
    # The injector rewrites istio.io/rev with its own revision: a value the manifest set
    # says nothing; the revision is then read from the labels (``pod_revision``).
    ann = {k: v for k, v in annotations_of(pod).items() if k != REVISION_LABEL}
    md["annotations"] = {**ann, SIDECAR_STATUS: '{"containers":["istio-proxy"]}'}
    md["labels"] = {**labels_of(pod), TLS_MODE_LABEL: "istio"}
    out["metadata"] = md
    s = dict(spec(pod))
    s["containers"] = [*(s.get("containers") or []), {"name": PROXY_CONTAINER, "image": "proxyv2"}]
    out["spec"] = s
    return out


def already_admitted(pod: Mapping[str, Any]) -> bool:
    """A pod body read back from a cluster (a uid, or addresses the kubelet wrote):
    it went through admission already, so injection must not be applied again -
    that keeps ``--from-manifests`` on a dump of a cluster equal to the live plan."""
    status = pod.get("status")
    if isinstance(status, dict) and (status.get("podIP") or status.get("podIPs")):
        return True
    md = pod.get("metadata")
    return isinstance(md, dict) and bool(md.get("uid"))


def as_created(pod: KubeObject, ns_labels: Mapping[str, str]) -> KubeObject:
    """``pod`` as the API server would store it after the injection webhook."""
    if not isinstance(pod.get("spec"), dict) or already_admitted(pod) or has_sidecar(pod):
        return pod
    return injected(pod) if would_inject(pod, ns_labels) else pod


def ambient_labeled(pod: Mapping[str, Any], ns_labels: Mapping[str, str]) -> bool:
    pod_mode = label_map(pod).get(DATAPLANE_MODE)
    if pod_mode is not None:
        return pod_mode == "ambient"
    return ns_labels.get(DATAPLANE_MODE) == "ambient"


def ambient_enrolled(pod: Mapping[str, Any], ns_labels: Mapping[str, str]) -> bool:
    """Captured by ztunnel: labelled ambient and redirected by istio-cni, no sidecar."""
    return (
        ambient_labeled(pod, ns_labels)
        and annotation_map(pod).get(AMBIENT_REDIRECTION) == "enabled"
        and not has_sidecar(pod)
    )


# tools/istio-iptables/pkg/capture/run.go ``handleInboundPortsInclude`` and
# cni/pkg/plugin/sidecar_redirect.go: the sidecar redirects inbound TCP to Envoy for the
# ports of includeInboundPorts (default ``*``; empty: none) minus excludeInboundPorts.
INCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/includeInboundPorts"
EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
INTERCEPTION_MODE = "sidecar.istio.io/interceptionMode"
STATUS_PORT = "status.sidecar.istio.io/port"
PROXY_CONFIG = "proxy.istio.io/config"
DEFAULT_STATUS_PORT = 15020  # values.global.proxy.statusPort
# injection-template.yaml passes ``-d 15090,15021,<status port>,<annotation>`` to istio-init.
_ALWAYS_EXCLUDED = {
    15090: "Envoy's Prometheus port, served in plaintext",
    15021: "the sidecar's health port, served in plaintext",
}


def _port_list(raw: str) -> frozenset[int] | None:
    """The ports of a comma-separated annotation; None when one is not a port number."""
    out: set[int] = set()
    for part in raw.split(","):
        item = part.strip()
        if not item:
            continue
        if not item.isdigit() or not 0 < int(item) < 65536:
            return None
        out.add(int(item))
    return frozenset(out)


def interception_mode(
    annotations: Mapping[str, str], mesh_mode: str | None = None
) -> tuple[str, str]:
    """The pod's interception mode and where it comes from, as the injection template
    reads it (``annotation .ObjectMeta "sidecar.istio.io/interceptionMode"
    .ProxyConfig.InterceptionMode``): the pod annotation, else the ProxyConfig the
    injector builds - the pod's ``proxy.istio.io/config`` over its revision's mesh
    ``defaultConfig`` (pkg/kube/inject/webhook.go) - else REDIRECT. A value that
    cannot be read is returned as it is (never REDIRECT or TPROXY): no capture is
    assumed. ProxyConfig resources are not modelled."""
    raw = annotations.get(INTERCEPTION_MODE)
    if raw is not None:
        return raw, f"{INTERCEPTION_MODE}={raw[:32]!r}"
    text = annotations.get(PROXY_CONFIG)
    if text is not None:
        from probe import yamlload

        try:
            doc = yamlload.load_one(text, yamlload.Limits(_STATUS_MAX, max_depth=16))
        except yamlload.YamlLoadError:
            return "unreadable", f"{PROXY_CONFIG} is not YAML"
        got = doc.get("interceptionMode") if isinstance(doc, dict) else None
        if got is not None:
            return str(got)[:32], f"{PROXY_CONFIG} interceptionMode {str(got)[:32]!r}"
    if mesh_mode is not None:
        return mesh_mode, f"the mesh config's defaultConfig.interceptionMode {mesh_mode}"
    return "REDIRECT", "default"


def inbound_uncaptured(
    annotations: Mapping[str, str], port: int, mesh_mode: str | None = None
) -> str | None:
    """Why the sidecar does not intercept inbound ``port`` (the app gets the bytes
    directly, so plaintext is accepted whatever the policy), or None when it does.
    An unreadable annotation counts as not captured: no compliance rests on it.

    run.go ``handleInboundPortsInclude``: with ``*`` every port is redirected except
    the excluded ones - the annotation's, plus what the injection template always passes
    to ``-d``: Envoy's Prometheus port 15090, the health port 15021 and the status
    port (annotation ``status.sidecar.istio.io/port``, default 15020; ``0`` none). With a
    port list exactly those ports are redirected and no exclusion is applied."""
    mode, source = interception_mode(annotations, mesh_mode)
    if mode not in {"REDIRECT", "TPROXY"}:
        # injection-template.yaml: interceptionMode NONE adds no istio-init, so no
        # iptables rule sends anything to Envoy.
        return f"{source}: no traffic is redirected to the proxy"
    include = annotations.get(INCLUDE_INBOUND_PORTS, "*")
    exclude = annotations.get(EXCLUDE_INBOUND_PORTS, "")
    if not isinstance(include, str) or not isinstance(exclude, str):
        return "its inbound capture annotations are not strings"
    if include.strip() != "*":
        ports = _port_list(include)
        if ports is None:
            return f"{INCLUDE_INBOUND_PORTS}={include[:64]!r} is not a port list"
        if port not in ports:
            return f"{INCLUDE_INBOUND_PORTS}={include[:64]!r} leaves it out"
        return None  # a listed port is redirected; exclusions do not apply to a list
    if port in _ALWAYS_EXCLUDED:
        return f"istio-init never redirects port {port} ({_ALWAYS_EXCLUDED[port]})"
    status = annotations.get(STATUS_PORT, str(DEFAULT_STATUS_PORT)).strip()
    if status.isdigit() and int(status) == port != 0:
        return f"it is the status port of pilot-agent ({STATUS_PORT}), never redirected"
    if exclude.strip() == "*":
        return f"{EXCLUDE_INBOUND_PORTS}='*'"
    excluded = _port_list(exclude)
    if excluded is None:
        return f"{EXCLUDE_INBOUND_PORTS}={exclude[:64]!r} is not a port list"
    if port in excluded:
        return f"{EXCLUDE_INBOUND_PORTS}={exclude[:64]!r} names it"
    return None


# cni/pkg/nodeagent/net.go ``getPodLevelTrafficOverrides``: "ingress mode" turns off
# ztunnel's inbound redirection for an ambient pod; the value is read with Go's
# strconv.ParseBool (cni/pkg/util/podutil.go ``CheckBooleanAnnotation``), anything
# else is ignored.
AMBIENT_BYPASS_INBOUND = "ambient.istio.io/bypass-inbound-capture"
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})

# Every pod annotation ``inbound_uncaptured`` reads (``interception_mode`` included), and
# ``ambient_inbound_bypassed``'s: pods that agree on these, on having a sidecar or being
# ambient, and on the mesh default, get the same answer at every port.
CAPTURE_ANNOTATIONS = (
    AMBIENT_BYPASS_INBOUND,  # on_the_wire's, for an ambient pod
    INTERCEPTION_MODE,
    PROXY_CONFIG,
    INCLUDE_INBOUND_PORTS,
    EXCLUDE_INBOUND_PORTS,
    STATUS_PORT,
)


def ambient_inbound_bypassed(annotations: Mapping[str, str]) -> bool:
    """An ambient pod whose inbound traffic ztunnel does not capture."""
    return annotations.get(AMBIENT_BYPASS_INBOUND) in _GO_TRUE
