"""Why a Kubernetes API call failed, as one line a person can act on.

Modelled on kopf's ``clients/errors.py`` (a class per API answer callers handle) and
httpx's ``_exceptions.py`` (transport failures apart from HTTP answers). The class
names the cause; ``str(exc)`` is the line users read (the CLI exits 64 with it, the
agent makes it the reason of an ``error`` result). Everything is raised by
``jobs.kube.client`` and nowhere else.

    KubeError
    ├── ConfigError          no usable kubeconfig / in-cluster configuration
    ├── TransportError       no HTTP answer at all
    │   ├── Unreachable      refused, DNS, TLS, reset
    │   └── TimedOut         no answer within the client-side timeout
    ├── BadResponse          an answer that is not the JSON it should be
    └── APIError             the API server answered with an error Status
        ├── Denied           ``.code`` 401 or 403
        │   ├── Unauthorized 401: the credentials were rejected
        │   └── Forbidden    403: RBAC; the line names verb, resource, group, user
        ├── NotFound         404 for a named object
        │   └── NotServed    404 for a collection: the API (group/version/resource) is not served
        ├── Conflict         409 (AlreadyExists, a stale resourceVersion)
        ├── Expired          410 Gone: a continue token or watch resourceVersion too old
        └── ServerError      5xx
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any


class KubeError(Exception):
    """A Kubernetes API call could not be done; ``str(exc)`` is the one line users see."""


class ConfigError(KubeError):
    """No usable configuration: the kubeconfig is missing or broken, or in-cluster files are."""


class TransportError(KubeError):
    """No HTTP answer: the API server was not reached, or stopped answering."""


class Unreachable(TransportError):
    """Connection refused, name not resolved, TLS failed, connection reset."""


class TimedOut(TransportError):
    """No answer within the client-side timeout (a silent or overloaded server)."""


class BadResponse(KubeError):
    """The API server answered 2xx with something that is not the expected JSON."""


class APIError(KubeError):
    """The API server answered with an error; ``code`` is the HTTP status and ``status``
    the ``Status`` body it sent (empty when the body was not a Status)."""

    def __init__(self, message: str, code: int, status: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status: dict[str, Any] = status or {}


class Denied(APIError):
    """401 or 403: the call is not allowed for these credentials."""


class Unauthorized(Denied):
    """401: the API server does not accept the credentials."""


class Forbidden(Denied):
    """403: authenticated, but RBAC does not grant the verb on the resource."""


class NotFound(APIError):
    """404: the named object does not exist."""


class NotServed(NotFound):
    """404 on a collection: the API group, version or resource (a CRD) is not served."""


class Conflict(APIError):
    """409: the object already exists, or changed since it was read."""


class Expired(APIError):
    """410: a continue token or a watch's resourceVersion is older than etcd keeps.

    ``continue_token`` is the token the API server offers to go on with an
    inconsistent list, when it offers one."""

    @property
    def continue_token(self) -> str | None:
        token = (self.status.get("metadata") or {}).get("continue")
        return token if isinstance(token, str) and token else None


class ServerError(APIError):
    """5xx: the API server (or etcd behind it) failed."""


def status_of(body: object) -> dict[str, Any]:
    """The ``Status`` object in an error answer's body; empty if it is not one."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return {}
    return body if isinstance(body, dict) and body.get("kind") == "Status" else {}


def from_status(
    what: str,
    server: str,
    code: int,
    reason: str | None,
    status: dict[str, Any],
    subject: Callable[[], str | None] = lambda: None,
) -> APIError:
    """The error for an HTTP error answer to ``what`` (e.g. "list pods in shop").

    ``subject`` names who we are when a 403 does not say (the pod's service account)."""
    if code in (401, 403):
        cls: type[APIError] = Unauthorized if code == 401 else Forbidden
        return cls(_denied_line(what, code, status, subject), code, status)
    msg = " ".join(str(status.get("message") or reason or "no message").split())
    line = f"{what}: the API server at {server} answered HTTP {code}: {msg}"
    if code == 404:
        named = (status.get("details") or {}).get("name")
        return (NotFound if named else NotServed)(line, code, status)
    cls = {409: Conflict, 410: Expired}.get(code, ServerError if code >= 500 else APIError)
    return cls(line, code, status)


def _denied_line(
    what: str, code: int, status: dict[str, Any], subject: Callable[[], str | None]
) -> str:
    msg = str(status.get("message") or "")
    if code == 401:
        return f"{what}: the API server rejected our credentials (401 Unauthorized): {msg}"
    # The API server's RBAC message: User "u" cannot list resource "pods" in API group "" ...
    m = re.search(
        r'User "([^"]*)" cannot (\S+) resource "([^"]*)" in API group "([^"]*)"(.*)$', msg
    )
    if m:
        user, verb, res, group, scope = m.groups()
        scope = scope.strip() or "at the cluster scope"
    else:
        details = status.get("details") or {}
        user = subject() or "this client"
        verb, res, group = "list", str(details.get("kind", "?")), str(details.get("group", ""))
        scope = ""
    grant = f"{verb} on {res} (API group {group or 'core'!r})"
    tail = f" {scope}" if scope else ""
    return f"forbidden: {user} may not {verb} {res} in API group {group!r}{tail}; grant {grant}"


def transport_detail(exc: BaseException) -> tuple[type[TransportError], str]:
    """The class and short text for a failure below HTTP (urllib3, ssl, socket)."""
    reason = getattr(exc, "reason", None)
    text = str(reason or exc)
    if "timed out" in text.lower() or "timeout" in type(reason or exc).__name__.lower():
        return TimedOut, "no answer within the request timeout"
    if "refused" in text.lower():
        return Unreachable, "connection refused"
    return Unreachable, text.split(": ", 1)[-1][:200]
