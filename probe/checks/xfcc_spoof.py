"""``xfcc-spoof``: a forged X-Forwarded-Client-Cert sent through the mesh must never
reach the app as something it could trust."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, ClassVar

from probe.checks.base import Check, RunContext, Scope, make_result
from probe.checks.meshcall import call
from probe.errors import ObservationError
from probe.model import Expect, Protocol
from probe.results import Result, Verdict
from probe.xfcc import XfccError, parse_xfcc

if TYPE_CHECKING:
    from probe.model import Endpoint, Target


class XfccSpoofCheck(Check):
    name = "xfcc-spoof"
    scope: ClassVar[Scope] = Scope.TARGET
    summary = "a forged XFCC header never reaches the app"

    def skip_reason(self, ctx: RunContext, target: Target | None) -> str | None:
        assert target is not None
        if target.protocol is Protocol.TCP:
            return "tcp port: no HTTP headers to forge"
        if not target.echo:
            return "target does not reflect headers (echo: false): cannot see what arrives"
        if target.expect not in (Expect.STRICT, Expect.PERMISSIVE):
            return f"{target.expect.value}: no server sidecar appends XFCC at this port"
        return None

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        assert target is not None
        td = ctx.targets.trust_domain
        marker = f"forged-{secrets.token_hex(6)}"
        forged = f"spiffe://{td}/ns/mtlsprobe-forged/sa/{marker}"
        by = target.identity or f"spiffe://{td}/ns/mtlsprobe-forged/sa/server"
        header = f'By={by};Hash={"0" * 64};Subject="";URI={forged}'
        resp = call(ctx, target, {"x-forwarded-client-cert": header})
        evidence: dict[str, object] = {"status": resp.status, "marker": forged}
        if resp.sidecar_error:
            raise ObservationError(f"could not observe: {resp.sidecar_error}")
        if resp.echo is None:
            raise ObservationError(
                f"HTTP {resp.status} but not the echo responder's JSON: cannot see the headers"
            )
        joined = ",".join(resp.xfcc)
        evidence["xfcc_values"] = len(resp.xfcc)
        expected, observed = "forged XFCC dropped", "forged XFCC dropped"
        if marker not in joined:
            return make_result(
                self.name,
                target,
                None,
                Verdict.PASS,
                "the forged XFCC element never reached the app",
                expected=expected,
                observed=observed,
                evidence=evidence,
            )
        try:
            elements = parse_xfcc(joined)
            last_forged = marker in "".join(elements[-1].uri + elements[-1].by)
        except XfccError:
            last_forged = False
        observed = "forged XFCC trusted" if last_forged else "forged XFCC forwarded"
        where = (
            "as the LAST (trusted) element: the app would believe the forged identity"
            if last_forged
            else "before the genuine element: apps that read the first element can be fooled"
        )
        return make_result(
            self.name,
            target,
            None,
            Verdict.FAIL,
            f"the forged identity {forged} reached the app {where}",
            expected=expected,
            observed=observed,
            evidence=evidence,
        )
