"""What a header-reflecting app says it received, whichever app it is.

The mesh checks see the X-Forwarded-Client-Cert the server's sidecar wrote only
through the app, so they must read the apps people really deploy. Each shape below
was read from the app's own source; the app is detected from the response, never
configured:

- ``mtlsprobe serve`` (probe/echo.py): JSON with ``name``, ``listener`` and
  ``headers``: lowercase names, each a list of values (one per header line).
- httpbin (postmanlabs/httpbin, ``httpbin/core.py`` ``/headers`` →
  ``jsonify(get_dict("headers"))``; ``helpers.get_headers`` is
  ``dict(request.headers.items())``): ``{"headers": {"X-Forwarded-Client-Cert": "…"}}``,
  Werkzeug's Title-Case names, one string per name (the WSGI server joins repeated
  header lines with commas).
- go-httpbin (mccutchen/go-httpbin, ``httpbin/responses.go`` ``headersResponse``
  holds a Go ``http.Header``): ``{"headers": {"X-Forwarded-Client-Cert": ["…"]}}``,
  Go's canonical names, a list per name (old forks write a lone value as a string).
- Istio's echo test server (istio/istio ``pkg/test/echo/server/endpoint/http.go``
  ``addResponsePayload``, fields from ``pkg/test/echo/fields.go``): text, one
  ``Key=value`` per line (``ServiceVersion=``, ``URL=``, ``Method=``, ``Proto=``…), and
  per request header value a line ``RequestHeader=<Canonical-Name>:<value>``
  (``Field.WriteKeyValue``), any path, content type ``application/text``.

The ``headers`` key itself is matched in any case (a Go struct marshalled without json
tags writes ``Headers``); two spellings of it in one body are no reflection.

Header names are compared case-insensitively everywhere; every value under every
spelling of a name is kept, in order. The body comes from servers we do not trust:
parsing is bounded, raises nothing, and never makes up a value (Istio's lines are
split on ``\\n`` only, so a header value holding U+2028 or ``\\r`` cannot start a
line of its own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MAX_BODY = 256 * 1024
MAX_HEADERS = 1024
XFCC = "x-forwarded-client-cert"
#: Sent with every reflected call; the app must show it back, or the body is not a
#: reflection of this request (a canned page, a cache, another request's echo).
MARKER_HEADER = "x-mtlsprobe-marker"

# Istio echo fields that only its server writes at the start of a line (fields.go).
_ISTIO_FIELDS = ("ServiceVersion=", "ServicePort=", "URL=", "Method=", "Proto=")
_ISTIO_HEADER = "RequestHeader="


class App(StrEnum):
    SERVE = "mtlsprobe-serve"
    HTTPBIN = "httpbin"
    GO_HTTPBIN = "go-httpbin"
    ISTIO_ECHO = "istio-echo"


@dataclass(frozen=True)
class Reflection:
    """The request headers as the app reports it received them."""

    app: App
    headers: tuple[tuple[str, str], ...]  # (lowercase name, one value), in order
    name: str | None = None  # the workload that answered, when the app says

    def values(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self.headers if k == key]

    @property
    def xfcc(self) -> list[str]:
        return self.values(XFCC)


def parse_reflection(body: bytes) -> Reflection | None:
    """The reflection in ``body``, or None when it is not one of the known apps'. The
    body decides, not the content type (Istio's echo says ``application/text``)."""
    if len(body) > MAX_BODY:
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.lstrip().startswith("{"):
        return _from_json(text)
    return _from_istio_lines(text)


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Pairs:
    return _Pairs(pairs)


class _Pairs(dict[str, Any]):
    """A JSON object that keeps repeated keys (json's default keeps the last one)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def _from_json(text: str) -> Reflection | None:
    try:
        doc = json.loads(text, object_pairs_hook=_pairs_hook)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, _Pairs):
        return None
    # Any case: a Go struct without json tags writes ``Headers`` (http.Header, lists).
    found = [v for k, v in doc.pairs if k.lower() == "headers"]
    if len(found) != 1 or not isinstance(found[0], _Pairs):
        return None
    raw = found[0].pairs
    if len(raw) > MAX_HEADERS:
        return None
    headers: list[tuple[str, str]] = []
    lists = strings = 0
    for key, value in raw:
        if isinstance(value, str):
            strings += 1
            headers.append((key.lower(), value))
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            lists += 1
            headers.extend((key.lower(), v) for v in value)
        else:
            return None  # not a header map any of the apps writes
    name = doc.get("name")
    if "listener" in doc and isinstance(name, str):
        app = App.SERVE
    elif lists and not strings:
        app = App.GO_HTTPBIN
    elif strings and not lists:
        app = App.HTTPBIN
    else:
        app = App.GO_HTTPBIN  # an old go-httpbin: lone values as strings, repeats as lists
    return Reflection(app, tuple(headers), name if app is App.SERVE else None)


def _from_istio_lines(text: str) -> Reflection | None:
    headers: list[tuple[str, str]] = []
    fields: set[str] = set()
    hostname: str | None = None
    for line in text.split("\n"):
        if line.startswith(_ISTIO_HEADER):
            key, sep, value = line[len(_ISTIO_HEADER) :].partition(":")
            if not sep or not key or len(headers) >= MAX_HEADERS:
                return None
            headers.append((key.lower(), value))
        elif line.startswith("Hostname="):
            hostname = line[len("Hostname=") :]
        else:
            fields.update(f for f in _ISTIO_FIELDS if line.startswith(f))
    if len(fields) < len(_ISTIO_FIELDS) - 1 or not headers:
        return None
    return Reflection(App.ISTIO_ECHO, tuple(headers), hostname)
