"""Syntax of the values in the targets contract: ports, IP literals, hostnames, URLs,
trust domains, names.

Each function takes what YAML produced (any type) and returns the checked value or
raises ``ValueError`` with a message that names the rule and never quotes more than
a bounded, escaped piece of the input (``textsafe.bounded``). What passes here
cannot crash a check later: an endpoint is an IP literal a socket accepts, a URL
is what the mesh call code splits into host and port, a host is what a DNS lookup
and an HTTP ``Host`` header accept.

Digits are ASCII digits: ``str.isdigit`` and ``int`` accept '\uff18\uff10' (fullwidth) and Arabic-
Indic digits, so nothing here uses them on input before an ASCII check.
"""

from __future__ import annotations

import ipaddress
import re

from probe.textsafe import bounded

MAX_NAME_CHARS = 512
MAX_TRUST_DOMAIN_CHARS = 255  # SPIFFE-ID.md: trust domain names are at most 255 bytes
MAX_HOST_CHARS = 253  # RFC 1035 name length in text form, without the root dot
MAX_LABEL_CHARS = 63
MAX_PATH_CHARS = 4096

_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0[xX][0-9A-Fa-f]*)")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_URL = re.compile(r"http://(?P<host>\[[^\]/]*\]|[^/:\[\]@?#]+):(?P<port>[^/?#]*)/?")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def port(value: object) -> int:
    """A TCP port, 1-65535, as a YAML integer (not a boolean, not a string)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{bounded(value)} is not a port number (an integer 1-65535)")
    if not 0 < value < 65536:
        raise ValueError(f"{bounded(value)} is not a port number (1-65535)")
    return value


def port_text(text: str) -> int:
    """A port written in text (``host:PORT``): ASCII digits only."""
    if not _PORT.fullmatch(text) or not 0 < int(text) < 65536:
        raise ValueError(f"port {bounded(text, 20)} is not 1-65535 in ASCII digits")
    return int(text)


def ip_literal(text: str) -> IPAddress:
    """An IPv4 dotted quad or an IPv6 address (no zone): something a pod can have."""
    if not text.isascii():
        raise ValueError(f"{bounded(text, 60)} is not an IP address (non-ASCII characters)")
    if "%" in text:
        raise ValueError(f"{bounded(text, 60)}: IPv6 zone identifiers are not pod addresses")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{bounded(text, 60)} is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{bounded(text, 60)} is not a unicast address")
    return ip


def endpoint(text: object) -> tuple[str, int]:
    """``IPv4:port`` or ``[IPv6]:port`` -> (address, port). No hostnames: endpoints are
    pod IPs, and a name would be resolved by whatever DNS the probe sees."""
    if not isinstance(text, str):
        raise ValueError(f"{bounded(text)} must be an IP:port string")
    if len(text) > 64:
        raise ValueError(f"{bounded(text, 40)} is longer than an IP:port can be")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{bounded(text)} is not [IPv6]:port")
        ip = ip_literal(host)
        if ip.version != 6:
            raise ValueError(f"{bounded(text)}: brackets are for IPv6 addresses")
        return host, port_text(rest[1:])
    host, sep, ptext = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{bounded(text)} has no port (want IP:port)")
    if ":" in host:
        raise ValueError(f"{bounded(text)}: write IPv6 endpoints as [address]:port")
    try:
        ip_literal(host)
    except ValueError as exc:
        raise ValueError(f"{exc} (endpoints are pod IPs, not hostnames)") from None
    return host, port_text(ptext)


def hostname(value: object) -> str:
    """A DNS name (internationalised names checked in their IDNA A-label form: labels of
    at most 63 characters, at most 253 in all) or an IPv4 literal. A name whose last
    label is numeric must be a whole IPv4 address: resolvers read ``127.1`` as
    127.0.0.1."""
    text = printable(value, MAX_HOST_CHARS * 4)
    if ":" in text or text.startswith("["):
        raise ValueError(
            f"{bounded(text)}: IPv6 literals are not supported as a host; use the DNS name"
        )
    name = text[:-1] if text.endswith(".") else text
    if text.isascii():
        ascii_name = name
    else:
        import idna  # only for non-ASCII names: its tables cost every start-up ~4 ms

        try:
            ascii_name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise ValueError(f"{bounded(text)} is not a valid internationalised name") from None
    if not ascii_name:
        raise ValueError("empty host name")
    if len(ascii_name) > MAX_HOST_CHARS:
        raise ValueError(f"{bounded(text)} is longer than {MAX_HOST_CHARS} characters")
    labels = ascii_name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        if ascii_name != name:
            raise ValueError(f"{bounded(text)}: non-ASCII digits in an address")
        ip_literal(name)
        return text
    for label in labels:
        if len(label) > MAX_LABEL_CHARS:
            raise ValueError(f"{bounded(text)} has a label longer than {MAX_LABEL_CHARS}")
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"{bounded(text)} is not a host name (labels of letters, digits and '-', "
                "not starting or ending with '-')"
            )
    return text


def http_url(value: object) -> str:
    """``http://HOST:PORT`` (a trailing '/' allowed): the form the mesh call code splits
    into an address for the sidecar's proxy and admin ports."""
    text = printable(value, 300)
    m = _URL.fullmatch(text)
    if m is None:
        raise ValueError(f"{bounded(text)} is not an http://HOST:PORT URL")
    host = m["host"]
    if host.startswith("["):
        if ip_literal(host[1:-1]).version != 6:
            raise ValueError(f"{bounded(text)}: brackets are for IPv6 addresses")
    else:
        hostname(host)
    port_text(m["port"])
    return text


def trust_domain(value: object) -> str:
    """A SPIFFE trust domain name: lowercase letters, digits, '.', '-', '_'."""
    if not isinstance(value, str) or not value:
        raise ValueError("required, a non-empty string")
    if len(value) > MAX_TRUST_DOMAIN_CHARS:
        raise ValueError(f"longer than {MAX_TRUST_DOMAIN_CHARS} characters")
    if not _TRUST_DOMAIN.fullmatch(value):
        raise ValueError(
            f"{bounded(value)} is not a trust domain (lowercase letters, digits, '.', '-' "
            "and '_'; no scheme, port or path)"
        )
    return value


def printable(value: object, max_chars: int) -> str:
    """A non-empty string of printable characters (no control, format or separator
    characters other than space, no lone surrogates) of at most ``max_chars``."""
    if not isinstance(value, str):
        raise ValueError(f"{bounded(value)} must be a string")
    if not value:
        raise ValueError("must not be empty")
    if len(value) > max_chars:
        raise ValueError(f"{bounded(value, 40)} is longer than {max_chars} characters")
    if not value.isprintable():
        raise ValueError(
            f"{bounded(value)} holds control or invisible characters (newline, escape, "
            "U+2028, bidi override, ...)"
        )
    return value
