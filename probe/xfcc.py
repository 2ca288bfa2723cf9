"""X-Forwarded-Client-Cert, as Envoy writes it.

Elements are comma-separated, one per hop; each is ``;``-separated ``key=value``
pairs, keys case-insensitive; a value holding ``,;=`` is double-quoted with ``\\"``
escapes. With APPEND_FORWARD an mTLS peer can put forged elements before the real
one, so only the LAST element is trustworthy, and only if its ``By`` is the
server's own identity. The header arrives from servers we do not control: parsing
raises XfccError and nothing else, in linear time, on bounded input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_HEADER_BYTES = 64 * 1024
MAX_ELEMENTS = 64
KNOWN_KEYS = frozenset({"by", "hash", "cert", "chain", "subject", "uri", "dns"})


class XfccError(ValueError):
    """The header is not valid XFCC; the message says where."""


@dataclass(frozen=True)
class XfccElement:
    by: tuple[str, ...] = ()
    hash: str | None = None
    subject: str | None = None
    uri: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    has_cert: bool = False
    has_chain: bool = False
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
        return out


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes, honouring backslash escapes."""
    parts: list[str] = []
    buf: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            buf.append(ch)
            escaped = True
        elif ch == '"':
            buf.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    if quoted:
        raise XfccError("unterminated double quote")
    parts.append("".join(buf))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        it = iter(inner)
        for ch in it:
            if ch == "\\":
                out.append(next(it, ""))
            else:
                out.append(ch)
        return "".join(out)
    if '"' in value:
        raise XfccError(f"stray double quote in value {value[:40]!r}")
    return value


def parse_element(text: str) -> XfccElement:
    by: list[str] = []
    uri: list[str] = []
    dns: list[str] = []
    extra: list[tuple[str, str]] = []
    hash_: str | None = None
    subject: str | None = None
    has_cert = has_chain = False
    for pair in _split(text, ";"):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep:
            raise XfccError(f"pair without '=': {pair[:40]!r}")
        k = key.strip().lower()
        if not k:
            raise XfccError("empty key")
        v = _unquote(value)
        if k == "by":
            by.append(v)
        elif k == "uri":
            uri.append(v)
        elif k == "dns":
            dns.append(v)
        elif k == "hash":
            hash_ = v
        elif k == "subject":
            subject = v
        elif k == "cert":
            has_cert = True
        elif k == "chain":
            has_chain = True
        else:
            extra.append((k, v[:200]))
    return XfccElement(
        by=tuple(by),
        hash=hash_,
        subject=subject,
        uri=tuple(uri),
        dns=tuple(dns),
        has_cert=has_cert,
        has_chain=has_chain,
        extra=tuple(extra),
    )


def parse_xfcc(header: str) -> list[XfccElement]:
    """All elements, in order (the last is the one the nearest proxy appended)."""
    if len(header.encode("utf-8", "surrogatepass")) > MAX_HEADER_BYTES:
        raise XfccError(f"header longer than {MAX_HEADER_BYTES} bytes")
    if not header.strip():
        raise XfccError("empty header")
    raw = _split(header, ",")
    if len(raw) > MAX_ELEMENTS:
        raise XfccError(f"more than {MAX_ELEMENTS} elements")
    elements = [parse_element(e) for e in raw if e.strip()]
    if not elements:
        raise XfccError("no elements")
    return elements


def trusted_element(headers: list[str]) -> XfccElement | None:
    """The last element of the last XFCC header value, or None when absent."""
    if not headers:
        return None
    elements = parse_xfcc(",".join(headers))
    return elements[-1]
