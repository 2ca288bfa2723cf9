"""Launching the probe Jobs of one run, waiting for them, collecting what their pods logged,
and removing what the run created. Whatever a probe pod could not report becomes ``error``
results naming the cause."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NoReturn

from jobs.launch.jobspec import ROLES, Role

if TYPE_CHECKING:
    from jobs.launch.jobspec import RunSpec
    from jobs.plan.planner import Plan
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
    checks: tuple[tuple[str, str], ...]  # (name, scope value)
    parts: tuple[TargetsFile, ...]  # index i was given parts[i], exactly as written
    job: str
    done: dict[int, list[Result]] = field(default_factory=dict)

    @property
    def shards(self) -> int:
        return len(self.parts)

    def owed(self, index: int) -> list[tuple[str, str, str | None]]:
        from jobs.launch.judge import expected_keys

        return expected_keys(self.parts[index], self.checks)

    @property
    def complete(self) -> bool:
        return len(self.done) == self.shards


@dataclass
class Launched:
    configmaps: list[tuple[str, str]] = field(default_factory=list)  # (ns, name)
    jobs: list[tuple[str, str]] = field(default_factory=list)
    units: list[Unit] = field(default_factory=list)


def _scopes(names: tuple[str, ...]) -> dict[str, str]:
    from probe.checks import load_check

    return {n: load_check(n).scope.value for n in names}


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


def launch(
    cluster: Cluster, plan: Plan, spec: RunSpec, options: LaunchOptions, out: Launched
) -> None:
    """Create the ConfigMap and Jobs in every source namespace (recorded in ``out`` as
    they are created, so an interrupted launch is still cleaned up)."""
    from jobs.launch import jobspec
    from probe import shard
    from probe.targetsyaml import targets_yaml

    names = options.checks
    scopes = _scopes(names)
    for ns in options.sources:
        tf = jobspec.pod_targets(plan.targets_file, ns, spec)
        roles: list[tuple[Role, tuple[str, ...], bool, int]] = []
        for role in ROLES:
            checks = tuple(c for c in role.checks if c in names)
            if checks:
                by_ep = shard.by_endpoint(scopes[c] for c in checks)
                work = _endpoints(tf) if by_ep else len(tf.targets)
                shards = jobspec.shard_count(work, options.shard_threshold)
                roles.append((role, checks, by_ep, shards))
        text = targets_yaml(tf.to_dict())
        if len(text.encode()) > CONFIGMAP_MAX:
            if any(n == 1 for *_, n in roles):
                _too_big(text, f"{len(tf.targets)} targets")
            # Every Job reads its shards' ConfigMaps: this one only anchors ownership.
            text = "# sharded: see the ConfigMaps labelled with this run id and a role\n"
        cm = cluster.create_configmap(ns, jobspec.configmap(spec, ns, text))
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
                spec, ns, role, checks, cm, shards=shards, parallelism=options.parallelism
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
    """Poll Jobs and pods until every shard of every Job reported or failed, or the
    deadline passed; then everything still owed is an error naming why."""
    from jobs.launch import judge
    from jobs.launch.jobspec import CONTAINER, LABEL_ROLE, run_selector
    from jobs.plan.discovery import DiscoveryError

    selector = run_selector(run_id)
    namespaces = sorted({u.namespace for u in launched.units})
    last_view: dict[tuple[str, str, int], judge.PodView] = {}
    failures: dict[tuple[str, str], str] = {}
    versions: dict[str, str] = {}
    api_error = ""

    def finish(u: Unit, index: int, results: list[Result]) -> None:
        u.done[index] = [
            replace(r, evidence={**r.evidence, "sourceNamespace": u.namespace}) for r in results
        ]

    def from_pod(u: Unit, view: judge.PodView) -> None:
        owed = u.owed(view.index)
        ev = {"probePod": f"{u.namespace}/{view.name}", "probeJob": u.job}
        try:
            text = cluster.log(u.namespace, view.name, CONTAINER)
        except DiscoveryError as exc:
            finish(
                u,
                view.index,
                judge.errors_for(owed, f"probe logs unreadable: {exc}", "logs-unreadable", **ev),
            )
            return
        parsed = judge.parse_log(text)
        got = [replace(r, evidence={**r.evidence, **ev}) for r in parsed.results]
        lacking = judge.missing(owed, got)
        if lacking:
            cause = view.crash()
            if cause is None:
                cause = (
                    f"probe pod {view.name} exited {view.exit_code} without reporting this result"
                )
            if parsed.last_text:
                cause += f" (last log line: {parsed.last_text})"
            if parsed.ignored:
                cause += f"; {parsed.ignored} non-result log lines ignored"
            got += judge.errors_for(lacking, cause, "probe-incomplete", **ev)
        finish(u, view.index, got)

    while True:
        try:
            for ns in namespaces:
                for jb in cluster.jobs(ns, selector):
                    why = judge.job_failure(jb)
                    if why:
                        failures[(ns, jb["metadata"]["name"])] = why
                pods, versions[ns] = cluster.pods(ns, selector)
                for u in (u for u in launched.units if u.namespace == ns):
                    role_pods = [
                        judge.pod_view(p, CONTAINER)
                        for p in pods
                        if (p["metadata"].get("labels") or {}).get(LABEL_ROLE) == u.role.name
                    ]
                    for index in range(u.shards):
                        if index in u.done:
                            continue
                        views = [v for v in role_pods if v.index == index]
                        finished = [v for v in views if v.finished]
                        if finished:
                            from_pod(u, finished[0])
                            continue
                        if views:
                            last_view[(ns, u.job, index)] = views[-1]
                            fatal = views[-1].fatal
                            if fatal:
                                finish(
                                    u,
                                    index,
                                    judge.errors_for(
                                        u.owed(index), fatal, "probe-not-started", probeJob=u.job
                                    ),
                                )
                                continue
                        failed = failures.get((ns, u.job))
                        if failed and not any(
                            not v.deleting and v.phase in ("Pending", "Running") for v in views
                        ):
                            seen = last_view.get((ns, u.job, index))
                            why = f"{failed}; " + (
                                seen.stuck() if seen is not None else "no probe pod was seen"
                            )
                            owed = u.owed(index)
                            finish(
                                u, index, judge.errors_for(owed, why, "job-failed", probeJob=u.job)
                            )
            api_error = ""
        except DiscoveryError as exc:  # a blip is retried until the deadline
            api_error = str(exc)
        if all(u.complete for u in launched.units):
            break
        left = deadline - clock()
        if left <= 0:
            break
        # Sleep until a pod of the run changes (a watch), at most ``poll`` seconds; then
        # look at everything again. Lists decide; the watch only wakes us early.
        pending = [u.namespace for u in launched.units if not u.complete]
        wait = min(poll, left)
        if pending and versions.get(pending[0]) and wait >= 1:
            try:
                cluster.wait_for_change(pending[0], selector, versions[pending[0]], int(wait))
            except DiscoveryError as exc:
                api_error = str(exc)
                time.sleep(min(1.0, max(0.0, deadline - clock())))
        else:
            time.sleep(wait)
    out: list[Result] = []
    for u in launched.units:
        for index in range(u.shards):
            if index in u.done:
                out.extend(u.done[index])
                continue
            view = last_view.get((u.namespace, u.job, index))
            if view is not None:
                why = view.stuck()
            elif api_error:
                why = f"could not watch the probe Job: {api_error}"
            else:
                why = (
                    f"no probe pod appeared for job {u.job} in {u.namespace} "
                    "(service account missing, quota or admission? kubectl describe job)"
                )
            why = (
                failures.get((u.namespace, u.job), "")
                + ("; " if (u.namespace, u.job) in failures else "")
                + why
            )
            out.extend(
                judge.errors_for(
                    u.owed(index), why, "deadline", probeJob=u.job, sourceNamespace=u.namespace
                )
            )
    return out


def cleanup(cluster: Cluster, launched: Launched) -> list[str]:
    """Delete what the run created; problems are returned as lines, never raised."""
    problems: list[str] = []
    for ns, name in launched.jobs:
        problems += _delete(cluster, ns, "jobs", name)
    for ns, name in launched.configmaps:
        problems += _delete(cluster, ns, "configmaps", name)
    return problems


def _delete(cluster: Cluster, ns: str, plural: str, name: str) -> list[str]:
    from jobs.plan.discovery import DiscoveryError

    try:
        cluster.delete(ns, plural, name)
    except DiscoveryError as exc:
        if "HTTP 404" not in str(exc):  # already gone (ttlSecondsAfterFinished, a person)
            return [f"could not delete {plural} {ns}/{name}: {exc}"]
    return []


def new_run_id() -> str:
    """Short, DNS-label safe, sortable by start time."""
    return f"{int(time.time()) % 10**8:08d}{secrets.token_hex(2)}"


def jobspec_selector(spec: RunSpec) -> str:
    from jobs.launch.jobspec import run_selector

    return run_selector(spec.run_id)
