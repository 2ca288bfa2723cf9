"""``run --checks wire`` in a cluster: find the node capture agent (the DaemonSet of
k8s/overlays/wire) and judge what the sidecar probe pods say they sent (``--wire-claim``,
``probe.wire.claim``) against the agent's report on each probe pod's node.

Fail closed: the claim's result is ``error`` until a report is judged, and a report is
judged only when it is one window of the agent on the probe pod's node (its pod owned by
the DaemonSet and Ready) that covers the calls whole, read within a deadline. The verdict
rules are the lab's (``probe.wire.judge``): the control's plaintext marker must be seen on
a flow from the probe pod to the control, the target's flows from that pod must be TLS, and
no marker of the run may be in cleartext. What the agent reports is matched against the
markers the probe drew and the pod IP the API server gives, never against what the agent
says it was told: a report of another run's markers, or text echoing the probe's log, sees
no control and is ``error``.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from jobs.launch.cluster import WIRE_CONTAINER, WIRE_DAEMONSET, WIRE_NS
from probe.results import Result, Verdict

if TYPE_CHECKING:
    from jobs.launch.cluster import Cluster
    from probe.wire.claim import Claim
    from probe.wire.judge import WireVerdict
    from probe.wire.record import Observation

WIRE = "wire"
INSTALL = "kubectl apply -k k8s/overlays/wire"
LOG_LIMIT = 64 << 20  # bytes of an agent's log read at once (probe.wire.record.MAX_BYTES)
SKEW = 60  # seconds of clock skew between run's machine and a node that are tolerated
NODE_KEY = "probeNode"  # evidence the orchestrator adds to a wire result (from the pod)
IP_KEY = "probePodIP"
_RANK = {Verdict.PASS: 0, Verdict.ERROR: 1, Verdict.FAIL: 2}


@dataclass(frozen=True)
class Agents:
    """The installed agent: the DaemonSet's uid (its pods' owner) and pod selector."""

    uid: str
    selector: str


@dataclass(frozen=True)
class Detection:
    """``agents`` when ``run`` can judge ``wire``; otherwise the verdict (``skip``: not
    installed or not ready; ``error``: could not tell) and why."""

    agents: Agents | None
    verdict: Verdict = Verdict.SKIP
    reason: str = ""


def detect(cluster: Cluster) -> Detection:
    """Is the capture agent installed, with pods Ready? (One get; the overlay grants it.)"""
    from jobs.kube.errors import Denied, KubeError, NotFound

    where = f"daemonset {WIRE_NS}/{WIRE_DAEMONSET}"
    try:
        ds = cluster.daemonset(WIRE_NS, WIRE_DAEMONSET)
    except NotFound:
        return Detection(
            None,
            Verdict.SKIP,
            f"the node capture agent is not installed ({where} not "
            f"found): install it with `{INSTALL}`; run then judges wire from its reports",
        )
    except Denied as exc:
        return Detection(
            None,
            Verdict.SKIP,
            f"the node capture agent is not installed or not readable "
            f"({exc}); `{INSTALL}` deploys it and grants run this read",
        )
    except KubeError as exc:
        return Detection(None, Verdict.ERROR, f"cannot tell whether {where} is installed: {exc}")
    spec = ds.get("spec") or {}
    labels = ((spec.get("selector") or {}).get("matchLabels")) or {}
    uid = str((ds.get("metadata") or {}).get("uid") or "")
    if not labels or not uid or not all(isinstance(v, str) for v in labels.values()):
        return Detection(None, Verdict.ERROR, f"{where} has no matchLabels selector or uid")
    status = ds.get("status") or {}
    ready = status.get("numberReady")
    if not isinstance(ready, int) or ready < 1:
        want = status.get("desiredNumberScheduled", "?")
        return Detection(
            None,
            Verdict.SKIP,
            f"the node capture agent is installed but no pod of {where} is "
            f"ready (0 of {want}): see `kubectl -n {WIRE_NS} get pods`; reinstall with "
            f"`{INSTALL}`",
        )
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return Detection(Agents(uid, selector))


def skips(verdict: Verdict, reason: str, targets: list[str]) -> list[Result]:
    return [
        Result(check=WIRE, target=t, verdict=verdict, reason=reason, observed="not-run")
        for t in targets
    ]


# ---- judging the claims -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    index: int  # position in the run's results
    result: Result
    claim: Claim
    ip: str  # the probe pod's IP (canonical)


def judge_claims(
    cluster: Cluster,
    agents: Agents,
    results: list[Result],
    wait: float,
    poll: float,
    clock: Callable[[], float] = time.monotonic,
) -> list[Result]:
    """``results`` with each pending wire claim judged against the agent's report on its
    pod's node, waiting at most ``wait`` seconds for the window covering the calls."""
    from probe.wire.claim import KEY, Claim

    out = list(results)
    by_node: dict[str, list[_Item]] = {}
    for i, r in enumerate(results):
        if r.check != WIRE or KEY not in r.evidence:
            continue
        try:
            claim = Claim.from_dict(r.evidence[KEY])
        except ValueError as exc:
            out[i] = _verdict(
                r, Verdict.ERROR, f"the probe's wire claim is unusable: {exc}", "claim-invalid"
            )
            continue
        node, ip = str(r.evidence.get(NODE_KEY) or ""), _ip(r.evidence.get(IP_KEY))
        if not node or not ip:
            out[i] = _verdict(
                r,
                Verdict.ERROR,
                "the probe pod's node or IP is unknown (its status had none): no capture to read",
                "probe-pod-unknown",
            )
            continue
        by_node.setdefault(node, []).append(_Item(i, r, claim, ip))
    if not by_node:
        return out
    try:
        pods = _agent_pods(cluster, agents)
    except _Unreadable as exc:
        for items in by_node.values():
            for it in items:
                out[it.index] = _verdict(it.result, Verdict.ERROR, str(exc), "capture-unreadable")
        return out
    until = clock() + wait
    todo = dict(by_node)
    while True:
        for node in list(todo):
            done = _judge_node(cluster, pods.get(node), node, todo[node], final=clock() >= until)
            if done is not None:
                for it, res in zip(todo.pop(node), done, strict=True):
                    out[it.index] = res
        if not todo:
            return out
        time.sleep(max(0.0, min(poll, until - clock())))


class _Unreadable(Exception):
    pass


def _agent_pods(cluster: Cluster, agents: Agents) -> dict[str, str]:
    """node -> name of the Ready agent pod there that the DaemonSet owns."""
    from jobs.kube.errors import KubeError

    try:
        items, _ = cluster.pods(WIRE_NS, agents.selector)
    except KubeError as exc:
        raise _Unreadable(f"cannot list the capture agent's pods: {exc}") from None
    out: dict[str, str] = {}
    for p in items:
        md, spec, st = p.get("metadata") or {}, p.get("spec") or {}, p.get("status") or {}
        owners = {o.get("uid") for o in md.get("ownerReferences") or [] if isinstance(o, dict)}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in st.get("conditions") or []
            if isinstance(c, dict)
        )
        node = spec.get("nodeName")
        if agents.uid in owners and ready and not md.get("deletionTimestamp") and node:
            out[str(node)] = str(md.get("name"))
    return out


def _judge_node(
    cluster: Cluster, pod: str | None, node: str, items: list[_Item], final: bool
) -> list[Result] | None:
    """Verdicts for the claims of probe pods on ``node``, or None to look again later."""
    from jobs.kube.errors import KubeError
    from probe.wire.record import windows

    if pod is None:
        why = (
            f"no Ready capture agent on node {node} (the pod of daemonset {WIRE_NS}/"
            f"{WIRE_DAEMONSET} there is missing, not ready or not the DaemonSet's): the "
            "probe's flows were not observed"
        )
        return [_verdict(it.result, Verdict.ERROR, why, "capture-missing") for it in items]
    who = f"capture agent {WIRE_NS}/{pod} on node {node}"
    start = min(it.claim.started for it in items)
    # Every line of a covering window is printed after the calls started; the margin
    # absorbs a skew between this machine's clock and the node's (sinceSeconds counts on
    # the node). More would read earlier windows first, and limitBytes keeps the start.
    since = math.ceil(time.time() - start) + SKEW
    try:
        text = cluster.recent_log(WIRE_NS, pod, WIRE_CONTAINER, since, LOG_LIMIT)
    except KubeError as exc:
        why = f"the {who} could not be read: {exc}"
        return [_verdict(it.result, Verdict.ERROR, why, "capture-unreadable") for it in items]
    reports, problems = windows(text.splitlines(), who)
    covering = [[o for o in reports if _covers(o, it.claim)] for it in items]
    hopeless = [
        not cov and any(o.summary.ended >= it.claim.ended for o in reports)
        for it, cov in zip(items, covering, strict=True)
    ]
    if not final and not all(cov or h for cov, h in zip(covering, hopeless, strict=True)):
        return None
    out: list[Result] = []
    for it, cov, h in zip(items, covering, hopeless, strict=True):
        c = it.claim
        span = f"{c.started:.3f}-{c.ended:.3f}"
        if cov:
            out.append(_judged(it, cov, who))
            continue
        bad = f"; {len(problems)} report(s) unreadable: {problems[0]}" if problems else ""
        if h:
            why = (
                f"no single report of the {who} covers the calls ({span}, unix seconds): "
                "they straddle capture windows; give the agent a longer --overlap than the "
                f"calls took{bad}"
            )
        else:
            seen = f"last report ended {reports[-1].summary.ended:.3f}" if reports else "none"
            why = (
                f"the {who} reported no capture window covering the calls ({span}) in time "
                f"({len(reports)} report(s) read, {seen}){bad}"
            )
        out.append(_verdict(it.result, Verdict.ERROR, why, "capture-not-covering"))
    return out


def _covers(o: Observation, c: Claim) -> bool:
    return o.summary.started <= c.started and o.summary.ended >= c.ended


def _judged(it: _Item, reports: list[Observation], who: str) -> Result:
    """The worst verdict over the windows that cover the calls (with overlapping windows
    two may: each saw every packet, so each must pass)."""
    from probe.wire.judge import Marked, control_seen, judge
    from probe.wire.record import canonical

    c = it.claim
    mine = Marked(it.result.target, tuple(canonical(e) for e in c.endpoints), c.marker, (it.ip,))
    control = Marked(
        c.control, tuple(canonical(e) for e in c.control_endpoints), c.control_marker, (it.ip,)
    )
    best: tuple[WireVerdict, Observation] | None = None
    for o in reports:
        (v,) = judge(o, control_seen(o, control), [mine])
        if best is None or _RANK.get(v.verdict, 1) > _RANK.get(best[0].verdict, 1):
            best = (v, o)
    assert best is not None
    v, o = best
    observed = {Verdict.PASS: "tls", Verdict.FAIL: "cleartext"}.get(
        v.verdict, str(v.evidence.get("error", "not-observed"))
    )
    ev: dict[str, Any] = {
        **it.result.evidence,
        **v.evidence,
        "captureAgent": who,
        "captureWindow": [o.summary.started, o.summary.ended],
    }
    return replace(it.result, verdict=v.verdict, reason=v.reason, observed=observed, evidence=ev)


def _verdict(r: Result, verdict: Verdict, reason: str, cause: str) -> Result:
    return replace(
        r, verdict=verdict, reason=reason, observed=cause, evidence={**r.evidence, "error": cause}
    )


def _ip(raw: object) -> str:
    try:
        return ipaddress.ip_address(str(raw)).compressed
    except ValueError:
        return ""
