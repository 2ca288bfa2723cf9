"""Shared helpers for the Istio-resolution tests: DestinationRules in any shape, and one
scenario planned twice - from YAML (``--from-manifests``) and from the fake API server
(the live path) - so a test can assert both paths decide the same way."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from jobs.plan.discovery import Options, discover
from jobs.plan.manifests import load_manifests
from jobs.plan.planner import Plan, Requirements, build_plan
from probe.results import Result
from tests.fakekube import FakeKube

Obj = dict[str, Any]
T0 = "2026-01-01T00:00:00Z"
_UNSET: Any = object()


def dr(
    name: str,
    ns: str,
    host: str,
    mode: str | None = None,
    *,
    tls: Any = _UNSET,
    ports: list[Obj] | None = None,
    selector: dict[str, str] | None = None,
    export_to: list[str] | None = None,
    created: str = T0,
    subsets: list[str] | None = None,
    policy: bool = True,
) -> Obj:
    """A DestinationRule. ``mode`` sets ``tls.mode``; ``tls`` sets the whole ``tls`` (e.g.
    ``{}``); ``ports`` are raw ``portLevelSettings``; ``policy=False`` leaves out
    ``trafficPolicy`` altogether."""
    tp: Obj = {}
    if tls is not _UNSET:
        tp["tls"] = tls
    elif mode is not None:
        tp["tls"] = {"mode": mode}
    if ports is not None:
        tp["portLevelSettings"] = ports
    spec: Obj = {"host": host}
    if policy:
        spec["trafficPolicy"] = tp
    if selector is not None:
        spec["workloadSelector"] = {"matchLabels": selector}
    if export_to is not None:
        spec["exportTo"] = export_to
    if subsets is not None:
        spec["subsets"] = [{"name": s, "labels": {"version": s}} for s in subsets]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
        "spec": spec,
    }


def manifests_yaml(objs: list[Obj], *, unquote_timestamps: bool = False) -> str:
    """The objects as one multi-document YAML file; with ``unquote_timestamps`` the
    creationTimestamps are written bare, so PyYAML reads them as ``datetime`` objects
    (what a hand-written manifest usually does)."""
    text = yaml.safe_dump_all(objs, sort_keys=False)
    if unquote_timestamps:
        text = re.sub(r"creationTimestamp: '([^']*)'", r"creationTimestamp: \1", text)
    return text


def plan_both(
    objs: list[Obj],
    tmp_path: Path,
    require: tuple[str, ...] = ("strict",),
    *,
    unquote_timestamps: bool = False,
) -> tuple[Plan, Plan]:
    """(plan from manifests, plan from the fake API server) for the same objects."""
    path = tmp_path / "objects.yaml"
    path.write_text(manifests_yaml(objs, unquote_timestamps=unquote_timestamps))
    req = Requirements.parse(require)
    from_files = build_plan(load_manifests([path], inject=False), req)
    with FakeKube() as kube:
        kube.add_all(objs)
        api = kube.api_client()
        try:
            live = build_plan(discover(api, Options()), req)
        finally:
            api.close()
    return from_files, live


def verdicts(plan: Plan, check: str, prefix: str) -> dict[str, str]:
    """target -> verdict of one check's findings, for targets starting with ``prefix``."""
    return {
        r.target: r.verdict.value
        for r in plan.findings
        if r.check == check and r.target.startswith(prefix)
    }


def finding(plan: Plan, check: str, target: str) -> Result:
    got = [r for r in plan.findings if r.check == check and r.target == target]
    assert len(got) == 1, (check, target, [r.target for r in plan.findings if r.check == check])
    return got[0]


def targets(plan: Plan, prefix: str) -> dict[str, tuple[str, tuple[str, ...], str | None]]:
    """name -> (expect, endpoints, identity) for targets starting with ``prefix``."""
    return {
        t.name: (t.expect.value, tuple(str(e) for e in t.endpoints), t.identity)
        for t in plan.targets_file.targets
        if t.name.startswith(prefix)
    }
