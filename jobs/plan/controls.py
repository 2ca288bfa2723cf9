"""Negative controls for a plan (the ``controls:`` of the targets file, probe.controls).

- plaintext control: every port of a workload labelled
  ``app.kubernetes.io/component: mtlsprobe-control`` that runs *without* a sidecar (k8s/base
  ships one: ``mtlsprobe-echo-plain`` in the mtlsprobe namespace). The plain probe's
  plaintext must be accepted there; if it is not, something between the probe and the
  pods (a NetworkPolicy, a CNI) is resetting the probe's traffic and every STRICT
  "refusal" is suspect. Control workloads are the product's own, so they leave the
  targets (no compliance findings against them).
- mesh control: one echo workload (label ``app.kubernetes.io/name: mtlsprobe-echo``, the
  k8s/components/echo responder) *with* a sidecar, on an http port where sidecar clients
  use mTLS; the probe's namespace first. It stays a target too.

When either cannot be found, a plan finding (check ``policy``, target ``controls``, skip)
says what the run cannot rule out. Pure: works on the planner's output only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING

from jobs.plan.model import finding
from jobs.plan.policy import Outcome
from probe.constants import COMPONENT_LABEL
from probe.model import Control, ControlKind, Expect, Protocol, Target
from probe.results import Result, Verdict

if TYPE_CHECKING:
    from jobs.plan.model import Edge, Plan

CONTROL_LABEL = (COMPONENT_LABEL, "mtlsprobe-control")
_FINDING_TARGET = "controls"


def _is_control_pod(e: Edge) -> bool:
    return e.pod.labels.get(CONTROL_LABEL[0]) == CONTROL_LABEL[1]


def _finding(reason: str) -> Result:
    return finding(_FINDING_TARGET, Verdict.SKIP, reason)


def attach(plan: Plan) -> Plan:
    """``plan`` with its negative controls found and written into the targets file."""
    tf = plan.targets_file
    by_target: dict[str, list[Edge]] = defaultdict(list)
    for e in plan.edges:
        by_target[e.target].append(e)

    controls: list[Control] = []
    own: set[str] = set()  # targets that are control workloads: not targets any more
    notes: list[Result] = []
    for t in tf.targets:
        edges = by_target.get(t.name, [])
        if not edges or not all(_is_control_pod(e) for e in edges):
            continue
        own.add(t.name)
        if any(e.pod.has_proxy for e in edges):
            notes.append(
                _finding(
                    f"control workload behind {t.name} has a sidecar or ztunnel: it cannot "
                    "show that plaintext gets through (label its pods "
                    "sidecar.istio.io/inject=false)"
                )
            )
        elif t.endpoints:
            controls.append(Control(ControlKind.PLAINTEXT, replace(t, expect=Expect.NONE)))

    mesh = _mesh_control(tf.targets, by_target, plan.requirements.client_namespace)
    if mesh is not None:
        controls.append(Control(ControlKind.MESH, mesh))

    if not any(c.kind is ControlKind.PLAINTEXT for c in controls):
        notes.append(
            _finding(
                "no plaintext control (a workload labelled "
                f"{CONTROL_LABEL[0]}={CONTROL_LABEL[1]} without a sidecar, e.g. k8s/base's "
                "mtlsprobe-echo-plain): a NetworkPolicy or CNI that resets the probe's "
                "traffic would look like STRICT refusals"
            )
        )
    if mesh is None:
        notes.append(
            _finding(
                "no mesh control (an echo workload with a sidecar, k8s/components/echo, on an "
                "http port): a probe sidecar that does not originate mTLS is not ruled out"
            )
        )
    if not controls and not own:
        return replace(plan, findings=[*plan.findings, *notes])
    return replace(
        plan,
        targets_file=replace(
            tf,
            targets=tuple(t for t in tf.targets if t.name not in own),
            controls=tuple(controls),
        ),
        findings=[*(r for r in plan.findings if r.target not in own), *notes],
    )


def _mesh_control(
    targets: tuple[Target, ...], by_target: dict[str, list[Edge]], client_ns: str | None
) -> Target | None:
    candidates: list[tuple[bool, str, Target]] = []
    for t in targets:
        edges = by_target.get(t.name, [])
        if (
            not edges
            or not t.endpoints
            or not t.echo
            or t.identity is None
            or t.protocol is not Protocol.HTTP
            or t.expect not in (Expect.STRICT, Expect.PERMISSIVE)
        ):
            continue
        if all(e.pod.has_sidecar and e.pod.echo and e.client.mtls for e in edges) and all(
            e.client.outcome == Outcome.OK for e in edges
        ):
            candidates.append((edges[0].namespace != client_ns, t.name, t))
    return min(candidates, key=lambda c: c[:2])[2] if candidates else None
