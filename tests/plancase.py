"""One cluster planned twice - from YAML (``load_manifests``, the ``--from-manifests``
path) and from the same objects served by a real localhost API server (tests/fakekube.py,
the live path) - for the plan safety tests; both plans must agree, and every emitted
targets file is read back by ``probe.model.load_targets``."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jobs.plan.discovery import Options, discover
from jobs.plan.manifests import load_manifests
from jobs.plan.planner import Plan, Requirements, build_plan
from probe.model import TargetsFile, load_targets
from probe.results import Verdict
from probe.targetsyaml import targets_yaml
from tests import kubebuild as kb
from tests.fakekube import FakeKube

Obj = dict[str, Any]
REQ = Requirements(strict=True, sidecar=True)


def base(*extra_ns: str) -> list[Obj]:
    return [
        kb.namespace("shop", {"istio-injection": "enabled"}),
        *(kb.namespace(n) for n in extra_ns),
        kb.peer_auth("default", "shop", "STRICT"),
    ]


def a_pod(name: str = "a-0", ip: str = "10.0.0.1", **kw: Any) -> Obj:
    kw.setdefault("sa", "a")
    return kb.pod(name, kw.pop("ns", "shop"), {"app": "a"}, ip=ip, **kw)


@dataclass
class Both:
    manifests: Plan
    live: Plan

    def targets(self) -> dict[str, Any]:
        return {t.name: t for t in self.live.targets_file.targets}

    def endpoints(self) -> set[str]:
        return {str(e) for t in self.live.targets_file.targets for e in t.endpoints}

    def findings(self, check: str = "policy") -> list[Any]:
        return [r for r in self.live.findings if r.check == check]

    def reasons(self) -> str:
        return " | ".join(r.reason for r in self.live.findings)

    def required(self) -> dict[str, Verdict]:
        return {
            f"{r.check}:{r.target}": r.verdict
            for r in self.live.findings
            if r.check.startswith("require-")
        }


def comparable(plan: Plan) -> tuple[Any, ...]:
    # Discovery adds notes about what a live cluster lacks here (no root cert
    # ConfigMap); everything about Services and pods must be identical.
    findings = sorted(
        (r.check, r.target, r.verdict.value, r.reason)
        for r in plan.findings
        if r.target not in ("cluster", "mesh")
    )
    edges = sorted((e.target, e.pod.key, e.target_port, e.expect.value) for e in plan.edges)
    return plan.targets_file, findings, edges


def round_trip(tf: TargetsFile, tmp_path: Path) -> None:
    """The plan's output is a targets file `check` accepts, unchanged, with IP
    literals only as endpoints."""
    f = tmp_path / "targets.yaml"
    f.write_text(targets_yaml(tf.to_dict()))
    assert load_targets(f) == tf
    for t in tf.targets:
        for e in t.endpoints:
            ipaddress.ip_address(e.host)  # never a host name


@contextmanager
def planner(tmp_path: Path) -> Iterator[Callable[..., Both]]:
    """A function that plans objects both ways and checks the plans agree; the fake
    API servers it starts stop when the block ends. The ``plan_both`` fixture."""
    kubes: list[FakeKube] = []

    def run(objs: list[Obj], req: Requirements = REQ, revision: str | None = None) -> Both:
        f = tmp_path / f"m{len(kubes)}.yaml"
        f.write_text(yaml.safe_dump_all(objs))
        from_yaml = build_plan(load_manifests([f], revision=revision), req)
        kube = FakeKube()
        kubes.append(kube)
        kube.start()
        kube.add_all(objs)
        live = build_plan(discover(kube.api_client(), Options(revision=revision)), req)
        assert comparable(from_yaml) == comparable(live), "live and --from-manifests disagree"
        round_trip(live.targets_file, tmp_path)
        return Both(from_yaml, live)

    try:
        yield run
    finally:
        for k in kubes:
            k.stop()
