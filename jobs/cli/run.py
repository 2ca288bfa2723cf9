"""``mtlsprobe run``: discover and plan, launch the probe Jobs, wait, collect, report.

One verdict for the cluster from a laptop (kubeconfig) or from the CronJob
(``--in-cluster``): the plan's static findings plus every result the probe pods
logged. Fail closed and bounded: every API call carries a client-side timeout, the
wait has a deadline, and whatever a probe pod could not report (image pull failure,
unschedulable, crash, OOM, unreadable log, sidecar never ready) becomes ``error``
results naming the cause. The run's objects are removed on exit, Ctrl-C and SIGTERM
included, unless ``--keep``.

API calls made (the RBAC the orchestrator needs besides discovery's read-only ones):
``RUN_API_CALLS`` below; tests compare it with what the fake API server recorded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.cli.flags import add_control_plane_flags, control_plane_problem
from jobs.launch.jobspec import ROLES
from probe.report import FORMATS

if TYPE_CHECKING:
    from jobs.launch.jobspec import RunSpec
    from jobs.plan.planner import Plan
    from probe.results import Result
from jobs.launch.cluster import Cluster
from jobs.launch.launcher import (
    DEFAULT_SHARD_THRESHOLD,
    Launched,
    _from,
    _Terminated,
    cleanup,
    collect,
    jobspec_selector,
    launch,
    new_run_id,
)

DEFAULT_NAMESPACE = "mtlsprobe"
IMAGE_ENV = "MTLSPROBE_IMAGE"


def default_image() -> str:
    from probe import __version__

    return os.environ.get(IMAGE_ENV) or f"ghcr.io/mtlsprobe/mtlsprobe:{__version__}"


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return v


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1")
    return int(text)


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Discover and plan, launch a sidecar and a sidecar-less probe Job in the cluster, "
        "wait for them, and print one report with one exit code (plan findings included)."
    )
    c = p.add_argument_group("cluster")
    c.add_argument(
        "--kubeconfig", metavar="FILE", help="kubeconfig (default: $KUBECONFIG, ~/.kube/config)"
    )
    c.add_argument("--context", metavar="NAME", help="kubeconfig context")
    c.add_argument(
        "--in-cluster",
        action="store_true",
        help="use the pod's service account (what the CronJob runs); report to stdout",
    )
    c.add_argument(
        "--request-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="client-side timeout of every API request (default: 10)",
    )
    sel = p.add_argument_group("what to probe (as in `mtlsprobe plan`)")
    sel.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS[,NS]",
        help="only targets in these namespaces (repeatable)",
    )
    sel.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="every namespace except system ones (the default)",
    )
    sel.add_argument("--selector", metavar="LABELS", help="namespaces matching this label selector")
    sel.add_argument("--include-system", action="store_true", help="probe system namespaces too")
    sel.add_argument("--trust-domain", metavar="TD", help="override the mesh's trust domain")
    sel.add_argument("--root-namespace", metavar="NS", help="override the mesh root namespace")
    add_control_plane_flags(sel)
    sel.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="strict,sidecar",
        help="compliance to judge (plan findings; failures exit 1)",
    )
    sel.add_argument(
        "--checks",
        default=",".join(c for r in ROLES for c in r.checks),
        metavar="LIST",
        help="checks to run (default: all); each goes to the Job that can run it",
    )
    j = p.add_argument_group("probe Jobs")
    j.add_argument(
        "--probe-namespace",
        default=os.environ.get("MTLSPROBE_NAMESPACE", DEFAULT_NAMESPACE),
        metavar="NS",
        help=f"where the Jobs run (default: $MTLSPROBE_NAMESPACE or {DEFAULT_NAMESPACE})",
    )
    j.add_argument(
        "--source-namespaces",
        default="",
        metavar="A,B",
        help="also probe from these namespaces (needs the run RBAC there too)",
    )
    j.add_argument(
        "--image",
        default=None,
        metavar="IMAGE",
        help=f"probe image (default: ${IMAGE_ENV} or ghcr.io/mtlsprobe/mtlsprobe:<version>)",
    )
    j.add_argument(
        "--service-account",
        default="mtlsprobe",
        metavar="NAME",
        help="service account of the probe pods (their SPIFFE identity; default: mtlsprobe)",
    )
    j.add_argument(
        "--native-sidecar",
        action="store_true",
        help="run the probe's sidecar as a native sidecar (annotation "
        "sidecar.istio.io/nativeSidecar) instead of quitting it on exit",
    )
    j.add_argument(
        "--sidecar-wait",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long the sidecar probe waits for its proxy (default: 60)",
    )
    j.add_argument(
        "--deadline",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="the Jobs' activeDeadlineSeconds and how long to wait for them (default: 300)",
    )
    j.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="per network operation inside the probe (default: 5)",
    )
    j.add_argument(
        "--shard-threshold",
        type=_count,
        default=DEFAULT_SHARD_THRESHOLD,
        metavar="N",
        help="above N units of work (endpoints for the plain Job, targets for the sidecar "
        f"Job), an Indexed Job with one shard per N (default: {DEFAULT_SHARD_THRESHOLD})",
    )
    j.add_argument(
        "--parallelism",
        type=_count,
        default=4,
        metavar="N",
        help="shards running at once (default: 4)",
    )
    j.add_argument(
        "--ttl",
        type=_count,
        default=600,
        metavar="SECONDS",
        help="ttlSecondsAfterFinished: the cluster's own clean-up if ours cannot run",
    )
    j.add_argument("--keep", action="store_true", help="leave the Jobs, pods and ConfigMaps")
    j.add_argument(
        "--poll-interval",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="longest wait between looks at the Jobs and pods; a watch on the run's pods "
        "wakes earlier on any change (default: 10)",
    )
    o = p.add_argument_group("report")
    o.add_argument(
        "-o",
        "--output",
        default="table",
        choices=FORMATS,
        help="report format on stdout (default: table; html: the verdict matrix page)",
    )
    o.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="also write the report to FILE (format by suffix .json/.jsonl/.xml/.html, else -o)",
    )


# ---- main ----------------------------------------------------------------------------------------


def _words(items: list[str] | str) -> list[str]:
    raw = [items] if isinstance(items, str) else items
    return list(dict.fromkeys(w.strip() for i in raw for w in i.split(",") if w.strip()))


def main(args: argparse.Namespace) -> int:
    from jobs.launch import jobspec
    from jobs.plan.discovery import DiscoveryError, Options, Reader, api_client, discover
    from jobs.plan.planner import Requirements, build_plan
    from probe.checks import parse_check_list
    from probe.cli import UsageError, emit_report
    from probe.html_report import RunInfo, pem_fingerprints
    from probe.results import exit_code

    try:
        names = parse_check_list(args.checks)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        req = Requirements.parse(args.require, args.probe_namespace)
    except ValueError as exc:
        raise UsageError(f"--require: {exc}") from None
    namespaces = tuple(_words(args.namespace))
    if namespaces and (args.all_namespaces or args.selector):
        raise UsageError("-n cannot be combined with --all-namespaces or --selector")
    problem = control_plane_problem(args)
    if problem:
        raise UsageError(problem)
    if args.in_cluster:
        if args.kubeconfig or args.context:
            raise UsageError(
                "--in-cluster uses the pod's service account: drop --kubeconfig/--context"
            )
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise UsageError(
                "--in-cluster: not running in a pod (KUBERNETES_SERVICE_HOST is unset)"
            )
    sources = [
        args.probe_namespace,
        *(n for n in _words(args.source_namespaces) if n != args.probe_namespace),
    ]
    opts = Options(
        namespaces=namespaces,
        namespace_selector=args.selector,
        include_system=args.include_system,
        trust_domain=args.trust_domain,
        root_namespace=args.root_namespace,
        istio_namespace=args.istio_namespace,
        revision=args.revision,
        timeout=args.request_timeout,
    )
    try:
        api = api_client(args.kubeconfig, args.context, args.request_timeout)
    except DiscoveryError as exc:
        raise UsageError(str(exc)) from None
    try:
        try:
            snap = discover(api, opts)
        except DiscoveryError as exc:
            raise UsageError(str(exc)) from None
        plan = build_plan(snap, req)
        spec = jobspec.RunSpec(
            run_id=new_run_id(),
            image=args.image or default_image(),
            service_account=args.service_account,
            deadline=max(1, int(args.deadline)),
            ttl=args.ttl,
            sidecar_wait=args.sidecar_wait,
            native_sidecar=args.native_sidecar,
            timeout=args.timeout,
            root_cert=snap.root_cert_pem is not None,
        )
        cluster = Cluster(Reader(api, opts))
        results = _run(cluster, plan, spec, sources, names, args)
    finally:
        api.close()
    everything = [*plan.findings, *results]
    info = RunInfo(
        command="run",
        cluster=f"{args.context or 'current context'} ({api.configuration.host})",
        trust_domain=plan.targets_file.trust_domain,
        root_fingerprints=pem_fingerprints(snap.root_cert_pem),
        exit_code=exit_code(everything),
        notes=(("Run", spec.run_id),),
    )
    emit_report(everything, args.output, args.out, info=info)
    from probe import telemetry

    if telemetry.enabled():  # the probe pods do not export: one trace per run, from here
        telemetry.export_run(everything, source_identity=None, targets=plan.targets_file)
    return exit_code(everything)


def _run(
    cluster: Cluster,
    plan: Plan,
    spec: RunSpec,
    sources: list[str],
    names: list[str],
    args: argparse.Namespace,
) -> list[Result]:
    from jobs.plan.discovery import DiscoveryError
    from probe.cli import UsageError

    launched = Launched()
    with _Terminated():
        try:
            try:
                launch(cluster, plan, spec, sources, names, args, launched)
            except DiscoveryError as exc:  # 403 names verb/resource/namespace: exit 64
                raise UsageError(f"launching the probe Jobs: {exc}") from None
            sys.stderr.write(
                f"mtlsprobe run {spec.run_id}: {len(launched.jobs)} probe Job(s) in "
                f"{', '.join(sources)}; waiting up to {args.deadline:g}s\n"
            )
            grace = min(15.0, max(1.0, args.deadline * 0.1))
            deadline = time.monotonic() + args.deadline + grace
            results = collect(cluster, launched, spec.run_id, deadline, args.poll_interval)
        finally:
            if args.keep:
                sys.stderr.write(
                    f"mtlsprobe run {spec.run_id}: kept (--keep); label {jobspec_selector(spec)}\n"
                )
            else:
                for line in cleanup(cluster, launched):
                    sys.stderr.write(f"mtlsprobe run: {line}\n")
    if len(sources) > 1:
        results = [_from(r) for r in results]
    return results
