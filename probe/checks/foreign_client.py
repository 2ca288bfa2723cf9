"""``foreign-client``: does the server reject a client certificate that the mesh
root did not sign? A CA made at run time issues one certificate carrying the
probe's own SPIFFE ID and one from a wrong trust domain; both must be refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from probe import tls
from probe.checks.base import Check, RunContext, Scope, make_result
from probe.checks.common import istio_sni, sidecar_tls_skip, tls_context
from probe.checks.plaintext import TCP_PAYLOAD, http_request
from probe.errors import ObservationError, ResetAfterRequest, TLSAlert
from probe.model import Protocol
from probe.results import Result, Verdict

if TYPE_CHECKING:
    from probe.model import Endpoint, Target
    from probe.pki import Issued

# Alerts by which a TLS server says "I do not accept your certificate".
REJECTING_ALERTS = frozenset(
    {
        "certificate required",
        "unknown ca",
        "bad certificate",
        "certificate unknown",
        "unsupported certificate",
        "access denied",
        "handshake failure",
        "decrypt error",
        "certificate revoked",
        "certificate expired",
    }
)
FOREIGN_TRUST_DOMAIN = "foreign.mtlsprobe.invalid"


@dataclass(frozen=True)
class ForeignMaterial:
    same_domain: Issued
    wrong_domain: Issued


def foreign_material(ctx: RunContext) -> ForeignMaterial:
    def build() -> ForeignMaterial:
        from probe.pki import CertificateAuthority

        td = ctx.targets.trust_domain
        ca = CertificateAuthority.create_root(
            td, key_type="ec", organization="mtlsprobe run-time foreign CA"
        )
        ident = ctx.targets.source.identity or f"spiffe://{td}/ns/mtlsprobe/sa/mtlsprobe-foreign"
        return ForeignMaterial(
            same_domain=ca.issue_workload(ident, key_type="ec"),
            wrong_domain=ca.issue_workload(
                f"spiffe://{FOREIGN_TRUST_DOMAIN}/ns/mtlsprobe/sa/mtlsprobe", key_type="ec"
            ),
        )

    return ctx.shared("foreign-material", build)


@dataclass(frozen=True)
class Attempt:
    label: str
    outcome: str  # rejected | accepted | error
    detail: str


class ForeignClientCheck(Check):
    name = "foreign-client"
    scope: ClassVar[Scope] = Scope.ENDPOINT
    summary = "a client certificate from a foreign CA is rejected"

    def skip_reason(self, ctx: RunContext, target: Target | None) -> str | None:
        assert target is not None
        return sidecar_tls_skip(
            target,
            no_sidecar="target has no sidecar: nothing verifies client certificates",
            disabled="mTLS is DISABLEd at this port: no TLS to present a certificate to",
        )

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        assert target is not None and endpoint is not None
        material = foreign_material(ctx)
        attempts = [
            self._attempt(ctx, target, endpoint, material.same_domain, "foreign CA, own identity"),
            self._attempt(
                ctx, target, endpoint, material.wrong_domain, "foreign CA, wrong trust domain"
            ),
        ]
        evidence = {a.label: f"{a.outcome}: {a.detail}" for a in attempts}
        accepted = [a for a in attempts if a.outcome == "accepted"]
        errors = [a for a in attempts if a.outcome == "error"]
        if accepted:
            verdict, observed = Verdict.FAIL, "accepted"
            reason = (
                f"the server accepted a client certificate from a foreign CA ({accepted[0].label}: "
                f"{accepted[0].detail}): it does not verify who calls it"
            )
        elif errors:
            verdict, observed = Verdict.ERROR, "inconclusive"
            reason = f"could not observe a rejection ({errors[0].label}): {errors[0].detail}"
        else:
            verdict, observed = Verdict.PASS, "rejected"
            reason = "foreign client certificates rejected: " + "; ".join(
                a.detail for a in attempts
            )
        return make_result(
            self.name,
            target,
            endpoint,
            verdict,
            reason,
            expected="rejected",
            observed=observed,
            evidence=evidence,
        )

    def _attempt(
        self, ctx: RunContext, target: Target, endpoint: Endpoint, client: Issued, label: str
    ) -> Attempt:
        timeout = ctx.settings.timeout
        context = tls_context(ctx, target, client, label)
        try:
            conn, hs = tls.connect_tls(endpoint, context, timeout, istio_sni(target))
        except ObservationError as exc:
            return Attempt(label, "error", exc.reason)
        try:
            if hs.failure is not None:
                return self._judge_failure(label, hs.failure, bool(hs.chain))
            try:
                # Read first: TLS 1.3 servers reject after the client's Finished. In
                # TLS 1.2 a completed handshake means the server took our certificate.
                if hs.version == "TLSv1.3":
                    tls.await_rejection(conn, endpoint, min(timeout, 0.5))
                payload = (
                    http_request(target.host) if target.protocol is Protocol.HTTP else TCP_PAYLOAD
                )
                data = tls.request_over_tls(conn, payload, endpoint, timeout)
            except TLSAlert as exc:
                return self._judge_failure(label, f"TLS alert: {exc.alert}", bool(hs.chain))
            except ResetAfterRequest as exc:
                return Attempt(label, "rejected", exc.reason)
            except ObservationError as exc:
                return Attempt(label, "error", exc.reason)
            first = data.split(b"\r\n", 1)[0].decode("latin-1")[:80]
            return Attempt(label, "accepted", f"answered over mTLS: {first!r}")
        finally:
            tls.close(conn)

    @staticmethod
    def _judge_failure(label: str, failure: str, saw_server_cert: bool) -> Attempt:
        """A failure counts as rejecting our certificate only once the handshake got
        that far: the server sends its own certificate before it sees ours (TLS 1.2
        and 1.3), so no server certificate means it failed for some other reason
        (a port that resets everything, no shared ALPN or cipher) — inconclusive."""
        if not saw_server_cert:
            return Attempt(
                label,
                "error",
                f"the handshake ended before the server showed a certificate ({failure}): "
                "not a rejection of the client certificate",
            )
        alert = failure.removeprefix("TLS alert: ")
        if alert in REJECTING_ALERTS:
            return Attempt(label, "rejected", f"TLS alert {alert}")
        if "reset" in failure or "closed" in failure:
            return Attempt(label, "rejected", failure)
        return Attempt(label, "error", f"handshake failed for another reason: {failure}")
