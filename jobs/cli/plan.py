"""``mtlsprobe plan``: discover (a cluster or YAML), compute what every edge must do,
print it. No probing.

``-o yaml`` is a targets file ``mtlsprobe check -f`` loads unchanged (findings ride
along as YAML comments); ``-o json`` adds the findings and edges; ``-o table`` is for
people. Exit 0, 1 when a finding fails (an asked ``--require``, or a contradiction
such as a DestinationRule that breaks calls), 2 when objects could not be used (the
plan is incomplete), 64 for usage errors and an unreachable or forbidding API.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.cli import flags
from probe.cliargs import UsageError, old_spelling
from probe.targetsyaml import targets_yaml

if TYPE_CHECKING:
    from jobs.plan.objects import ClusterSnapshot
    from jobs.plan.planner import Plan


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Discover the mesh (live cluster, or YAML with --from-manifests) and print the "
        "targets with the behaviour policy requires at each port, plus static findings. "
        "No probing. -o yaml is a targets file for `mtlsprobe check -f`."
    )
    src = p.add_argument_group("source")
    src.add_argument(
        "--from-manifests",
        nargs="+",
        action="extend",
        type=Path,
        metavar="PATH",
        help="YAML files or directories instead of a cluster (Deployments become pods)",
    )
    flags.add_cluster_flags(src)
    sel = p.add_argument_group("what to plan")
    flags.add_scope_flags(sel)
    mesh = p.add_argument_group("mesh")
    flags.add_mesh_flags(mesh)
    flags.add_probe_namespace_flag(mesh)
    flags.add_require_flag(p)
    p.add_argument(
        "-o",
        "--output",
        choices=("table", "yaml", "json"),
        default="table",
        help="table (default), yaml (a targets file), json (targets, findings, edges)",
    )
    p.add_argument(
        "--root-cert-file",
        type=Path,
        metavar="FILE",
        help="write the discovered mesh root here and reference it as rootCertFile",
    )
    old_spelling(p, "--timeout", "--request-timeout")
    old_spelling(p, "--selector", "--namespace-selector")
    old_spelling(p, "--client-namespace", "--probe-namespace")


def load_snapshot(args: argparse.Namespace) -> ClusterSnapshot:
    """The snapshot the flags describe; every failure is a UsageError (exit 64)."""
    problem = flags.mesh_problem(args)
    if problem:
        raise UsageError(problem)
    namespaces = flags.namespaces(args)
    if args.from_manifests:
        from jobs.plan.manifests import ManifestError, load_manifests, planned_namespaces

        if args.kubeconfig or args.context or args.in_cluster:
            raise UsageError(
                "--from-manifests reads no cluster: drop --kubeconfig/--context/--in-cluster"
            )
        try:
            snap = load_manifests(
                args.from_manifests, istio_namespace=args.istio_namespace, revision=args.revision
            )
        except ManifestError as exc:
            raise UsageError(str(exc)) from None
        if namespaces:
            snap.target_namespaces = set(namespaces)
        else:  # as the live path: system namespaces only with --include-system
            snap.target_namespaces = planned_namespaces(snap, include_system=args.include_system)
        snap.trust_domain = args.trust_domain or snap.trust_domain
        snap.root_namespace = args.root_namespace or snap.root_namespace
        # Forced values hold for every revision's workloads too (jobs.plan.meshconfig).
        snap.revisions.trust_domain = args.trust_domain
        snap.revisions.root_namespace = args.root_namespace
        return snap
    from jobs.plan.discovery import DiscoveryError, api_client, discover

    options = flags.discovery_options(args)
    access = flags.cluster_access(args)
    try:
        api = api_client(access.kubeconfig, access.context, access.request_timeout)
        try:
            return discover(api, options)
        finally:
            api.close()
    except DiscoveryError as exc:
        raise UsageError(str(exc)) from None


def main(args: argparse.Namespace) -> int:
    from jobs.plan.planner import Requirements, build_plan

    try:
        req = Requirements.parse(args.require, args.probe_namespace)
    except ValueError as exc:
        raise UsageError(f"--require: {exc}") from None
    # Snapshot and plan are large trees of fresh objects with no cycles; the cyclic
    # GC's passes over them are pure cost (about a tenth of the time at 10,000 pods).
    gc.disable()
    try:
        snap = load_snapshot(args)
        plan = build_plan(snap, req)
    finally:
        gc.enable()
    if args.root_cert_file is not None:
        plan = _with_root_cert(plan, snap.root_cert_pem, args.root_cert_file)
    out = {"yaml": render_yaml, "json": render_json, "table": render_table}[args.output](plan)
    sys.stdout.write(out)
    sys.stdout.flush()
    from probe.results import EXIT_ERROR, Verdict

    code = plan.exit_code()
    if code == 0 and any(r.verdict == Verdict.ERROR for r in plan.findings):
        return EXIT_ERROR
    return code


def _with_root_cert(plan: Plan, pem: str | None, path: Path) -> Plan:
    from dataclasses import replace

    if pem is None:
        raise UsageError(f"--root-cert-file {path}: no mesh root found (istio-ca-root-cert)")
    try:
        path.write_text(pem, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--root-cert-file {path}: cannot write: {exc.strerror or exc}") from None
    tf = replace(plan.targets_file, root_cert_file=path.resolve())
    return replace(plan, targets_file=tf)


# ---- rendering ------------------------------------------------------------------------------


def render_yaml(plan: Plan) -> str:
    lines = ["# mtlsprobe plan: targets file for `mtlsprobe check -f`"]
    for r in plan.findings:
        # Failures, unusable objects, what discovery could not see (no Istio APIs), and
        # what is deliberately not probed (not a mesh workload, nothing behind a port).
        if (
            r.verdict.value in ("fail", "error")
            or r.target == "cluster"
            or r.evidence.get("notProbed")
        ):
            text = f"{r.verdict.value.upper()} {r.check} {r.target}: {r.reason}"
            lines.append("# " + " ".join(text.split()))
    return "\n".join(lines) + "\n" + targets_yaml(plan.targets_file.to_dict())


def edge_dict(e: Any) -> dict[str, Any]:
    return {
        "target": e.target,
        "host": e.host,
        "servicePort": e.service_port,
        "protocol": e.protocol.value,
        "pod": e.pod.key,
        "serviceAccount": e.pod.service_account,
        "ip": e.pod.ip,
        "targetPort": e.target_port,
        "sidecar": e.pod.has_sidecar,
        "ambient": e.pod.ambient,
        "serverMode": e.server_mode.value,
        "expect": e.expect.value,
        "modeSource": e.mode_source,
        "destinationRule": {"mode": e.dr_mode, "source": e.dr_source} if e.dr_mode else None,
        "client": {
            "tls": e.client.tls,
            "mtls": e.client.mtls,
            "outcome": e.client.outcome,
            "reason": e.client.reason,
        },
    }


def render_json(plan: Plan) -> str:
    from probe.report import utf8_safe
    from probe.results import summarize

    doc = {
        "targets": plan.targets_file.to_dict(),
        "findings": [r.to_dict() for r in plan.findings],
        "summary": summarize(plan.findings),
        "edges": [edge_dict(e) for e in plan.edges],
    }
    return json.dumps(utf8_safe(doc), indent=2, default=str) + "\n"


def render_table(plan: Plan) -> str:
    from probe.report import render_table as findings_table
    from probe.textsafe import escape

    headers = ("TARGET", "EXPECT", "PROTO", "ENDPOINTS", "IDENTITY")
    rows = [
        (
            escape(t.name),  # names come from manifests nobody validated
            t.expect.value,
            t.protocol.value + (" echo" if t.echo else ""),
            str(len(t.endpoints)),
            escape(t.identity or "-"),
        )
        for t in plan.targets_file.targets
    ] + [
        (
            f"{c.target.name} (control)",
            c.kind.value,
            c.target.protocol.value,
            str(len(c.target.endpoints)),
            c.target.identity or "-",
        )
        for c in plan.targets_file.controls
    ]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    n = len(plan.targets_file.targets)
    lines.append(f"\n{n} targets (trust domain {plan.targets_file.trust_domain})\n")
    return "\n".join(lines) + "\n" + findings_table(plan.findings)
