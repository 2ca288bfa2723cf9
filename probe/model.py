"""The targets file: the stable input contract of ``mtlsprobe check``.

Everything is validated up front so a bad file is one line naming the file, the
entry and the field (exit 64) instead of a failure halfway through a run.
"""

from __future__ import annotations

import ipaddress
import reprlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from probe.spiffe import SpiffeIdError, parse_spiffe_id

#: Where header-reflecting apps answer (httpbin, go-httpbin; Istio's echo and
#: ``mtlsprobe serve`` answer any path). A target's ``echoPath`` overrides it.
DEFAULT_ECHO_PATH = "/headers"
MAX_ECHO_PATH = 1024


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
    """The targets file cannot be used; the message is the one line users see."""


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
        """Parse ``host:port`` or ``[v6]:port``; raises ValueError naming the problem."""
        text = text.strip()
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise ValueError(f"{text!r} is not [ipv6]:port")
            port_text = rest[1:]
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or not host:
                raise ValueError(f"{text!r} has no port (want host:port)")
            if ":" in host:
                raise ValueError(f"{text!r}: write IPv6 endpoints as [addr]:port")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: port must be 1-65535")
        if host.startswith("[") or not host:
            raise ValueError(f"{text!r}: empty host")
        if ":" in host:
            ipaddress.IPv6Address(host)
        return cls(host=host, port=int(port_text))


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
}


def load_targets(path: Path) -> TargetsFile:
    """Read and validate a targets file. Raises TargetsFileError with one line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TargetsFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TargetsFileError(f"{path}: not UTF-8 text") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise TargetsFileError(f"{path}: invalid YAML{where}: {problem}") from None
    return parse_targets(doc, str(path), base_dir=path.parent)


def parse_targets(doc: object, origin: str, base_dir: Path | None = None) -> TargetsFile:
    """Validate a decoded targets document; ``origin`` names it in error messages."""

    def fail(where: str, msg: str) -> TargetsFileError:
        return TargetsFileError(f"{origin}: {where}: {msg}")

    if not isinstance(doc, dict):
        raise TargetsFileError(
            f"{origin}: top level must be a mapping with trustDomain and targets"
        )
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise fail(f"key {sorted(map(str, unknown))[0]!r}", "unknown key")
    td = doc.get("trustDomain")
    if not isinstance(td, str) or not td:
        raise fail("trustDomain", "required, a non-empty string")
    if td != td.lower() or "/" in td or ":" in td:
        raise fail(
            "trustDomain", f"{td!r} is not a valid trust domain (lowercase, no port or path)"
        )

    root: Path | None = None
    if doc.get("rootCertFile") is not None:
        raw_root = doc["rootCertFile"]
        if not isinstance(raw_root, str) or not raw_root:
            raise fail("rootCertFile", "must be a path string")
        root = Path(raw_root)
        if not root.is_absolute() and base_dir is not None:
            root = base_dir / root
        if not root.is_file():
            raise fail("rootCertFile", f"{root} does not exist")

    source = _parse_source(doc.get("source"), fail)

    raw_targets = doc.get("targets")
    if not isinstance(raw_targets, list):
        raise fail("targets", "required, a list")
    targets: list[Target] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_targets):
        t = _parse_target(raw, i, fail)
        if t.name in names:
            raise fail(f"targets[{i}] ({t.name})", "duplicate name")
        names.add(t.name)
        targets.append(t)
    controls = _parse_controls(doc.get("controls"), fail)
    return TargetsFile(
        trust_domain=td,
        targets=tuple(targets),
        source=source,
        root_cert_file=root,
        controls=controls,
    )


def _parse_source(raw: object, fail: Any) -> Source:
    if raw is None:
        return Source()
    if not isinstance(raw, dict):
        raise fail("source", "must be a mapping")
    unknown = set(raw) - _SOURCE_KEYS
    if unknown:
        raise fail(f"source.{sorted(map(str, unknown))[0]}", "unknown key")
    identity = raw.get("identity")
    if identity is not None:
        identity = _spiffe_field(identity, "source.identity", fail)
    urls: dict[str, str | None] = {}
    for key in ("sidecarProxy", "sidecarAdmin"):
        val = raw.get(key)
        if val is not None and (not isinstance(val, str) or not val.startswith("http://")):
            raise fail(f"source.{key}", f"{val!r} must be an http:// URL")
        urls[key] = val
    return Source(
        identity=identity, sidecar_proxy=urls["sidecarProxy"], sidecar_admin=urls["sidecarAdmin"]
    )


def _spiffe_field(value: object, where: str, fail: Any) -> str:
    if not isinstance(value, str):
        raise fail(where, "must be a SPIFFE ID string")
    try:
        parse_spiffe_id(value)
    except SpiffeIdError as exc:
        raise fail(where, f"{value!r} is not a SPIFFE ID: {exc}") from None
    return value


def _parse_target(raw: object, i: int, fail: Any) -> Target:
    where = f"targets[{i}]"
    if not isinstance(raw, dict):
        raise fail(where, "must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise fail(f"{where}.name", "required, a non-empty string")
    where = f"{where} ({name})"
    unknown = set(raw) - _TARGET_KEYS
    if unknown:
        raise fail(f"{where}.{sorted(map(str, unknown))[0]}", "unknown key")
    host = raw.get("host")
    if not isinstance(host, str) or not host:
        raise fail(f"{where}.host", "required, a non-empty string")
    port = raw.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise fail(f"{where}.port", f"{port!r} is not a port number (1-65535)")
    expect_raw = raw.get("expect")
    try:
        expect = Expect(str(expect_raw).upper()) if expect_raw is not None else None
    except ValueError:
        expect = None
    if expect is None:
        raise fail(
            f"{where}.expect", f"{expect_raw!r}: want one of STRICT, PERMISSIVE, DISABLE, NONE"
        )
    raw_eps = raw.get("endpoints", [])
    if raw_eps is None:
        raw_eps = []
    if not isinstance(raw_eps, list):
        raise fail(f"{where}.endpoints", "must be a list of host:port strings")
    endpoints: list[Endpoint] = []
    for j, ep in enumerate(raw_eps):
        if not isinstance(ep, str):
            raise fail(f"{where}.endpoints[{j}]", f"{ep!r} must be a host:port string")
        try:
            endpoints.append(Endpoint.parse(ep))
        except ValueError as exc:
            raise fail(f"{where}.endpoints[{j}]", str(exc)) from None
    identity = raw.get("identity")
    if identity is not None:
        identity = _spiffe_field(identity, f"{where}.identity", fail)
    proto_raw = raw.get("protocol", "http")
    try:
        protocol = Protocol(str(proto_raw).lower())
    except ValueError:
        raise fail(f"{where}.protocol", f"{proto_raw!r}: want http or tcp") from None
    echo = raw.get("echo", False)
    if not isinstance(echo, bool):
        raise fail(f"{where}.echo", f"{echo!r}: want true or false")
    echo_path = raw.get("echoPath")
    if echo_path is not None and not _is_request_path(echo_path):
        raise fail(
            f"{where}.echoPath",
            f"want an absolute request path like /headers (printable ASCII, no spaces or #, at "
            f"most {MAX_ECHO_PATH} characters)",
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
    )


def _is_request_path(value: object) -> bool:
    """An origin-form request target: starts with one slash, printable ASCII only."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ECHO_PATH
        and value.startswith("/")
        and not value.startswith("//")
        and all("!" <= c <= "~" and c != "#" for c in value)
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


def _parse_controls(raw: object, fail: Any) -> tuple[Control, ...]:
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
            raise fail(f"{where}.kind", f"{reprlib.repr(kind_raw)}: want plaintext or mesh")
        body = {k: v for k, v in item.items() if k != "kind"}
        body.setdefault("expect", _CONTROL_EXPECT[kind].value)
        t = _parse_target(body, i, in_controls)
        problem = _control_problem(kind, t)
        if problem is not None:
            raise fail(f"{where}.{problem[0]}", problem[1])
        if t.name in names:
            raise fail(where, "duplicate name")
        names.add(t.name)
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
