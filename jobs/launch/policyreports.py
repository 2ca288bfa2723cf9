"""Writing policy reports to the cluster (``run --policy-reports``, ``agent --policy-reports``).

The objects come from ``probe.policyreport`` (pure); this module makes the cluster hold
exactly them: create what is new, update what exists (with its resourceVersion), delete
the reports this writer made for namespaces that no longer have targets. Ownership is by
label (``app.kubernetes.io/managed-by=mtlsprobe``, ``mtlsprobe.dev/report``,
``mtlsprobe.dev/owner``): reports live in the tenants' namespaces, where no
ownerReference to the probe's namespace is allowed. A report of the same name that lacks
our labels is someone else's and is never overwritten or deleted.

Every API call goes through ``ReportApi`` (four methods), so the calls can move onto a
single Kubernetes edge without touching the sync logic. ``REPORT_API_CALLS`` is the
RBAC it needs (k8s/components/policy-reports); tests compare it with what the fake API
server recorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from probe.policyreport import KINDS, MANAGED_BY, REPORT_LABEL, REPORT_NAME, Kind

if TYPE_CHECKING:
    from jobs.agent.state import RoundReport
    from jobs.launch.cluster import Cluster
    from jobs.plan.planner import Plan
    from probe.compliance import ControlMap
    from probe.policyreport import ObjectRef, Resolver
    from probe.results import Result

OWNER_LABEL = "mtlsprobe.dev/owner"
# Writers that share work: "run", or "agent-<kind>" (the plain and the sidecar agents are
# two groups; one group's peers say nothing about the other's).
GROUP_LABEL = "mtlsprobe.dev/writer-group"
SELECTOR = ",".join(f"{k}={v}" for k, v in {**MANAGED_BY, REPORT_LABEL: "true"}.items())
ANY_NS = "<any namespace>"

REPORT_API_CALLS: frozenset[tuple[str, str, str, str]] = frozenset(
    (verb, k.group, k.plural, ANY_NS)
    for k in KINDS.values()
    for verb in ("list", "create", "update", "delete")
)


@dataclass(frozen=True)
class ReportOptions:
    """``--policy-reports`` as the CLI layer parsed it."""

    kind: str = "policyreport"  # or "openreports"
    controls: ControlMap | None = None
    kubeconfig: str | None = None
    context: str | None = None
    request_timeout: float = 10.0


class ReportApi(Protocol):
    """The four calls the sync makes; ``Cluster`` below is the real one."""

    def list_owned(self, k: Kind, selector: str) -> list[dict[str, Any]]: ...
    def create(self, k: Kind, ns: str, body: dict[str, Any]) -> None: ...
    def replace(self, k: Kind, ns: str, name: str, body: dict[str, Any]) -> None: ...
    def delete(self, k: Kind, ns: str, name: str) -> None: ...


@dataclass
class ClusterReportApi:
    """``ReportApi`` over ``jobs.launch.cluster.Cluster`` (timeouts, one-line errors)."""

    cluster: Cluster

    def _path(self, k: Kind, ns: str | None, name: str | None = None) -> str:
        base = f"/apis/{k.group}/{k.version}"
        path = f"{base}/namespaces/{ns}/{k.plural}" if ns else f"{base}/{k.plural}"
        return f"{path}/{name}" if name else path

    def list_owned(self, k: Kind, selector: str) -> list[dict[str, Any]]:
        from jobs.kube.errors import KubeError, NotFound

        what = f"list {k.plural}.{k.group}"
        path = self._path(k, None)
        try:
            return list(self.cluster.client.pages(what, path, [("labelSelector", selector)]))
        except NotFound:  # NotServed included
            raise KubeError(
                f"{what}: the API server answered HTTP 404: {k.api_version} {k.kind} is not "
                "served (install its CRD: Kyverno or the policy WG's CRDs)"
            ) from None

    def create(self, k: Kind, ns: str, body: dict[str, Any]) -> None:
        self.cluster.client.create(f"create {k.plural}.{k.group} in {ns}", self._path(k, ns), body)

    def replace(self, k: Kind, ns: str, name: str, body: dict[str, Any]) -> None:
        what = f"update {k.plural}.{k.group} {name} in {ns}"
        self.cluster.client.replace(what, self._path(k, ns, name), body)

    def delete(self, k: Kind, ns: str, name: str) -> None:
        what = f"delete {k.plural}.{k.group} {name} in {ns}"
        self.cluster.client.delete(what, self._path(k, ns, name))


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def line(self, kind: str) -> str:
        out = (
            f"{kind}: {len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.deleted)} pruned"
        )
        if self.problems:
            out += f"; {len(self.problems)} not written: {self.problems[0]}"
        return out


_SLUG = re.compile(r"[^a-z0-9-]+")


def report_name(owner: str) -> str:
    """``mtlsprobe`` for a run; ``mtlsprobe-<agent>`` for an agent, so sharded agents
    (each probing part of a namespace) never overwrite each other's reports."""
    if owner == "run":
        return REPORT_NAME
    slug = _SLUG.sub("-", owner.lower()).strip("-")[:50].strip("-") or "agent"
    return f"{REPORT_NAME}-{slug}"


def plan_resolver(plan: Plan) -> Resolver:
    """Service and Pod for each result: the pod from the endpoint (podIP:targetPort)."""
    from probe.policyreport import service_ref

    pods: dict[str, ObjectRef] = {}
    services: dict[str, ObjectRef] = {}
    for e in plan.edges:
        services[e.target] = {
            "apiVersion": "v1",
            "kind": "Service",
            "namespace": e.namespace,
            "name": e.service,
        }
        if e.pod.ip:
            pods[f"{e.pod.ip}:{e.target_port}"] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": e.pod.namespace,
                "name": e.pod.name,
            }

    def resolve(r: Result) -> list[ObjectRef]:
        refs = [services[r.target]] if r.target in services else service_ref(r)
        if r.endpoint and r.endpoint in pods:
            refs.append(pods[r.endpoint])
        return refs

    return resolve


def sync(
    api: ReportApi,
    results: Sequence[Result],
    *,
    kind: str,
    owner: str,
    group: str = "run",
    live_owners: Iterable[str] | None = None,
    controls: ControlMap | None = None,
    resolve: Resolver | None = None,
    fallback_namespace: str = "mtlsprobe",
    scope: Collection[str] | None = None,
    budget_s: float = 60.0,
) -> SyncResult:
    """Make the cluster's reports from ``owner`` equal to those of ``results``; with
    ``live_owners`` (the agents of ``group`` sharing the work), also prune reports of
    that group's agents that are gone. Only namespaces in ``scope`` (None: all) are
    pruned: ``run -n ns-a`` says nothing about ns-b, so the last full run's report there
    stays. API failures become ``problems`` (one line each); nothing raises. Bounded:
    past ``budget_s`` (a slow API server, many namespaces) the rest waits for the next
    sync, with one problem line saying how many were not written."""
    import time

    from jobs.plan.discovery import DiscoveryError
    from probe.policyreport import build_reports, service_ref

    k = KINDS[kind]
    name = report_name(owner)
    wanted = build_reports(
        results,
        kind=kind,
        controls=controls,
        resolve=resolve or service_ref,
        fallback_namespace=fallback_namespace,
        labels={OWNER_LABEL: _label_value(owner), GROUP_LABEL: _label_value(group)},
        now_s=int(time.time()),
    )
    out = SyncResult()
    me, mine = _label_value(owner), _label_value(group)
    live = {_label_value(o) for o in live_owners} if live_owners is not None else None
    # Every agent lists only its own reports; one agent of the group (the first name among
    # the live peers) also sees the group's, to prune departed peers. A list of every
    # report every round from every agent would be agents x namespaces objects a minute.
    leader = live is not None and me == min({*live, me})
    selector = f"{SELECTOR},{GROUP_LABEL}={mine}" if leader else f"{SELECTOR},{OWNER_LABEL}={me}"
    try:
        existing = api.list_owned(k, selector)
    except DiscoveryError as exc:
        out.problems.append(str(exc))
        return out
    ours: dict[tuple[str, str], dict[str, Any]] = {}
    for obj in existing:
        md = obj.get("metadata") or {}
        ours[(str(md.get("namespace")), str(md.get("name")))] = md
    end = time.monotonic() + budget_s
    for i, body in enumerate(wanted):
        if time.monotonic() > end:
            out.problems.append(
                f"stopped after {budget_s:g}s: {len(wanted) - i} report(s) not written"
            )
            return out
        ns = body["metadata"]["namespace"]
        body["metadata"]["name"] = name
        key = f"{ns}/{name}"
        try:
            current = ours.get((ns, name))
            if current is None:
                api.create(k, ns, body)
                out.created.append(key)
            else:
                body["metadata"]["resourceVersion"] = str(current.get("resourceVersion") or "")
                api.replace(k, ns, name, body)
                out.updated.append(key)
        except DiscoveryError as exc:
            # 409 on create: a report of that name we do not own. Leave it alone.
            out.problems.append(str(exc))
    keep = {(b["metadata"]["namespace"], name) for b in wanted}
    for (ns, other), md in ours.items():
        labels = md.get("labels") or {}
        who = labels.get(OWNER_LABEL)
        departed = (
            live is not None and labels.get(GROUP_LABEL) == mine and who not in live and who != me
        )
        stale = (who == me and (ns, other) not in keep) or departed
        if not stale or (scope is not None and ns not in scope):
            continue
        if time.monotonic() > end:
            out.problems.append(f"stopped after {budget_s:g}s: stale reports not pruned")
            return out
        try:
            api.delete(k, ns, other)
            out.deleted.append(f"{ns}/{other}")
        except DiscoveryError as exc:
            out.problems.append(str(exc))
    return out


def _label_value(owner: str) -> str:
    """A label value (63 characters of [A-Za-z0-9._-]) naming the writer."""
    v = re.sub(r"[^A-Za-z0-9._-]+", "-", owner)[:63].strip("-._")
    return v or "unknown"


def write(
    cluster: Cluster,
    results: Sequence[Result],
    *,
    kind: str,
    owner: str,
    group: str = "run",
    plan: Plan | None = None,
    live_owners: Iterable[str] | None = None,
    controls: ControlMap | None = None,
    fallback_namespace: str = "mtlsprobe",
    scope: Collection[str] | None = None,
) -> SyncResult:
    """The entry point for ``run`` and the agent. Results whose target names no
    namespace (mesh-wide plan findings) go to ``fallback_namespace``, the probe's."""
    return sync(
        ClusterReportApi(cluster),
        results,
        kind=kind,
        owner=owner,
        group=group,
        live_owners=live_owners,
        controls=controls,
        resolve=plan_resolver(plan) if plan is not None else None,
        fallback_namespace=fallback_namespace,
        scope=scope,
    )


__all__ = [
    "REPORT_API_CALLS",
    "ClusterReportApi",
    "ReportApi",
    "ReportOptions",
    "SyncResult",
    "sync",
]


def agent_hook(opts: ReportOptions, agent_kind: str, me: str) -> Callable[[RoundReport], None]:
    """``agent --policy-reports``: after each completed round, sync this agent's reports
    (a failed round keeps the last ones: no evidence is not a reason to prune)."""
    import logging
    import os

    from jobs.launch.cluster import Cluster
    from jobs.plan.discovery import DiscoveryError, Options, Reader, api_client
    from probe.cliargs import UsageError

    try:
        api = api_client(opts.kubeconfig, opts.context)
    except DiscoveryError as exc:
        raise UsageError(str(exc)) from None
    cluster = Cluster(Reader(api, Options(timeout=opts.request_timeout)))
    own_namespace = os.environ.get("POD_NAMESPACE", "mtlsprobe")
    log = logging.getLogger("mtlsprobe.agent")

    def hook(report: RoundReport) -> None:
        if report.failed:
            return
        done = write(
            cluster,
            report.results,
            kind=opts.kind,
            owner=me,
            group=f"agent-{agent_kind}",
            live_owners=report.agents or None,
            controls=opts.controls,
            fallback_namespace=own_namespace,
        )
        log.info("round %d: %s", report.number, done.line(opts.kind))

    return hook
