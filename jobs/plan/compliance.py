"""Compliance: does the configuration meet what the user asked for (``--require strict``,
``--require sidecar``)? One result per asked requirement and target, and one per Service
port that cannot pass as a whole: a requirement never passes where nothing was verified
(``error``) or where traffic provably reaches something that is not a mesh workload
(``fail``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from jobs.plan.model import CHECK_REQUIRE, Edge, PortCoverage, Requirements
from jobs.plan.policy import Outcome
from probe.model import Expect, Target
from probe.results import Result, Verdict


def compliance(
    req: Requirements,
    targets: Sequence[Target],
    edges: Sequence[Edge],
    ports: Sequence[PortCoverage] = (),
) -> list[Result]:
    """One result per asked requirement and target, plus one per Service port that
    cannot pass as a whole (issue 17 rule 2: no backend, no compliance pass)."""
    by_target: dict[str, list[Edge]] = defaultdict(list)
    for e in edges:
        by_target[e.target].append(e)
    # A target whose port also sends traffic to a non-workload cannot pass: its
    # port-level failure below stands for it (one verdict per name, never pass+fail).
    partial = {name for pc in ports if pc.routed_elsewhere for name in pc.targets}
    port_names = {pc.name for pc in ports}
    out: list[Result] = []
    folded: dict[tuple[str, str], Result] = {}  # (check, port name): the target's own fail
    for t in targets:
        tedges = by_target.get(t.name, [])
        results = []
        if req.strict:
            results.append(_require_strict(t, tedges))
        if req.sidecar:
            results.append(_require_sidecar(t, tedges))
        for r in results:
            if t.name not in partial:
                out.append(r)
            elif r.verdict != Verdict.PASS:
                if t.name in port_names:
                    folded[(r.check, t.name)] = r  # same name as its port: one verdict
                else:
                    out.append(r)
    for pc in ports:
        if pc.why_unverifiable is None and not pc.routed_elsewhere:
            continue
        for check, expected in (("strict", "STRICT"), ("sidecar", "sidecar")):
            if getattr(req, check):
                name = CHECK_REQUIRE[check]
                out.append(_unverifiable_port(name, expected, pc, folded.get((name, pc.name))))
    return out


def _unverifiable_port(
    check: str, expected: str, pc: PortCoverage, own: Result | None = None
) -> Result:
    """``fail`` when some of the port's traffic provably goes to something that is
    not a mesh workload (an external address, the host network, an address no pod
    of the Service owns); ``error`` when there is simply nothing behind it to verify
    (could not observe). Never ``pass``."""
    routed = pc.routed_elsewhere
    # Provably not a mesh workload: fail. Only unknowns (a pod whose control plane's
    # mesh config the plan cannot read): error, could not observe - never pass.
    elsewhere = [e for e in routed if not e.unknown]
    unknown = [e for e in routed if e.unknown]
    parts: list[str] = [own.reason] if own is not None else []
    if pc.why_unverifiable is not None:
        parts.append(f"nothing can be verified at this port: {pc.why_unverifiable}")
    for group, head, tail in (
        (
            elsewhere,
            "its traffic also goes to ",
            ": not a mesh workload, so the requirement cannot hold",
        ),
        (unknown, "not verifiable: ", ": so the requirement cannot be verified"),
    ):
        if group:
            first = group[0]
            more = f" (and {len(group) - 1} more)" if len(group) > 1 else ""
            parts.append(f"{head}{first.text().removesuffix('; not probed')}{more}{tail}")
    return Result(
        check=check,
        target=pc.name,
        verdict=Verdict.FAIL if elsewhere else Verdict.ERROR,
        reason="; ".join(parts),
        expected=expected,
        observed="not a mesh workload" if elsewhere else "unverifiable",
        evidence={
            **(own.evidence if own is not None else {}),
            "excluded": [
                {"object": e.obj, "address": e.address, "reason": e.reason} for e in routed
            ],
        },
    )


def _requirement(
    check: str,
    t: Target,
    verdict: Verdict,
    reason: str,
    expected: str,
    observed: str,
    pods: Sequence[str] | None = None,
) -> Result:
    """One requirement's verdict on one target; ``pods``: the ones that decided it."""
    evidence = {"pods": list(pods)} if pods is not None else {}
    return Result(
        check=check,
        target=t.name,
        verdict=verdict,
        reason=reason,
        expected=expected,
        observed=observed,
        evidence=evidence,
    )


def _nothing_to_verify(check: str, t: Target, expected: str) -> Result:
    """Never planned (no backend, no target): kept closed for callers - never a pass."""
    reason = "no backend pod: nothing can be verified"
    return _requirement(check, t, Verdict.ERROR, reason, expected, "unverifiable")


def _require_strict(t: Target, edges: Sequence[Edge]) -> Result:
    check = CHECK_REQUIRE["strict"]
    if not edges:
        return _nothing_to_verify(check, t, "STRICT")
    bad = [e for e in edges if e.expect != Expect.STRICT]
    broken = [e for e in edges if e.client.outcome != Outcome.OK]
    if broken and not bad:
        # STRICT on paper, but the DestinationRule the probe's sidecar uses makes mesh calls
        # fail (or not provably work): nothing verifies the port is mTLS-only, so no pass.
        e = next((x for x in broken if x.client.outcome == Outcome.FAIL), broken[0])
        how = "fail" if e.client.outcome == Outcome.FAIL else "may fail"
        return _requirement(
            check,
            t,
            Verdict.FAIL,
            f"STRICT, but calls from sidecar clients {how}: {e.client.reason}",
            "STRICT, reachable by mesh clients",
            f"STRICT, client {e.client.tls}",
            sorted({x.pod.key for x in broken}),
        )
    if not bad:
        reason = f"STRICT ({edges[0].mode_source})"
        return _requirement(check, t, Verdict.PASS, reason, "STRICT", "STRICT")
    e = bad[0]
    if e.expect != Expect.NONE:
        why = f"target port {e.target_port} is {e.server_mode.value} by {e.mode_source}"
    elif e.pod.has_proxy:
        why = f"pod {e.pod.key}: {e.mode_source}; plaintext accepted whatever the policy"
    else:
        why = f"pod {e.pod.key} has no sidecar: plaintext accepted whatever the policy"
    pods = sorted({x.pod.key for x in bad})
    return _requirement(check, t, Verdict.FAIL, why, "STRICT", e.expect.value, pods)


def _require_sidecar(t: Target, edges: Sequence[Edge]) -> Result:
    check = CHECK_REQUIRE["sidecar"]
    if not edges:
        return _nothing_to_verify(check, t, "sidecar")
    bare = sorted({e.pod.key for e in edges if not e.pod.has_proxy})
    if bare:
        reason = f"{len(bare)} pod(s) without a sidecar: {', '.join(bare[:5])}"
        return _requirement(check, t, Verdict.FAIL, reason, "sidecar", "none", bare)
    reason = "every pod behind this port has a sidecar or ztunnel"
    return _requirement(check, t, Verdict.PASS, reason, "sidecar", "sidecar")
