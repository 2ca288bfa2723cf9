"""DestinationRules: which rule a sidecar client uses for a host and service port, and
the TLS that rule makes the client send.

Which rule a sidecar client uses for a host, as istiod computes it (istio/istio
pilot/pkg/model):
- push_context.go ``setDestinationRules``: rules are sorted workloadSelector first, then
  oldest creationTimestamp, then name, then namespace
  (``sortConfigBySelectorAndCreationTime``); a short host is qualified with the rule's
  namespace (config.go ``ResolveShortnameToFQDN``); each rule goes into its namespace's
  local index (exportTo empty, ``*``, ``.`` or its own namespace), the exported index
  (unless private: exportTo only ``.``/its own namespace, or empty with the mesh default
  ``.``) and, when private in the root namespace, the root-local index. A rule with a
  workloadSelector is always private.
- destination_rule.go ``mergeDestinationRule``: rules for the same host in one index
  merge into the first (oldest): later ones only add subsets, and give their
  trafficPolicy only when the first has none; a selector rule merges only with rules of
  the same selector.
- push_context.go ``destinationRule``: the client's namespace (local index; the root-local
  one for a client in the root namespace), then the service's namespace, then the root
  namespace (exported indexes, kept only when exported to the client's namespace). No
  other namespace is ever consulted. Within one index the most specific host wins
  (config.go ``MostSpecificHostMatch``, pkg/config/host/names.go ``MoreSpecific``).
- sidecar.go ``SidecarScope.DestinationRule``: of the rules found, a selector rule of the
  client's own namespace that selects the client wins, else the selector-less one, else
  none - a selector rule that does not select the client still hides the service's
  namespace's rules.
- networking/util/util.go ``GetPortLevelTrafficPolicy``: the first ``portLevelSettings``
  entry for the service port replaces the top-level policy whole (no ``tls`` there: the
  cluster uses auto-mTLS); a ``tls`` without ``mode`` is DISABLE (the enum's zero value,
  istio/api networking/v1alpha3 destination_rule.proto ``ClientTLSSettings.TLSmode``).
- but auto-mTLS then sends mTLS only to endpoints EDS marks ``tlsMode: istio``, and
  pilot/pkg/xds/endpoints/mtls_checker.go ``checkMtlsEnabled`` marks them from the
  rule's top-level tls (or the first port entry *with* tls) when there is one: under a
  top-level DISABLE, a port entry without tls still gets plaintext. Auto-mTLS is off
  for the whole Service when the mesh disables it, when the Service's namespace mode is
  DISABLE, or for a headless Service with an endpoint not labelled for mTLS
  (cluster_tls.go ``buildUpstreamTLSSettings``, push_context.go
  ``BestEffortInferServiceMTLSMode``).
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jobs.plan.fields import KubeObject, created_at, name, namespace, ref, spec
from jobs.plan.policy.peerauth import selects
from probe.constants import INJECT_LABEL, PROBE_POD_LABELS, ROLE_LABEL, TLS_MODE_LABEL
from probe.model import Expect

# Labels of the probe's sidecar pod (jobs/launch/jobspec.py ``labels`` for role "sidecar"): what a
# client-namespace DestinationRule's workloadSelector is matched against.
PROBE_CLIENT_LABELS: Mapping[str, str] = MappingProxyType(
    {**PROBE_POD_LABELS, ROLE_LABEL: "sidecar", INJECT_LABEL: "true"}
)
# Where Istio itself writes workload certificates as files (legacy /etc/certs mount,
# OUTPUT_CERTS, the workload-spiffe-credentials volume): MUTUAL with these is mesh mTLS.
_ISTIO_CERT_DIRS = ("/etc/certs/", "/etc/istio-output-certs/", "/var/run/secrets/workload-spiffe")


@dataclass(frozen=True)
class DrTls:
    """The TLS a sidecar client uses for one host and service port.

    ``mode`` None: no DestinationRule TLS applies and auto-mTLS decides per endpoint -
    unless ``auto_off`` says why Istio turned it off for this service. ``eds_mode``: with
    auto-mTLS, the TLS mode Istio's endpoint marking still reads from the rule (a port
    entry without ``tls`` under a top-level ``tls``). ``plaintext`` names why Istio builds
    no TLS for the mode set (the client then sends plaintext). ``istio_certs``: MUTUAL
    with Istio's own workload certificate files."""

    mode: str | None = None
    source: str | None = None  # "DestinationRule ns/name" (+ " port N")
    plaintext: str | None = None
    istio_certs: bool = False
    auto_off: str | None = None
    eds_mode: str | None = None
    # ISTIO_MUTUAL ``subjectAltNames``: they replace the service's identities in the
    # client's exact SAN match (cluster_tls.go ``buildUpstreamTLSSettings``); None when
    # unset, empty or with ``insecureSkipVerify``.
    sans: tuple[str, ...] | None = None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def dr_host(dr: Mapping[str, Any], cluster_domain: str) -> str:
    """A DR's host as Istio resolves it (config.go ``ResolveShortnameToFQDN``): a name
    without a dot is a Service in the DR's namespace; ``*``, IPs and dotted names stay."""
    host = str(spec(dr).get("host", ""))
    if host == "*" or "." in host or _is_ip(host):
        return host
    return f"{host}.{namespace(dr)}.svc.{cluster_domain}"


def _more_specific(a: str, b: str) -> bool:
    """pkg/config/host/names.go ``MoreSpecific``: exact before wildcard, longer first,
    then alphabetical - a total order, so the winner never depends on map order."""
    aw, bw = a.startswith("*"), b.startswith("*")
    if aw != bw:
        return bw
    if len(a) == len(b):
        return a < b
    return len(a) > len(b)


def in_cluster_host(host: str, cluster_domain: str) -> bool:
    return host.endswith(f".svc.{cluster_domain}") or host == "*" or "." not in host


def _dr_selector(dr: Mapping[str, Any]) -> dict[str, str] | None:
    """``workloadSelector.matchLabels``; {} for a present but empty selector (it selects
    every workload of the namespace), None when the rule has no workloadSelector."""
    ws = spec(dr).get("workloadSelector")
    if not isinstance(ws, dict):
        return None
    ml = ws.get("matchLabels")
    return {str(k): str(v) for k, v in ml.items()} if isinstance(ml, dict) else {}


def _dr_sort_key(dr: Mapping[str, Any]) -> tuple[int, int, str, str]:
    """push_context.go ``sortConfigBySelectorAndCreationTime``."""
    return (0 if _dr_selector(dr) is not None else 1, created_at(dr), name(dr), namespace(dr))


@dataclass
class _Merged:
    """One consolidated rule (destination_rule.go ``ConsolidatedDestRule``)."""

    namespace: str  # of the first rule: the merged rule keeps its metadata
    selector: dict[str, str] | None
    export_to: frozenset[str]
    traffic_policy: Mapping[str, Any] | None
    policy_from: str | None  # the rule the traffic policy came from
    subsets: set[str]
    rules: list[str]  # every rule merged in, oldest first


def _traffic_policy(dr: Mapping[str, Any]) -> Mapping[str, Any] | None:
    tp = spec(dr).get("trafficPolicy")
    return tp if isinstance(tp, dict) else None


def _subset_names(dr: Mapping[str, Any]) -> list[str]:
    subsets = spec(dr).get("subsets")
    if not isinstance(subsets, list):
        return []
    return [str(s.get("name")) for s in subsets if isinstance(s, dict)]


class _HostIndex:
    """consolidatedDestRules: merged rules by exact and by wildcard host."""

    def __init__(self) -> None:
        self.specific: dict[str, list[_Merged]] = {}
        self.wildcard: dict[str, list[_Merged]] = {}

    def merge(
        self, dr: Mapping[str, Any], host: str, export: frozenset[str], sel: dict[str, str] | None
    ) -> None:
        """destination_rule.go ``mergeDestinationRule`` for user-written rules, with
        ``ENABLE_ENHANCED_DESTINATIONRULE_MERGE`` at its default (on): rules merge only
        when their exportTo sets are equal (or the new one's is a superset, then it is also
        kept on its own)."""
        table = self.wildcard if host.startswith("*") else self.specific
        tp = _traffic_policy(dr)
        fresh = _Merged(
            namespace(dr),
            sel,
            export,
            tp,
            ref(dr) if tp is not None else None,
            set(_subset_names(dr)),
            [ref(dr)],
        )
        existing = table.get(host)
        if existing is None:
            table[host] = [fresh]
            return
        separately = True
        for m in existing:
            if export == m.export_to:
                separately = False
            elif m.export_to and export >= m.export_to:
                separately = True
            else:
                separately = True
                continue
            both_with = sel is not None and m.selector is not None
            if both_with and sel != m.selector:
                separately = True
                continue
            if (sel is None and m.selector is None) or both_with:
                separately = False
            m.rules.append(ref(dr))
            m.subsets.update(_subset_names(dr))
            if m.traffic_policy is None and tp is not None:
                m.traffic_policy, m.policy_from = tp, ref(dr)
        if separately:
            existing.append(fresh)

    def match(self, host: str) -> list[_Merged] | None:
        """config.go ``MostSpecificHostMatch`` for a service host (never a wildcard)."""
        got = self.specific.get(host)
        if got is not None:
            return got
        best: str | None = None
        for pattern in self.wildcard:
            if host.endswith(pattern[1:]) and (best is None or _more_specific(pattern, best)):
                best = pattern
        return self.wildcard[best] if best is not None else None


class DestinationRuleIndex:
    def __init__(
        self,
        rules: Iterable[KubeObject],
        root_namespace: str,
        cluster_domain: str,
        *,
        default_export_to: Sequence[str] = ("*",),
        auto_mtls: bool = True,
    ) -> None:
        self.root_namespace = root_namespace
        self.cluster_domain = cluster_domain
        self.auto_mtls = auto_mtls
        self._local: dict[str, _HostIndex] = defaultdict(_HostIndex)
        self._exported: dict[str, _HostIndex] = defaultdict(_HostIndex)
        self._root_local = _HostIndex()
        default_private = "." in default_export_to
        for dr in sorted(rules, key=_dr_sort_key):
            ns, host, sel = namespace(dr), dr_host(dr, cluster_domain), _dr_selector(dr)
            raw = spec(dr).get("exportTo")
            export = (
                frozenset({"."})
                if sel is not None
                else frozenset(str(e) for e in raw)
                if isinstance(raw, list)
                else frozenset()
            )
            if not export or "*" in export or "." in export or ns in export:
                self._local[ns].merge(dr, host, export, sel)
            private = (not export and default_private) or (
                len(export) == 1 and ("." in export or ns in export)
            )
            if not private:
                self._exported[ns].merge(dr, host, export, sel)
            elif ns == root_namespace:
                self._root_local.merge(dr, host, export, sel)

    def _found(self, host: str, service_namespace: str, client_ns: str | None) -> list[_Merged]:
        """push_context.go ``destinationRule``: the first namespace with a match decides."""
        if client_ns is not None and client_ns != self.root_namespace:
            local = self._local.get(client_ns)
            got = local.match(host) if local is not None else None
            if got:
                return got
        elif client_ns is not None:
            got = self._root_local.match(host)
            if got:
                return got
        for ns in (service_namespace, self.root_namespace):
            exported = self._exported.get(ns)
            got = exported.match(host) if exported is not None else None
            visible = [
                m
                for m in got or ()
                if not m.export_to or "*" in m.export_to or client_ns in m.export_to
            ]
            if visible:
                return visible
        return []

    def _rule(
        self,
        host: str,
        service_namespace: str,
        client_ns: str | None,
        client_labels: Mapping[str, str],
    ) -> _Merged | None:
        """sidecar.go ``SidecarScope.DestinationRule`` for outbound traffic."""
        catch_all: _Merged | None = None
        for m in self._found(host, service_namespace, client_ns):
            if m.selector is None:
                catch_all = m
            elif m.namespace == client_ns and selects(m.selector, client_labels):
                return m
        return catch_all

    def rule_for(
        self,
        host: str,
        service_namespace: str,
        client_namespace: str | None,
        client_labels: Mapping[str, str] = PROBE_CLIENT_LABELS,
    ) -> list[str]:
        """The rules (refs, oldest first) merged into the one the client uses; [] for none."""
        m = self._rule(host, service_namespace, client_namespace, client_labels)
        return list(m.rules) if m is not None else []

    def tls_for(
        self,
        host: str,
        service_namespace: str,
        service_port: int,
        client_namespace: str | None,
        client_labels: Mapping[str, str] = PROBE_CLIENT_LABELS,
        *,
        service_mode: Expect | None = None,
        passthrough_labels: Sequence[str | None] | None = None,
    ) -> DrTls:
        """``service_mode``: the service namespace's PeerAuthentication mode (namespace,
        else mesh level); ``passthrough_labels``: for a headless Service, the
        ``security.istio.io/tlsMode`` label of each endpoint."""
        m = self._rule(host, service_namespace, client_namespace, client_labels)
        tp = m.traffic_policy if m is not None else None
        if m is None or tp is None:
            return DrTls(auto_off=self._auto_off(service_mode, passthrough_labels))
        source = f"DestinationRule {m.policy_from}"
        tls = tp.get("tls")
        eds = tls
        entries = [
            p for p in tp.get("portLevelSettings") or () if p["port"].get("number") == service_port
        ]
        if entries:
            tls, source = entries[0].get("tls"), f"{source} port {service_port}"
            # mtls_checker.go trafficPolicyTLSModeForPort: the first entry *with* tls
            eds = next((p["tls"] for p in entries if isinstance(p.get("tls"), dict)), eds)
        if not isinstance(tls, dict):
            return DrTls(
                source=source,
                auto_off=self._auto_off(service_mode, passthrough_labels),
                eds_mode=str(eds.get("mode") or "DISABLE") if isinstance(eds, dict) else None,
            )
        mode = str(tls.get("mode") or "DISABLE")
        sans = tls.get("subjectAltNames")
        return DrTls(
            mode=mode,
            source=source,
            plaintext=_no_tls_built(tls, mode, m.selector is not None),
            istio_certs=str(tls.get("clientCertificate") or "").startswith(_ISTIO_CERT_DIRS),
            sans=tuple(str(x) for x in sans)
            if isinstance(sans, list) and sans and tls.get("insecureSkipVerify") is not True
            else None,
        )

    def _auto_off(
        self, service_mode: Expect | None, passthrough_labels: Sequence[str | None] | None
    ) -> str | None:
        """Why auto-mTLS builds no TLS for the whole service (cluster_tls.go
        ``buildUpstreamTLSSettings`` with push_context.go
        ``BestEffortInferServiceMTLSMode``), or None."""
        if not self.auto_mtls:
            return "mesh config enableAutoMtls is false"
        if passthrough_labels is not None and any(label != "istio" for label in passthrough_labels):
            return (
                f"headless Service with an endpoint not labelled {TLS_MODE_LABEL}=istio: "
                "Istio turns auto-mTLS off for all of its endpoints"
            )
        if service_mode == Expect.DISABLE:
            return (
                "the Service's namespace (or mesh) PeerAuthentication is DISABLE: Istio turns "
                "auto-mTLS off for the whole Service"
            )
        return None


def dr_scope(dr: Mapping[str, Any], root_namespace: str) -> str:
    """Which sidecar clients a DestinationRule can reach, in words (the visibility rules
    of push_context.go ``setDestinationRules`` / ``destinationRule``)."""
    ns, sel = namespace(dr), _dr_selector(dr)
    if sel is not None:
        shown = ",".join(f"{k}={v}" for k, v in sorted(sel.items())) or "any labels"
        return f"only clients in {ns} selected by {shown}"
    raw = spec(dr).get("exportTo")
    export = {str(e) for e in raw} if isinstance(raw, list) else set()
    if export and "*" not in export:
        if "~" in export and len(export) == 1:
            return "no client (exportTo ~)"
        named = sorted((export - {".", "~"}) | ({ns} if "." in export else set()))
        return f"only clients in {', '.join(named)}"
    if ns == root_namespace:
        return "clients in every namespace without a rule of their own for the host"
    return f"clients in {ns} and in namespaces without a rule of their own for the host"


def dr_tls_modes(dr: Mapping[str, Any]) -> list[tuple[int | None, str]]:
    """(service port or None for the top level, mode) of every ``tls`` the rule sets;
    a ``tls`` without ``mode`` is DISABLE."""
    tp = spec(dr).get("trafficPolicy")
    if not isinstance(tp, dict):
        return []
    out: list[tuple[int | None, str]] = []
    if isinstance(tp.get("tls"), dict):
        out.append((None, str(tp["tls"].get("mode") or "DISABLE")))
    for pls in tp.get("portLevelSettings") or ():
        if isinstance(pls.get("tls"), dict):
            out.append((pls["port"].get("number"), str(pls["tls"].get("mode") or "DISABLE")))
    return out


def _no_tls_built(tls: Mapping[str, Any], mode: str, has_selector: bool) -> str | None:
    """Why istiod builds no TLS context for a SIMPLE/MUTUAL setting, leaving the cluster
    plaintext (pilot/pkg/networking/core/cluster_tls.go ``buildUpstreamClusterTLSContext``,
    ``constructUpstreamTLS``, and ``applyUpstreamTLSSettings`` which keeps no TLS on error)."""
    if mode not in ("SIMPLE", "MUTUAL"):
        return None
    cred = tls.get("credentialName")
    if isinstance(cred, str) and cred and not cred.startswith("configmap://"):
        if not has_selector:
            return (
                "credentialName on a DestinationRule without workloadSelector is not given to "
                "sidecars: Istio builds no TLS and the client sends plaintext"
            )
        return None
    if mode == "MUTUAL" and not (tls.get("clientCertificate") and tls.get("privateKey")):
        return (
            "MUTUAL without clientCertificate and privateKey: Istio fails to build the TLS "
            "context and the client sends plaintext"
        )
    return None
