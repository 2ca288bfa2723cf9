"""SPIFFE IDs (spiffe/spiffe standards/SPIFFE-ID.md) and Istio's ns/sa path shape.

Parsing never raises anything but SpiffeIdError, whatever the input: the IDs come
from certificates and headers that a hostile server controls. Building is here too,
once: every ``spiffe://`` string the code makes comes from ``SpiffeId.__str__``, via
``istio_identity`` (a workload's ID) or ``trust_domain_prefix`` (a SAN prefix match).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

MAX_ID_BYTES = 2048
_TD_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")


class SpiffeIdError(ValueError):
    """Not a valid SPIFFE ID; the message says which rule is broken."""


@dataclass(frozen=True)
class SpiffeId:
    trust_domain: str
    path: str  # starts with "/"

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    @property
    def namespace(self) -> str | None:
        """Istio's ``/ns/<ns>/sa/<sa>`` namespace, if the path has that shape."""
        parts = self.path.split("/")
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
            return parts[2]
        return None

    @property
    def service_account(self) -> str | None:
        parts = self.path.split("/")
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
            return parts[4]
        return None


def parse_spiffe_id(text: str) -> SpiffeId:
    if not isinstance(text, str):
        raise SpiffeIdError("not a string")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise SpiffeIdError(f"longer than {MAX_ID_BYTES} bytes")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme != "spiffe":
        raise SpiffeIdError("scheme must be spiffe://")
    td, slash, path = rest.partition("/")
    if not td:
        raise SpiffeIdError("empty trust domain")
    if not set(td) <= _TD_CHARS:
        raise SpiffeIdError(
            "trust domain may hold only lowercase letters, digits, '.', '-' and '_' "
            "(no port, user info or upper case)"
        )
    if not slash or not path:
        raise SpiffeIdError("path must not be empty")
    path = "/" + path
    if path.endswith("/"):
        raise SpiffeIdError("path must not end with '/'")
    for seg in path.split("/")[1:]:
        if not seg:
            raise SpiffeIdError("path has an empty segment")
        if seg in (".", ".."):
            raise SpiffeIdError("path has a '.' or '..' segment")
        if not set(seg) <= _SEGMENT_CHARS:
            raise SpiffeIdError(
                "path segments may hold only letters, digits, '.', '-' and '_' "
                "(no query, fragment or percent-encoding)"
            )
    return SpiffeId(trust_domain=td, path=path)


def istio_identity(trust_domain: str, namespace: str, service_account: str) -> str:
    """The identity Istio gives a workload: ``spiffe://<td>/ns/<ns>/sa/<sa>``
    (Istio pkg/spiffe/spiffe.go). Not validated: callers that take the
    parts from untrusted input parse the result."""
    return str(SpiffeId(trust_domain, f"/ns/{namespace}/sa/{service_account}"))


def trust_domain_prefix(trust_domain: str) -> str:
    """``spiffe://<td>/``: what every ID of the trust domain starts with (the prefix
    Istio's inbound listener matches a client certificate's URI SAN against)."""
    return str(SpiffeId(trust_domain, "/"))
