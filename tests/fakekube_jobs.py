"""The fake API server plus a Job controller, scheduler and kubelet, for ``mtlsprobe run``.

``JobKube`` serves what ``tests.fakekube.FakeKube`` serves, plus:

- ``pods/{name}/log`` (plain text, 403-able with ``forbid("get", "pods/log")``);
- garbage collection on delete: ``propagationPolicy=Background|Foreground`` deletes
  the objects owned (``ownerReferences``) by what was deleted; without it a Job's
  pods are orphaned, as batch/v1 does by default;
- a controller thread: every new Job gets one pod per completion index (labels from
  the template, ``job-name``, the completion-index annotation, an owner reference),
  and the pod then lives the life ``behaviour(job, index)`` picks:

  ``run``       the kubelet "runs" the container: the REAL ``mtlsprobe check`` from the
                pod's args, with the pod's volumes materialised from the ConfigMaps in
                the store (a missing ConfigMap leaves the pod in ContainerCreating);
                the pod log is its output; a sidecar pod's mesh traffic goes through
                ``proxy`` (transparent capture) and its pilot-agent is ``agent``;
  ``oom``       as ``run``, but the log is cut in half and the container OOMKilled (137);
  ``crash``     the container dies at once (exit 139), a traceback-ish log;
  ``image``     ErrImagePull / ImagePullBackOff;
  ``unschedulable``  PodScheduled=False, Unschedulable;
  ``none``      no pod at all (e.g. rejected by admission).

Jobs get Complete / Failed conditions as the Job controller sets them (and Failed /
DeadlineExceeded past ``activeDeadlineSeconds``, or past ``active_deadline(job)``).
List paths also answer ``?watch=true`` with a chunked stream of
``ADDED``/``MODIFIED``/``DELETED`` events after ``resourceVersion``, filtered by
``labelSelector``, ended after ``timeoutSeconds`` (or one ``ERROR`` 410 event when the
resourceVersion is below ``compacted_before``); ``fail`` and ``forbid("watch", ...)``
apply to watches too.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.fakekube import Call, FakeKube, _Handler, _label_match, status_body

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parent.parent
INDEX = "batch.kubernetes.io/job-completion-index"

# (verb, group, resource, namespace or "" for cluster scope)
ApiCall = tuple[str, str, str, str]


@dataclass
class JobKube(FakeKube):
    behaviour: Callable[[Obj, int], str] = field(default=lambda job, index: "run")
    proxy: str | None = None  # the sidecar pods' capture (an HTTP proxy)
    admin: str | None = None  # the sidecar pods' Envoy admin
    agent: str | None = None  # the sidecar pods' pilot-agent (15021/15020)
    # Starts the container instead of a local process: (args, the container's env, has a
    # sidecar) -> (log, exit code). tests/test_run_netns.py runs it in a lab namespace.
    pod_runner: Callable[[list[str], dict[str, str], bool], tuple[str, int]] | None = None
    # The Job controller's activeDeadlineSeconds for a Job (None: the spec's). Lets a
    # test fail one Job by deadline quickly while the run's --deadline stays generous,
    # so the healthy Job's real probe never races a short deadline on a loaded machine.
    active_deadline: Callable[[Obj], float | None] = field(default=lambda job: None)
    logs: dict[tuple[str, str], str] = field(default_factory=dict)
    probe_runs: list[list[str]] = field(default_factory=list)
    _seen: dict[str, float] = field(default_factory=dict)  # job uid -> start (monotonic)
    _workers: list[threading.Thread] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _changes: threading.Condition = field(default_factory=threading.Condition)
    # A watch from a resourceVersion below this gets one ERROR event (410 Gone) and ends,
    # as the API server answers a watch from a version etcd has compacted away.
    compacted_before: int = 0
    # (resourceVersion, type, group, plural, namespace, object)
    _events: list[tuple[int, str, str, str, str, Obj]] = field(default_factory=list)

    # -- lifecycle ------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _WatchHandler

    def start(self) -> JobKube:
        super().start()
        self._tmp = tempfile.TemporaryDirectory(prefix="fakekubelet-")
        t = threading.Thread(target=self._controller, name="fake-job-controller", daemon=True)
        t.start()
        self._workers.append(t)
        return self

    def stop(self) -> None:
        super().stop()
        for t in self._workers:
            t.join(timeout=30)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> JobKube:
        return self.start()

    # -- change events (for watches) -------------------------------------------------------

    def _event(self, kind: str, group: str, plural: str, obj: Obj) -> None:
        obj = copy.deepcopy(obj)
        md = obj["metadata"]
        if kind == "DELETED":  # the API server gives a deletion its own resourceVersion
            md["resourceVersion"] = str(next(self._rv))
        with self._changes:
            self._events.append(
                (int(md["resourceVersion"]), kind, group, plural, md.get("namespace", ""), obj)
            )
            self._changes.notify_all()

    def add(self, obj: Obj) -> Obj:
        out = super().add(obj)
        r = self._resource_for(str(out.get("apiVersion", "")), str(out.get("kind", "")))
        self._event("ADDED", r.group, r.plural, out)
        return out

    def stream_watch(self, h: _Handler, path: str, query: dict[str, str]) -> None:
        with self._lock:
            self.calls.append(Call("GET", path, query))
        route = self._route(path)
        if route is None or route[3] is not None:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        r, _, ns, _ = route
        failed = self.fault_for("GET", path)
        if failed is None and ("watch", r.group, r.plural) in self._forbidden:
            failed = 403, self._forbidden_status("watch", r, ns)
        if failed is not None:
            code, doc = failed
            data = json.dumps(doc).encode()
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        since = int(query.get("resourceVersion") or 0)
        end = time.monotonic() + float(query.get("timeoutSeconds") or 30)
        sel = query.get("labelSelector") or ""
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        # Said, not only done: a client that pooled this connection would send its next
        # request into a socket being closed (a race that fails under load).
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        try:
            if since < self.compacted_before:
                gone = status_body(410, "Expired", f"too old resource version: {since}")
                data = json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n"
                h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                end = 0.0
            while not self._stop.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                with self._changes:
                    due = [
                        e
                        for e in self._events
                        if e[0] > since
                        and (e[2], e[3]) == (r.group, r.plural)
                        and (ns is None or e[4] == ns)
                        and _label_match(sel, e[5]["metadata"].get("labels") or {})
                    ]
                    if not due:
                        self._changes.wait(min(0.2, left))
                        continue
                for rv, kind, *_, obj in due:
                    data = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                    h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    since = max(since, rv)
                h.wfile.flush()
            h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    # -- requests -------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        seg = [s for s in parts.path.split("/") if s]
        if (
            method == "GET"
            and len(seg) == 7
            and seg[:3] == ["api", "v1", "namespaces"]
            and seg[4] == "pods"
            and seg[6] == "log"
        ):
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            with self._lock:
                self.calls.append(Call(method, parts.path, query))
            ns, pod = seg[3], seg[5]
            if ("get", "", "pods/log") in self._forbidden:
                return 403, status_body(
                    403,
                    "Forbidden",
                    f'pods "{pod}" is forbidden: User "{self.user}" cannot get resource '
                    f'"pods/log" in API group "" in the namespace "{ns}"',
                    {"name": pod, "kind": "pods"},
                )
            if pod not in self.store[("", "pods")].get(ns, {}):
                return 404, status_body(404, "NotFound", f'pods "{pod}" not found')
            return 200, self.logs.get((ns, pod), "")
        code, doc = super().handle(method, raw_path, body)
        if method == "DELETE" and code == 200 and isinstance(doc, dict):
            policy = parse_qs(parts.query).get("propagationPolicy", [""])[-1]
            if not policy:
                try:
                    policy = str(json_body(body).get("propagationPolicy") or "")
                except ValueError:
                    policy = ""
            route = self._route(parts.path)
            if route is not None:
                self._event("DELETED", route[0].group, route[0].plural, doc)
            if policy in ("Background", "Foreground"):
                self._collect_garbage({doc["metadata"]["uid"]})
        return code, doc

    def _collect_garbage(self, gone: set[str]) -> None:
        while gone:
            owned: set[str] = set()
            deleted: list[tuple[str, str, Obj]] = []
            with self._lock:
                for (group, plural), buckets in self.store.items():
                    for objs in buckets.values():
                        for name, obj in list(objs.items()):
                            refs = obj["metadata"].get("ownerReferences") or []
                            if any(r.get("uid") in gone for r in refs):
                                owned.add(obj["metadata"]["uid"])
                                deleted.append((group, plural, objs.pop(name)))
                self._sorted.clear()
            for group, plural, obj in deleted:
                self._event("DELETED", group, plural, obj)
            gone = owned

    # -- the RBAC a run needs ------------------------------------------------------------------

    def api_calls(self) -> set[ApiCall]:
        """Every (verb, group, resource, namespace) requested so far ("" = cluster scope)."""
        out: set[ApiCall] = set()
        for c in self.calls:
            seg = [s for s in c.path.split("/") if s]
            if seg[:1] == ["api"]:
                group, rest = "", seg[2:]
            elif seg[:1] == ["apis"] and len(seg) >= 3:
                group, rest = seg[1], seg[3:]
            else:
                continue
            ns = ""
            if len(rest) >= 3 and rest[0] == "namespaces":
                ns, rest = rest[1], rest[2:]
            if not rest:
                continue
            resource = rest[0] + (f"/{rest[2]}" if len(rest) == 3 else "")
            named = len(rest) >= 2
            verb = {
                "GET": "get" if named else ("watch" if c.query.get("watch") else "list"),
                "POST": "create",
                "DELETE": "delete" if named else "deletecollection",
                "PUT": "update",
                "PATCH": "patch",
            }[c.method]
            out.add((verb, group, resource, ns))
        return out

    def run_objects(self, run_label: str = "mtlsprobe.dev/run-id") -> list[str]:
        """Objects carrying a run label (anything a run left behind)."""
        out: list[str] = []
        with self._lock:
            for (_, plural), buckets in self.store.items():
                for ns, objs in buckets.items():
                    for name, obj in objs.items():
                        if run_label in (obj["metadata"].get("labels") or {}):
                            out.append(f"{plural}/{ns}/{name}")
        return sorted(out)

    def objects(self, plural: str, group: str = "") -> list[Obj]:
        with self._lock:
            return [
                copy.deepcopy(o)
                for objs in self.store[(group, plural)].values()
                for o in objs.values()
            ]

    # -- the controller -------------------------------------------------------------------------

    def _controller(self) -> None:
        while not self._stop.wait(0.05):
            for job in self.objects("jobs", "batch"):
                uid = job["metadata"]["uid"]
                if uid in self._seen:
                    self._enforce_deadline(job, self._seen[uid])
                    continue
                self._seen[uid] = time.monotonic()
                spec = job["spec"]
                count = int(spec.get("completions") or 1)
                indexed = spec.get("completionMode") == "Indexed"
                for index in range(count):
                    kind = self.behaviour(job, index)
                    if kind == "none":
                        continue
                    pod = self._new_pod(job, index if indexed else None)
                    t = threading.Thread(
                        target=self._kubelet, args=(job, pod, index, kind), daemon=True
                    )
                    t.start()
                    self._workers.append(t)

    def _enforce_deadline(self, job: Obj, started: float) -> None:
        """activeDeadlineSeconds: the Job fails (DeadlineExceeded) and its pods that have
        not finished are removed, as the Job controller does."""
        limit = self.active_deadline(job)
        if limit is None:
            limit = job["spec"].get("activeDeadlineSeconds")
        conds = (job.get("status") or {}).get("conditions") or []
        if limit is None or conds or time.monotonic() - started < float(limit):
            return
        md = job["metadata"]
        with self._lock:
            cur = self.store[("batch", "jobs")].get(md["namespace"], {}).get(md["name"])
            if cur is None:
                return
            cur.setdefault("status", {})["conditions"] = [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "Job was active longer than specified deadline",
                }
            ]
            cur["metadata"]["resourceVersion"] = str(next(self._rv))
            pods = self.store[("", "pods")].get(md["namespace"], {})
            killed = []
            for name, pod in list(pods.items()):
                owners = {r.get("uid") for r in pod["metadata"].get("ownerReferences") or []}
                if md["uid"] in owners and pod["status"].get("phase") == "Pending":
                    killed.append(pods.pop(name))
            self._sorted.clear()
        self._event("MODIFIED", "batch", "jobs", cur)
        for pod in killed:
            self._event("DELETED", "", "pods", pod)

    def _new_pod(self, job: Obj, index: int | None) -> Obj:
        tpl = job["spec"]["template"]
        md = job["metadata"]
        labels = dict(tpl["metadata"].get("labels") or {})
        labels["job-name"] = md["name"]
        ann = dict(tpl["metadata"].get("annotations") or {})
        if index is not None:
            ann[INDEX] = str(index)
            labels[INDEX] = str(index)
        name = f"{md['name']}-{'' if index is None else f'{index}-'}{uuid.uuid4().hex[:5]}"
        return self.add(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": md["namespace"],
                    "labels": labels,
                    "annotations": ann,
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": md["name"],
                            "uid": md["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": copy.deepcopy(tpl["spec"]),
                "status": {"phase": "Pending"},
            }
        )

    def _set_status(self, pod: Obj, status: Obj) -> bool:
        """Replace a pod's status; False when the pod is gone (deleted meanwhile)."""
        md = pod["metadata"]
        with self._lock:
            cur = self.store[("", "pods")].get(md["namespace"], {}).get(md["name"])
            if cur is None:
                return False
            cur["status"] = status
            cur["metadata"]["resourceVersion"] = str(next(self._rv))
            self._sorted.clear()
        self._event("MODIFIED", "", "pods", cur)
        return True

    def _finish_job(self, job: Obj, ok: bool, reason: str = "BackoffLimitExceeded") -> None:
        md = job["metadata"]
        with self._lock:
            cur = self.store[("batch", "jobs")].get(md["namespace"], {}).get(md["name"])
            if cur is None:
                return
            st = cur.setdefault("status", {})
            if any(c.get("type") in ("Complete", "Failed") for c in st.get("conditions") or []):
                return
            spec = cur["spec"]
            count = int(spec.get("completions") or 1)
            key = "succeeded" if ok else "failed"
            st[key] = int(st.get(key) or 0) + 1
            done = int(st.get("succeeded") or 0) + int(st.get("failed") or 0)
            killed: list[Obj] = []
            if "backoffLimitPerIndex" in spec:  # indexes fail alone; the Job at the end
                if done < count:
                    return
                cond = (
                    {"type": "Complete", "status": "True"}
                    if not st.get("failed")
                    else {"type": "Failed", "status": "True", "reason": "FailedIndexes"}
                )
            elif ok:
                if st["succeeded"] < count:
                    return
                cond = {"type": "Complete", "status": "True"}
            else:
                if st["failed"] <= int(spec.get("backoffLimit", 6)):
                    return
                msg = "Job has reached the specified backoff limit"
                cond = {"type": "Failed", "status": "True", "reason": reason, "message": msg}
                # the Job controller deletes the pods still active
                pods = self.store[("", "pods")].get(md["namespace"], {})
                for name, pod in list(pods.items()):
                    owners = {r.get("uid") for r in pod["metadata"].get("ownerReferences") or []}
                    phase = pod["status"].get("phase")
                    if md["uid"] in owners and phase in ("Pending", "Running"):
                        killed.append(pods.pop(name))
            st["conditions"] = [cond]
            cur["metadata"]["resourceVersion"] = str(next(self._rv))
            self._sorted.clear()
        self._event("MODIFIED", "batch", "jobs", cur)
        for pod in killed:
            self._event("DELETED", "", "pods", pod)

    def _kubelet(self, job: Obj, pod: Obj, index: int, kind: str) -> None:
        if self._stop.wait(0.05):
            return
        cname = pod["spec"]["containers"][0]["name"]
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if kind == "unschedulable":
            msg = "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available"
            cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
            self._set_status(pod, {"phase": "Pending", "conditions": [{**cond, "message": msg}]})
            return
        image = pod["spec"]["containers"][0]["image"]

        def waiting(reason: str, message: str) -> Obj:
            return {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": cname,
                        "ready": False,
                        "image": image,
                        "state": {"waiting": {"reason": reason, "message": message}},
                    }
                ],
            }

        if kind == "image":
            self._set_status(
                pod, waiting("ErrImagePull", f'failed to pull image "{image}": not found')
            )
            time.sleep(0.1)
            self._set_status(pod, waiting("ImagePullBackOff", f'Back-off pulling image "{image}"'))
            return
        files = self._volumes(pod)
        if files is None:
            self._set_status(pod, waiting("ContainerCreating", ""))
            return
        running = {
            "phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {"name": cname, "ready": True, "image": image, "state": {"running": {}}}
            ],
        }
        if not self._set_status(pod, running):
            return
        if kind == "crash":
            log, code, reason = "Fatal Python error: Segmentation fault\n", 139, "Error"
        else:
            log, code = self._run_probe(pod, files, index)
            reason = "Completed" if code == 0 else "Error"
            if kind == "oom":
                lines = log.splitlines(keepends=True)
                log, code, reason = "".join(lines[: len(lines) // 2]), 137, "OOMKilled"
        self.logs[(ns, name)] = log
        done = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [
                {
                    "name": cname,
                    "ready": False,
                    "image": image,
                    "state": {"terminated": {"exitCode": code, "reason": reason}},
                }
            ],
        }
        if self._set_status(pod, done):
            self._finish_job(job, code == 0)

    def _volumes(self, pod: Obj) -> dict[str, Path] | None:
        """ConfigMap volumes as directories (None: a ConfigMap is missing -> no start)."""
        assert self._tmp is not None
        ns = pod["metadata"]["namespace"]
        base = Path(self._tmp.name, pod["metadata"]["name"])
        mounts = {
            m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0].get("volumeMounts", [])
        }
        out: dict[str, Path] = {}
        for vol in pod["spec"].get("volumes") or []:
            if "configMap" in vol:
                sources = [vol["configMap"]]
            elif "projected" in vol:
                sources = [s["configMap"] for s in vol["projected"]["sources"] if "configMap" in s]
            else:
                continue
            d = base / vol["name"]
            d.mkdir(parents=True)
            for cm in sources:
                with self._lock:
                    obj = self.store[("", "configmaps")].get(ns, {}).get(cm["name"])
                if obj is None:
                    return None
                items = cm.get("items") or [{"key": k, "path": k} for k in obj.get("data", {})]
                for item in items:
                    (d / item["path"]).write_text(obj["data"][item["key"]])
            out[mounts[vol["name"]]] = d
        return out

    def _run_probe(self, pod: Obj, files: dict[str, Path], index: int) -> tuple[str, int]:
        """The container's process: real ``mtlsprobe check``, paths mapped to the volumes."""
        c = pod["spec"]["containers"][0]
        sidecar = (pod["metadata"].get("labels") or {}).get("sidecar.istio.io/inject") == "true"

        def local(arg: str) -> str:
            for mount in sorted(files, key=len, reverse=True):
                if arg == mount or arg.startswith(mount + "/"):
                    return str(files[mount]) + arg[len(mount) :]
            return arg

        # The Job controller sets JOB_COMPLETION_INDEX; the kubelet expands $(VAR) in args.
        args = [local(a.replace("$(JOB_COMPLETION_INDEX)", str(index))) for a in c["args"]]
        targets_path = Path(args[args.index("-f") + 1])
        doc = yaml.safe_load(targets_path.read_text())
        if doc.get("rootCertFile"):
            doc["rootCertFile"] = local(doc["rootCertFile"])
        if sidecar:
            src = doc.setdefault("source", {})
            if self.proxy:
                src["sidecarProxy"] = self.proxy
            if self.admin:
                src["sidecarAdmin"] = self.admin
        mine = targets_path.parent.parent / f"pod-{index}.yaml"
        mine.write_text(yaml.safe_dump(doc))
        args[args.index("-f") + 1] = str(mine)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MTLSPROBE_")}
        env["JOB_COMPLETION_INDEX"] = str(index)
        if self.agent:
            env["MTLSPROBE_SIDECAR_READY_URL"] = self.agent + "/healthz/ready"
            env["MTLSPROBE_SIDECAR_QUIT_URL"] = self.agent + "/quitquitquit"
        self.probe_runs.append(c["args"])
        if self.pod_runner is not None:
            return self.pod_runner(args, {"JOB_COMPLETION_INDEX": str(index)}, sidecar)
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=120,
        )
        # kubectl logs shows both streams, interleaved; stderr last is close enough.
        return proc.stdout + proc.stderr, proc.returncode


def json_body(body: bytes) -> Obj:
    import json

    if not body:
        return {}
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    return doc


class _WatchHandler(_Handler):
    """``?watch=true`` on a list path streams events; everything else as before."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        kube = self.server.kube  # type: ignore[attr-defined]
        if query.get("watch") in ("true", "1") and isinstance(kube, JobKube):
            kube.stream_watch(self, parts.path, query)
        else:
            self._serve()
