"""The cluster edge of ``mtlsprobe run``: the API calls that create, watch, read and delete
the probe Jobs, their pods, logs and ConfigMaps. ``RUN_API_CALLS`` lists them (the RBAC the
orchestrator needs besides discovery's read-only calls); tests compare it with what the fake
API server recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from jobs.plan.discovery import Reader

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


# ---- the cluster edge ---------------------------------------------------------------------------


@dataclass
class Cluster:
    """Every API call of the run (discovery has its own): by resource path through the
    client's ``ApiClient`` (as jobs.plan.discovery does: the generated API classes cost over
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
            from jobs.plan.discovery import DiscoveryError, _transport

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

        from jobs.plan.discovery import DiscoveryError, _transport

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
        from jobs.plan.discovery import DiscoveryError, Forbidden, _forbidden_line, _status

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
        from jobs.plan.discovery import DiscoveryError

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
        from jobs.plan.discovery import DiscoveryError, _transport

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
