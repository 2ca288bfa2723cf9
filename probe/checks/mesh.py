"""``mesh``: a call through the probe's sidecar reaches the target over mTLS, with
the right identities on both ends.

Verdicts, by what the target's port is expected to do:

- STRICT / PERMISSIVE (a server sidecar, auto-mTLS), echo targets: pass only when the
  app reflects this very request (our marker header came back; httpbin, go-httpbin,
  Istio's echo or ``mtlsprobe serve``, see probe.reflect) and the last XFCC element
  carries exactly one ``By=``, the target's identity, and exactly one ``URI=``, the
  probe's, and, when the probe's sidecar admin shows the probe's certificate, exactly
  one ``Hash=`` equal to the SHA-256 of one it holds (an app reached in plaintext can
  fabricate the public SPIFFE IDs, not that; none or another hash is a fail, fetched
  again once first; a hash a renewed sidecar may have retired is an error). No XFCC
  means the call was not mTLS (fail); two ``By=``/``URI=`` values are not an
  X.509-SVID (fail).
- STRICT / PERMISSIVE, targets that do not reflect headers and every tcp port: an
  app's answer proves reachability only. The probe's own sidecar is the witness
  (probe.clusterstats): TLS counted on the target's outbound cluster for this call is
  a pass that says identity was not observable; plaintext counted is a fail; no
  evidence is an error ("reachable; mTLS not observable"), never a pass.
- DISABLE / NONE (plaintext expected): pass on an app response; XFCC at an echo target,
  or TLS counted by the sidecar, means the call was mTLS after all (fail: stale
  expectation).
- The sidecar answering itself (503 ``reset reason: …``, 502) is a fail carrying
  Envoy's words; ``RBAC: access denied`` and upstream timeouts are errors (the mTLS
  layer was not what stopped the call, so nothing about it was observed).
- tcp ports: bytes written through the sidecar (an HTTP CONNECT tunnel with an
  explicit ``sidecarProxy``) come back from the app; no XFCC there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from probe.checks.base import Check, RunContext, Scope, make_result
from probe.checks.meshcall import MeshResponse, call, witnessed
from probe.checks.meshtcp import TcpMeshResponse, tcp_call
from probe.checks.owncerts import own_certs_for
from probe.clusterstats import Transport, TransportSeen
from probe.model import DEFAULT_ECHO_PATH, Expect, Protocol
from probe.reflect import MARKER_HEADER
from probe.results import Result, Verdict
from probe.xfcc import (
    HashOutcome,
    OwnCerts,
    XfccError,
    compare_hash,
    identity_problems,
    join_values,
    parse_xfcc,
)

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


def judge(
    target: Target,
    source_id: str | None,
    resp: MeshResponse,
    seen: TransportSeen | None = None,
    own: OwnCerts | None = None,
) -> Judgement:
    """Pure: what the response (and the sidecar's counters around the call: all that
    non-reflecting targets have; at echo targets, plaintext counted unmasks a replayed or
    fabricated XFCC and TLS counted a hidden one) prove about this target. ``own``: the probe's
    own certificates, which the trusted element's ``Hash=`` must name."""
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

    if not target.echo:
        if resp.status >= 500:
            return Judgement(
                Verdict.ERROR,
                f"HTTP {resp.status}",
                f"the app answered HTTP {resp.status}: a server error proves nothing about "
                "the connection",
                ev,
            )
        return _by_transport(target, f"HTTP {resp.status} from the app", seen, ev)
    if resp.reflection is None:
        return Judgement(
            Verdict.ERROR,
            "not an echo response",
            f"HTTP {resp.status} from GET {target.echo_path or DEFAULT_ECHO_PATH} but not a "
            "header reflection this probe reads (mtlsprobe serve, httpbin, go-httpbin, "
            "Istio's echo): cannot see which identities were used (is echo: true right, "
            "or does the app need echoPath?)",
            ev,
        )
    ev["app"] = resp.reflection.app.value
    if resp.reflection.name is not None:
        ev["name"] = resp.reflection.name
    if not resp.reflected:
        return Judgement(
            Verdict.ERROR,
            "not this request",
            f"the {resp.reflection.app.value} reflection does not show the marker header "
            f"{MARKER_HEADER} this request carried: it reflects some other request (a cache "
            "or a canned page), so its XFCC proves nothing",
            ev,
        )
    if seen is not None:
        ev["transport"] = {"seen": seen.transport.value, **seen.evidence}
    plain = seen is not None and seen.transport is Transport.PLAINTEXT
    tls = seen is not None and seen.transport is Transport.TLS
    if not resp.xfcc:
        if not meshed and tls:
            assert seen is not None
            return Judgement(
                Verdict.FAIL,
                "TLS at the sidecar",
                f"the app shows no XFCC, but {seen.how}: the call was mTLS, so the "
                f"expectation ({target.expect.value}) is stale, or the app hides XFCC",
                ev,
            )
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
        elements = parse_xfcc(join_values(resp.xfcc))
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
    problems = identity_problems(last, target.identity, source_id)
    if problems:
        return Judgement(Verdict.FAIL, observed, "; ".join(problems), ev)
    outcome, hash_text = compare_hash(
        last, own or OwnCerts(unknown="the probe's own certificate was not fetched")
    )
    ev["xfcc_hash"] = hash_text if outcome is not HashOutcome.MATCH else f"matched: {hash_text}"
    if outcome is HashOutcome.MISMATCH:
        return Judgement(Verdict.FAIL, observed, hash_text, ev)
    if outcome is HashOutcome.UNDECIDABLE:
        return Judgement(Verdict.ERROR, observed, f"could not observe: {hash_text}", ev)
    if plain:
        assert seen is not None
        return Judgement(
            Verdict.FAIL,
            f"{observed}; plaintext at the sidecar",
            f"the app shows an XFCC element naming both identities, but {seen.how}: no "
            "server sidecar wrote it for this call (an app replaying or fabricating XFCC)",
            ev,
        )
    notes = []
    if outcome is HashOutcome.NOT_COMPARED:
        notes.append(f"Hash= {hash_text}")
    if target.identity is None:
        notes.append("target identity not given: By= not compared")
    if source_id is None:
        notes.append("source identity not given: URI= not compared")
    reason = f"mTLS proven by the last XFCC element: {observed}" + (
        ", written for this probe's certificate (Hash=)" if outcome is HashOutcome.MATCH else ""
    )
    return Judgement(
        Verdict.PASS, observed, reason + (f" ({'; '.join(notes)})" if notes else ""), ev
    )


def _by_transport(
    target: Target, answered: str, seen: TransportSeen | None, ev: dict[str, Any]
) -> Judgement:
    """An answer that shows no identities: the sidecar's counters decide (rule: a
    response proves reachability, never mTLS)."""
    meshed = target.expect in (Expect.STRICT, Expect.PERMISSIVE)
    transport = seen.transport if seen is not None else Transport.UNKNOWN
    how = seen.how if seen is not None else "the probe's sidecar was not asked"
    if seen is not None:
        ev["transport"] = {"seen": transport.value, **seen.evidence}
    if transport is Transport.TLS:
        if meshed:
            return Judgement(
                Verdict.PASS,
                f"{answered}; TLS at the sidecar",
                f"{answered}; {how}; identities not observable here ("
                + (
                    "no XFCC on a tcp port: peer-cert shows the server's)"
                    if target.protocol is Protocol.TCP
                    else "no XFCC: a header-reflecting app with echo: true would show both)"
                ),
                ev,
            )
        return Judgement(
            Verdict.FAIL,
            f"{answered}; TLS at the sidecar",
            f"{answered}, but expected plaintext ({target.expect.value}) and {how}: the "
            "expectation is stale "
            "(the target has a sidecar doing mTLS, or the policy changed)",
            ev,
        )
    if transport is Transport.PLAINTEXT:
        if meshed:
            return Judgement(
                Verdict.FAIL,
                f"{answered}; plaintext at the sidecar",
                f"{answered}, but {how}; {target.expect.value} with auto-mTLS expects mTLS "
                "(a DestinationRule with tls DISABLE, or an endpoint without the sidecar label?)",
                ev,
            )
        return Judgement(
            Verdict.PASS,
            f"{answered}; plaintext",
            f"{answered}; {how}, as {target.expect.value} expects",
            ev,
        )
    if meshed:
        return Judgement(
            Verdict.ERROR,
            f"{answered}; transport not observed",
            f"reachable; mTLS not observable: {answered} proves reachability only, and {how}",
            ev,
        )
    return Judgement(
        Verdict.PASS,
        answered,
        f"{answered}; {target.expect.value}: plaintext expected (transport not observed: {how})",
        ev,
    )


def judge_tcp(
    target: Target, resp: TcpMeshResponse, seen: TransportSeen | None = None
) -> Judgement:
    """Pure: a tcp port has no XFCC. Our own bytes coming back (or the app's reply)
    show the path works; whether it was TLS only the sidecar's counters tell;
    identity on tcp ports is the peer-cert check's job."""
    ev: dict[str, Any] = {"connect_status": resp.connect_status, "reply_bytes": len(resp.reply)}
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
                "the tcp echo never answered through the sidecar: the connection was closed "
                "right after our bytes (the server side refused what the client sidecar sent)",
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
        return _by_transport(target, "our bytes came back through the sidecar", seen, ev)
    if target.echo:
        return Judgement(
            Verdict.ERROR,
            "unexpected reply",
            f"{len(resp.reply)} bytes came back that are not our own: not the tcp echo "
            "(is echo: true right for this target?)",
            ev,
        )
    return _by_transport(
        target, f"the app answered {len(resp.reply)} bytes through the sidecar", seen, ev
    )


class MeshCheck(Check):
    name = "mesh"
    scope: ClassVar[Scope] = Scope.TARGET
    summary = "calls through the sidecar arrive over mTLS with the expected identities"

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        assert target is not None
        source_id = ctx.targets.source.identity
        if target.protocol is Protocol.TCP:
            tcp_resp, seen = witnessed(ctx, target, True, lambda: tcp_call(ctx, target))
            j = judge_tcp(target, tcp_resp, seen)
        elif target.echo:
            # The counters too: an XFCC element (Hash= included) can be replayed by an
            # app that saw a genuine one; a call the sidecar sent in plaintext cannot.
            resp, seen = witnessed(ctx, target, False, lambda: call(ctx, target))
            j = judge(target, source_id, resp, seen, own=own_certs_for(ctx, resp))
        else:
            resp, seen = witnessed(ctx, target, False, lambda: call(ctx, target))
            j = judge(target, source_id, resp, seen)
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
