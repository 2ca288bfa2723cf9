"""``self``: the probe's own sidecar holds the expected identity, chaining to the
mesh root, with a healthy remaining lifetime.

Reads Envoy's admin API the way ``istioctl proxy-config secret`` does: the workload
chain and the ROOTCA bundle from the secrets config dump (``dynamic_active_secrets``
as pilot-agent's SDS serves them, else ``static_secrets``; a ``filename`` data
source is read from disk when the probe can see it), with the full X.509-SVID
rules and path validation against ``rootCertFile``. A sidecar with no trust
bundle is a ``fail`` (it cannot verify any peer). The ``/certs`` summary is a last
resort: it can show a wrong identity, bad dates or a foreign CA serial (``fail``)
but never proves a chain, so at best it gives ``error``; so does a run without
``rootCertFile``. Envoy redacts private keys in config dumps; only
``certificate_chain`` and ``trusted_ca`` are ever read, so key material is never
kept or printed.

Lifetime: Istio rotates at ~50% of a certificate's lifetime. Past 60% the reason
warns that rotation is late; past 80% the check fails (rotation has stopped - the
certificate will expire while the workload keeps running).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from cryptography import x509

from probe.checks.base import Check, RunContext, Scope, make_result
from probe.checks.common import http_client, mesh_roots
from probe.constants import ENVOY_ADMIN
from probe.errors import ProtocolViolation, SidecarUnavailable
from probe.results import Result, Verdict
from probe.svid import judge_svid

if TYPE_CHECKING:
    from probe.model import Endpoint, Target

ROTATION_POINT = 0.5
ROTATION_LATE = 0.6
ROTATION_OVERDUE = 0.8
MAX_ADMIN_BYTES = 8 * 1024 * 1024
#: pilot-agent's SDS resource names for the workload certificate and the mesh trust bundle
#: (istio/istio security/pkg/nodeagent/cache: WorkloadKeyCertResourceName, RootCertReqResourceName).
MTLS_CERT = "default"
MTLS_ROOT = "ROOTCA"
SECRETS_PATHS = (
    "/config_dump?resource=dynamic_active_secrets",
    "/config_dump?resource=static_secrets",
)


@dataclass
class DumpedSecrets:
    """What a secrets config dump holds, certificates only."""

    chains: list[list[x509.Certificate]] = field(default_factory=list)
    trusted: list[x509.Certificate] = field(default_factory=list)  # ROOTCA bundle(s)
    #: The secret name of each chain in ``chains`` (same order), and each trust bundle
    #: by secret name: which ones Istio's mTLS uses is decided by name (``default``,
    #: ``ROOTCA``), not by what else the sidecar holds.
    chain_names: list[str] = field(default_factory=list)
    trusted_by_name: dict[str, list[x509.Certificate]] = field(default_factory=dict)

    def mtls_chains(self) -> list[list[x509.Certificate]]:
        """The chains the sidecar's mTLS presents: the ``default`` secret's (pilot-agent's
        SDS name for the workload certificate) when there is one; else every chain (a
        dump without Istio's names, e.g. a hand-written static config)."""
        named = [c for c, n in zip(self.chains, self.chain_names, strict=False) if n == MTLS_CERT]
        return named or self.chains

    def mtls_trusted(self) -> list[x509.Certificate]:
        """The trust bundle the sidecar's mTLS verifies peers with: ``ROOTCA`` when there
        is one (other validation contexts, e.g. a DestinationRule's ``file-root:``, are not
        used for mesh peers); else every bundle."""
        if MTLS_ROOT in self.trusted_by_name:
            return self.trusted_by_name[MTLS_ROOT]
        return self.trusted


def _pem_field(holder: object, key: str) -> list[x509.Certificate]:
    data = holder.get(key) if isinstance(holder, dict) else None
    if not isinstance(data, dict):
        return []
    try:
        if isinstance(data.get("inline_bytes"), str):
            pem = base64.b64decode(data["inline_bytes"], validate=True)
        elif isinstance(data.get("inline_string"), str):
            pem = data["inline_string"].encode()
        elif isinstance(data.get("filename"), str):
            pem = _read_pem_file(data["filename"])
        else:
            return []
        return list(x509.load_pem_x509_certificates(pem))
    except (ValueError, binascii.Error, OSError):
        return []


def _read_pem_file(name: str) -> bytes:
    """A certificate file Envoy loads (static secrets in the lab); bounded, regular
    files only (opened non-blocking: a FIFO must not hang the check). Not visible
    from another container: then nothing is read."""
    import os
    import stat

    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{name} is not a regular file")
        return f.read(MAX_ADMIN_BYTES)


def secrets_from_config_dump(doc: object) -> DumpedSecrets:
    """Pure: chains and trust bundles from ``{"configs": [{"secret": {...}}]}``."""
    out = DumpedSecrets()
    configs = doc.get("configs", []) if isinstance(doc, dict) else []
    for cfg in configs if isinstance(configs, list) else []:
        secret = cfg.get("secret") if isinstance(cfg, dict) else None
        if not isinstance(secret, dict):
            continue
        name = secret.get("name", cfg.get("name"))
        name = name if isinstance(name, str) else ""
        chain = _pem_field(secret.get("tls_certificate"), "certificate_chain")
        if chain:
            out.chains.append(chain)
            out.chain_names.append(name)
        bundle = _pem_field(secret.get("validation_context"), "trusted_ca")
        out.trusted += bundle
        if bundle:
            out.trusted_by_name.setdefault(name, []).extend(bundle)
    return out


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))
    except Exception:  # a hostile or odd certificate: it names nobody
        return []


@dataclass
class CertsSummary:
    """Envoy's ``/certs``: leaf summaries and the serials of the CAs it trusts."""

    leaves: list[dict[str, Any]] = field(default_factory=list)
    ca_serials: set[str] = field(default_factory=set)


def _serial(text: object) -> str:
    return str(text).strip().lower().lstrip("0")


def parse_certs(doc: object) -> CertsSummary:
    out = CertsSummary()
    entries = doc.get("certificates", []) if isinstance(doc, dict) else []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        for ca in entry.get("ca_cert") or []:
            if isinstance(ca, dict) and ca.get("serial_number"):
                out.ca_serials.add(_serial(ca["serial_number"]))
        out.leaves += [leaf for leaf in entry.get("cert_chain") or [] if isinstance(leaf, dict)]
    return out


def leaf_uris(leaf: dict[str, Any]) -> list[str]:
    sans = leaf.get("subject_alt_names") or []
    return [str(s["uri"]) for s in sans if isinstance(s, dict) and "uri" in s]


def _parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclass
class SelfJudgement:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    #: Why the chain to the mesh root is not proven (then no pass), if it is not.
    unverified: str | None = None
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None


def judge_dump(
    secrets: DumpedSecrets,
    expected_id: str,
    trust_domain: str,
    roots: list[x509.Certificate] | None,
    now: dt.datetime,
    min_remaining: dt.timedelta,
    max_lifetime: dt.timedelta,
) -> SelfJudgement:
    out = SelfJudgement(evidence={"method": "config_dump secrets (X.509-SVID rules, path)"})
    # Only the certificate mTLS presents counts: a healthy one in another secret (a
    # file-mounted copy, a gateway credential) says nothing about what peers are shown.
    mine = [c for c in secrets.mtls_chains() if expected_id in uri_sans(c[0])]
    if not mine:
        seen = sorted({u for c in secrets.mtls_chains() for u in uri_sans(c[0])})
        out.evidence["identities_seen"] = seen
        out.problems.append(_not_held(expected_id, seen))
        return out
    # Without Istio's names, which of several chains for the identity is presented is
    # unknown: every one must be healthy.
    for n, chain in enumerate(mine):
        j = judge_svid(
            chain,
            expected_identity=expected_id,
            trust_domain=trust_domain,
            roots=roots,
            now=now,
            min_remaining=min_remaining,
            max_lifetime=max_lifetime,
        )
        which = f"certificate {n + 1} of {len(mine)} for {expected_id}: " if len(mine) > 1 else ""
        out.problems += [which + v for v in j.violations]
        if n == 0:
            out.evidence.update(j.evidence)
            out.not_before = chain[0].not_valid_before_utc
            out.not_after = chain[0].not_valid_after_utc
        elif chain[0].not_valid_after_utc < (out.not_after or chain[0].not_valid_after_utc):
            out.not_before = chain[0].not_valid_before_utc
            out.not_after = chain[0].not_valid_after_utc
    if len(mine) > 1:
        out.evidence["chains_for_identity"] = len(mine)
    bundle = secrets.mtls_trusted()
    if not bundle:
        out.problems.append(_NO_ROOTCA)
    if roots is None:
        out.unverified = _NO_ROOT_FILE
    elif bundle:
        trusted = {c.fingerprint(_sha256()) for c in bundle}
        ok = any(r.fingerprint(_sha256()) in trusted for r in roots)
        out.evidence["trust_bundle_has_root"] = ok
        if not ok:
            out.problems.append(
                "the sidecar's trust bundle (ROOTCA) does not hold the mesh root from "
                "rootCertFile: it would reject every peer's certificate"
            )
    return out


_NO_ROOTCA = (
    "the sidecar holds no trust bundle (no ROOTCA validation context): it cannot "
    "verify any peer's certificate"
)
_NO_ROOT_FILE = (
    "no rootCertFile in the targets file: the chain to the mesh root cannot be verified "
    "(set rootCertFile to the mesh root, e.g. root-cert.pem of the istio-ca-root-cert "
    "ConfigMap)"
)


def _not_held(expected_id: str, seen: list[str]) -> str:
    return (
        f"the sidecar holds no certificate for {expected_id} (it has: {', '.join(seen) or 'none'})"
    )


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def judge_certs(
    summary: CertsSummary,
    expected_id: str,
    roots: list[x509.Certificate] | None,
    now: dt.datetime,
    min_remaining: dt.timedelta,
) -> SelfJudgement:
    out = SelfJudgement(evidence={"method": "/certs summary (identity, dates, CA serial)"})
    mine = [leaf for leaf in summary.leaves if expected_id in leaf_uris(leaf)]
    if not mine:
        seen = sorted({u for leaf in summary.leaves for u in leaf_uris(leaf)})
        out.evidence["identities_seen"] = seen
        out.problems.append(_not_held(expected_id, seen))
        return out
    leaf = mine[0]
    uris = leaf_uris(leaf)
    out.evidence["san_uris"] = uris
    out.evidence["serial"] = leaf.get("serial_number")
    if len(uris) != 1:
        out.problems.append(f"an X.509-SVID has exactly one URI SAN; this one has {len(uris)}")
    nb = _parse_time(leaf.get("valid_from"))
    na = _parse_time(leaf.get("expiration_time"))
    if na is None:
        days = str(leaf.get("days_until_expiration", ""))
        if days.isdigit():  # whole days only (Envoy rounds down): a lower bound
            na = now + dt.timedelta(days=int(days))
    out.not_before, out.not_after = nb, na
    out.evidence["not_before"] = nb.isoformat() if nb else None
    out.evidence["not_after"] = na.isoformat() if na else None
    if na is None:
        out.problems.append("the sidecar reports no expiration for its certificate")
    else:
        remaining = na - now
        out.evidence["remaining_seconds"] = int(remaining.total_seconds())
        if remaining.total_seconds() <= 0:
            out.problems.append(f"the sidecar's certificate expired at {na.isoformat()}")
        elif remaining < min_remaining:
            out.problems.append(
                f"the sidecar's certificate expires in {remaining}, below the minimum "
                f"{min_remaining}"
            )
    if nb is not None and nb > now:
        out.problems.append(f"the sidecar's certificate is not valid before {nb.isoformat()}")
    # /certs shows serials, not certificates: never a verified chain.
    out.evidence["chain_verified"] = None
    if not summary.ca_serials:
        out.problems.append(_NO_ROOTCA)
    if roots is None:
        out.unverified = _NO_ROOT_FILE
        return out
    root_serials = {format(r.serial_number, "x") for r in roots}
    ok = bool(root_serials & summary.ca_serials)
    out.evidence["trusted_ca_serial_is_root"] = ok
    if summary.ca_serials and not ok:
        out.problems.append(
            "the CA the sidecar trusts (serial "
            f"{', '.join(sorted(summary.ca_serials))}) is not the mesh root from "
            "rootCertFile (compared by serial: /certs shows no more)"
        )
    out.unverified = (
        "only /certs summaries from the sidecar admin (no certificates in its secrets "
        "config dump): the chain to the mesh root cannot be verified"
    )
    return out


def judge_rotation(j: SelfJudgement, now: dt.datetime) -> None:
    """Add the lifetime-used verdict to ``j`` (in place)."""
    nb, na = j.not_before, j.not_after
    if nb is None or na is None or na <= nb or na <= now:
        return
    used = (now - nb) / (na - nb)
    j.evidence["lifetime_used"] = round(used, 3)
    if used > ROTATION_OVERDUE:
        j.problems.append(
            f"{used:.0%} of the certificate's lifetime is used; Istio rotates at "
            f"~{ROTATION_POINT:.0%}: rotation appears to have stopped"
        )
    elif used > ROTATION_LATE:
        j.warnings.append(
            f"{used:.0%} of the lifetime used, past Istio's ~{ROTATION_POINT:.0%} rotation "
            "point: rotation is late"
        )


class SelfCheck(Check):
    name = "self"
    scope: ClassVar[Scope] = Scope.RUN
    summary = "the probe's own sidecar has the expected, healthy identity"

    def skip_reason(self, ctx: RunContext, target: Target | None) -> str | None:
        if ctx.targets.source.identity is None:
            return "no source.identity in the targets file: nothing to compare"
        return None

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        admin = admin_url(ctx)
        expected_id = ctx.targets.source.identity
        assert expected_id is not None
        roots = mesh_roots(ctx)
        now = dt.datetime.now(dt.UTC)
        secrets = fetch_secrets(ctx)
        if secrets.chains:
            j = judge_dump(
                secrets,
                expected_id,
                ctx.targets.trust_domain,
                roots,
                now,
                ctx.settings.min_remaining,
                ctx.settings.max_lifetime,
            )
        else:
            status, doc = get_admin_json(ctx, admin + "/certs")
            if status != 200 or not isinstance(doc, dict):
                raise SidecarUnavailable(
                    f"the sidecar admin {admin} shows no certificates (config_dump secrets "
                    f"empty, /certs answered HTTP {status})"
                )
            j = judge_certs(parse_certs(doc), expected_id, roots, now, ctx.settings.min_remaining)
        judge_rotation(j, now)
        expected = f"own identity {expected_id}"
        if j.problems:
            verdict, observed, reason = Verdict.FAIL, "unhealthy identity", "; ".join(j.problems)
        elif j.unverified is not None:
            verdict, observed = Verdict.ERROR, f"own identity {expected_id}, chain unverified"
            reason = f"{j.unverified}; own sidecar identity {expected_id} seen"
        else:
            until = j.not_after.isoformat() if j.not_after else "?"
            verdict, observed = Verdict.PASS, f"own identity {expected_id}"
            reason = (
                f"own sidecar identity {expected_id} is valid until {until} and chains to "
                "the mesh root (rootCertFile), which its trust bundle holds"
            )
        if j.warnings:
            reason += f" (warning: {'; '.join(j.warnings)})"
        return make_result(
            self.name,
            None,
            None,
            verdict,
            reason,
            expected=expected,
            observed=observed,
            evidence=j.evidence,
        )


def admin_url(ctx: RunContext) -> str:
    """The probe's own sidecar admin: ``source.sidecarAdmin`` or the in-pod default."""
    return (ctx.targets.source.sidecar_admin or ENVOY_ADMIN).rstrip("/")


def fetch_secrets(ctx: RunContext) -> DumpedSecrets:
    """The certificates the probe's sidecar holds now (active SDS secrets, else static
    ones); empty when it shows none. Raises SidecarUnavailable / ProtocolViolation."""
    admin = admin_url(ctx)
    for path in SECRETS_PATHS:
        status, doc = get_admin_json(ctx, admin + path)
        secrets = secrets_from_config_dump(doc) if status == 200 else DumpedSecrets()
        if secrets.chains:
            return secrets
    return DumpedSecrets()


def get_admin_json(ctx: RunContext, url: str) -> tuple[int, object]:
    """(status, parsed JSON or None). Unreachable admin → SidecarUnavailable; a 200
    that is not JSON, or too large → ProtocolViolation."""
    import httpx

    client = http_client(ctx, via_sidecar=False)
    try:
        with client.stream("GET", url) as resp:
            body = b""
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_ADMIN_BYTES:
                    raise ProtocolViolation(f"{url} sent more than {MAX_ADMIN_BYTES} bytes")
            status = resp.status_code
    except httpx.HTTPError as exc:
        raise SidecarUnavailable(
            f"the sidecar admin at {url} is unreachable ({type(exc).__name__}: {exc})"
        ) from None
    if status != 200:
        return status, None
    try:
        return status, json.loads(body)
    except ValueError:
        raise ProtocolViolation(f"the sidecar admin's {url} is not JSON") from None
