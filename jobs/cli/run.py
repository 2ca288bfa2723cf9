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
import re
import signal
import sys
import time
from typing import TYPE_CHECKING

from jobs.cli import flags
from jobs.cli.signals import raising_on
from jobs.launch.cluster import Cluster
from jobs.launch.jobspec import AUTHZ, RUN_ROLES, WIRE
from jobs.launch.launcher import (
    DEFAULT_PARALLELISM,
    DEFAULT_SHARD_THRESHOLD,
    Launched,
    LaunchOptions,
    cleanup,
    collect,
    jobspec_selector,
    launch,
    new_run_id,
)
from probe.cliargs import (
    UsageError,
    add_checks_flag,
    add_probe_flags,
    add_report_flags,
    emit_report,
    old_spelling,
    positive_int,
    positive_seconds,
    words,
)

if TYPE_CHECKING:
    from jobs.launch.jobspec import RunSpec
    from jobs.launch.wire import Detection
    from jobs.plan.planner import Plan
    from probe.evidence import Evidence
    from probe.results import Result

IMAGE_ENV = "MTLSPROBE_IMAGE"


def default_image() -> str:
    from probe import __version__

    return os.environ.get(IMAGE_ENV) or f"ghcr.io/mtlsprobe/mtlsprobe:{__version__}"


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Discover and plan, launch a sidecar and a sidecar-less probe Job in the cluster, "
        "wait for them, and print one report with one exit code (plan findings included)."
    )
    flags.add_cluster_flags(p.add_argument_group("cluster"))
    sel = p.add_argument_group("what to probe (as in `mtlsprobe plan`)")
    flags.add_scope_flags(sel)
    flags.add_mesh_flags(sel)
    flags.add_require_flag(sel)
    launched = tuple(c for r in RUN_ROLES for c in r.checks)
    add_checks_flag(
        sel,
        tuple(c for c in launched if c != AUTHZ),
        extra=", and authz when the plan has AuthorizationPolicy cases; each goes to the Job "
        "that can run it",
        known=launched,
    )
    j = p.add_argument_group("probe Jobs")
    flags.add_probe_namespace_flag(j)
    j.add_argument(
        "--source-namespaces",
        default="",
        metavar="A,B",
        help="also probe from these namespaces (needs the run RBAC there too)",
    )
    j.add_argument(
        "--impersonate",
        default="",
        metavar="NS/SA,...",
        help="also run authz-only probe pods as these service accounts (no API token "
        "mounted), so allows for those identities are proven; needs the opt-in RBAC in "
        "k8s/components/impersonate in each namespace",
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
        "--wait-for-sidecar",
        type=positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long the sidecar probe waits for its proxy (default: 60)",
    )
    j.add_argument(
        "--deadline",
        type=positive_seconds,
        default=300.0,
        metavar="SECONDS",
        help="the Jobs' activeDeadlineSeconds and how long to wait for them (default: 300)",
    )
    add_probe_flags(j)
    j.add_argument(
        "--shard-threshold",
        type=positive_int,
        default=DEFAULT_SHARD_THRESHOLD,
        metavar="N",
        help="above N units of work (endpoints for the plain Job, targets for the sidecar "
        f"Job), an Indexed Job with one shard per N (default: {DEFAULT_SHARD_THRESHOLD})",
    )
    j.add_argument(
        "--parallelism",
        type=positive_int,
        default=DEFAULT_PARALLELISM,
        metavar="N",
        help=f"shards running at once (default: {DEFAULT_PARALLELISM})",
    )
    j.add_argument(
        "--ttl",
        type=positive_int,
        default=600,
        metavar="SECONDS",
        help="ttlSecondsAfterFinished: the cluster's own clean-up if ours cannot run",
    )
    j.add_argument(
        "--wire-wait",
        type=positive_seconds,
        default=90.0,
        metavar="SECONDS",
        help="--checks wire with the node capture agent installed: how long to wait, once "
        "the probes are done, for the agent's capture window that covers their calls "
        "(default: 90, the agent's 60 s window and its overlap)",
    )
    j.add_argument("--keep", action="store_true", help="leave the Jobs, pods and ConfigMaps")
    j.add_argument(
        "--poll-interval",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="longest wait between looks at the Jobs and pods; a watch on the run's pods "
        "wakes earlier on any change (default: 10)",
    )
    report = p.add_argument_group("report")
    add_report_flags(report)
    flags.add_policy_report_flags(report)
    from probe.evidence import add_flags as add_evidence_flags

    add_evidence_flags(p)
    old_spelling(p, "--selector", "--namespace-selector")
    old_spelling(p, "--sidecar-wait", "--wait-for-sidecar")


# ---- main ----------------------------------------------------------------------------------------


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def parse_impersonate(raw: str) -> tuple[tuple[str, str], ...]:
    """``--impersonate ns/sa,...``: each part a DNS label (RFC 1123), in order, once."""
    out: list[tuple[str, str]] = []
    for item in words(raw):
        ns, slash, sa = item.partition("/")
        if not slash or not all(_DNS_LABEL.fullmatch(x) for x in (ns, sa)):
            shown = item if len(item) <= 80 else item[:80] + "..."
            raise UsageError(
                f"--impersonate: {shown!r}: want NAMESPACE/SERVICEACCOUNT, each a DNS label "
                "(lowercase letters, digits, '-', at most 63)"
            )
        out.append((ns, sa))
    return tuple(dict.fromkeys(out))


def main(args: argparse.Namespace) -> int:
    from jobs.launch import jobspec
    from jobs.plan.discovery import DiscoveryError, Reader, api_client, discover
    from jobs.plan.planner import Requirements, build_plan
    from probe.checks import parse_check_list
    from probe.checks.wire import not_launched
    from probe.html_report import RunInfo, pem_fingerprints
    from probe.results import exit_code

    try:
        chosen = parse_check_list(args.checks) if args.checks is not None else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    impersonate = parse_impersonate(args.impersonate)
    if impersonate and chosen is not None and AUTHZ not in chosen:
        raise UsageError("--impersonate: its probes run only authz: add authz to --checks")
    try:
        req = Requirements.parse(args.require, args.probe_namespace)
    except ValueError as exc:
        raise UsageError(f"--require: {exc}") from None
    opts = flags.discovery_options(args)
    access = flags.cluster_access(args)
    sources = (
        args.probe_namespace,
        *(n for n in words(args.source_namespaces) if n != args.probe_namespace),
    )
    for ns, sa in impersonate:
        if sa == args.service_account and ns in sources:
            raise UsageError(
                f"--impersonate {ns}/{sa}: the run's own probe in {ns} already holds it"
            )
    from probe.evidence import from_args as evidence_from_args

    ev = evidence_from_args(args)  # before any API call: a bad key or mapping is exit 64
    try:
        api = api_client(access.kubeconfig, access.context, access.request_timeout)
    except DiscoveryError as exc:
        raise UsageError(str(exc)) from None
    try:
        try:
            snap = discover(api, opts)
        except DiscoveryError as exc:
            raise UsageError(str(exc)) from None
        plan = build_plan(snap, req)
        from jobs.plan.authz_cases import for_probes
        from probe.spiffe import istio_identity

        td = plan.targets_file.trust_domain
        probing = [istio_identity(td, ns, args.service_account) for ns in sources]
        probing += [istio_identity(td, ns, sa) for ns, sa in impersonate]
        plan = for_probes(plan, snap, probing, args.service_account)
        default = [c for r in RUN_ROLES for c in r.checks if c != AUTHZ]
        names = list(chosen) if chosen is not None else default
        if chosen is None and any(t.authz for t in plan.targets_file.targets):
            names.append(AUTHZ)  # as `check` does when the targets file has cases
        spec = jobspec.RunSpec(
            run_id=new_run_id(),
            image=args.image or default_image(),
            service_account=args.service_account,
            deadline=max(1, int(args.deadline)),
            ttl=args.ttl,
            sidecar_wait=args.wait_for_sidecar,
            native_sidecar=args.native_sidecar,
            timeout=args.timeout,
            concurrency=args.concurrency,
            min_remaining=args.min_remaining,
            max_lifetime=args.max_lifetime,
            root_cert=snap.root_cert_pem is not None,
        )
        cluster = Cluster(Reader(api, opts))
        launched_checks = not_launched(names)
        detected = None
        if WIRE in names:
            from jobs.launch.wire import detect

            detected = detect(cluster)
            if detected.agents is not None:
                launched_checks.append(WIRE)  # the sidecar Job makes the marked calls
        launch_opts = LaunchOptions(
            sources=sources,
            checks=tuple(launched_checks),
            shard_threshold=args.shard_threshold,
            parallelism=args.parallelism,
            impersonate=impersonate,
        )
        results = _run(cluster, plan, spec, launch_opts, args) if launched_checks else []
        if detected is not None and detected.agents is not None:
            from jobs.launch.wire import judge_claims

            results = judge_claims(
                cluster, detected.agents, results, args.wire_wait, min(args.poll_interval, 5.0)
            )
        everything = [*plan.findings, *results, *_wire_skips(plan, detected)]
        if args.policy_reports:
            scope = snap.target_namespaces
            if scope is not None:
                scope = {*scope, args.probe_namespace}
            _write_policy_reports(cluster, everything, plan, ev, args.probe_namespace, scope)
    finally:
        api.close()
    if ev.signer is not None:
        import yaml

        planned = yaml.safe_dump(plan.targets_file.to_dict(), sort_keys=True).encode()
        ev.add_material("targets:planned", planned)
    server = str(api.configuration.host)
    info = RunInfo(
        command="run",
        cluster=f"{args.context or 'current context'} ({server})",
        trust_domain=plan.targets_file.trust_domain,
        root_fingerprints=pem_fingerprints(snap.root_cert_pem),
        exit_code=exit_code(everything),
        notes=(("Run", spec.run_id),),
    )
    emit_report(
        everything,
        args.output,
        args.out,
        evidence=ev,
        cluster=server,
        run_id=spec.run_id,
        info=info,
    )
    from probe import telemetry

    if telemetry.enabled():  # the probe pods do not export: one trace per run, from here
        telemetry.export_run(everything, source_identity=None, targets=plan.targets_file)
    return exit_code(everything)


def _wire_skips(plan: Plan, detected: Detection | None) -> list[Result]:
    """``wire`` per target when run does not judge it: the capture agent is absent or not
    ready (``skip``, naming the install command) or could not be looked up (``error``).
    Nothing is deployed for it then."""
    if detected is None or detected.agents is not None:
        return []
    from jobs.launch.wire import skips

    return skips(detected.verdict, detected.reason, [t.name for t in plan.targets_file.targets])


def _write_policy_reports(
    cluster: Cluster,
    results: list[Result],
    plan: Plan,
    ev: Evidence,
    probe_namespace: str,
    scope: set[str] | None,
) -> None:
    """Reports for this run; stale ones pruned only inside the namespaces it covered."""
    from jobs.launch import policyreports

    done = policyreports.write(
        cluster,
        results,
        kind=ev.report_kind,
        owner="run",
        plan=plan,
        controls=ev.controls,
        fallback_namespace=probe_namespace,
        scope=scope,
    )
    sys.stderr.write(f"mtlsprobe run: {done.line(ev.report_kind)}\n")


def _run(
    cluster: Cluster,
    plan: Plan,
    spec: RunSpec,
    options: LaunchOptions,
    args: argparse.Namespace,
) -> list[Result]:
    from jobs.plan.discovery import DiscoveryError

    sources = options.sources
    launched = Launched()
    # SIGTERM (the CronJob's deadline, a deleted pod) unwinds like Ctrl-C: clean-up runs.
    with raising_on((signal.SIGTERM,), lambda signum: KeyboardInterrupt()):
        try:
            try:
                launch(cluster, plan, spec, options, launched)
            except DiscoveryError as exc:  # 403 names verb/resource/namespace: exit 64
                raise UsageError(f"launching the probe Jobs: {exc}") from None
            where = dict.fromkeys([*sources, *(ns for ns, _ in options.impersonate)])
            sys.stderr.write(
                f"mtlsprobe run {spec.run_id}: {len(launched.jobs)} probe Job(s) in "
                f"{', '.join(where)}; waiting up to {args.deadline:g}s\n"
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
        results = [_from_source(r) for r in results]
    return [*results, *launched.unprobed]


def _from_source(r: Result) -> Result:
    """With several source namespaces the same edge is probed once per source: reports
    name the source after the target; the target itself stays as planned."""
    from dataclasses import replace

    return replace(r, origin=replace(r.origin, shown=True)) if r.origin is not None else r
