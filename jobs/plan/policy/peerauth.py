"""PeerAuthentication: the server-side mTLS mode at one (pod, target port), and which
policy decided it (Istio's pilot/pkg/security/authn/policy_applier.go and
pilot/pkg/model/authentication.go).

- Levels: workload (non-empty ``selector.matchLabels``) > namespace > mesh (a
  selector-less policy in the root namespace). Within one level the oldest
  ``creationTimestamp`` wins (compared as a time, whole seconds), ties broken by name,
  then namespace (pilot/pkg/model/config.go ``configCompareByCreationTime``). A selector
  policy in the root namespace is ignored. ``UNSET`` (or no ``mtls``) inherits the level
  above; with nothing set the mode is PERMISSIVE.
- ``portLevelMtls`` counts only on the winning *workload* policy and is keyed by the
  workload's target (container) port; a port entry with ``UNSET`` takes the workload's
  composed mode.
- A pod without a proxy in front (no sidecar, not captured by ztunnel; both decided in
  ``jobs.plan.injection``) accepts plaintext whatever the policy says (``expect_for``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jobs.plan.fields import KubeObject, created_at, name, namespace, port_key, ref, spec
from probe.model import Expect


@dataclass(frozen=True)
class ModeDecision:
    """The effective server mode at one (pod, target port) and who decided it."""

    mode: Expect  # STRICT | PERMISSIVE | DISABLE (never NONE: that is about the sidecar)
    source: str  # e.g. "workload PeerAuthentication shop/checkout port 9090"


def _sort_key(pa: Mapping[str, Any]) -> tuple[int, str, str]:
    """pilot/pkg/model/config.go ``configCompareByCreationTime`` (what
    authentication.go ``addPeerAuthentication`` sorts by): oldest creationTimestamp, then
    name, then namespace."""
    return (created_at(pa), name(pa), namespace(pa))


def _mtls_mode(raw: object) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("mode"), str):
        return str(raw["mode"])
    return "UNSET"


def _selector(pa: Mapping[str, Any]) -> dict[str, str] | None:
    """matchLabels of a workload policy; None for namespace/mesh level (no or empty selector)."""
    sel = spec(pa).get("selector")
    if not isinstance(sel, dict):
        return None
    ml = sel.get("matchLabels")
    if not isinstance(ml, dict) or not ml:
        return None
    return {str(k): str(v) for k, v in ml.items()}


def workload_selector(pa: Mapping[str, Any]) -> dict[str, str] | None:
    """A PeerAuthentication's workload selector; None at namespace/mesh level."""
    return _selector(pa)


def selects(match_labels: Mapping[str, str], pod_labels: Mapping[str, str]) -> bool:
    return match_labels.items() <= pod_labels.items()


class PeerAuthIndex:
    """The PeerAuthentications of a snapshot, arranged for per-pod lookups."""

    def __init__(self, policies: Iterable[KubeObject], root_namespace: str) -> None:
        self.root_namespace = root_namespace
        mesh: list[KubeObject] = []
        per_ns: dict[str, list[KubeObject]] = defaultdict(list)
        workload: dict[str, list[tuple[dict[str, str], KubeObject]]] = defaultdict(list)
        self.ignored: list[tuple[KubeObject, str]] = []
        self.shadowed: list[tuple[KubeObject, KubeObject]] = []  # (loser, winner)
        for pa in sorted(policies, key=_sort_key):
            ns, sel = namespace(pa), _selector(pa)
            if sel is None:
                if spec(pa).get("portLevelMtls"):
                    self.ignored.append(
                        (pa, "portLevelMtls without a workload selector is ignored by Istio")
                    )
                (mesh if ns == root_namespace else per_ns[ns]).append(pa)
            elif ns == root_namespace:
                self.ignored.append(
                    (pa, f"a selector policy in the root namespace {ns} is ignored by Istio")
                )
            else:
                workload[ns].append((sel, pa))
        self.mesh: KubeObject | None = mesh[0] if mesh else None
        self.namespace_policy: dict[str, KubeObject] = {ns: lst[0] for ns, lst in per_ns.items()}
        for lst in [mesh, *per_ns.values()]:
            self.shadowed.extend((loser, lst[0]) for loser in lst[1:])
        self._workload = dict(workload)
        self._base_cache: dict[str, ModeDecision] = {}
        # ``for_workload`` answers, by what decides them: the namespace when no selector
        # policy there selects the pod, else the winning policy (it lives in the pod's
        # namespace, and the index holds it as long as this memo, so its id is its own).
        self._plain: dict[str, WorkloadPolicy] = {}
        self._composed: dict[int, WorkloadPolicy] = {}

    def has_policy_in(self, ns: str) -> bool:
        return ns in self.namespace_policy or ns in self._workload

    def workload_policies(self, ns: str, pod_labels: Mapping[str, str]) -> list[KubeObject]:
        """Every selector policy that selects the pod, oldest first (the first one counts)."""
        return [pa for sel, pa in self._workload.get(ns, ()) if selects(sel, pod_labels)]

    def namespace_mode(self, ns: str) -> ModeDecision:
        """The namespace (else mesh) level mode, PERMISSIVE when neither is set
        (authentication.go ``GetNamespaceMutualTLSMode`` with the fallback of
        push_context.go ``BestEffortInferServiceMTLSMode``)."""
        return self._base(ns)

    def _base(self, ns: str) -> ModeDecision:
        """Mesh then namespace level, for pods no workload policy selects."""
        got = self._base_cache.get(ns)
        if got is None:
            mode, source = "PERMISSIVE", "no PeerAuthentication (Istio default PERMISSIVE)"
            for level, pa in (("mesh", self.mesh), ("namespace", self.namespace_policy.get(ns))):
                if pa is not None:
                    m = _mtls_mode(spec(pa).get("mtls"))
                    if m != "UNSET":
                        mode, source = m, f"{level} PeerAuthentication {ref(pa)}"
            got = self._base_cache[ns] = ModeDecision(Expect(mode), source)
        return got

    def for_workload(self, pod_namespace: str, pod_labels: Mapping[str, str]) -> WorkloadPolicy:
        """The composed policy of one workload; ``.at(target_port)`` gives a port's mode."""
        items = pod_labels.items()
        workload = None
        for sel, pa in self._workload.get(pod_namespace, ()):  # oldest first: it wins
            if sel.items() <= items:
                workload = pa
                break
        if workload is None:
            got = self._plain.get(pod_namespace)
            if got is None:
                got = self._plain[pod_namespace] = WorkloadPolicy(self._base(pod_namespace), {})
            return got
        got = self._composed.get(id(workload))
        if got is None:
            got = self._composed[id(workload)] = self._compose(pod_namespace, workload)
        return got

    def _compose(self, pod_namespace: str, workload: KubeObject) -> WorkloadPolicy:
        """The mode of pods whose oldest selecting policy is ``workload``."""
        base = self._base(pod_namespace)
        m = _mtls_mode(spec(workload).get("mtls"))
        if m != "UNSET":
            base = ModeDecision(Expect(m), f"workload PeerAuthentication {ref(workload)}")
        ports: dict[int, ModeDecision] = {}
        plm = spec(workload).get("portLevelMtls")
        if isinstance(plm, dict):
            for k, v in plm.items():
                port, pm = port_key(k), _mtls_mode(v)
                if port is not None and pm != "UNSET":
                    ports[port] = ModeDecision(
                        Expect(pm), f"workload PeerAuthentication {ref(workload)} port {port}"
                    )
        return WorkloadPolicy(base, ports)

    def effective(
        self, pod_namespace: str, pod_labels: Mapping[str, str], target_port: int | None
    ) -> ModeDecision:
        return self.for_workload(pod_namespace, pod_labels).at(target_port)


@dataclass(frozen=True)
class WorkloadPolicy:
    """A workload's composed mode and its port-level exceptions (keyed by target port;
    an UNSET port entry is simply absent: it inherits ``workload``)."""

    workload: ModeDecision
    ports: Mapping[int, ModeDecision]

    def at(self, target_port: int | None) -> ModeDecision:
        if target_port is None:
            return self.workload
        return self.ports.get(target_port, self.workload)


def expect_for(mode: Expect, sidecar: bool, ambient: bool) -> Expect:
    """What the wire must show: without a proxy in front, plaintext is accepted."""
    return mode if (sidecar or ambient) else Expect.NONE
