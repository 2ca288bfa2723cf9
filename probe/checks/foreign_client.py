"""``foreign-client``: does the server reject a client certificate that the mesh
root did not sign? A CA made at run time issues one certificate carrying the
probe's own SPIFFE ID and one from a wrong trust domain; both must be refused.

The rejection signature, and nothing less (``judge_attempt``): the server asked
for a certificate (CertificateRequest), proved it holds its own key, we sent ours,
and then a TLS alert naming the certificate arrived. A server that never asks,
that completes a TLS 1.2 handshake with our certificate, or that answers, issues
a session ticket or closes gracefully after a TLS 1.3 handshake has accepted it
(``fail``), whatever it does next; every other ending is inconclusive."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

from cryptography import x509

from probe import tls
from probe.checks.base import Check, RunContext, Scope, make_result
from probe.checks.common import istio_sni, sidecar_tls_skip, tls_context
from probe.checks.plaintext import TCP_PAYLOAD, http_request
from probe.errors import ObservationError
from probe.model import Protocol
from probe.results import Result, Verdict
from probe.spiffe import istio_identity

if TYPE_CHECKING:
    from probe.model import Endpoint, Target
    from probe.pki import Issued

# Alerts by which a TLS server says "I do not accept your certificate". Not
# "handshake failure": it names no certificate.
REJECTING_ALERTS = frozenset(
    {
        "certificate required",
        "unknown ca",
        "bad certificate",
        "certificate unknown",
        "unsupported certificate",
        "access denied",
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
    # Outside build: ctx.shared's lock is held while it runs, and mesh_roots takes it.
    subject, key_id = _impersonated_root(ctx)

    def build() -> ForeignMaterial:
        from probe.pki import CertificateAuthority

        td = ctx.targets.trust_domain
        ca = CertificateAuthority.create_root(td, key_type="ec", subject=subject, key_id=key_id)
        ident = ctx.targets.source.identity or istio_identity(td, "mtlsprobe", "mtlsprobe-foreign")
        return ForeignMaterial(
            same_domain=ca.issue_workload(ident, key_type="ec"),
            wrong_domain=ca.issue_workload(
                istio_identity(FOREIGN_TRUST_DOMAIN, "mtlsprobe", "mtlsprobe"), key_type="ec"
            ),
        )

    return ctx.shared("foreign-material", build)


def _impersonated_root(ctx: RunContext) -> tuple[x509.Name | None, bytes | None]:
    """The mesh root's subject and key identifier, for the run-time CA to copy: a server
    that trusts a client certificate by its issuer's name or key identifier instead of
    its signature must accept ours (an attacker's CA can copy both). Without
    rootCertFile, Istio's root subject ``O=<trust domain>`` (create_root's default)."""
    from probe.checks.common import mesh_roots

    try:
        roots = mesh_roots(ctx)
    except ObservationError:
        roots = None
    if not roots:
        return None, None
    root = roots[0]
    try:
        ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except (x509.ExtensionNotFound, ValueError):
        ski = None
    return root.subject, ski


@dataclass(frozen=True)
class Attempt:
    label: str
    outcome: str  # rejected | accepted | error
    detail: str
    #: How the server proved it holds its own key, when it did.
    possession: str | None = None


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
        evidence: dict[str, object] = {a.label: f"{a.outcome}: {a.detail}" for a in attempts}
        evidence["possession"] = attempts[0].possession
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
            conn, hs = tls.connect_tls(
                endpoint, context, timeout, istio_sni(target), hold_flight=True
            )
        except ObservationError as exc:
            return Attempt(label, "error", exc.reason)
        try:
            after = None
            if hs.completed and hs.version == "TLSv1.3" and hs.sent_client_cert:
                payload = (
                    http_request(target.host) if target.protocol is Protocol.HTTP else TCP_PAYLOAD
                )
                # How long a rejecting TLS layer gets to alert before we send the request:
                # 0.5 s, or four times what the handshake took on a slow (loaded) path.
                # Waiting longer is never laxer: a server that reads the request first
                # still alerts only after it.
                took = time.monotonic() - hs.trail.started
                wait = min(timeout, max(0.5, 4 * took))
                after = tls.after_handshake(conn, hs, payload, endpoint, wait, timeout)
            return replace(judge_attempt(label, hs, after), possession=hs.possession)
        finally:
            tls.close(conn)


def judge_attempt(label: str, hs: tls.Handshake, after: tls.After | None) -> Attempt:
    """Pure: one foreign-certificate attempt from what the handshake went through
    (OpenSSL's state trail) and, after a TLS 1.3 handshake, what the server did."""
    attempt = _judge_trail(label, hs, after)
    if attempt.outcome == "rejected" and hs.trail.early_bytes:
        return Attempt(
            label,
            "error",
            "the server's answer was already on the wire when its handshake flight ended, "
            "before our certificate went out (a pre-emptive alert): it says nothing about "
            "our certificate",
        )
    return attempt


def _judge_trail(label: str, hs: tls.Handshake, after: tls.After | None) -> Attempt:
    proof = hs.possession
    if not hs.sent_client_cert:
        if proof is not None and not hs.cert_requested:
            return Attempt(
                label,
                "accepted",
                "the server sent no CertificateRequest: it never asks a caller for a "
                f"certificate ({proof})",
            )
        if hs.cert_requested and tls.ST_WRITE_CLIENT_CERT in hs.trail.states:
            return Attempt(
                label,
                "error",
                "the server asked for a client certificate, but its CertificateRequest "
                "allows no signature algorithm our ECDSA certificate can sign with, so an "
                "empty Certificate went out: the server never saw a foreign certificate "
                f"({hs.failure or 'handshake ' + ('completed' if hs.completed else 'ended')})",
            )
        why = hs.failure or "the handshake did not get that far"
        return Attempt(
            label,
            "error",
            f"the handshake ended before our certificate was sent ({why}): "
            "not a rejection of the client certificate",
        )
    # We sent our certificate. OpenSSL does so only after a CertificateRequest and
    # the server's proof of its key; a trail that says otherwise proves nothing.
    if proof is None or not hs.cert_requested:
        return Attempt(
            label,
            "error",
            "our certificate went out without a CertificateRequest from a server that "
            "proved its key: not a rejection signature",
        )
    if hs.completed and hs.version != "TLSv1.3":
        return Attempt(
            label,
            "accepted",
            f"the server completed a {hs.version} handshake with our certificate",
        )
    if not hs.completed:
        return _judge_ending(label, hs.server_alert, hs.failure or "handshake failed")
    if after is None:
        return Attempt(label, "error", "nothing was read after the TLS 1.3 handshake")
    if after.kind == "data":
        when = "before our request" if after.before_request else "our request"
        return Attempt(label, "accepted", f"{after.detail} ({when})")
    # Before the alert branch: with a CertificateRequest, a server issues tickets only
    # after it verified our Certificate and Finished (OpenSSL; BoringSSL sends half-RTT
    # tickets only without client auth), so a certificate alert after one is a lie.
    if hs.session_ticket:
        return Attempt(
            label,
            "accepted",
            f"the server issued a session ticket after taking our certificate, then {after.detail}",
        )
    if after.kind == "alert" and not after.before_request:
        # A TLS layer that refuses our certificate alerts as soon as it reads our
        # flight; one that waited for our request let the application have it.
        return Attempt(
            label,
            "error",
            f"{after.detail}, but only after our request (none within the first "
            "moment after the handshake): the server may have taken our request under "
            "the foreign certificate before refusing; a rejecting sidecar alerts at once "
            "(rerun; if it repeats, the server is not rejecting at the TLS layer)",
        )
    if after.kind == "alert":
        return _judge_ending(label, after.alert, after.detail)
    if after.kind in ("eof", "reset") and not after.before_request:
        return Attempt(
            label,
            "accepted",
            "the server kept the TLS 1.3 session open after our certificate and closed it "
            f"only after our request ({after.detail}): its TLS layer took the certificate "
            "(a rejecting server sends a fatal alert at once)",
        )
    if after.kind == "close-notify":
        return Attempt(
            label,
            "accepted",
            f"{after.detail} after the handshake: a server that rejects a certificate "
            "sends a fatal alert",
        )
    return Attempt(
        label,
        "error",
        f"{after.detail} after our certificate: without a TLS alert this is not a "
        "rejection signature",
    )


def _judge_ending(label: str, alert: str | None, detail: str) -> Attempt:
    if alert is None:
        return Attempt(
            label,
            "error",
            f"{detail} after our certificate, without a TLS alert: not a rejection signature",
        )
    if alert in REJECTING_ALERTS:
        return Attempt(
            label,
            "rejected",
            f"TLS alert {alert} after the server requested and got our certificate",
        )
    return Attempt(
        label,
        "error",
        f"TLS alert {alert} after our certificate: it does not name the certificate",
    )
