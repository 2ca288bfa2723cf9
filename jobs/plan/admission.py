"""Admission: every raw body is checked once, at the boundary, against the shape its
kind requires. A body that fails becomes a ``Problem`` (kind, name, the reason a person
acts on) and is left out of the snapshot, so later code reads fields without defending
against every malformation, and one bad object never stops a plan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jobs.plan.fields import is_port, name, namespace, parse_time, port_key

# PeerAuthentication mTLS modes (istio.io/api security/v1 PeerAuthentication.MutualTLS.Mode).
PA_MODES = frozenset({"UNSET", "DISABLE", "PERMISSIVE", "STRICT"})
# DestinationRule ClientTLSSettings.TLSmode.
DR_TLS_MODES = frozenset({"DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"})


# Kinds Istio orders by creationTimestamp (the oldest wins): only there does a timestamp
# change the plan, so only there is an unreadable one refused.
_ORDERED_KINDS = frozenset({"PeerAuthentication", "DestinationRule", "Sidecar"})


@dataclass(frozen=True)
class Problem:
    """Something discovery or loading could not use, with the reason a person acts on."""

    kind: str
    namespace: str | None
    name: str | None
    message: str

    @property
    def ref(self) -> str:
        if self.name is None:
            return self.kind
        return (
            f"{self.kind} {self.namespace}/{self.name}"
            if self.namespace
            else (f"{self.kind} {self.name}")
        )

    def __str__(self) -> str:
        return f"{self.ref}: {self.message}"


def _problem(kind: str, obj: object, message: str) -> Problem:
    if isinstance(obj, dict):
        return Problem(kind, namespace(obj) or None, name(obj) or None, message)
    return Problem(kind, None, None, message)


def _need_meta(kind: str, obj: Mapping[str, Any], namespaced: bool) -> str | None:
    md = obj.get("metadata")
    if type(md) is not dict:
        return "no metadata"
    n = md.get("name")
    if type(n) is not str or not n:
        return "metadata.name missing"
    if namespaced:
        ns = md.get("namespace")
        if type(ns) is not str or not ns:
            return "metadata.namespace missing"
    for key in ("labels", "annotations"):
        raw = md.get(key)
        if raw is not None and type(raw) is not dict:
            return f"metadata.{key} is not a mapping"
    ts = md.get("creationTimestamp")
    if kind in _ORDERED_KINDS and ts is not None and parse_time(ts) is None:
        # metav1.Time.UnmarshalJSON (apimachinery pkg/apis/meta/v1/time.go) fails on it, so
        # the API server rejects the whole object: it cannot exist in a cluster.
        shown = ts if isinstance(ts, str) else type(ts).__name__
        return (
            f"metadata.creationTimestamp {str(shown)[:64]!r} is not an RFC 3339 time "
            "(the API server rejects this object; Istio orders policies by it)"
        )
    return None


def _check_pod(obj: Mapping[str, Any]) -> str | None:
    s = obj.get("spec")
    if not isinstance(s, dict):
        return "spec missing"
    if not isinstance(s.get("containers"), list):
        return "spec.containers is not a list"
    for key in ("containers", "initContainers"):
        for c in s.get(key) or ():
            if type(c) is not dict:
                return f"spec.{key} has a non-mapping entry"
            ports = c.get("ports")
            if ports is None:
                continue
            bad = type(ports) is not list
            for p in () if bad else ports:
                if type(p) is not dict or not is_port(p.get("containerPort")):
                    bad = True
                    break
            if bad:
                return f"container {c.get('name')!r}: ports must be a list with containerPort"
    if obj.get("status") is not None and not isinstance(obj.get("status"), dict):
        return "status is not a mapping"
    return None


def _check_service(obj: Mapping[str, Any]) -> str | None:
    s = obj.get("spec")
    if not isinstance(s, dict):
        return "spec missing"
    ports = s.get("ports")
    if ports is not None and not isinstance(ports, list):
        return "spec.ports is not a list"
    for p in ports or []:
        if not isinstance(p, dict) or not is_port(p.get("port")):
            return "spec.ports entry without a valid port"
        tp = p.get("targetPort")
        # 0 and "" are defaulted to ``port`` by the API server (SetDefaults_Service).
        defaulted = tp is None or tp == "" or (type(tp) is int and tp == 0)
        if not defaulted and not (is_port(tp) or (isinstance(tp, str) and tp)):
            return f"port {p.get('port')}: targetPort {tp!r} is neither a port nor a name"
    sel = s.get("selector")
    if sel is not None and not isinstance(sel, dict):
        return "spec.selector is not a mapping"
    return None


def _check_slice(obj: Mapping[str, Any]) -> str | None:
    eps = obj.get("endpoints")
    if eps is not None and not isinstance(eps, list):
        return "endpoints is not a list"
    for e in eps or []:
        if not isinstance(e, dict) or not isinstance(e.get("addresses"), list):
            return "endpoint without addresses"
    ports = obj.get("ports")
    if ports is not None and (
        not isinstance(ports, list) or any(not isinstance(p, dict) for p in ports)
    ):
        return "ports is not a list of mappings"
    return None


def _check_mtls(raw: object, where: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        return f"{where} is not a mapping"
    mode = raw.get("mode")
    if mode is not None and mode not in PA_MODES:
        return f"{where}.mode {mode!r} is not one of {', '.join(sorted(PA_MODES))}"
    return None


def _check_pa(obj: Mapping[str, Any]) -> str | None:
    s = obj.get("spec", {})
    if s is None:
        return None
    if not isinstance(s, dict):
        return "spec is not a mapping"
    sel = s.get("selector")
    if sel is not None and (
        not isinstance(sel, dict)
        or (sel.get("matchLabels") is not None and not isinstance(sel.get("matchLabels"), dict))
    ):
        return "spec.selector.matchLabels is not a mapping"
    err = _check_mtls(s.get("mtls"), "spec.mtls")
    if err:
        return err
    plm = s.get("portLevelMtls")
    if plm is not None:
        if not isinstance(plm, dict):
            return "spec.portLevelMtls is not a mapping"
        for k, v in plm.items():
            if port_key(k) is None:
                return f"spec.portLevelMtls key {str(k)[:16]!r} is not a port number"
            err = _check_mtls(v, f"spec.portLevelMtls[{k}]")
            if err:
                return err
    return None


def _check_tls(raw: object, where: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        return f"{where} is not a mapping"
    mode = raw.get("mode")
    if mode is not None and mode not in DR_TLS_MODES:
        return f"{where}.mode {mode!r} is not one of {', '.join(sorted(DR_TLS_MODES))}"
    return None


def _check_dr(obj: Mapping[str, Any]) -> str | None:
    s = obj.get("spec")
    if not isinstance(s, dict):
        return "spec missing"
    if not isinstance(s.get("host"), str) or not s["host"]:
        return "spec.host missing"
    ws = s.get("workloadSelector")
    if ws is not None and (
        not isinstance(ws, dict)
        or (ws.get("matchLabels") is not None and not isinstance(ws.get("matchLabels"), dict))
    ):
        return "spec.workloadSelector.matchLabels is not a mapping"
    export = s.get("exportTo")
    if export is not None and (
        not isinstance(export, list) or not all(isinstance(e, str) for e in export)
    ):
        return "spec.exportTo is not a list of namespaces"
    tp = s.get("trafficPolicy")
    if tp is None:
        return None
    if not isinstance(tp, dict):
        return "spec.trafficPolicy is not a mapping"
    err = _check_tls(tp.get("tls"), "trafficPolicy.tls")
    if err:
        return err
    pls = tp.get("portLevelSettings")
    if pls is None:
        return None
    if not isinstance(pls, list):
        return "trafficPolicy.portLevelSettings is not a list"
    for i, p in enumerate(pls):
        if not isinstance(p, dict) or not isinstance(p.get("port"), dict):
            return f"portLevelSettings[{i}] has no port"
        if not is_port(p["port"].get("number")):
            return f"portLevelSettings[{i}].port.number is not a port number"
        err = _check_tls(p.get("tls"), f"portLevelSettings[{i}].tls")
        if err:
            return err
    return None


_CHECKS: dict[str, tuple[bool, Callable[[Mapping[str, Any]], str | None]]] = {
    "Namespace": (False, lambda o: None),
    "Pod": (True, _check_pod),
    "Service": (True, _check_service),
    "EndpointSlice": (True, _check_slice),
    "PeerAuthentication": (True, _check_pa),
    "DestinationRule": (True, _check_dr),
    # AuthorizationPolicy: a spec mapping is all admission asks; jobs.plan.authz reads the
    # rules and turns what it cannot read into a skip naming the field.
    "AuthorizationPolicy": (
        True,
        lambda o: None if type(o.get("spec", {})) is dict else "spec is not a mapping",
    ),
    # Sidecar: metadata only here; jobs.plan.policy.sidecar reads the spec, fails closed on
    # what it cannot read and names the field (a Sidecar dropped here would silently widen
    # what the plan thinks the probe's sidecar can reach).
    "Sidecar": (True, lambda o: None),
}


def admit(kind: str, obj: object) -> Problem | None:
    """None when ``obj`` is a usable ``kind``; otherwise the Problem that says why not."""
    if not isinstance(obj, dict):
        return _problem(kind, obj, "not a JSON object")
    namespaced, check = _CHECKS[kind]
    err = _need_meta(kind, obj, namespaced) or check(obj)
    return _problem(kind, obj, err) if err else None
