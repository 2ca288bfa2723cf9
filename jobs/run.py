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
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from jobs.flags import add_control_plane_flags, control_plane_problem
from jobs.jobspec import ROLES, Role

if TYPE_CHECKING:
    from jobs.discovery import Reader
    from jobs.jobspec import RunSpec
    from jobs.planner import Plan
    from probe.model import TargetsFile
    from probe.results import Result

DEFAULT_NAMESPACE = "mtlsprobe"
DEFAULT_SHARD_THRESHOLD = 200
IMAGE_ENV = "MTLSPROBE_IMAGE"
CONFIGMAP_MAX = 1_000_000  # the API server's limit is 1 MiB for the whole object
NS = "<probe namespace>"  # each namespace in --probe-namespace / --source-namespaces

# (verb, API group, resource, scope): what `run` does beyond discovery.
RUN_API_CALLS: frozenset[tuple[str, str, str, str]] = frozenset(
    {
        ("create", "", "configmaps", NS),
        ("delete", "", "configmaps", NS),
        ("create", "batch", "jobs", NS),
        ("list", "batch", "jobs", NS),
        ("delete", "batch", "jobs", NS),
        ("list", "", "pods", NS),
        ("watch", "", "pods", NS),
        ("get", "", "pods/log", NS),
    }
)


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
        choices=("table", "json", "jsonl", "junit"),
        help="report format on stdout (default: table)",
    )
    o.add_argument("--out", type=Path, metavar="FILE", help="also write the report to FILE")


# ---- the cluster edge ---------------------------------------------------------------------------


@dataclass
class Cluster:
    """Every API call of the run (discovery has its own): by resource path through the
    client's ``ApiClient`` (as jobs.discovery does: the generated API classes cost over
    a second to import), raw JSON, a client-side timeout on each, and failures as
    ``DiscoveryError`` / ``Forbidden`` with one line naming verb, resource, namespace."""

    reader: Reader

    @property
    def api(self) -> Any:
        return self.reader.api

    def _send(
        self,
        what: str,
        method: str,
        path: str,
        query: list[tuple[str, Any]] | None = None,
        body: dict[str, Any] | None = None,
    ) -> bytes:
        resp = self._open(what, method, path, query, self.reader._timeout(), body)
        try:
            data: bytes = resp.read()
        except Exception as exc:
            from jobs.discovery import DiscoveryError, _transport

            raise DiscoveryError(
                f"cannot reach the Kubernetes API at {self.reader.server} ({what}): "
                f"{_transport(exc)}"
            ) from None
        if 200 <= resp.status <= 299:
            return data
        self._raise(what, resp.status, resp.reason, data)

    def _open(
        self,
        what: str,
        method: str,
        path: str,
        query: list[tuple[str, Any]] | None,
        timeout: tuple[float, float],
        body: dict[str, Any] | None = None,
    ) -> Any:
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        from jobs.discovery import DiscoveryError, _transport

        server = self.reader.server
        try:
            params = self.api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
            )
            return self.api.call_api(*params, _request_timeout=timeout)
        except ApiException as exc:
            raise DiscoveryError(
                f"cannot reach the Kubernetes API at {server} ({what}): "
                f"{str(exc.reason).split(': ', 1)[-1][:200]}"
            ) from None
        except (HTTPError, OSError) as exc:
            raise DiscoveryError(
                f"cannot reach the Kubernetes API at {server} ({what}): {_transport(exc)}"
            ) from None

    def _raise(self, what: str, code: int, reason: str | None, data: bytes) -> NoReturn:
        from jobs.discovery import DiscoveryError, Forbidden, _forbidden_line, _status

        server = self.reader.server
        status = _status(data)
        if code in (401, 403):
            raise Forbidden(_forbidden_line(what, code, status))
        msg = " ".join(str(status.get("message") or reason or "no message").split())
        raise DiscoveryError(f"{what}: the API server at {server} answered HTTP {code}: {msg}")

    def _json(
        self,
        what: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: list[tuple[str, Any]] | None = None,
    ) -> dict[str, Any]:
        from jobs.discovery import DiscoveryError

        try:
            doc = json.loads(self._send(what, method, path, query=query, body=body))
        except ValueError:
            raise DiscoveryError(f"{what}: the API server sent a body that is not JSON") from None
        if not isinstance(doc, dict):
            raise DiscoveryError(f"{what}: the API server sent a body that is not an object")
        return doc

    def create_configmap(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/api/v1/namespaces/{ns}/configmaps"
        return self._json(f"create configmaps in {ns}", "POST", path, body)

    def create_job(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/apis/batch/v1/namespaces/{ns}/jobs"
        return self._json(f"create jobs.batch in {ns}", "POST", path, body)

    def jobs(self, ns: str, selector: str) -> list[dict[str, Any]]:
        path = f"/apis/batch/v1/namespaces/{ns}/jobs"
        return list(self.reader.pages(f"list jobs.batch in {ns}", path, labelSelector=selector))

    def pods(self, ns: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        """The run's pods in ``ns`` and the list's resourceVersion (to watch from)."""
        path = f"/api/v1/namespaces/{ns}/pods"
        items: list[dict[str, Any]] = []
        query: list[tuple[str, Any]] = [("labelSelector", selector), ("limit", 500)]
        while True:
            doc = self._json(f"list pods in {ns}", "GET", path, query=query)
            items.extend(i for i in doc.get("items") or [] if isinstance(i, dict))
            meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
            token = (meta or {}).get("continue")
            if not token:
                return items, str((meta or {}).get("resourceVersion") or "")
            query = [("labelSelector", selector), ("limit", 500), ("continue", token)]

    def wait_for_change(self, ns: str, selector: str, rv: str, seconds: int) -> bool:
        """Watch the run's pods from ``rv`` until the first event or ``seconds`` (server-side
        ``timeoutSeconds``, and a client-side read timeout a little longer, so a silent
        server cannot hold us). True when something changed."""
        from jobs.discovery import DiscoveryError, _transport

        path = f"/api/v1/namespaces/{ns}/pods"
        what = f"watch pods in {ns}"
        query: list[tuple[str, Any]] = [
            ("labelSelector", selector),
            ("watch", "true"),
            ("resourceVersion", rv),
            ("timeoutSeconds", seconds),
        ]
        connect = self.reader._timeout()[0]
        resp = self._open(what, "GET", path, query, (connect, seconds + connect + 2))
        raw = resp.response
        try:
            if resp.status != 200:
                self._raise(what, resp.status, resp.reason, raw.read())
            return any(chunk.strip() for chunk in raw.stream(4096, decode_content=True))
        except DiscoveryError:
            raise
        except Exception as exc:  # a read timeout or reset mid-stream: look again
            raise DiscoveryError(f"{what}: {_transport(exc)}") from None
        finally:
            raw.close()

    def log(self, ns: str, pod: str, container: str) -> str:
        path = f"/api/v1/namespaces/{ns}/pods/{pod}/log"
        data = self._send(f"get pods/log {pod} in {ns}", "GET", path, [("container", container)])
        return data.decode("utf-8", "replace")

    def delete(self, ns: str, plural: str, name: str) -> None:
        """Delete with background propagation: the garbage collector removes what the
        object owns (a Job's pods; batch/v1 would orphan them by default)."""
        group = "/apis/batch/v1" if plural == "jobs" else "/api/v1"
        path = f"{group}/namespaces/{ns}/{plural}/{name}"
        what = f"delete {plural}{'.batch' if plural == 'jobs' else ''} {name} in {ns}"
        self._send(what, "DELETE", path, [("propagationPolicy", "Background")])


# ---- what was launched ---------------------------------------------------------------------------


@dataclass
class Unit:
    """One Job: who it probes from, what it owes per shard index, what it reported."""

    namespace: str
    role: Role
    checks: tuple[tuple[str, str], ...]  # (name, scope value)
    targets: TargetsFile
    shards: int
    job: str
    done: dict[int, list[Result]] = field(default_factory=dict)

    def owed(self, index: int) -> list[tuple[str, str, str | None]]:
        from jobs.collect import expected_keys
        from probe import shard

        by_ep = shard.by_endpoint(s for _, s in self.checks)
        part = shard.select(self.targets, index, self.shards, by_endpoint=by_ep)
        return expected_keys(part, self.checks)

    @property
    def complete(self) -> bool:
        return len(self.done) == self.shards


@dataclass
class Launched:
    configmaps: list[tuple[str, str]] = field(default_factory=list)  # (ns, name)
    jobs: list[tuple[str, str]] = field(default_factory=list)
    units: list[Unit] = field(default_factory=list)


def _scopes(names: list[str]) -> dict[str, str]:
    from probe.checks import load_check

    return {n: load_check(n).scope.value for n in names}


def _too_big(text: str, what: str, lower: bool = False) -> NoReturn:
    from probe.cli import UsageError

    fix = "lower --shard-threshold" if lower else "narrow the run with -n or --selector"
    raise UsageError(
        f"the targets file for {what} is {len(text.encode())} bytes; a ConfigMap holds at "
        f"most 1 MiB: {fix}"
    )


def _endpoints(tf: TargetsFile) -> int:
    return sum(max(1, len(t.endpoints)) for t in tf.targets)


def launch(
    cluster: Cluster,
    plan: Plan,
    spec: RunSpec,
    sources: list[str],
    names: list[str],
    args: argparse.Namespace,
    out: Launched,
) -> None:
    """Create the ConfigMap and Jobs in every source namespace (recorded in ``out`` as
    they are created, so an interrupted launch is still cleaned up)."""
    from jobs import jobspec
    from jobs.plan_cli import targets_yaml
    from probe import shard

    scopes = _scopes(names)
    for ns in sources:
        tf = jobspec.pod_targets(plan.targets_file, ns, spec)
        roles: list[tuple[Role, tuple[str, ...], bool, int]] = []
        for role in ROLES:
            checks = tuple(c for c in role.checks if c in names)
            if checks:
                by_ep = shard.by_endpoint(scopes[c] for c in checks)
                work = _endpoints(tf) if by_ep else len(tf.targets)
                roles.append((role, checks, by_ep, jobspec.shard_count(work, args.shard_threshold)))
        text = targets_yaml(tf.to_dict())
        if len(text.encode()) > CONFIGMAP_MAX:
            if any(n == 1 for *_, n in roles):
                _too_big(text, f"{len(tf.targets)} targets")
            # Every Job reads its shards' ConfigMaps: this one only anchors ownership.
            text = "# sharded: see the ConfigMaps labelled with this run id and a role\n"
        cm = cluster.create_configmap(ns, jobspec.configmap(spec, ns, text))
        out.configmaps.append((ns, cm["metadata"]["name"]))
        for role, checks, by_ep, shards in roles:
            for i in range(shards if shards > 1 else 0):
                part = shard.select(tf, i, shards, by_endpoint=by_ep)
                body = targets_yaml(part.to_dict())
                if len(body.encode()) > CONFIGMAP_MAX:
                    _too_big(body, f"shard {i} of {role.name}", lower=True)
                made = cluster.create_configmap(
                    ns, jobspec.shard_configmap(spec, ns, role.name, i, body, cm)
                )
                out.configmaps.append((ns, made["metadata"]["name"]))
            jb = jobspec.job(
                spec, ns, role, checks, cm, shards=shards, parallelism=args.parallelism
            )
            created = cluster.create_job(ns, jb)
            out.jobs.append((ns, created["metadata"]["name"]))
            out.units.append(
                Unit(
                    ns,
                    role,
                    tuple((c, scopes[c]) for c in checks),
                    tf,
                    shards,
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
    from jobs import collect as judge
    from jobs.discovery import DiscoveryError
    from jobs.jobspec import CONTAINER, LABEL_ROLE, run_selector

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
    from jobs.discovery import DiscoveryError

    try:
        cluster.delete(ns, plural, name)
    except DiscoveryError as exc:
        if "HTTP 404" not in str(exc):  # already gone (ttlSecondsAfterFinished, a person)
            return [f"could not delete {plural} {ns}/{name}: {exc}"]
    return []


# ---- main ----------------------------------------------------------------------------------------


def _words(items: list[str] | str) -> list[str]:
    raw = [items] if isinstance(items, str) else items
    return list(dict.fromkeys(w.strip() for i in raw for w in i.split(",") if w.strip()))


def new_run_id() -> str:
    """Short, DNS-label safe, sortable by start time."""
    return f"{int(time.time()) % 10**8:08d}{secrets.token_hex(2)}"


@dataclass
class _Terminated:
    previous: Any = None

    def __enter__(self) -> None:
        if sys.platform != "win32":
            import threading

            if threading.current_thread() is threading.main_thread():

                def handler(signum: int, frame: FrameType | None) -> None:
                    raise KeyboardInterrupt  # the finally blocks clean up

                self.previous = signal.signal(signal.SIGTERM, handler)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def main(args: argparse.Namespace) -> int:
    from jobs import jobspec
    from jobs.discovery import DiscoveryError, Options, Reader, api_client, discover
    from jobs.planner import Requirements, build_plan
    from probe.checks import parse_check_list
    from probe.cli import UsageError, emit_report
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
    emit_report(everything, args.output, args.out)
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
    from jobs.discovery import DiscoveryError
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


def jobspec_selector(spec: RunSpec) -> str:
    from jobs.jobspec import run_selector

    return run_selector(spec.run_id)


def _from(r: Result) -> Result:
    """With several source namespaces the same edge is probed once per source."""
    ns = r.evidence.get("sourceNamespace")
    return replace(r, target=f"{r.target} (from {ns})") if ns else r
