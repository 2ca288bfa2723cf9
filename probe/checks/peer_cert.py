"""``peer-cert``: is the certificate the workload's sidecar presents a valid
X.509-SVID for the expected identity, chaining to the mesh root?

Only a certificate whose key the server proved it holds is judged (TLS 1.3
CertificateVerify + Finished, TLS 1.2 ECDHE ServerKeyExchange signature or
Finished: ``tls.Handshake.possession``); a chain shown in a handshake that failed
before that proof could be anyone's copy. Without a trust bundle (rootCertFile)
"chains to the mesh root" cannot be proven, so the best outcome is ``error``."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, ClassVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from probe import tls
from probe.checks.base import Check, RunContext, Scope, make_result
from probe.checks.common import istio_sni, mesh_roots, sidecar_tls_skip, tls_context
from probe.errors import ObservationError
from probe.results import Result, Verdict
from probe.svid import SvidJudgement, judge_svid

if TYPE_CHECKING:
    from cryptography import x509

    from probe.model import Endpoint, Target

_SHA256 = hashes.SHA256()
_HALF_SECOND = dt.timedelta(milliseconds=500)


class PeerCertCheck(Check):
    name = "peer-cert"
    scope: ClassVar[Scope] = Scope.ENDPOINT
    summary = "the server's certificate is a valid X.509-SVID for the expected identity"

    def skip_reason(self, ctx: RunContext, target: Target | None) -> str | None:
        assert target is not None
        return sidecar_tls_skip(
            target,
            no_sidecar="target has no sidecar: no mesh certificate to inspect",
            disabled="mTLS is DISABLEd at this port: the sidecar serves no certificate here",
        )

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        assert target is not None and endpoint is not None
        roots = mesh_roots(ctx)
        context = tls_context(ctx, target, None, "anonymous")
        conn, hs = tls.connect_tls(endpoint, context, ctx.settings.timeout, istio_sni(target))
        tls.close(conn)
        if not hs.chain and hs.unparseable is None:
            why = hs.failure or "handshake completed without a server certificate"
            raise ObservationError(f"no certificate captured from {endpoint}: {why}")
        proof = hs.possession
        if proof is None:
            return self._unproven(target, endpoint, hs)
        if not hs.chain:
            return make_result(
                self.name,
                target,
                endpoint,
                Verdict.FAIL,
                f"the server presented a certificate that is not an X.509-SVID: {hs.unparseable}",
                expected="valid SVID",
                observed="unparseable certificate",
                evidence={"tls_version": hs.version, "alpn": hs.alpn, "possession": proof},
            )
        j = _judge(ctx, target, hs, roots)
        evidence = dict(j.evidence)
        evidence.update({"tls_version": hs.version, "alpn": hs.alpn, "possession": proof})
        if hs.unparseable is not None:
            evidence["unparseable"] = hs.unparseable
        expected = f"valid SVID {target.identity}" if target.identity else "valid SVID"
        if target.identity is None:
            evidence["identity_note"] = "no identity in the targets file: identity not compared"
        if j.ok and roots is None:
            observed = f"SVID {evidence.get('spiffe_id')}, chain unverified"
            reason = (
                "no rootCertFile in the targets file: cannot verify that "
                f"{evidence.get('spiffe_id')} chains to the mesh root (set rootCertFile to the "
                "mesh root, e.g. root-cert.pem of the istio-ca-root-cert ConfigMap); the "
                "SVID rules pass"
            )
            verdict = Verdict.ERROR
        elif j.ok:
            observed = f"valid SVID {evidence.get('spiffe_id')}"
            reason = (
                f"valid X.509-SVID {evidence.get('spiffe_id')}, expires {evidence['not_after']}, "
                f"chains to the mesh root; key possession proven ({proof})"
            )
            verdict = Verdict.PASS
        else:
            observed = "invalid SVID"
            reason = "; ".join(j.violations)
            verdict = Verdict.FAIL
        return make_result(
            self.name,
            target,
            endpoint,
            verdict,
            reason,
            expected=expected,
            observed=observed,
            evidence=evidence,
        )

    def _unproven(self, target: Target, endpoint: Endpoint, hs: tls.Handshake) -> Result:
        """A chain was shown but the server never proved it holds the key."""
        evidence: dict[str, object] = {
            # not "tls_version": no TLS session was established with a key holder
            "negotiated_version": hs.version,
            "possession": None,
            "handshake_states": hs.trail.states[-4:],
        }
        if hs.chain:
            evidence["shown_fingerprint_sha256"] = hs.chain[0].fingerprint(_SHA256).hex()
        failure = hs.failure or "the handshake did not finish"
        if hs.signature_rejected:
            verdict, observed = Verdict.FAIL, "key not held"
            reason = (
                f"the server showed a certificate but its signature over this handshake does "
                f"not verify with that certificate's key ({failure}): it does not hold the "
                "key (a replayed certificate)"
            )
        else:
            verdict, observed = Verdict.ERROR, "key possession not proven"
            reason = (
                f"the server showed a certificate but the handshake ended ({failure}) before "
                "it proved it holds the key: a shown certificate proves nothing, so it "
                "was not judged"
            )
        return make_result(
            self.name,
            target,
            endpoint,
            verdict,
            reason,
            expected="valid SVID, key possession proven",
            observed=observed,
            evidence=evidence,
        )


def _clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _judge(
    ctx: RunContext, target: Target, hs: tls.Handshake, roots: list[x509.Certificate] | None
) -> SvidJudgement:
    """The SVID judgement of the chain ``hs`` showed, made once per run for each distinct
    chain, expectation and second: a pod serves the same chain on every port it is
    listed with. The key holds everything the judgement reads (the judgement is a pure
    function of it), so two chains, identities or trust bundles never share one. The
    proof of possession is per handshake and was checked before this is called."""
    # Judged at the middle of the current second, the cache's bucket: certificate times
    # are whole seconds, so that judges alike to any instant inside the second (and at
    # its very start, the stricter way). Judging at the second's start instead passed a
    # leaf for up to a second after its notAfter.
    second = _clock().replace(microsecond=0)
    now = second + _HALF_SECOND
    key = (
        tuple(c.public_bytes(Encoding.DER) for c in hs.chain),
        target.identity,
        ctx.targets.trust_domain,
        None if roots is None else tuple(r.public_bytes(Encoding.DER) for r in roots),
        second,
        ctx.settings.min_remaining,
        ctx.settings.max_lifetime,
    )
    judged = ctx.shared("peer-cert-judgements", _Judged).of(second)
    j = judged.get(key)
    if j is None:
        j = judge_svid(
            hs.chain,
            expected_identity=target.identity,
            trust_domain=ctx.targets.trust_domain,
            roots=roots,
            now=now,
            min_remaining=ctx.settings.min_remaining,
            max_lifetime=ctx.settings.max_lifetime,
            native=hs.native,
        )
        judged[key] = j
    return j


class _Judged:
    """The current second's judgements. A hit needs the same second, so earlier ones are
    dropped: memory stays bounded by one second's checks, however long the run. Races
    between threads cost at most a judgement made twice (the second is in every key)."""

    def __init__(self) -> None:
        self._second: dt.datetime | None = None
        self._entries: dict[object, SvidJudgement] = {}

    def of(self, second: dt.datetime) -> dict[object, SvidJudgement]:
        if self._second != second:
            self._second, self._entries = second, {}
        return self._entries
