"""``mesh``: a call through the probe's sidecar reaches the target over mTLS, with
the right identities on both ends (proven by the last XFCC element)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from probe.checks.base import Check, RunContext, Scope, make_result
from probe.checks.meshcall import call
from probe.model import Expect, Protocol
from probe.results import Result, Verdict
from probe.xfcc import XfccError, trusted_element

if TYPE_CHECKING:
    from probe.model import Endpoint, Target


class MeshCheck(Check):
    name = "mesh"
    scope: ClassVar[Scope] = Scope.TARGET
    summary = "calls through the sidecar arrive over mTLS with the expected identities"

    def skip_reason(self, ctx: RunContext, target: Target | None) -> str | None:
        assert target is not None
        if target.protocol is Protocol.TCP:
            return (
                "tcp port: the mesh call is HTTP; plaintext, peer-cert and foreign-client "
                "cover this port"
            )
        return None

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        assert target is not None
        source_id = ctx.targets.source.identity
        meshed = target.expect in (Expect.STRICT, Expect.PERMISSIVE)
        if meshed:
            expected = f"mTLS {source_id or '?'} -> {target.identity or '?'}"
        else:
            expected = "response (plaintext: target has no mTLS here)"
        resp = call(ctx, target)
        evidence: dict[str, object] = {"status": resp.status, "server": resp.server}

        def result(verdict: Verdict, observed: str, reason: str) -> Result:
            return make_result(
                self.name,
                target,
                None,
                verdict,
                reason,
                expected=expected,
                observed=observed,
                evidence=evidence,
            )

        if resp.sidecar_error:
            evidence["sidecar_error"] = resp.sidecar_error
            return result(Verdict.FAIL, "sidecar error", resp.sidecar_error)
        if not meshed or not target.echo:
            if resp.echo is not None and resp.xfcc:
                evidence["xfcc_elements"] = len(resp.xfcc)
            note = (
                "identity not observable (the target does not reflect headers: set echo: true "
                "for an echo responder)"
                if meshed
                else f"{target.expect.value}: plaintext expected, no identity to prove"
            )
            return result(Verdict.PASS, f"HTTP {resp.status}", f"HTTP {resp.status}; {note}")
        if resp.echo is None:
            return result(
                Verdict.ERROR,
                "not an echo response",
                f"HTTP {resp.status} but the body is not the echo responder's JSON: "
                "cannot see which identities were used",
            )
        if not resp.xfcc:
            return result(
                Verdict.FAIL,
                "no XFCC",
                "the app received no X-Forwarded-Client-Cert: the call was not mTLS "
                "(plaintext through the sidecar, or the server has no sidecar)",
            )
        try:
            last = trusted_element(resp.xfcc)
        except XfccError as exc:
            evidence["xfcc_raw_bytes"] = sum(len(v) for v in resp.xfcc)
            return result(Verdict.ERROR, "malformed XFCC", f"the XFCC header is malformed ({exc})")
        assert last is not None
        evidence["xfcc_trusted"] = last.summary()
        evidence["xfcc_elements"] = len(resp.xfcc[0].split(",")) if len(resp.xfcc) == 1 else None
        problems = []
        if target.identity is not None and target.identity not in last.by:
            problems.append(
                f"the server's sidecar identifies as {', '.join(last.by) or 'nothing'} "
                f"(By=), expected {target.identity}"
            )
        if source_id is not None and source_id not in last.uri:
            problems.append(
                f"the client identity seen by the server is {', '.join(last.uri) or 'none'} "
                f"(URI=), expected {source_id}"
            )
        observed = f"mTLS {'/'.join(last.uri) or '?'} -> {'/'.join(last.by) or '?'}"
        if problems:
            return result(Verdict.FAIL, observed, "; ".join(problems))
        notes = []
        if target.identity is None:
            notes.append("target identity not given: By= not compared")
        if source_id is None:
            notes.append("source identity not given: URI= not compared")
        reason = f"mTLS proven by the last XFCC element: {observed}"
        return result(Verdict.PASS, observed, reason + (f" ({'; '.join(notes)})" if notes else ""))
