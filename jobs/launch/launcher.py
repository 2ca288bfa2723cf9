"""Launching the probe Jobs of one run, waiting for them, collecting what their pods logged,
and removing what the run created. Whatever a probe pod could not report becomes ``error``
results naming the cause."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NoReturn

from jobs.launch.jobspec import RUN_ROLES, WIRE, Role

if TYPE_CHECKING:
    from jobs.launch.jobspec import RunSpec
    from jobs.launch.judge import Key, PodView
    from jobs.launch.wait import Board, Slot
    from jobs.plan.planner import Plan
    from probe.checks.base import Scope
    from probe.model import TargetsFile
    from probe.results import Result
from jobs.launch.cluster import Cluster

DEFAULT_SHARD_THRESHOLD = 200
DEFAULT_PARALLELISM = 4
CONFIGMAP_MAX = 1_000_000  # the API server's limit is 1 MiB for the whole object

# ---- what was launched ---------------------------------------------------------------------------


@dataclass
class Unit:
    """One Job: who it probes from, what it owes per shard index, what it reported."""

    namespace: str
    role: Role
    checks: tuple[tuple[str, Scope], ...]  # (name, scope)
    parts: tuple[TargetsFile, ...]  # index i was given parts[i], exactly as written
    job: str
    done: dict[int, list[Result]] = field(default_factory=dict)

    @property
    def shards(self) -> int:
        return len(self.parts)

    def owed(self, index: int) -> list[Key]:
        """What index ``index`` must report. A per-case check (authz) owes nothing for a
        target with no case of this probe's identity (the engine reports nothing there)."""
        from jobs.launch.judge import expected_keys
        from probe.checks.base import Scope

        part = self.parts[index]
        with_cases = {t.name for t in part.targets if t.authz}
        per_case = {n for n, scope in self.checks if scope is Scope.CASE}
        return [
            k
            for k in expected_keys(part, self.checks)
            if k[0] not in per_case or k[1] in with_cases
        ]


@dataclass
class Launched:
    configmaps: list[tuple[str, str]] = field(default_factory=list)  # (ns, name)
    jobs: list[tuple[str, str]] = field(default_factory=list)
    units: list[Unit] = field(default_factory=list)
    # Decided at launch, no pod involved: authz cases no probe of the run can make.
    unprobed: list[Result] = field(default_factory=list)


def _scopes(names: tuple[str, ...]) -> dict[str, Scope]:
    from probe.checks import load_check

    return {n: load_check(n).scope for n in names}


def _too_big(text: str, what: str, lower: bool = False) -> NoReturn:
    from probe.cliargs import UsageError

    fix = "lower --shard-threshold" if lower else "narrow the run with -n or --namespace-selector"
    raise UsageError(
        f"the targets file for {what} is {len(text.encode())} bytes; a ConfigMap holds at "
        f"most 1 MiB: {fix}"
    )


def _endpoints(tf: TargetsFile) -> int:
    return sum(max(1, len(t.endpoints)) for t in tf.targets)


@dataclass(frozen=True)
class LaunchOptions:
    """What to launch besides the plan and the pod spec (``mtlsprobe run``'s flags)."""

    sources: tuple[str, ...]  # namespaces probed from, each gets its Jobs
    checks: tuple[str, ...]  # check names; each goes to the role that can run it
    shard_threshold: int = DEFAULT_SHARD_THRESHOLD  # units of work above which a Job shards
    parallelism: int = DEFAULT_PARALLELISM  # shards of an Indexed Job running at once
    # --impersonate: (namespace, service account) of authz-only probes, opted in by the user
    impersonate: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Probe:
    """The pods of one identity: where they run, as whom, reading which ConfigMap."""

    namespace: str
    service_account: str | None  # None: the run's (--service-account)
    configmap: str
    roles: tuple[Role, ...]
    what: str  # for the ConfigMap-too-big error


def probes(spec: RunSpec, options: LaunchOptions) -> list[Probe]:
    """Every probe identity of the run: the run's own service account in each source
    namespace (both roles), then each ``--impersonate`` one (authz only), when authz runs."""
    from jobs.launch import jobspec

    out = [
        Probe(ns, None, jobspec.configmap_name(spec.run_id), RUN_ROLES, f"namespace {ns}")
        for ns in options.sources
    ]
    if jobspec.AUTHZ in options.checks:
        out += [
            Probe(
                ns,
                sa,
                jobspec.impersonation_configmap_name(spec.run_id, k),
                (jobspec.impersonation_role(k),),
                f"--impersonate {ns}/{sa}",
            )
            for k, (ns, sa) in enumerate(options.impersonate)
        ]
    return out


def held_identities(trust_domain: str, spec: RunSpec, options: LaunchOptions) -> list[str]:
    """The SPIFFE IDs the run's authz probes hold (the sidecar Jobs and --impersonate);
    empty when authz does not run."""
    from jobs.launch.jobspec import AUTHZ
    from probe.spiffe import istio_identity

    if AUTHZ not in options.checks:
        return []
    return [
        istio_identity(trust_domain, p.namespace, p.service_account or spec.service_account)
        for p in probes(spec, options)
    ]


def unprobed_cases(tf: TargetsFile, held: set[str], service_account: str) -> list[Result]:
    """A ``skip`` for each authz case whose ``source`` no probe of the run holds, naming
    the identity and the flag that would run a probe as it. Pure."""
    from probe.authzmodel import AuthzExpect
    from probe.results import Result, Verdict
    from probe.spiffe import SpiffeIdError, parse_spiffe_id

    out: list[Result] = []
    for t in tf.targets:
        for c in t.authz:
            if c.source in held:
                continue
            try:
                sid = parse_spiffe_id(c.source)
                ns, sa = sid.namespace, sid.service_account
            except SpiffeIdError:
                ns = sa = None
            if ns is None or sa is None:
                hint = "it is not an Istio ns/sa identity"
            elif sa == service_account:
                hint = f"--source-namespaces {ns} would run one"
            else:
                hint = f"--impersonate {ns}/{sa} would run one"
            verb = "allowed" if c.expect is AuthzExpect.ALLOW else "denied"
            out.append(
                Result(
                    check="authz",
                    target=t.name,
                    verdict=Verdict.SKIP,
                    reason=f"not probed: no probe of this run holds {c.source} ({hint}); "
                    f"policy {c.policy} says {verb}, unproven",
                    expected=c.expect.value,
                    evidence={"policy": c.policy, "notProbed": True},
                    source=c.source,
                    request=c.request,
                )
            )
    return out


def _nothing_to_call(p: Probe, tf: TargetsFile) -> Result:
    from probe.results import Result, Verdict

    me = tf.source.identity
    return Result(
        check="authz",
        target="source",
        verdict=Verdict.SKIP,
        reason=f"--impersonate {p.namespace}/{p.service_account}: no authz case has source "
        f"{me} (no AuthorizationPolicy decides its calls to an echo target); no pod started",
        source=me,
    )


def launch(
    cluster: Cluster, plan: Plan, spec: RunSpec, options: LaunchOptions, out: Launched
) -> None:
    """Create the ConfigMap and Jobs of every probe identity (recorded in ``out`` as
    they are created, so an interrupted launch is still cleaned up); authz cases no
    probe holds become ``out.unprobed``."""
    held = held_identities(plan.targets_file.trust_domain, spec, options)
    if held:
        out.unprobed = unprobed_cases(plan.targets_file, set(held), spec.service_account)
    for p in probes(spec, options):
        _launch_probe(cluster, plan, spec, options, p, out)


def _launch_probe(
    cluster: Cluster, plan: Plan, spec: RunSpec, options: LaunchOptions, p: Probe, out: Launched
) -> None:
    from jobs.launch import jobspec
    from probe import shard
    from probe.targetsyaml import targets_yaml

    names = options.checks
    scopes = _scopes(names)
    ns = p.namespace
    tf = jobspec.pod_targets(plan.targets_file, ns, spec, p.service_account)
    roles: list[tuple[Role, tuple[str, ...], bool, int]] = []
    for role in p.roles:
        checks = tuple(c for c in role.checks if c in names)
        if role.sidecar and WIRE in names and p.service_account is None:
            checks += (WIRE,)  # its calls go through this pod's sidecar (jobs.launch.wire)
        if p.service_account is not None and not any(t.authz for t in tf.targets):
            checks = ()  # an impersonated probe with nothing to call: no pod at all
        if checks:
            by_ep = shard.by_endpoint(scopes[c] for c in checks)
            work = _endpoints(tf) if by_ep else len(tf.targets)
            shards = jobspec.shard_count(work, options.shard_threshold)
            roles.append((role, checks, by_ep, shards))
    if not roles:
        if p.service_account is not None:
            out.unprobed.append(_nothing_to_call(p, tf))
        return
    text = targets_yaml(tf.to_dict())
    if len(text.encode()) > CONFIGMAP_MAX:
        if any(n == 1 for *_, n in roles):
            _too_big(text, f"{len(tf.targets)} targets ({p.what})")
        # Every Job reads its shards' ConfigMaps: this one only anchors ownership.
        text = "# sharded: see the ConfigMaps labelled with this run id and a role\n"
    cm = cluster.create_configmap(ns, jobspec.configmap(spec, ns, text, p.configmap))
    out.configmaps.append((ns, cm["metadata"]["name"]))
    for role, checks, by_ep, shards in roles:
        # An even split, computed here once: each index reads only its own part.
        parts = shard.split(tf, shards, by_endpoint=by_ep)
        for i, part in enumerate(parts if shards > 1 else ()):
            body = targets_yaml(part.to_dict())
            if len(body.encode()) > CONFIGMAP_MAX:
                _too_big(body, f"shard {i} of {role.name}", lower=True)
            made = cluster.create_configmap(
                ns, jobspec.shard_configmap(spec, ns, role.name, i, body, cm)
            )
            out.configmaps.append((ns, made["metadata"]["name"]))
        jb = jobspec.job(
            spec,
            ns,
            role,
            checks,
            cm,
            shards=shards,
            parallelism=options.parallelism,
            service_account=p.service_account,
        )
        created = cluster.create_job(ns, jb)
        out.jobs.append((ns, created["metadata"]["name"]))
        out.units.append(
            Unit(
                ns,
                role,
                tuple((c, scopes[c]) for c in checks),
                parts,
                created["metadata"]["name"],
            )
        )


# ---- waiting and collecting -----------------------------------------------------------------


def collect(
    cluster: Cluster,
    launched: Launched,
    run_id: str,
    deadline: float,
    poll: float,
    clock: Callable[[], float] = time.monotonic,
) -> list[Result]:
    """Look at the run's Jobs and pods until every shard of every Job reported or
    failed, or the deadline passed (the states: ``jobs.launch.wait``); then everything
    still owed is an error naming why."""
    from jobs.launch.jobspec import run_selector
    from jobs.launch.judge import errors_for
    from jobs.launch.wait import OVERDUE, Board, Slot
    from jobs.plan.discovery import DiscoveryError

    selector = run_selector(run_id)
    board = Board.of(Slot(u.namespace, u.job, i) for u in launched.units for i in range(u.shards))
    versions: dict[str, str] = {}  # namespace -> resourceVersion of its last pod list
    while True:
        try:
            for ns in sorted({u.namespace for u in launched.units}):
                versions[ns] = _look(cluster, ns, selector, launched.units, board)
            board.api_error = ""
        except DiscoveryError as exc:  # a blip is retried until the deadline
            board.api_error = str(exc)
        left = deadline - clock()
        if board.settled or left <= 0:
            break
        _pause(cluster, board, selector, versions, min(poll, left), deadline, clock)
    for slot, why in board.overdue().items():
        u = _unit(launched.units, slot)
        owed = u.owed(slot.index)
        _settle(u, slot.index, errors_for(owed, why, OVERDUE, probeJob=u.job))
    return [r for u in launched.units for index in range(u.shards) for r in u.done[index]]


def _look(cluster: Cluster, ns: str, selector: str, units: list[Unit], board: Board) -> str:
    """One look at a namespace: its Jobs' failures, then each waiting slot's pods.
    Returns the pod list's resourceVersion (where the next watch starts)."""
    from jobs.launch import judge
    from jobs.launch.jobspec import CONTAINER, LABEL_ROLE
    from jobs.launch.wait import Collect, GiveUp, Slot

    board.jobs_seen(ns, cluster.jobs(ns, selector))
    pods, version = cluster.pods(ns, selector)
    views = [
        ((p["metadata"].get("labels") or {}).get(LABEL_ROLE), judge.pod_view(p, CONTAINER))
        for p in pods
    ]
    for u in (u for u in units if u.namespace == ns):
        for index in range(u.shards):
            slot = Slot(ns, u.job, index)
            if slot not in board.waiting:
                continue
            mine = [v for role, v in views if role == u.role.name and v.index == index]
            step = board.observe(slot, mine)
            if isinstance(step, Collect):
                _settle(u, index, _from_pod(cluster, u, step.pod))
            elif isinstance(step, GiveUp):
                owed = u.owed(index)
                _settle(u, index, judge.errors_for(owed, step.reason, step.cause, probeJob=u.job))
    return version


def _from_pod(cluster: Cluster, u: Unit, pod: PodView) -> list[Result]:
    """A finished pod's results: its log, judged (``judge.from_log``)."""
    from jobs.launch import judge
    from jobs.launch.jobspec import CONTAINER
    from jobs.plan.discovery import DiscoveryError

    owed = u.owed(pod.index)
    ev = {"probePod": f"{u.namespace}/{pod.name}", "probeJob": u.job}
    try:
        text = cluster.log(u.namespace, pod.name, CONTAINER)
    except DiscoveryError as exc:
        return judge.log_unreadable(owed, str(exc), **ev)
    results = judge.from_log(owed, pod, text, **ev)
    if not any(c == WIRE for c, _ in u.checks):
        return results
    # Where its flows can be seen, from the pod's status (never from what the pod says).
    from jobs.launch.wire import IP_KEY, NODE_KEY

    where = {NODE_KEY: pod.node, IP_KEY: pod.ip}
    return [replace(r, evidence={**r.evidence, **where}) if r.check == WIRE else r for r in results]


def _settle(u: Unit, index: int, results: list[Result]) -> None:
    """Index ``index`` of ``u`` is done: its results, each knowing which probe saw it
    (``origin``: source namespace and the probe's SPIFFE ID, for reports and traces).
    A result with no time of its own (an error decided here) is an instant now."""
    from probe.results import Origin

    origin = Origin(u.namespace, u.parts[index].source.identity)
    now = time.time_ns()
    results = per_case(u, index, results)
    u.done[index] = [
        replace(
            r,
            evidence={**r.evidence, "sourceNamespace": u.namespace},
            origin=origin,
            end_ns=r.end_ns or now,
        )
        for r in results
    ]


def per_case(u: Unit, index: int, results: list[Result]) -> list[Result]:
    """An error decided here for a per-case check's target (a pod that never reported)
    becomes one error per case that pod owed there, each naming its ``source`` and
    ``request`` as a reported case would: who could not call whom stays visible."""
    from probe.checks.base import Scope
    from probe.results import Result, Verdict

    per = {n for n, scope in u.checks if scope is Scope.CASE}
    if not per:
        return results
    cases = {t.name: t.authz for t in u.parts[index].targets}
    out: list[Result] = []
    reported: set[tuple[str, str, str | None, str | None]] = set()
    for r in results:
        if r.check in per and r.source is None and r.endpoint is None and cases.get(r.target):
            out += [
                replace(r, source=c.source, request=c.request, expected=c.expect.value)
                for c in cases[r.target]
            ]
        else:
            out.append(r)
    for r in out:
        reported.add((r.check, r.target, r.source, r.request))
    seen_targets = {k[:2] for k in reported}
    # Fail closed per case: a pod that reported some of a target's cases but not others
    # owes the rest (the log's keys are per target; a case is per source and request).
    for name in sorted(per):
        for target, owed in cases.items():
            if (name, target) not in seen_targets:
                continue  # nothing reported for this target: the per-target check covers it
            out += [
                Result(
                    check=name,
                    target=target,
                    verdict=Verdict.ERROR,
                    reason=f"the probe pod reported other cases for {target} but not this one",
                    expected=c.expect.value,
                    observed="probe-incomplete",
                    evidence={"error": "probe-incomplete"},
                    source=c.source,
                    request=c.request,
                )
                for c in owed
                if (name, target, c.source, c.request) not in reported
            ]
    return out


def _unit(units: list[Unit], slot: Slot) -> Unit:
    return next(u for u in units if (u.namespace, u.job) == slot.job_key)


def _pause(
    cluster: Cluster,
    board: Board,
    selector: str,
    versions: dict[str, str],
    wait: float,
    deadline: float,
    clock: Callable[[], float],
) -> None:
    """Sleep until a pod of the run changes (a watch), at most ``wait`` seconds. Lists
    decide; the watch only wakes us early."""
    from jobs.plan.discovery import DiscoveryError

    first = board.first_waiting()
    version = versions.get(first.namespace) if first is not None else None
    if first is None or not version or wait < 1:
        time.sleep(wait)
        return
    try:
        cluster.wait_for_change(first.namespace, selector, version, int(wait))
    except DiscoveryError as exc:
        board.api_error = str(exc)
        time.sleep(min(1.0, max(0.0, deadline - clock())))


def cleanup(cluster: Cluster, launched: Launched) -> list[str]:
    """Delete what the run created; problems are returned as lines, never raised."""
    problems: list[str] = []
    for ns, name in launched.jobs:
        problems += _delete(cluster, ns, "jobs", name)
    for ns, name in launched.configmaps:
        problems += _delete(cluster, ns, "configmaps", name)
    return problems


def _delete(cluster: Cluster, ns: str, plural: str, name: str) -> list[str]:
    from jobs.kube.errors import KubeError, NotFound

    try:
        cluster.delete(ns, plural, name)
    except NotFound:  # already gone (ttlSecondsAfterFinished, a person)
        pass
    except KubeError as exc:
        return [f"could not delete {plural} {ns}/{name}: {exc}"]
    return []


def new_run_id() -> str:
    """Short, DNS-label safe, sortable by start time."""
    return f"{int(time.time()) % 10**8:08d}{secrets.token_hex(2)}"


def jobspec_selector(spec: RunSpec) -> str:
    from jobs.launch.jobspec import run_selector

    return run_selector(spec.run_id)
