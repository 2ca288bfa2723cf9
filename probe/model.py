"""The targets file: the stable input contract of ``mtlsprobe check``.

Everything is validated up front so a bad file is one line naming the file, the
entry and the field (exit 64) instead of a failure halfway through a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from probe import syntax, yamlfile, yamlload
from probe.authzmodel import AuthzCase, parse_authz
from probe.fields import MAX_ECHO_PATH, is_request_path, key_name, spiffe_field
from probe.textsafe import bounded, line

#: Bounds for a targets file: a plan of 50,000 pods is ~5 MB.
TARGETS_LIMITS = yamlload.Limits(max_bytes=32 << 20, max_depth=32)
MAX_ORIGIN_CHARS = 300
MAX_MESSAGE_CHARS = 600

#: Where header-reflecting apps answer (httpbin, go-httpbin; Istio's echo and
#: ``mtlsprobe serve`` answer any path). A target's ``echoPath`` overrides it.
DEFAULT_ECHO_PATH = "/headers"


class Expect(StrEnum):
    """Effective mTLS mode at the target port, as policy says it must be."""

    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"
    DISABLE = "DISABLE"
    NONE = "NONE"  # the target has no sidecar


class Protocol(StrEnum):
    HTTP = "http"
    TCP = "tcp"


class TargetsFileError(ValueError):
    """The targets file cannot be used; the message is the one line users see.

    Whatever a caller formats into it, the message is one line of bounded length with
    control characters escaped, so a hostile file cannot drive the terminal."""

    def __init__(self, message: str) -> None:
        super().__init__(line(message, MAX_MESSAGE_CHARS))


@dataclass(frozen=True)
class Endpoint:
    """A pod IP and target port."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``host:port`` or ``[v6]:port`` (host: an IP literal or a DNS name);
        raises ValueError naming the problem. A targets file's ``endpoints`` are
        stricter: IP literals only (``syntax.endpoint``)."""
        text = text.strip()
        if text.startswith("["):
            return cls(*syntax.endpoint(text))
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{bounded(text)} has no port (want host:port)")
        if ":" in host:
            raise ValueError(f"{bounded(text)}: write IPv6 endpoints as [addr]:port")
        return cls(host=syntax.hostname(host), port=syntax.port_text(port_text))


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    expect: Expect
    endpoints: tuple[Endpoint, ...] = ()
    identity: str | None = None
    protocol: Protocol = Protocol.HTTP
    echo: bool = False
    echo_path: str | None = None  # None: DEFAULT_ECHO_PATH
    authz: tuple[AuthzCase, ...] = ()  # AuthorizationPolicy cases (see the authz block below)


@dataclass(frozen=True)
class Source:
    """Who probes: the probe's own sidecar identity and where its proxy/admin are."""

    identity: str | None = None
    sidecar_proxy: str | None = None
    sidecar_admin: str | None = None


@dataclass(frozen=True)
class TargetsFile:
    trust_domain: str
    targets: tuple[Target, ...]
    source: Source = field(default_factory=Source)
    root_cert_file: Path | None = None
    controls: tuple[Control, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The contract's YAML shape, e.g. for ``mtlsprobe plan -o yaml``."""
        doc: dict[str, Any] = {"trustDomain": self.trust_domain}
        if self.root_cert_file is not None:
            doc["rootCertFile"] = str(self.root_cert_file)
        src: dict[str, Any] = {}
        if self.source.identity:
            src["identity"] = self.source.identity
        if self.source.sidecar_proxy:
            src["sidecarProxy"] = self.source.sidecar_proxy
        if self.source.sidecar_admin:
            src["sidecarAdmin"] = self.source.sidecar_admin
        if src:
            doc["source"] = src
        doc["targets"] = [_target_to_dict(t) for t in self.targets]
        if self.controls:
            doc["controls"] = [_control_to_dict(c) for c in self.controls]
        return doc


DUPLICATE_NAME = (
    "duplicate name (compared after Unicode NFKC normalisation and case folding: two "
    "results must never look alike in a report)"
)


def name_key(name: str) -> str:
    """What makes two names the same to a reader: ``ns/é`` composed or decomposed, full-width
    letters, another case. Results are told apart by name in every report."""
    import unicodedata

    return unicodedata.normalize("NFKC", name).casefold()


def _target_to_dict(t: Target) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name, "host": t.host, "port": t.port}
    out["endpoints"] = [str(e) for e in t.endpoints]
    if t.identity:
        out["identity"] = t.identity
    out["expect"] = t.expect.value
    out["protocol"] = t.protocol.value
    out["echo"] = t.echo
    if t.echo_path is not None:
        out["echoPath"] = t.echo_path
    if t.authz:
        out["authz"] = [c.to_dict() for c in t.authz]
    return out


_TOP_KEYS = {"trustDomain", "rootCertFile", "source", "targets", "controls"}
_SOURCE_KEYS = {"identity", "sidecarProxy", "sidecarAdmin"}
_TARGET_KEYS = {
    "name",
    "host",
    "port",
    "endpoints",
    "identity",
    "expect",
    "protocol",
    "echo",
    "echoPath",
    "authz",
}


def load_targets(path: Path) -> TargetsFile:
    """Read and validate a targets file. Raises TargetsFileError with one line.

    Bounded whatever the file holds: a regular file of at most 32 MiB, strict UTF-8,
    no alias bombs, nesting or duplicate keys (``probe.yamlload``)."""
    try:
        text = yamlfile.read_text(path, TARGETS_LIMITS.max_bytes)
    except yamlload.YamlLoadError as exc:
        raise TargetsFileError(f"{_origin(str(path))}: {exc}") from None
    return parse_targets_text(text, str(path), base_dir=path.parent)


def parse_targets_text(text: str, origin: str, base_dir: Path | None = None) -> TargetsFile:
    """Load and validate targets YAML held in memory (``origin`` names it)."""
    try:
        doc = yamlload.load_one(text, TARGETS_LIMITS)
    except yamlload.YamlLoadError as exc:
        raise TargetsFileError(f"{_origin(origin)}: {exc}") from None
    return parse_targets(doc, origin, base_dir=base_dir)


def _origin(origin: str) -> str:
    return line(origin, MAX_ORIGIN_CHARS)


def parse_targets(doc: object, origin: str, base_dir: Path | None = None) -> TargetsFile:
    """Validate a decoded targets document; ``origin`` names it in error messages."""
    origin = _origin(origin)

    def fail(where: str, msg: str) -> TargetsFileError:
        return TargetsFileError(f"{origin}: {where}: {msg}")

    if not isinstance(doc, dict):
        raise TargetsFileError(
            f"{origin}: top level must be a mapping with trustDomain and targets"
        )
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise fail(f"key {key_name(unknown)}", "unknown key")
    try:
        td = syntax.trust_domain(doc.get("trustDomain"))
    except ValueError as exc:
        raise fail("trustDomain", str(exc)) from None

    root: Path | None = None
    if doc.get("rootCertFile") is not None:
        root = _root_cert_file(doc["rootCertFile"], base_dir, fail)

    source = _parse_source(doc.get("source"), fail, td)

    raw_targets = doc.get("targets")
    if not isinstance(raw_targets, list):
        raise fail("targets", "required, a list")
    targets: list[Target] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_targets):
        t = _parse_target(raw, i, fail, trust_domain=td)
        if name_key(t.name) in names:
            raise fail(f"targets[{i}] ({line(t.name, 80)})", DUPLICATE_NAME)
        names.add(name_key(t.name))
        targets.append(t)
    controls = _parse_controls(doc.get("controls"), fail, td)
    return TargetsFile(
        trust_domain=td,
        targets=tuple(targets),
        source=source,
        root_cert_file=root,
        controls=controls,
    )


def _root_cert_file(raw: object, base_dir: Path | None, fail: Any) -> Path:
    try:
        text = syntax.printable(raw, syntax.MAX_PATH_CHARS)
    except ValueError as exc:
        raise fail("rootCertFile", f"must be a path: {exc}") from None
    root = Path(text)
    if not root.is_absolute() and base_dir is not None:
        root = base_dir / root
    try:
        exists, regular = root.exists(), root.is_file()
    except (OSError, ValueError):
        exists = regular = False
    if not exists:
        raise fail("rootCertFile", f"{line(str(root), 200)} does not exist")
    if not regular:
        raise fail("rootCertFile", f"{line(str(root), 200)} is not a regular file")
    return root


def _parse_source(raw: object, fail: Any, trust_domain: str | None = None) -> Source:
    if raw is None:
        return Source()
    if not isinstance(raw, dict):
        raise fail("source", "must be a mapping")
    unknown = set(raw) - _SOURCE_KEYS
    if unknown:
        raise fail(f"source.{key_name(unknown)}", "unknown key")
    identity = raw.get("identity")
    if identity is not None:
        identity = spiffe_field(identity, "source.identity", fail, trust_domain)
    urls: dict[str, str | None] = {}
    for key in ("sidecarProxy", "sidecarAdmin"):
        val = raw.get(key)
        if val is not None:
            try:
                val = syntax.http_url(val)
            except ValueError as exc:
                raise fail(f"source.{key}", str(exc)) from None
        urls[key] = val
    return Source(
        identity=identity, sidecar_proxy=urls["sidecarProxy"], sidecar_admin=urls["sidecarAdmin"]
    )


def _enum_field(raw: object, where: str, enum: type[Expect] | type[Protocol], fail: Any) -> Any:
    want = ", ".join(m.value for m in enum)
    if isinstance(raw, str) and len(raw) <= 20:
        for member in enum:
            if raw.lower() == member.value.lower():
                return member
    raise fail(where, f"{bounded(raw)}: want one of {want}")


def _parse_target(raw: object, i: int, fail: Any, *, trust_domain: str | None = None) -> Target:
    where = f"targets[{i}]"
    if not isinstance(raw, dict):
        raise fail(where, "must be a mapping")
    try:
        name = syntax.printable(raw.get("name"), syntax.MAX_NAME_CHARS)
    except ValueError as exc:
        msg = "required" if raw.get("name") is None else str(exc)
        raise fail(f"{where}.name", msg) from None
    where = f"{where} ({line(name, 80)})"
    unknown = set(raw) - _TARGET_KEYS
    if unknown:
        raise fail(f"{where}.{key_name(unknown)}", "unknown key")
    if raw.get("host") is None:
        raise fail(f"{where}.host", "required, a host name")
    try:
        host = syntax.hostname(raw["host"])
    except ValueError as exc:
        raise fail(f"{where}.host", str(exc)) from None
    try:
        port = syntax.port(raw.get("port"))
    except ValueError as exc:
        raise fail(f"{where}.port", str(exc)) from None
    expect = _enum_field(raw.get("expect"), f"{where}.expect", Expect, fail)
    raw_eps = raw.get("endpoints", [])
    if raw_eps is None:
        raw_eps = []
    if not isinstance(raw_eps, list):
        raise fail(f"{where}.endpoints", "must be a list of IP:port strings")
    endpoints: list[Endpoint] = []
    for j, ep in enumerate(raw_eps):
        try:
            endpoints.append(Endpoint(*syntax.endpoint(ep)))
        except ValueError as exc:
            raise fail(f"{where}.endpoints[{j}]", str(exc)) from None
    identity = raw.get("identity")
    if identity is not None:
        identity = spiffe_field(identity, f"{where}.identity", fail, trust_domain)
    protocol = _enum_field(raw.get("protocol", "http"), f"{where}.protocol", Protocol, fail)
    echo = raw.get("echo", False)
    if not isinstance(echo, bool):
        raise fail(f"{where}.echo", f"{bounded(echo)}: want true or false")
    echo_path = raw.get("echoPath")
    if echo_path is not None and not is_request_path(echo_path):
        raise fail(
            f"{where}.echoPath",
            f"want an absolute request path like /headers (printable ASCII, no spaces or #, at "
            f"most {MAX_ECHO_PATH} characters)",
        )
    authz = parse_authz(
        raw.get("authz"), f"{where}.authz", fail, trust_domain, tcp=protocol is Protocol.TCP
    )
    return Target(
        name=name,
        host=host,
        port=port,
        expect=expect,
        endpoints=tuple(endpoints),
        identity=identity,
        protocol=protocol,
        echo=echo,
        echo_path=echo_path,
        authz=authz,
    )


# ---- negative controls ----------------------------------------------------------------------


class ControlKind(StrEnum):
    """Which detector a control proves can see what it looks for."""

    PLAINTEXT = "plaintext"  # the plain probe's plaintext request here must be accepted
    MESH = "mesh"  # a mesh call through the probe's sidecar here must show mTLS


@dataclass(frozen=True)
class Control:
    """A negative control (``controls:``): a target with the target schema, where the
    detector of ``kind`` must observe the positive case, run before the targets."""

    kind: ControlKind
    target: Target


# A plaintext control accepts plaintext (no sidecar); a mesh control has a server sidecar.
_CONTROL_EXPECT = {ControlKind.PLAINTEXT: Expect.NONE, ControlKind.MESH: Expect.STRICT}


def _control_to_dict(c: Control) -> dict[str, Any]:
    body = _target_to_dict(c.target)
    return {"name": body.pop("name"), "kind": c.kind.value, **body}


def _parse_controls(raw: object, fail: Any, trust_domain: str | None = None) -> tuple[Control, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise fail("controls", "must be a list")

    def in_controls(where: str, msg: str) -> TargetsFileError:
        # Entries are validated as targets; errors must still name the controls list.
        err: TargetsFileError = fail(where.replace("targets[", "controls[", 1), msg)
        return err

    out: list[Control] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        where = f"controls[{i}]"
        if not isinstance(item, dict):
            raise fail(where, "must be a mapping")
        name = item.get("name")
        # Only a short printable name goes into the one-line error (a hostile one could
        # carry newlines or terminal escapes); the target checks judge it properly.
        if isinstance(name, str) and name and name.isprintable() and len(name) <= 200:
            where = f"{where} ({name})"
        kind_raw = item.get("kind")
        kind = next((k for k in ControlKind if k.value == kind_raw), None)
        if kind is None:
            raise fail(f"{where}.kind", f"{bounded(kind_raw)}: want plaintext or mesh")
        body = {k: v for k, v in item.items() if k != "kind"}
        body.setdefault("expect", _CONTROL_EXPECT[kind].value)
        t = _parse_target(body, i, in_controls, trust_domain=trust_domain)
        problem = _control_problem(kind, t)
        if problem is not None:
            raise fail(f"{where}.{problem[0]}", problem[1])
        if name_key(t.name) in names:
            raise fail(where, DUPLICATE_NAME)
        names.add(name_key(t.name))
        out.append(Control(kind, t))
    return tuple(out)


def _control_problem(kind: ControlKind, t: Target) -> tuple[str, str] | None:
    """(field, message) when ``t`` cannot show what a control of ``kind`` must show."""
    if kind is ControlKind.PLAINTEXT:
        if t.expect is Expect.STRICT:
            return "expect", "a plaintext control must accept plaintext: STRICT cannot be one"
        if not t.endpoints:
            return "endpoints", "a plaintext control needs at least one endpoint (pod IP:port)"
        return None
    if t.expect not in (Expect.STRICT, Expect.PERMISSIVE):
        return "expect", "a mesh control needs a server sidecar: STRICT or PERMISSIVE"
    if t.protocol is not Protocol.HTTP:
        return "protocol", "a mesh control must be an http port: mTLS shows in XFCC"
    if not t.echo:
        return "echo", "a mesh control must reflect headers (echo: true): only XFCC shows mTLS"
    if t.identity is None:
        return "identity", "a mesh control needs the server's SPIFFE ID"
    return None
