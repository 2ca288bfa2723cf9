"""``self``: the probe's own sidecar holds the expected identity, chaining to the
mesh root, with a healthy remaining lifetime (Istio rotates at ~50% of it).

Reads Envoy's admin API: the certificate chain from ``/config_dump`` secrets when
Envoy has it inline (Istio's SDS), else the summary in ``/certs``. Envoy redacts
private keys in config dumps; we never keep or print key material either way.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import TYPE_CHECKING, Any, ClassVar

from cryptography import x509

from probe.checks.base import Check, RunContext, Scope, make_result
from probe.checks.common import http_client, mesh_roots
from probe.errors import ProtocolViolation, SidecarUnavailable
from probe.results import Result, Verdict
from probe.svid import judge_svid

if TYPE_CHECKING:
    from probe.model import Endpoint, Target

DEFAULT_ADMIN = "http://127.0.0.1:15000"
# Past this fraction of its lifetime a certificate should have been rotated long ago.
ROTATION_OVERDUE = 0.8


class SelfCheck(Check):
    name = "self"
    scope: ClassVar[Scope] = Scope.RUN
    summary = "the probe's own sidecar has the expected, healthy identity"

    def skip_reason(self, ctx: RunContext, target: Target | None) -> str | None:
        if ctx.targets.source.identity is None:
            return "no source.identity in the targets file: nothing to compare"
        return None

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        admin = (ctx.targets.source.sidecar_admin or DEFAULT_ADMIN).rstrip("/")
        expected_id = ctx.targets.source.identity
        assert expected_id is not None
        roots = mesh_roots(ctx)
        chain = self._chain_from_config_dump(ctx, admin, expected_id)
        now = dt.datetime.now(dt.UTC)
        nb: dt.datetime | None
        na: dt.datetime | None
        if chain:
            j = judge_svid(
                chain,
                expected_identity=expected_id,
                trust_domain=ctx.targets.trust_domain,
                roots=roots,
                now=now,
                min_remaining=ctx.settings.min_remaining,
                max_lifetime=ctx.settings.max_lifetime,
            )
            evidence: dict[str, Any] = dict(j.evidence)
            evidence["source"] = "config_dump"
            problems = list(j.violations)
            nb = chain[0].not_valid_before_utc
            na = chain[0].not_valid_after_utc
        else:
            problems, evidence, nb, na = self._from_certs(ctx, admin, expected_id, roots, now)
        if nb is not None and na is not None and na > nb:
            used = (now - nb) / (na - nb)
            evidence["lifetime_used"] = round(used, 3)
            if used > ROTATION_OVERDUE and not any("expired" in p for p in problems):
                problems.append(
                    f"{used:.0%} of the certificate's lifetime is used; Istio rotates at ~50%: "
                    "rotation appears to have stopped"
                )
        expected = f"own identity {expected_id}"
        if problems:
            return make_result(
                self.name,
                None,
                None,
                Verdict.FAIL,
                "; ".join(problems),
                expected=expected,
                observed="unhealthy identity",
                evidence=evidence,
            )
        return make_result(
            self.name,
            None,
            None,
            Verdict.PASS,
            f"own sidecar identity {expected_id} is valid until {evidence.get('not_after')}",
            expected=expected,
            observed=f"own identity {expected_id}",
            evidence=evidence,
        )

    def _get(self, ctx: RunContext, url: str) -> Any:
        import httpx

        client = http_client(ctx, via_sidecar=False)
        try:
            resp = client.get(url)
        except httpx.HTTPError as exc:
            raise SidecarUnavailable(f"the sidecar admin at {url} is unreachable: {exc}") from None
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise SidecarUnavailable(f"the sidecar admin answered {resp.status_code} for {url}")
        try:
            return resp.json()
        except ValueError:
            raise ProtocolViolation(f"the sidecar admin's {url} is not JSON") from None

    def _chain_from_config_dump(
        self, ctx: RunContext, admin: str, expected_id: str
    ) -> list[x509.Certificate]:
        found: list[list[x509.Certificate]] = []
        for resource in ("dynamic_active_secrets", "static_secrets"):
            doc = self._get(ctx, f"{admin}/config_dump?resource={resource}")
            for cfg in (doc or {}).get("configs", []) if isinstance(doc, dict) else []:
                secret = cfg.get("secret", {}) if isinstance(cfg, dict) else {}
                tls_cert = secret.get("tls_certificate") if isinstance(secret, dict) else None
                if not isinstance(tls_cert, dict):
                    continue
                inline = tls_cert.get("certificate_chain", {}).get("inline_bytes")
                if not isinstance(inline, str):
                    continue
                try:
                    certs = x509.load_pem_x509_certificates(base64.b64decode(inline))
                except ValueError:
                    continue
                if certs:
                    found.append(list(certs))
        for chain in found:  # prefer the chain that carries our identity
            try:
                san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
                if expected_id in san.value.get_values_for_type(x509.UniformResourceIdentifier):
                    return chain
            except Exception:  # noqa: S112 - a hostile or odd cert: try the next
                continue
        return found[0] if found else []

    def _from_certs(
        self,
        ctx: RunContext,
        admin: str,
        expected_id: str,
        roots: list[x509.Certificate] | None,
        now: dt.datetime,
    ) -> tuple[list[str], dict[str, Any], dt.datetime | None, dt.datetime | None]:
        doc = self._get(ctx, f"{admin}/certs")
        if not isinstance(doc, dict):
            raise ProtocolViolation(f"{admin}/certs did not return the certificates document")
        leaves: list[dict[str, Any]] = []
        ca_serials: set[str] = set()
        for entry in doc.get("certificates", []):
            if not isinstance(entry, dict):
                continue
            for ca in entry.get("ca_cert", []) or []:
                if isinstance(ca, dict) and ca.get("serial_number"):
                    ca_serials.add(str(ca["serial_number"]).lower().lstrip("0"))
            for leaf in entry.get("cert_chain", []) or []:
                if isinstance(leaf, dict):
                    leaves.append(leaf)

        def uris(leaf: dict[str, Any]) -> list[str]:
            return [
                str(s["uri"])
                for s in leaf.get("subject_alt_names", []) or []
                if isinstance(s, dict) and "uri" in s
            ]

        evidence: dict[str, Any] = {"source": "certs"}
        mine = [leaf for leaf in leaves if expected_id in uris(leaf)]
        if not mine:
            seen = sorted({u for leaf in leaves for u in uris(leaf)})
            evidence["identities_seen"] = seen
            return (
                [
                    f"the sidecar holds no certificate for {expected_id} "
                    f"(it has: {', '.join(seen) or 'none'})"
                ],
                evidence,
                None,
                None,
            )
        leaf = mine[0]
        problems: list[str] = []
        evidence["san_uris"] = uris(leaf)
        evidence["serial"] = leaf.get("serial_number")
        nb = _parse_time(leaf.get("valid_from"))
        na = _parse_time(leaf.get("expiration_time"))
        evidence["not_before"] = nb.isoformat() if nb else None
        evidence["not_after"] = na.isoformat() if na else None
        if na is None:
            problems.append("the sidecar reports no expiration time for its certificate")
        else:
            remaining = na - now
            evidence["remaining_seconds"] = int(remaining.total_seconds())
            if remaining.total_seconds() <= 0:
                problems.append(f"the sidecar's certificate expired at {na.isoformat()}")
            elif remaining < ctx.settings.min_remaining:
                problems.append(
                    f"the sidecar's certificate expires in {remaining}, below the minimum "
                    f"{ctx.settings.min_remaining}"
                )
        if roots is None:
            evidence["chain_verified"] = None
            evidence["chain_note"] = "no rootCertFile: chain not checked"
        else:
            root_serials = {format(r.serial_number, "x") for r in roots}
            ok = bool(root_serials & ca_serials)
            evidence["chain_verified"] = ok
            evidence["chain_method"] = "CA serial in /certs compared with rootCertFile"
            if not ok:
                problems.append("the sidecar does not trust the mesh root from rootCertFile")
        return problems, evidence, nb, na


def _parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)
