"""What the configuration itself says about the mesh, before any probe runs: the
static findings of a plan (check ``policy``). Verdicts: ``error`` for an object that
could not be used (the plan may be incomplete), ``fail`` for a contradiction (a
DestinationRule that will break calls against the server's mode), ``skip`` for a
warning or fact that no requirement asked about, ``pass`` for the coverage summary.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from jobs.plan.fields import name, namespace, port_key, ref, spec
from jobs.plan.injection import DATAPLANE_MODE, ambient_labeled
from jobs.plan.model import CHECK_POLICY, Edge, finding
from jobs.plan.objects import ClusterSnapshot
from jobs.plan.policy import (
    Outcome,
    dr_host,
    dr_scope,
    dr_tls_modes,
    in_cluster_host,
    workload_selector,
)
from probe.constants import AMBIENT_REDIRECTION
from probe.model import Expect
from probe.results import Result, Verdict

if TYPE_CHECKING:
    from jobs.plan.builder import Builder


def problem_findings(snap: ClusterSnapshot) -> list[Result]:
    out = [
        finding(p.ref, Verdict.ERROR, f"{p.message}: skipped; the plan may be incomplete")
        for p in snap.problems
    ]
    out.extend(finding("cluster", Verdict.SKIP, note) for note in snap.notes)
    return out


def _in_scope(b: Builder, ns: str) -> bool:
    return ns == b.snap.root_namespace or b.snap.is_target_namespace(ns)


def peer_auth_findings(b: Builder) -> list[Result]:
    out: list[Result] = []
    # What Istio ignores decides nothing and must not read as if it applied (the
    # "ignored" findings below say why): a same-level loser, a root-namespace selector
    # policy, and the portLevelMtls of a policy without a workload selector.
    shadowed = {id(loser) for loser, _ in b.pa.shadowed}
    for pa in sorted(b.snap.peerauthentications, key=ref):
        selector = workload_selector(pa)
        if not _in_scope(b, namespace(pa)) or id(pa) in shadowed:
            continue
        if selector is not None and namespace(pa) == b.snap.root_namespace:
            continue
        target = f"PeerAuthentication {ref(pa)}"
        mtls = spec(pa).get("mtls")
        mode = mtls.get("mode") if isinstance(mtls, dict) else None
        if mode in ("PERMISSIVE", "DISABLE"):
            what = "accepts plaintext" if mode == "PERMISSIVE" else "turns mTLS off"
            out.append(finding(target, Verdict.SKIP, f"mode {mode}: {what}", mode=mode))
        plm = spec(pa).get("portLevelMtls")
        if isinstance(plm, dict) and selector is not None:
            for k, v in plm.items():
                pm = v.get("mode") if isinstance(v, dict) else None
                if pm in ("PERMISSIVE", "DISABLE"):
                    out.append(
                        finding(
                            target,
                            Verdict.SKIP,
                            f"port {port_key(k)} (target port) is {pm}",
                            port=port_key(k),
                            mode=pm,
                        )
                    )
    for pa, why in b.pa.ignored:
        if _in_scope(b, namespace(pa)):
            out.append(finding(f"PeerAuthentication {ref(pa)}", Verdict.SKIP, why))
    for loser, winner in b.pa.shadowed:
        if _in_scope(b, namespace(loser)):
            out.append(
                finding(
                    f"PeerAuthentication {ref(loser)}",
                    Verdict.SKIP,
                    f"ignored: the older {ref(winner)} at the same level wins",
                )
            )
    return out


def namespace_findings(b: Builder) -> list[Result]:
    out: list[Result] = []
    mesh = b.pa.mesh
    inherited = (
        f"the mesh policy {ref(mesh)} applies"
        if mesh is not None
        else "no mesh policy either: Istio's default PERMISSIVE applies"
    )
    for ns in sorted(b.pods_by_ns):
        if ns != b.snap.root_namespace and not b.pa.has_policy_in(ns):
            out.append(
                finding(f"namespace {ns}", Verdict.SKIP, f"no PeerAuthentication; {inherited}")
            )
        ns_lbl = b.ns_labels.get(ns, {})
        for pod in b.pods_by_ns[ns]:
            pi = b.info(pod)
            if pi.has_proxy or (DATAPLANE_MODE not in pi.labels and DATAPLANE_MODE not in ns_lbl):
                continue
            if ambient_labeled(pod, ns_lbl):
                out.append(
                    finding(
                        f"pod {ref(pod)}",
                        Verdict.SKIP,
                        "labelled for ambient but not redirected (no annotation "
                        f"{AMBIENT_REDIRECTION}=enabled): ztunnel does not capture it",
                    )
                )
    return out


def sidecar_findings(b: Builder) -> list[Result]:
    out: list[Result] = []
    for ns in sorted(b.pods_by_ns):
        pods = b.pods_by_ns[ns]
        bare = sorted(name(p) for p in pods if not b.info(p).has_proxy)
        if bare:
            shown = ", ".join(bare[:5]) + (f" and {len(bare) - 5} more" if len(bare) > 5 else "")
            out.append(
                finding(
                    f"namespace {ns}",
                    Verdict.SKIP,
                    f"{len(bare)} of {len(pods)} pods without a sidecar accept plaintext "
                    f"whatever the policy: {shown}",
                    pods=bare,
                )
            )
    return out


def dr_findings(b: Builder) -> list[Result]:
    out: list[Result] = []
    for dr in sorted(b.snap.destinationrules, key=ref):
        host = dr_host(dr, b.snap.cluster_domain)
        if not in_cluster_host(host, b.snap.cluster_domain):
            continue
        for port, mode in dr_tls_modes(dr):
            if mode not in ("DISABLE", "SIMPLE", "MUTUAL"):
                continue
            what = (
                "sidecar clients send plaintext"
                if mode == "DISABLE"
                else "sidecar clients originate TLS with non-mesh certificates, not Istio mTLS"
            )
            where = f" port {port}" if port is not None else ""
            scope = dr_scope(dr, b.snap.root_namespace)
            out.append(
                finding(
                    f"DestinationRule {ref(dr)}",
                    Verdict.SKIP,
                    f"tls.mode {mode} for in-cluster host {host}{where}: {what} ({scope})",
                    host=host,
                    mode=mode,
                )
            )
    return out


def contradictions(edges: Sequence[Edge]) -> list[Result]:
    by_target: dict[str, list[Edge]] = defaultdict(list)
    for e in edges:
        if e.client.outcome != Outcome.OK:
            by_target[e.target].append(e)
    out: list[Result] = []
    for target, bad in by_target.items():
        fails = [e for e in bad if e.client.outcome == Outcome.FAIL]
        e = (fails or bad)[0]
        pods = sorted({x.pod.key for x in (fails or bad)})
        out.append(
            Result(
                check=CHECK_POLICY,
                target=target,
                verdict=Verdict.FAIL if fails else Verdict.SKIP,
                reason=(
                    f"sidecar clients will fail: {e.client.reason}"
                    if fails
                    else f"sidecar clients may fail: {e.client.reason}"
                ),
                expected="calls from sidecar clients succeed",
                observed=f"server {e.server_mode.value} at target port {e.target_port}, "
                f"client {e.client.tls}",
                evidence={
                    "pods": pods,
                    "destinationRule": e.dr_source,
                    "modeSource": e.mode_source,
                },
            )
        )
    return out


def _pct(n: int, d: int) -> str:
    return f"{n}/{d} ({100 * n / d:.0f}%)" if d else "0/0"


def coverage(b: Builder) -> Result:
    """Sidecar coverage over planned pods; STRICT coverage over the (pod, target port)
    pairs Services send to."""
    pods = [b.info(p) for p in b.pods.values()]
    meshed = sum(1 for p in pods if p.has_proxy)
    # One PodInfo per "<ns>/<name>" (the builder plans one pod object per key), so its
    # identity stands for its key: no key string per edge.
    ports = {(id(e.pod), e.target_port): e for e in b.edges}.values()
    proxied = strict = all_strict = 0  # one pass: 100,000 edges at the benchmark's size
    for e in ports:
        if e.expect == Expect.STRICT:
            all_strict += 1
        if e.pod.has_proxy:
            proxied += 1
            if e.server_mode == Expect.STRICT:
                strict += 1
    return finding(
        "mesh",
        Verdict.PASS,
        f"sidecar coverage {_pct(meshed, len(pods))} pods; STRICT coverage "
        f"{_pct(strict, proxied)} meshed service ports, "
        f"{_pct(all_strict, len(ports))} of all service ports",
        pods=len(pods),
        podsWithProxy=meshed,
        meshedPorts=proxied,
        strictMeshedPorts=strict,
        ports=len(ports),
        strictPorts=all_strict,
    )
