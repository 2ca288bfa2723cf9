"""``authz``: AuthorizationPolicy decisions observed with real calls, one result per
(source identity, target, request) of the targets file's ``authz:`` cases.

A probe runs only the cases whose ``source`` is the identity its own sidecar holds (read
from the sidecar's Envoy admin, not assumed); the others are ``skip``. Signatures:

- HTTP *denied*: status 403 with body exactly ``RBAC: access denied`` (Envoy's RBAC
  filter's local reply), on a call the probe's own sidecar counted as TLS on the target's
  outbound cluster: the answer came from behind a peer that proved the target's SPIFFE ID,
  not from an app without a sidecar (which would have been reached in plaintext, or not at
  all); and at an echo target (``echo: true``), whose app never answers that itself.
- HTTP *allowed*: the app reflects this very request (probe.reflect, our marker header).
- tcp *denied*: the connection closed right after our bytes with nothing back, over TLS
  (the counters), at an echo target (an echo app never closes silently; another app may
  close on bytes it cannot parse). tcp *allowed*: our bytes echoed.

Anything else (503, 502, a timeout, a reset before an answer, a 403 with another body, a
200 that is not a reflection of this request, even one reading "RBAC: access denied") is
``error`` naming what came back: never a pass.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from probe.authzmodel import AuthzCase, AuthzExpect
from probe.checks.base import Check, RunContext, Scope, make_result
from probe.clusterstats import Transport, TransportSeen
from probe.errors import ObservationError, SidecarUnavailable
from probe.model import Protocol
from probe.results import Result, Verdict

if TYPE_CHECKING:
    from probe.checks.meshtcp import TcpMeshResponse
    from probe.model import Endpoint, Target

RBAC_BODY = "RBAC: access denied"
MAX_BODY = 256 * 1024


@dataclass
class HttpAnswer:
    """What came back for one authz HTTP call through the probe's sidecar."""

    status: int
    body: bytes
    marker: str
    reflected: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    observed: str | None  # allow | deny, or what was seen instead (errors)
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _versus(case: AuthzCase, observed: AuthzExpect, what: str, ev: dict[str, Any]) -> Judgement:
    decided = f"policy {case.policy}" if case.policy != "default" else "no policy (default allow)"
    if observed is case.expect:
        return Judgement(
            Verdict.PASS, observed.value, f"{what}; {decided} expected {case.expect.value}", ev
        )
    return Judgement(
        Verdict.FAIL,
        observed.value,
        f"{what}, but {decided} says {case.expect.value}",
        ev,
    )


def _tls_note(seen: TransportSeen | None, ev: dict[str, Any]) -> tuple[bool, str]:
    if seen is None:
        return False, "the probe's sidecar was not asked"
    ev["transport"] = {"seen": seen.transport.value, **seen.evidence}
    return seen.transport is Transport.TLS, seen.how


def judge_http(
    case: AuthzCase, ans: HttpAnswer, seen: TransportSeen | None, echo: bool = True
) -> Judgement:
    """Pure: an HTTP answer to one case. ``echo``: the target's app reflects requests
    (only then is a 403 with Envoy's words known not to be the app's own answer)."""
    text = ans.body.decode("utf-8", "replace")
    ev: dict[str, Any] = {"status": ans.status, "policy": case.policy}
    if ans.reflected:
        return _versus(
            case, AuthzExpect.ALLOW, f"HTTP {ans.status}: the app reflected this request", ev
        )
    if ans.status == 403 and text.strip() == RBAC_BODY and not ans.truncated:
        tls, how = _tls_note(seen, ev)
        if not echo:
            return Judgement(
                Verdict.ERROR,
                "403 not attributable",
                f"HTTP 403 {RBAC_BODY!r}, but the app is not a header-reflecting echo (echo: "
                "false): it may answer these words itself, so a denial cannot be told apart",
                ev,
            )
        if not tls:
            return Judgement(
                Verdict.ERROR,
                "403 not attributable",
                f"HTTP 403 {RBAC_BODY!r}, but not shown to come from the target's sidecar: "
                f"{how} (an app without a sidecar can send these words too)",
                ev,
            )
        return _versus(
            case, AuthzExpect.DENY, f"HTTP 403 {RBAC_BODY!r} from the target's sidecar ({how})", ev
        )
    snippet = " ".join(text.split())[:120]
    ev["body"] = snippet
    if ans.status == 403:
        why = "a 403 without Envoy's RBAC body: the app (or something else) refused, not the policy"
    elif RBAC_BODY.lower() in text.lower():
        why = f"HTTP {ans.status} reading {RBAC_BODY!r}: Envoy's RBAC denial is a 403, not this"
    elif ans.status in (502, 503, 504):
        why = (
            f"the sidecar answered HTTP {ans.status} ({snippet or 'empty body'}): the call "
            "never reached a decision"
        )
    else:
        why = (
            f"HTTP {ans.status} that does not reflect this request (not the echo, or another "
            "path): allow not provable"
        )
    return Judgement(Verdict.ERROR, f"HTTP {ans.status}", why, ev)


def judge_tcp(
    case: AuthzCase, target: Target, resp: TcpMeshResponse, seen: TransportSeen | None
) -> Judgement:
    """Pure: a tcp round trip for one case."""
    ev: dict[str, Any] = {"reply_bytes": len(resp.reply), "policy": case.policy}
    if resp.sidecar_error is not None:
        ev["sidecar_error"] = resp.sidecar_error
        return Judgement(
            Verdict.ERROR,
            "sidecar error",
            f"the sidecar answered {resp.sidecar_error!r}: the connection never reached a decision",
            ev,
        )
    if resp.echoed:
        return _versus(
            case, AuthzExpect.ALLOW, "our bytes came back: the connection was allowed", ev
        )
    if resp.closed:
        tls, how = _tls_note(seen, ev)
        if not target.echo:
            return Judgement(
                Verdict.ERROR,
                "closed without reply",
                "closed after our bytes, but the app is not a tcp echo (echo: false): it may "
                "close on bytes it cannot parse, so a denial cannot be told apart",
                ev,
            )
        if not tls:
            return Judgement(
                Verdict.ERROR,
                "closed, not attributable",
                f"closed after our bytes, but not shown to be over TLS to the target: {how}",
                ev,
            )
        return _versus(
            case,
            AuthzExpect.DENY,
            f"closed right after our bytes, nothing back, over TLS ({how})",
            ev,
        )
    return Judgement(
        Verdict.ERROR,
        "unexpected reply",
        f"{len(resp.reply)} bytes came back that are not our own: neither allowed nor denied",
        ev,
    )


# ---- the probe's own identity ------------------------------------------------------------------


@dataclass
class _Identity:
    value: str | None = None
    problem: str | None = None


def own_identity(ctx: RunContext) -> str:
    """The SPIFFE ID the probe's sidecar holds (its Envoy admin). Raises
    SidecarUnavailable when it cannot be read or contradicts ``source.identity``."""
    import threading

    lock = ctx.shared("authz-identity-lock", threading.Lock)
    with lock:
        got = ctx.shared("authz-identity", _Identity)
        if got.value is None and got.problem is None:
            got.value, got.problem = _read_identity(ctx)
    if got.value is None:
        raise SidecarUnavailable(got.problem or "the probe's identity is unknown")
    return got.value


def _read_identity(ctx: RunContext) -> tuple[str | None, str | None]:
    from probe.checks.self_cert import admin_url, fetch_secrets, uri_sans

    try:
        dumped = fetch_secrets(ctx)
    except ObservationError as exc:
        return None, f"the probe's own identity is not known ({exc.reason})"
    held = sorted(
        {
            u
            for chain in dumped.mtls_chains()  # what its mTLS presents, not side credentials
            if chain
            for u in uri_sans(chain[0])
            if u.startswith("spiffe://")
        }
    )
    declared = ctx.targets.source.identity
    if declared is not None:
        if declared in held:
            return declared, None
        return None, (
            f"the probe's sidecar ({admin_url(ctx)}) holds {', '.join(held) or 'no SPIFFE ID'}, "
            f"not source.identity {declared}"
        )
    if len(held) == 1:
        return held[0], None
    return None, (
        f"the probe's sidecar ({admin_url(ctx)}) holds {len(held)} SPIFFE IDs: set "
        "source.identity to say which is the probe's"
    )


# ---- calls ------------------------------------------------------------------------------------


def http_call(ctx: RunContext, target: Target, case: AuthzCase) -> HttpAnswer:
    """``case.method case.path`` to the service through the sidecar, with our marker."""
    import httpx

    from probe.checks.common import http_client
    from probe.checks.meshcall import require_sidecar
    from probe.errors import ConnectTimedOut, ProtocolViolation, ReadTimedOut
    from probe.reflect import MARKER_HEADER, parse_reflection

    require_sidecar(ctx)
    client = http_client(ctx, via_sidecar=True)
    marker = secrets.token_hex(8)
    url = f"http://{target.host}:{target.port}{case.path}"
    dest = f"{target.host}:{target.port}"
    try:
        with client.stream(str(case.method), url, headers={MARKER_HEADER: marker}) as resp:
            body = b""
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY:
                    break
            status = resp.status_code
    except httpx.ConnectTimeout:
        raise ConnectTimedOut(f"connect to {dest} timed out") from None
    except httpx.ConnectError as exc:
        raise SidecarUnavailable(f"cannot reach {dest} through the sidecar: {exc}") from None
    except httpx.TimeoutException:
        raise ReadTimedOut(f"no response from {dest} within {ctx.settings.timeout:g}s") from None
    except httpx.TransportError as exc:
        raise ProtocolViolation(
            f"the connection to {dest} broke without an HTTP response ({type(exc).__name__})"
        ) from None
    out = HttpAnswer(status, body[:MAX_BODY], marker, truncated=len(body) > MAX_BODY)
    if not out.truncated:
        refl = parse_reflection(out.body)
        out.reflected = refl is not None and marker in refl.values(MARKER_HEADER)
    return out


class AuthzCheck(Check):
    name = "authz"
    scope: ClassVar[Scope] = Scope.CASE
    summary = "AuthorizationPolicy allow/deny per (source identity, target, request)"

    def cases(self, ctx: RunContext, target: Target) -> Sequence[AuthzCase]:
        return target.authz

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        raise NotImplementedError("authz runs per case (run_case)")

    def run_case(self, ctx: RunContext, target: Target, case: Any) -> Result:
        from probe.checks.meshcall import witnessed
        from probe.checks.meshtcp import tcp_call

        assert isinstance(case, AuthzCase)
        me = own_identity(ctx)
        if case.source != me:
            return self._result(
                target,
                case,
                Judgement(
                    Verdict.SKIP,
                    None,
                    f"run by the probe with identity {case.source}, not this one ({me})",
                ),
            )
        if target.protocol is Protocol.TCP:
            tcp_resp, seen = witnessed(ctx, target, True, lambda: tcp_call(ctx, target))
            j = judge_tcp(case, target, tcp_resp, seen)
        else:
            ans, seen = witnessed(ctx, target, False, lambda: http_call(ctx, target, case))
            j = judge_http(case, ans, seen, echo=target.echo)
        return self._result(target, case, j)

    def _result(self, target: Target, case: AuthzCase, j: Judgement) -> Result:
        r = make_result(
            self.name,
            target,
            None,
            j.verdict,
            j.reason,
            expected=case.expect.value,
            observed=j.observed,
            evidence=j.evidence,
        )
        return replace(r, source=case.source, request=case.request)
