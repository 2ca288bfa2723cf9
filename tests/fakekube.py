"""A small, faithful Kubernetes API server on localhost, for tests and benchmarks.

It speaks the REST paths the control plane uses and answers with the JSON the real
API server writes: ``<Kind>List`` bodies with ``metadata.resourceVersion`` and
``continue`` (opaque tokens, ``limit`` honoured), list items without ``kind`` /
``apiVersion`` for built-in types (as the API server omits them), ``Status`` bodies
for 403/404/409/500 with the API server's messages, and an optional delay to play
a slow server. Every request is recorded (method, path, query).

Extend it by serving more resources (``serve``) - the store is keyed by
(group, resource) and namespace, objects of a CRD are visible in every served
version - and by adding routes in ``_Handler`` for subresources (logs, status).

    with FakeKube() as kube:
        kube.add({"apiVersion": "v1", "kind": "Pod", "metadata": {...}, ...})
        kube.forbid("list", "pods")               # 403 for a verb/resource
        kube.fail("/api/v1/pods", 500)            # a broken path
        kube.delay = 2.0                          # every answer waits 2 s
        client = kube.api_client()                # the real kubernetes client, pointed here
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]
DEFAULT_USER = "system:serviceaccount:mtlsprobe:mtlsprobe"


@dataclass(frozen=True)
class Resource:
    group: str
    versions: tuple[str, ...]
    plural: str
    kind: str
    namespaced: bool = True


BUILTIN: tuple[Resource, ...] = (
    Resource("", ("v1",), "namespaces", "Namespace", namespaced=False),
    Resource("", ("v1",), "pods", "Pod"),
    Resource("", ("v1",), "services", "Service"),
    Resource("", ("v1",), "configmaps", "ConfigMap"),
    Resource("", ("v1",), "serviceaccounts", "ServiceAccount"),
    Resource("discovery.k8s.io", ("v1",), "endpointslices", "EndpointSlice"),
    Resource("batch", ("v1",), "jobs", "Job"),
    Resource(
        "admissionregistration.k8s.io",
        ("v1",),
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        namespaced=False,
    ),
)
ISTIO: tuple[Resource, ...] = (
    Resource("security.istio.io", ("v1", "v1beta1"), "peerauthentications", "PeerAuthentication"),
    Resource(
        "networking.istio.io",
        ("v1", "v1beta1", "v1alpha3"),
        "destinationrules",
        "DestinationRule",
    ),
    Resource("networking.istio.io", ("v1", "v1beta1", "v1alpha3"), "sidecars", "Sidecar"),
)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, str]


@dataclass
class _Fault:
    method: str | None
    path: str
    status: int
    message: str


def status_body(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    """A ``Status`` as the API server writes it for a failed request."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def _api_version(group: str, version: str) -> str:
    return f"{group}/{version}" if group else version


def _label_match(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based selectors: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``."""
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class FakeKube:
    istio: bool = True
    user: str = DEFAULT_USER
    delay: float = 0.0
    # Benchmarks: objects never change in place after loading, so each list item is
    # JSON-encoded once and pages are joined bytes (the fake should not be the bottleneck).
    encode_once: bool = False
    # The next request carrying a continue token gets 410 Expired, with a fresh token.
    expire_next_continue: bool = False
    # The next N requests carrying a continue token get 410 Expired with no token to go on
    # with (as after a compaction when the API server offers none): the list must start over.
    expire_continues: int = 0
    calls: list[Call] = field(default_factory=list)
    resources: dict[tuple[str, str], Resource] = field(default_factory=dict)
    # (group, plural) -> namespace ("" for cluster-scoped) -> name -> object
    store: dict[tuple[str, str], dict[str, dict[str, Obj]]] = field(default_factory=dict)
    _faults: list[_Fault] = field(default_factory=list)
    _forbidden: set[tuple[str, str, str]] = field(default_factory=set)
    _rv: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    _sorted: dict[tuple[str, str, str | None], list[Obj]] = field(default_factory=dict)
    _encoded: dict[tuple[str, str, str | None, str], tuple[list[Obj], list[bytes]]] = field(
        default_factory=dict
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        for r in BUILTIN + (ISTIO if self.istio else ()):
            self.serve(r)

    # -- configuration ----------------------------------------------------------------------

    def serve(self, r: Resource) -> None:
        self.resources[(r.group, r.plural)] = r
        self.store.setdefault((r.group, r.plural), {})

    def forbid(self, verb: str, plural: str, group: str = "") -> None:
        self._forbidden.add((verb, group, plural))

    def fail(
        self, path: str, status: int = 500, message: str = "", method: str | None = None
    ) -> None:
        """Answer requests whose path starts with ``path`` with an error Status."""
        self._faults.append(_Fault(method, path, status, message))

    def _resource_for(self, api_version: str, kind: str) -> Resource:
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        for r in self.resources.values():
            if r.group == group and r.kind == kind:
                return r
        raise KeyError(f"{api_version} {kind} is not served")

    def add(self, obj: Obj) -> Obj:
        """Store an object as if created now (uid, resourceVersion, creationTimestamp)."""
        r = self._resource_for(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        if not r.namespaced:
            md.pop("namespace", None)
        elif not md.get("namespace"):
            md["namespace"] = "default"
        md.setdefault("uid", str(uuid.uuid4()))
        md.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        with self._lock:
            md["resourceVersion"] = str(next(self._rv))
            ns = md.get("namespace", "")
            self.store[(r.group, r.plural)].setdefault(ns, {})[md["name"]] = obj
            self._sorted.clear()
        return obj

    def add_all(self, objs: list[Obj]) -> None:
        for o in objs:
            self.add(o)

    # -- lifecycle -----------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    def start(self) -> FakeKube:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        server.kube = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="fakekube", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def kubeconfig(self, context: str = "fake") -> Obj:
        """A kubeconfig document pointing at this server with no credentials."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": context,
        }

    def api_client(self) -> Any:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.retries = False
        return client.ApiClient(cfg)

    def paths(self, method: str = "GET") -> list[str]:
        return [c.path for c in self.calls if c.method == method]

    # -- request handling ------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, Any]:
        """(HTTP status, answer): a JSON object, or already-encoded JSON bytes."""
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            self.calls.append(Call(method, parts.path, query))
        if self.delay:
            self._stop.wait(self.delay)
        fault = self.fault_for(method, parts.path)
        if fault is not None:
            return fault
        route = self._route(parts.path)
        if route is None:
            return 404, status_body(
                404, "NotFound", "the server could not find the requested resource"
            )
        r, version, ns, name = route
        verb = {
            "GET": "get" if name else "list",
            "POST": "create",
            "DELETE": "delete",
            "PUT": "update",
        }.get(method, method.lower())
        if (verb, r.group, r.plural) in self._forbidden:
            return 403, self._forbidden_status(verb, r, ns)
        if verb == "list":
            listed = self._list(r, version, ns, query)
            if isinstance(listed, dict) and listed.get("kind") == "Status":
                return int(listed["code"]), listed
            return 200, listed
        if verb == "get":
            obj = self.store[(r.group, r.plural)].get(ns or "", {}).get(name or "")
            if obj is None:
                return 404, _not_found(r, name or "")
            return 200, self._out(r, version, obj, keep_type=True)
        if verb == "create":
            try:
                new = json.loads(body or b"{}")
            except ValueError:
                return 400, status_body(400, "BadRequest", "invalid JSON body")
            new.setdefault("metadata", {})
            if ns:
                new["metadata"]["namespace"] = ns
            existing = self.store[(r.group, r.plural)].get(ns or "", {})
            if new["metadata"].get("name") in existing:
                return 409, status_body(
                    409,
                    "AlreadyExists",
                    f'{r.plural} "{new["metadata"]["name"]}" already exists',
                    {"name": new["metadata"]["name"], "group": r.group, "kind": r.plural},
                )
            new["apiVersion"], new["kind"] = _api_version(r.group, version), r.kind
            return 201, self._out(r, version, self.add(new), keep_type=True)
        if verb == "delete":
            objs = self.store[(r.group, r.plural)].get(ns or "", {})
            if name not in objs:
                return 404, _not_found(r, name or "")
            with self._lock:
                gone = objs.pop(name or "")
                self._sorted.clear()
            return 200, self._out(r, version, gone, keep_type=True)
        return 405, status_body(405, "MethodNotAllowed", f"{method} is not supported")

    def fault_for(self, method: str, path: str) -> tuple[int, Obj] | None:
        """The (status, Status body) ``fail`` set up for this request, if any."""
        for f in self._faults:
            if path.startswith(f.path) and f.method in (None, method):
                return f.status, _fault_status(f)
        return None

    def _route(self, path: str) -> tuple[Resource, str, str | None, str | None] | None:
        seg = [s for s in path.split("/") if s]
        if len(seg) >= 2 and seg[0] == "api":
            group, version, rest = "", seg[1], seg[2:]
        elif len(seg) >= 3 and seg[0] == "apis":
            group, version, rest = seg[1], seg[2], seg[3:]
        else:
            return None
        ns: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 2:
            return None
        r = self.resources.get((group, rest[0]))
        if r is None or version not in r.versions:
            return None
        if ns is not None and not r.namespaced:
            return None
        return r, version, ns, rest[1] if len(rest) == 2 else None

    def _forbidden_status(self, verb: str, r: Resource, ns: str | None) -> Obj:
        scope = f'in the namespace "{ns}"' if ns else "at the cluster scope"
        details: Obj = {"kind": r.plural}
        if r.group:
            details["group"] = r.group
        return status_body(
            403,
            "Forbidden",
            f'{r.plural}{"." + r.group if r.group else ""} is forbidden: User "{self.user}" '
            f'cannot {verb} resource "{r.plural}" in API group "{r.group}" {scope}',
            details,
        )

    def _out(self, r: Resource, version: str, obj: Obj, keep_type: bool) -> Obj:
        out = dict(obj)
        if keep_type or r.group.endswith("istio.io"):
            out["apiVersion"] = _api_version(r.group, version)
            out["kind"] = r.kind
        else:
            out.pop("apiVersion", None)
            out.pop("kind", None)
        return out

    def _list(
        self, r: Resource, version: str, ns: str | None, query: dict[str, str]
    ) -> Obj | bytes:
        with self._lock:
            key = (r.group, r.plural, ns)
            items = self._sorted.get(key)
            if items is None:  # sorted by key like etcd; kept until the next write
                buckets = self.store[(r.group, r.plural)]
                names = [ns] if ns is not None else sorted(buckets)
                items = [buckets.get(n, {})[k] for n in names for k in sorted(buckets.get(n, {}))]
                self._sorted[key] = items
            rv = str(next(self._rv))
        sel = query.get("labelSelector")
        if sel:
            items = [i for i in items if _label_match(sel, i["metadata"].get("labels") or {})]
        start = 0
        token = query.get("continue")
        if token:
            start = int(json.loads(base64.urlsafe_b64decode(token))["start"])
            if self.expire_continues > 0:
                self.expire_continues -= 1
                return status_body(410, "Expired", _EXPIRED)
            if self.expire_next_continue:
                self.expire_next_continue = False
                fresh = base64.urlsafe_b64encode(
                    json.dumps({"v": "meta.k8s.io/v1", "rv": int(rv), "start": start}).encode()
                ).decode()
                return {**status_body(410, "Expired", _EXPIRED), "metadata": {"continue": fresh}}
        limit = int(query.get("limit") or 0)
        end = start + limit if limit > 0 else len(items)
        meta: Obj = {"resourceVersion": rv}
        if end < len(items):
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"v": "meta.k8s.io/v1", "rv": int(rv), "start": end}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - end
        if self.encode_once and not sel:
            ekey = (r.group, r.plural, ns, version)
            cached = self._encoded.get(ekey)
            if cached is None or cached[0] is not items:  # a write made a new sorted list
                enc = [
                    json.dumps(
                        self._out(r, version, i, keep_type=False), separators=(",", ":")
                    ).encode()
                    for i in items
                ]
                cached = self._encoded[ekey] = (items, enc)
            head = json.dumps(
                {
                    "kind": f"{r.kind}List",
                    "apiVersion": _api_version(r.group, version),
                    "metadata": meta,
                },
                separators=(",", ":"),
            ).encode()
            return head[:-1] + b',"items":[' + b",".join(cached[1][start:end]) + b"]}"
        return {
            "kind": f"{r.kind}List",
            "apiVersion": _api_version(r.group, version),
            "metadata": meta,
            "items": [self._out(r, version, i, keep_type=False) for i in items[start:end]],
        }


_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)


def _not_found(r: Resource, name: str) -> Obj:
    details: Obj = {"name": name, "kind": r.plural}
    if r.group:
        details["group"] = r.group
    what = f"{r.plural}.{r.group}" if r.group else r.plural
    return status_body(404, "NotFound", f'{what} "{name}" not found', details)


def _fault_status(f: _Fault) -> Obj:
    reasons = {403: "Forbidden", 404: "NotFound", 500: "InternalError", 503: "ServiceUnavailable"}
    message = f.message or (
        "Internal error occurred: etcdserver: request timed out" if f.status == 500 else "failure"
    )
    details: Obj = {"causes": [{"message": message}]} if f.status == 500 else {}
    return status_body(f.status, reasons.get(f.status, "Unknown"), message, details)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def _serve(self) -> None:
        kube: FakeKube = self.server.kube  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        code, doc = kube.handle(self.command, self.path, body)
        # A str answer is a plain-text body (pod logs); bytes are encoded JSON already.
        text = isinstance(doc, str)
        data = (
            doc.encode()
            if isinstance(doc, str)
            else doc
            if isinstance(doc, bytes)
            else json.dumps(doc, separators=(",", ":")).encode()
        )
        try:
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = do_DELETE = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass
