"""Every Kubernetes HTTP call of ``mtlsprobe`` (plan, run, the agent) goes through ``Client``.

Requests go through the official client's ``ApiClient`` (configuration, credentials, TLS,
connection pool) by resource path, as raw JSON: the generated ``CoreV1Api`` & co. are not
used, because importing them costs over a second of CPU (pydantic validators for every
method) and building their models costs several times more than decoding the JSON the
callers want anyway (benchmarks/bench_plan.py measures both).

Every request carries a client-side timeout and is tried once (``cfg.retries = False`` in
``jobs.kube.config``): the caller's deadline is the budget, and a failure is a
``jobs.kube.errors.KubeError`` naming the call (``what``, e.g. "list pods in shop") and why.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from jobs.kube.config import token_subject
from jobs.kube.errors import (
    BadResponse,
    Expired,
    KubeError,
    TimedOut,
    Unreachable,
    from_status,
    status_of,
    transport_detail,
)

Query = list[tuple[str, Any]]
# The largest watch event read: etcd stores objects up to 1.5 MiB; a line longer than
# this is not an event, and reading on would grow without bound.
MAX_EVENT = 16 * 1024 * 1024


@dataclass
class Client:
    """One API server, through a ``kubernetes.client.ApiClient`` (``jobs.kube.config``)."""

    api: Any  # kubernetes.client.ApiClient
    timeout: float = 10.0  # seconds: the read timeout of each request
    connect_timeout: float | None = None  # None: min(timeout, 5)
    page_size: int = 500  # ``limit`` of each page of a list
    # Decode lists and objects through the generated models instead of as raw JSON
    # (``get``/``pages`` with ``model``): only for the benchmark's comparison.
    models: bool = False
    # How often one list may recover from expired continue tokens (410) before failing.
    restarts: int = 3

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    def timeouts(self) -> tuple[float, float]:
        """(connect, read) seconds for one request."""
        connect = self.connect_timeout
        return (min(self.timeout, 5.0) if connect is None else connect, self.timeout)

    # ---- requests --------------------------------------------------------------------------

    def _open(
        self,
        what: str,
        method: str,
        path: str,
        query: Query | None = None,
        body: dict[str, Any] | None = None,
        timeout: tuple[float, float] | None = None,
    ) -> Any:
        """Send one request; the response (``kubernetes.client.rest.RESTResponse``) is
        not read yet. Transport failures become ``TransportError``."""
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        try:
            params = self.api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
            )
            return self.api.call_api(*params, _request_timeout=timeout or self.timeouts())
        except ApiException as exc:  # the REST layer wraps TLS and protocol failures
            raise Unreachable(
                self._unreachable(what, str(exc.reason).split(": ", 1)[-1][:200])
            ) from None
        except HTTPError as exc:
            cls, detail = transport_detail(exc)
            raise cls(self._unreachable(what, detail)) from None
        except OSError as exc:
            cls = TimedOut if isinstance(exc, TimeoutError) else Unreachable
            raise cls(self._unreachable(what, str(exc))) from None

    def _unreachable(self, what: str, detail: str) -> str:
        return f"cannot reach the Kubernetes API at {self.server} ({what}): {detail}"

    def request(
        self,
        what: str,
        method: str,
        path: str,
        query: Query | None = None,
        body: dict[str, Any] | None = None,
    ) -> bytes:
        """The body of a 2xx answer; anything else raises the ``KubeError`` it means."""
        from urllib3.exceptions import HTTPError

        resp = self._open(what, method, path, query, body)
        try:
            data: bytes = resp.read()
        except (HTTPError, OSError) as exc:
            cls, detail = transport_detail(exc)
            raise cls(self._unreachable(what, detail)) from None
        if 200 <= resp.status <= 299:
            return data
        raise self._error(what, resp.status, resp.reason, data)

    def _error(self, what: str, code: int, reason: str | None, data: bytes) -> KubeError:
        return from_status(what, self.server, code, reason, status_of(data), token_subject)

    def _decode(self, what: str, data: bytes, model: str | None = None) -> Any:
        try:
            if not self.models or model is None:
                return _loads(data)
            obj = self.api.deserialize(data.decode("utf-8"), model, "application/json")
            return self.api.sanitize_for_serialization(obj)
        except ValueError:
            raise BadResponse(
                f"{what}: the API server at {self.server} sent a body that is not JSON"
            ) from None

    def _object(self, what: str, data: bytes, model: str | None = None) -> dict[str, Any]:
        doc = self._decode(what, data, model)
        if not isinstance(doc, dict):
            raise BadResponse(
                f"{what}: the API server at {self.server} sent a body that is not an object"
            )
        return doc

    # ---- verbs ---------------------------------------------------------------------------

    def get(self, what: str, path: str, model: str | None = None) -> dict[str, Any]:
        """One object; ``NotFound`` when it does not exist (``NotServed``: nor its API)."""
        return self._object(what, self.request(what, "GET", path), model)

    def create(self, what: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to a collection; ``Conflict`` when the name is taken."""
        return self._object(what, self.request(what, "POST", path, body=body))

    def replace(self, what: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT ``body`` over one object; ``Conflict`` when its resourceVersion is stale."""
        return self._object(what, self.request(what, "PUT", path, body=body))

    def delete(self, what: str, path: str, query: Query | None = None) -> None:
        """DELETE one object; ``NotFound`` when it is already gone."""
        self.request(what, "DELETE", path, query)

    def text(self, what: str, path: str, query: Query | None = None) -> str:
        """A plain-text subresource (``pods/log``)."""
        return self.request(what, "GET", path, query).decode("utf-8", "replace")

    def pages(
        self, what: str, path: str, query: Query | None = None, model: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every item of a list, one page (``limit``) at a time."""
        for items, _ in self._pages(what, path, query or [], model):
            yield from items

    def list_with_version(
        self, what: str, path: str, query: Query | None = None
    ) -> tuple[list[Any], str]:
        """Every item of a list, and the list's resourceVersion (to watch from)."""
        out: list[Any] = []
        last = ""
        for items, version in self._pages(what, path, query or [], None):
            out.extend(items)
            last = version
        return out, last

    def _pages(
        self, what: str, path: str, query: Query, model: str | None
    ) -> Iterator[tuple[list[Any], str]]:
        """(items, resourceVersion) of each page.

        A continue token older than etcd's compaction gets 410 Expired. The API server
        then usually offers a token that continues after the last key seen (no repeats;
        newer changes may show); without one the list starts over, and items already
        given (by namespace/name) are not given again. Both count against ``restarts``."""
        token: str | None = None
        recoveries = 0
        seen: set[tuple[str, str]] = set()
        while True:
            q: Query = [*query, ("limit", self.page_size)]
            if token:
                q.append(("continue", token))
            try:
                data = self.request(what, "GET", path, q)
            except Expired as exp:
                if not token:  # not a paging problem: the line says HTTP 410
                    raise
                recoveries += 1
                if recoveries > self.restarts:
                    raise Expired(
                        f"{what}: the list expired on {self.server} (HTTP 410); run again",
                        exp.code,
                        exp.status,
                    ) from None
                fresh = exp.continue_token
                token = fresh if fresh != token else None
                continue
            doc = self._decode(what, data, model)
            # A List always has ``items`` (possibly empty): a 2xx body without it (a proxy's
            # ``{}``, a Status) is not "nothing there".
            if not isinstance(doc, dict) or not isinstance(doc.get("items", 0), list | None):
                raise BadResponse(f"{what}: the API server sent a body that is not a List")
            meta: dict[str, Any] = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
            items: list[Any] = doc.get("items") or []
            if recoveries:  # after a restart, what was given already is not given again
                items = [i for i in items if _key(i) not in seen]
            seen.update(k for k in map(_key, items) if k is not None)
            yield items, str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or None
            if not token:
                return

    def watch(
        self, what: str, path: str, query: Query, resource_version: str, seconds: int
    ) -> Generator[dict[str, Any], None, None]:
        """The events (``{"type", "object"}``) on a list path after ``resource_version``,
        for ``seconds`` at most: the API server ends the watch then (``timeoutSeconds``),
        and the read timeout, a little longer, bounds a server that does not.

        An ``ERROR`` event raises its Status (``Expired`` when the resourceVersion is too
        old: list again). Close the iterator to stop early."""
        q: Query = [
            *query,
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", seconds),
        ]
        from urllib3.exceptions import HTTPError

        connect = self.timeouts()[0]
        resp = self._open(what, "GET", path, q, timeout=(connect, seconds + connect + 2))
        raw = resp.response
        try:
            if resp.status != 200:
                raise self._error(what, resp.status, resp.reason, raw.read())
            buf = bytearray()  # one event per line; a line may span chunks
            for chunk in raw.stream(65536, decode_content=True):
                scan = len(buf)
                buf += chunk
                while (nl := buf.find(b"\n", scan)) >= 0:
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    scan = 0
                    if line.strip():
                        yield self._event(what, line)
                if len(buf) > MAX_EVENT:
                    raise BadResponse(
                        f"{what}: the API server at {self.server} sent a watch event "
                        f"over {MAX_EVENT} bytes"
                    )
            if buf.strip():
                yield self._event(what, bytes(buf))
        except (HTTPError, OSError) as exc:  # a read timeout or reset mid-stream
            cls, detail = transport_detail(exc)
            raise cls(f"{what}: {detail}") from None
        finally:
            raw.close()

    def _event(self, what: str, line: bytes) -> dict[str, Any]:
        event = self._object(what, line)
        if event.get("type") == "ERROR":
            status = status_of(event.get("object"))
            code = status.get("code")
            code = code if isinstance(code, int) else 500
            raise from_status(what, self.server, code, None, status, token_subject)
        return event


def _key(item: object) -> tuple[str, str] | None:
    md = item.get("metadata") if isinstance(item, dict) else None
    if not isinstance(md, dict) or not isinstance(md.get("name"), str):
        return None
    return (str(md.get("namespace") or ""), md["name"])


def _loads(data: bytes) -> Any:
    import orjson  # ~3x faster than json on 10,000-pod lists

    return orjson.loads(data)  # orjson.JSONDecodeError is a ValueError
