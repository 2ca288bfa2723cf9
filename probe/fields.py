"""Field validators the targets contract's parsers share (``probe.model`` and
``probe.authzmodel``): each raises the caller's ``fail(where, message)`` error, so a bad
file is one line naming the field."""

from __future__ import annotations

from typing import Any

from probe.spiffe import SpiffeIdError, parse_spiffe_id
from probe.textsafe import bounded, line

MAX_ECHO_PATH = 1024  # request paths in a targets file (echoPath, authz cases)


def key_name(keys: set[Any]) -> str:
    """The first unknown key, for a message: bounded and escaped, strings unquoted."""
    key = sorted(keys, key=lambda k: (type(k).__name__, str(k)[:100]))[0]
    return line(key, 60) if isinstance(key, str) else bounded(key, 60)


def spiffe_field(value: object, where: str, fail: Any, trust_domain: str | None = None) -> str:
    if not isinstance(value, str):
        raise fail(where, f"{bounded(value)} must be a SPIFFE ID string")
    try:
        sid = parse_spiffe_id(value)
    except SpiffeIdError as exc:
        raise fail(where, f"{bounded(value)} is not a SPIFFE ID: {exc}") from None
    if trust_domain is not None and sid.trust_domain != trust_domain:
        raise fail(
            where,
            f"{bounded(value)} is in trust domain {bounded(sid.trust_domain)}, "
            f"not trustDomain {bounded(trust_domain)}",
        )
    return value


def is_request_path(value: object) -> bool:
    """An origin-form request target: starts with one slash, printable ASCII only."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ECHO_PATH
        and value.startswith("/")
        and not value.startswith("//")
        and all("!" <= c <= "~" and c != "#" for c in value)
    )
