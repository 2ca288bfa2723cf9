"""X-Forwarded-Client-Cert, as Envoy writes it.

Elements are comma-separated, one per hop; each is ``;``-separated ``key=value``
pairs, keys case-insensitive (By, Hash, Cert, Chain, Subject, URI, DNS; By, URI
and DNS may repeat). A value holding ``,;=`` is double-quoted; inside quotes a
backslash escapes the next character. Envoy quotes Subject/Cert/Chain and writes
the subject in RFC 2253 form, whose own escapes (``\\,``) must survive, so only
``\\"`` and ``\\\\`` are unescaped and other backslash pairs are kept verbatim.

With APPEND_FORWARD an mTLS peer can put forged elements before the real one, so
only the LAST element is trustworthy, and only if its ``By`` is the server's own
identity. Envoy writes one ``By=``/``URI=`` per URI SAN of the certificate, so the
trusted element must carry exactly one of each: two mean a certificate with two URI
SANs, which is not an X.509-SVID, and the identity it names is ambiguous.

The header arrives from servers we do not control: parsing raises XfccError and
nothing else, in linear time, on bounded input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

MAX_HEADER_BYTES = 64 * 1024
MAX_ELEMENTS = 64
MAX_PAIRS = 256
_SINGLE = ("hash", "cert", "chain", "subject")
_SPECIAL = frozenset(',;="\\')


class XfccError(ValueError):
    """The header is not valid XFCC; the message says where."""


@dataclass(frozen=True)
class XfccElement:
    by: tuple[str, ...] = ()
    hash: str | None = None
    subject: str | None = None
    uri: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    cert: str | None = None  # URL-encoded PEM; evidence shows only that it was there
    chain: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def summary(self) -> dict[str, object]:
        """Evidence: identities and hash, never the PEM bodies."""
        out: dict[str, object] = {"By": list(self.by), "URI": list(self.uri)}
        if self.hash:
            out["Hash"] = self.hash
        if self.subject is not None:
            out["Subject"] = self.subject
        if self.dns:
            out["DNS"] = list(self.dns)
        if self.cert is not None:
            out["Cert"] = _fingerprints(self.cert)
        if self.chain is not None:
            out["Chain"] = _fingerprints(self.chain)
        return out

    def identities(self) -> tuple[str, ...]:
        """Every identity the element names (By and URI), for marker searches."""
        return self.by + self.uri


def _fingerprints(urlencoded_pem: str) -> list[str]:
    """SHA-256 fingerprints of the URL-encoded PEM certificates Envoy puts in Cert/Chain
    (evidence names the certificates without carrying them)."""
    from urllib.parse import unquote_to_bytes

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        certs = x509.load_pem_x509_certificates(unquote_to_bytes(urlencoded_pem))
    except ValueError:
        return [f"<not a PEM certificate, {len(urlencoded_pem)} chars>"]
    return ["sha256:" + c.fingerprint(hashes.SHA256()).hex() for c in certs]


def _split(text: str, sep: str, limit: int, what: str) -> list[str]:
    """Split on ``sep`` outside double quotes; a backslash inside quotes escapes."""
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
            if len(parts) >= limit:
                raise XfccError(f"more than {limit} {what}")
    if quoted:
        raise XfccError("unterminated double quote")
    parts.append(text[start:])
    return parts


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        if '"' in value:
            raise XfccError(f"stray double quote in value {value[:40]!r}")
        return value
    if len(value) < 2 or not value.endswith('"'):
        raise XfccError(f"text after the closing quote in {value[:40]!r}")
    out: list[str] = []
    inner = value[1:-1]
    i = 0
    while i < len(inner):
        ch = inner[i]
        if ch == "\\" and i + 1 < len(inner):
            nxt = inner[i + 1]
            out.append(nxt if nxt in '"\\' else ch + nxt)
            i += 2
            continue
        if ch == '"':
            raise XfccError(f"unescaped double quote inside {value[:40]!r}")
        out.append(ch)
        i += 1
    return "".join(out)


def parse_element(text: str) -> XfccElement:
    """One hop's element (no commas outside quotes)."""
    multi: dict[str, list[str]] = {"by": [], "uri": [], "dns": []}
    single: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    for pair in _split(text, ";", MAX_PAIRS, "pairs in an element"):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep:
            raise XfccError(f"pair without '=': {pair[:40]!r}")
        k = key.strip().lower()
        if not k or any(c in _SPECIAL or c.isspace() for c in k):
            raise XfccError(f"bad key {key[:40]!r}")
        v = _unquote(value.strip())
        if k in multi:
            multi[k].append(v)
        elif k in _SINGLE:
            if k in single:
                raise XfccError(f"key {key.strip()!r} repeated in one element")
            single[k] = v
        else:
            extra.append((k, v[:200]))
    return XfccElement(
        by=tuple(multi["by"]),
        hash=single.get("hash"),
        subject=single.get("subject"),
        uri=tuple(multi["uri"]),
        dns=tuple(multi["dns"]),
        cert=single.get("cert"),
        chain=single.get("chain"),
        extra=tuple(extra),
    )


def parse_xfcc(header: str) -> list[XfccElement]:
    """All elements, in order (the last is the one the nearest proxy appended)."""
    if not isinstance(header, str):
        raise XfccError("header is not text")
    if len(header) > MAX_HEADER_BYTES or (
        len(header.encode("utf-8", "surrogatepass")) > MAX_HEADER_BYTES
    ):
        raise XfccError(f"header longer than {MAX_HEADER_BYTES} bytes")
    if not header.strip():
        raise XfccError("empty header")
    raw = _split(header, ",", MAX_ELEMENTS, "elements")
    elements = [parse_element(e) for e in raw if e.strip()]
    if not elements:
        raise XfccError("no elements")
    return elements


def join_values(values: Iterable[str]) -> str:
    """Several XFCC header lines are one list, in order (RFC 9110 field combination)."""
    return ",".join(v for v in values if v.strip())


def trusted_element(headers: Sequence[str] | str) -> XfccElement | None:
    """The last element (the one the server's own sidecar appended), or None when the
    header is absent. Raises XfccError when present but malformed: a header we
    cannot parse proves nothing."""
    joined = headers if isinstance(headers, str) else join_values(headers)
    if not joined.strip():
        return None
    return parse_xfcc(joined)[-1]


def identity_problems(
    el: XfccElement, expected_by: str | None, expected_uri: str | None
) -> list[str]:
    """Why the trusted element does not name exactly the expected identities (empty:
    it does). Each of ``By=`` and ``URI=`` must appear exactly once; an expected value
    of None is not compared, but the count still is."""
    problems: list[str] = []
    for key, values, expected, whose in (
        ("By", el.by, expected_by, "the server's sidecar identifies as"),
        ("URI", el.uri, expected_uri, "the server saw the client as"),
    ):
        if len(values) != 1:
            shown = ", ".join(values[:4]) or "nothing"
            problems.append(
                f"{key}= appears {len(values)} times in the trusted element ({shown}): "
                + (
                    "a certificate with several URI SANs is not an X.509-SVID"
                    if values
                    else "no identity at all"
                )
            )
        elif expected is not None and values[0] != expected:
            problems.append(f"{whose} {values[0]} ({key}=), expected {expected}")
    return problems


def _quote(value: str) -> str:
    if value and not any(c in _SPECIAL or c.isspace() for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_element(el: XfccElement) -> str:
    """Serialise in Envoy's key order; values quoted only when they need it."""
    pairs = [f"By={_quote(v)}" for v in el.by]
    if el.hash is not None:
        pairs.append(f"Hash={_quote(el.hash)}")
    if el.cert is not None:
        pairs.append(f"Cert={_quote(el.cert)}")
    if el.chain is not None:
        pairs.append(f"Chain={_quote(el.chain)}")
    if el.subject is not None:
        pairs.append(f"Subject={_quote(el.subject)}")
    pairs += [f"URI={_quote(v)}" for v in el.uri]
    pairs += [f"DNS={_quote(v)}" for v in el.dns]
    pairs += [f"{k}={_quote(v)}" for k, v in el.extra]
    return ";".join(pairs)


def format_xfcc(elements: Iterable[XfccElement]) -> str:
    return ",".join(format_element(e) for e in elements)


@dataclass(frozen=True)
class OwnCerts:
    """The probe's own leaf certificates as its sidecar holds them: hex SHA-256 of
    each DER, the value Envoy writes as ``Hash=`` for the client certificate."""

    hashes: frozenset[str] = frozenset()
    #: Why they are not known (then nothing is compared), else None.
    unknown: str | None = None
    #: Set when the sidecar shows its certificates and none holds the probe's identity:
    #: an element naming that identity as the client cannot be bound to this probe's
    #: connection, whatever its ``Hash=`` (undecidable, never a pass).
    absent: str | None = None
    #: Set when the sidecar's admin was asked and could not show its certificates
    #: (unreachable, not an Envoy admin, no certificate): the one signature an app
    #: reached in plaintext cannot forge is unreadable, so never a pass.
    blind: str | None = None
    #: Fetched again after a mismatch (the set then holds both fetches).
    refreshed: bool = False
    #: Set when a certificate the sidecar no longer holds may still be in use (it
    #: renewed during its life; Envoy keeps pooled connections on the old one).
    retired_possible: str | None = None


class HashOutcome(Enum):
    MATCH = "match"
    NOT_COMPARED = "not compared"
    MISMATCH = "mismatch"  # fail: not written for our certificate
    UNDECIDABLE = "undecidable"  # error: a retired certificate of ours cannot be excluded


_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


def compare_hash(el: XfccElement, own: OwnCerts) -> tuple[HashOutcome, str]:
    """Is the trusted element bound to this probe's certificate? Envoy writes the
    SHA-256 of the client certificate it verified as ``Hash=``; an app that fabricates
    the element (reached in plaintext) knows both SPIFFE IDs, which are public, but not
    which certificate the probe's sidecar presents. Returns (outcome, evidence text)."""
    if own.unknown is not None:
        return HashOutcome.NOT_COMPARED, f"not compared: {own.unknown}"
    if own.blind is not None:
        return HashOutcome.UNDECIDABLE, (
            f"the trusted XFCC element's Hash= cannot be bound to this probe's connection: "
            f"{own.blind}; By=/URI= alone are public and an app reached in plaintext can "
            "write them (give the probe its sidecar's admin: source.sidecarAdmin)"
        )
    if own.absent is not None:
        # Not ours if that admin is the calling sidecar; a targets file naming another
        # Envoy's admin would look the same, so: not observable, never a pass.
        return HashOutcome.UNDECIDABLE, (
            f"the trusted XFCC element names source.identity as the client, but {own.absent}: "
            "either the element was not written for this probe's connection or sidecarAdmin "
            "/ source.identity do not describe the sidecar that made the call"
        )
    value = (el.hash or "").strip().lower()
    if not value:
        return HashOutcome.MISMATCH, (
            "the trusted XFCC element was not written for this probe's certificate: it has "
            "no Hash= (Envoy always writes the client certificate's SHA-256)"
        )
    if value in own.hashes:
        return HashOutcome.MATCH, f"Hash={value} is the probe sidecar's certificate"
    shown = value[:64] + ("…" if len(value) > 64 else "")
    text = (
        f"the trusted XFCC element was not written for this probe's certificate: Hash={shown} "
        f"is not the sidecar's certificate (it holds {len(own.hashes)} for this identity"
        + (", fetched again after the mismatch" if own.refreshed else "")
        + ")"
    )
    if _HEX_SHA256.fullmatch(value) and own.refreshed and own.retired_possible is not None:
        return HashOutcome.UNDECIDABLE, (
            f"{text}; but {own.retired_possible}: a pooled connection may still carry a "
            "retired certificate, so a stale hash cannot be told from a fabricated one"
        )
    return HashOutcome.MISMATCH, text
