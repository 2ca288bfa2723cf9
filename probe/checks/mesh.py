"""``mesh``: a call through the probe's sidecar reaches the target over mTLS, with
the right identities on both ends (proven by the last XFCC element).

Verdicts, by what the target's port is expected to do:

- STRICT / PERMISSIVE (a server sidecar, auto-mTLS): pass only when an echo target
  shows a last XFCC element with ``URI=`` the probe's identity and ``By=`` the
  target's; no XFCC means the call was not mTLS (fail). Targets that do not reflect
  headers get a status-only pass (2xx-4xx from the app) that says identity was not
  observable; a 5xx from the app proves nothing (error).
- DISABLE / NONE (plaintext expected): pass on an app response; an XFCC element at an
  echo target means the call was mTLS after all, so the expectation is wrong (fail).
- The sidecar answering itself (503 ``reset reason: …``, 502) is a fail carrying
  Envoy's words; ``RBAC: access denied`` and upstream timeouts are errors (the mTLS
  layer was not what stopped the call, so nothing about it was observed).
- tcp ports: bytes written through the sidecar (an HTTP CONNECT tunnel with an
  explicit ``sidecarProxy``) must come back from a tcp echo; identity is not
  observable there (no XFCC), the reason says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from probe.checks.base import Check, RunContext, Scope, make_result
from probe.checks.meshcall import MeshResponse, TcpMeshResponse, call, tcp_call
from probe.model import Expect, Protocol
from probe.results import Result, Verdict
from probe.xfcc import XfccError, parse_xfcc

if TYPE_CHECKING:
    from probe.model import Endpoint, Target


@dataclass
class Judgement:
    verdict: Verdict
    observed: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def expected_text(target: Target, source_id: str | None) -> str:
    if target.expect in (Expect.STRICT, Expect.PERMISSIVE):
        return f"mTLS {source_id or '?'} -> {target.identity or '?'}"
    return f"plaintext response ({target.expect.value}: no mTLS at this port)"


def judge(target: Target, source_id: str | None, resp: MeshResponse) -> Judgement:
    """Pure: what the response proves about this target, given what policy expects."""
    ev: dict[str, Any] = {"status": resp.status, "server": resp.server}
    meshed = target.expect in (Expect.STRICT, Expect.PERMISSIVE)
    if resp.sidecar_error is not None:
        ev["sidecar_error"] = resp.sidecar_error
        words = f"{resp.sidecar_meaning}: HTTP {resp.status} from the sidecar: {resp.sidecar_error}"
        if resp.denied:
            return Judgement(
                Verdict.ERROR,
                "denied by authorization",
                f"could not observe mTLS: {words}; allow the probe's identity to call this service",
                ev,
            )
        if resp.timed_out:
            return Judgement(Verdict.ERROR, "upstream timeout", f"could not observe: {words}", ev)
        return Judgement(Verdict.FAIL, "sidecar error", words, ev)

    if resp.echo is None or not target.echo:
        if target.echo:
            return Judgement(
                Verdict.ERROR,
                "not an echo response",
                f"HTTP {resp.status} but the body is not the echo responder's JSON: "
                "cannot see which identities were used (is echo: true right for this target?)",
                ev,
            )
        if resp.status >= 500:
            return Judgement(
                Verdict.ERROR,
                f"HTTP {resp.status}",
                f"the app answered HTTP {resp.status}: a server error proves nothing about "
                "the connection",
                ev,
            )
        note = (
            "identity not observable (the target does not reflect headers; an echo "
            "responder with echo: true would prove mTLS and both identities)"
            if meshed
            else f"{target.expect.value}: plaintext expected, no identity to prove"
        )
        return Judgement(Verdict.PASS, f"HTTP {resp.status}", f"HTTP {resp.status}; {note}", ev)

    ev["name"] = resp.echo.get("name")
    if not resp.xfcc:
        if meshed:
            return Judgement(
                Verdict.FAIL,
                "no XFCC",
                "no XFCC: the call was not mTLS (the app received no X-Forwarded-Client-Cert; "
                "the client sidecar sent plaintext, or the server has no sidecar)",
                ev,
            )
        return Judgement(
            Verdict.PASS,
            "plaintext response",
            f"HTTP {resp.status} from the app with no XFCC, as {target.expect.value} expects",
            ev,
        )
    try:
        elements = parse_xfcc(",".join(resp.xfcc))
    except XfccError as exc:
        ev["xfcc_bytes"] = sum(len(v) for v in resp.xfcc)
        return Judgement(
            Verdict.ERROR, "malformed XFCC", f"the XFCC header the app got is malformed ({exc})", ev
        )
    last = elements[-1]
    ev["xfcc_trusted"] = last.summary()
    ev["xfcc_elements"] = len(elements)
    observed = f"mTLS {'/'.join(last.uri) or '?'} -> {'/'.join(last.by) or '?'}"
    if not meshed:
        return Judgement(
            Verdict.FAIL,
            observed,
            f"expected plaintext ({target.expect.value}) but the app received XFCC "
            f"By={'/'.join(last.by) or '?'}: the call was mTLS, so the expectation is stale "
            "(the target has a sidecar enforcing mTLS, or the policy changed)",
            ev,
        )
    problems = []
    if target.identity is not None and target.identity not in last.by:
        problems.append(
            f"the server's sidecar identifies as {', '.join(last.by) or 'nothing'} (By=), "
            f"expected {target.identity}"
        )
    if source_id is not None and source_id not in last.uri:
        problems.append(
            f"the server saw the client as {', '.join(last.uri) or 'nobody'} (URI=), "
            f"expected {source_id}"
        )
    if problems:
        return Judgement(Verdict.FAIL, observed, "; ".join(problems), ev)
    notes = []
    if target.identity is None:
        notes.append("target identity not given: By= not compared")
    if source_id is None:
        notes.append("source identity not given: URI= not compared")
    reason = f"mTLS proven by the last XFCC element: {observed}"
    return Judgement(
        Verdict.PASS, observed, reason + (f" ({'; '.join(notes)})" if notes else ""), ev
    )


def judge_tcp(target: Target, resp: TcpMeshResponse) -> Judgement:
    """Pure: a tcp port has no XFCC, so the round trip is all there is to see. Our own
    bytes coming back from an echo target prove the path through both sidecars works;
    identity on tcp ports is the peer-cert check's job."""
    ev: dict[str, Any] = {"connect_status": resp.connect_status, "reply_bytes": len(resp.reply)}
    meshed = target.expect in (Expect.STRICT, Expect.PERMISSIVE)
    how = "through the sidecar" + (" (mTLS between the sidecars)" if meshed else "")
    if resp.sidecar_error is not None:
        ev["sidecar_error"] = resp.sidecar_error
        words = f"{resp.sidecar_meaning}: {resp.sidecar_error}"
        if "timeout" in resp.sidecar_error.lower():
            return Judgement(Verdict.ERROR, "upstream timeout", f"could not observe: {words}", ev)
        return Judgement(Verdict.FAIL, "sidecar error", words, ev)
    if resp.closed:
        if target.echo:
            return Judgement(
                Verdict.FAIL,
                "closed without reply",
                f"the tcp echo never answered {how}: the connection was closed right after our "
                "bytes (the server side refused what the client sidecar sent)",
                ev,
            )
        return Judgement(
            Verdict.ERROR,
            "closed without reply",
            "the connection was closed after our bytes with no reply; the app may close on "
            "unknown input, so who closed it cannot be told (an echo target would show it)",
            ev,
        )
    if resp.echoed:
        note = (
            "identity not observable on a tcp port (no XFCC): peer-cert shows the server's"
            if meshed
            else f"{target.expect.value}: plaintext expected"
        )
        return Judgement(Verdict.PASS, "tcp round trip", f"our bytes came back {how}; {note}", ev)
    if target.echo:
        return Judgement(
            Verdict.ERROR,
            "unexpected reply",
            f"{len(resp.reply)} bytes came back that are not our own: not the tcp echo "
            "(is echo: true right for this target?)",
            ev,
        )
    return Judgement(
        Verdict.PASS,
        "tcp reply",
        f"the app answered {len(resp.reply)} bytes {how}; identity not observable on a tcp port",
        ev,
    )


class MeshCheck(Check):
    name = "mesh"
    scope: ClassVar[Scope] = Scope.TARGET
    summary = "calls through the sidecar arrive over mTLS with the expected identities"

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        assert target is not None
        source_id = ctx.targets.source.identity
        if target.protocol is Protocol.TCP:
            j = judge_tcp(target, tcp_call(ctx, target))
        else:
            j = judge(target, source_id, call(ctx, target))
        return make_result(
            self.name,
            target,
            None,
            j.verdict,
            j.reason,
            expected=expected_text(target, source_id),
            observed=j.observed,
            evidence=j.evidence,
        )
