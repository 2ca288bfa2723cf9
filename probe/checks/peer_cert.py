"""``peer-cert``: is the certificate the workload's sidecar presents a valid
X.509-SVID for the expected identity, chaining to the mesh root?"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, ClassVar

from probe import tls
from probe.checks.base import Check, RunContext, Scope, make_result
from probe.checks.common import istio_sni, mesh_roots, sidecar_tls_skip, tls_context
from probe.errors import ObservationError
from probe.results import Result, Verdict
from probe.svid import judge_svid

if TYPE_CHECKING:
    from probe.model import Endpoint, Target


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
        if hs.unparseable is not None and not hs.chain:
            return make_result(
                self.name,
                target,
                endpoint,
                Verdict.FAIL,
                f"the server presented a certificate that is not an X.509-SVID: {hs.unparseable}",
                expected="valid SVID",
                observed="unparseable certificate",
                evidence={"tls_version": hs.version, "alpn": hs.alpn},
            )
        if not hs.chain:
            why = hs.failure or "handshake completed without a server certificate"
            raise ObservationError(f"no certificate captured from {endpoint}: {why}")
        j = judge_svid(
            hs.chain,
            expected_identity=target.identity,
            trust_domain=ctx.targets.trust_domain,
            roots=roots,
            now=dt.datetime.now(dt.UTC),
            min_remaining=ctx.settings.min_remaining,
            max_lifetime=ctx.settings.max_lifetime,
        )
        evidence = dict(j.evidence)
        evidence.update({"tls_version": hs.version, "alpn": hs.alpn})
        if hs.unparseable is not None:
            evidence["unparseable"] = hs.unparseable
        expected = f"valid SVID {target.identity}" if target.identity else "valid SVID"
        if target.identity is None:
            evidence["identity_note"] = "no identity in the targets file: identity not compared"
        if j.ok:
            observed = f"valid SVID {evidence.get('spiffe_id')}"
            reason = (
                f"valid X.509-SVID {evidence.get('spiffe_id')}, expires {evidence['not_after']}"
                + ("" if roots is not None else " (chain not checked: no rootCertFile)")
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
