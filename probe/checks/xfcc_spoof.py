"""``xfcc-spoof``: a forged X-Forwarded-Client-Cert sent through the mesh must never
reach the app.

Istio's client sidecar sanitizes an XFCC the app sends, and a server sidecar drops
XFCC on non-mTLS connections; only a misconfiguration (ALWAYS_FORWARD_ONLY, FORWARD
to an app that trusts it) lets it through. The forged element carries a unique
marker in ``URI=`` (its ``By=`` names the target itself, the element an attacker
would forge), so its arrival is unmistakable, and the verdict
says whether it became the trusted LAST element (the worst case) or sat before the
genuine one. Targets without a server sidecar (NONE) are skipped: nothing there
could strip a forged header, and any client can send one straight to the app.

A pass rests on a positive sighting, never on absence alone: the app must reflect
this very request (the marker header came back, see probe.reflect) and, where the
server sidecar does mTLS (STRICT / PERMISSIVE), show the genuine element it appended
(naming the target and the probe, and, when the probe's sidecar shows its certificate,
that certificate's ``Hash=``).
An app that shows no XFCC at all there proves nothing (it may drop the header, or the
call was not mTLS): error. Header names are matched in any case, and the forged marker
in any case of its value.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import TYPE_CHECKING, ClassVar

from probe.checks.base import Check, RunContext, Scope, make_result
from probe.checks.meshcall import MeshResponse, call, witnessed
from probe.checks.owncerts import own_certs_for
from probe.clusterstats import Transport, TransportSeen
from probe.errors import ObservationError, ProtocolViolation
from probe.model import Expect, Protocol
from probe.reflect import MARKER_HEADER
from probe.results import Result, Verdict
from probe.spiffe import SpiffeIdError, istio_identity, parse_spiffe_id
from probe.xfcc import (
    HashOutcome,
    OwnCerts,
    XfccElement,
    XfccError,
    compare_hash,
    format_element,
    join_values,
    parse_xfcc,
)

if TYPE_CHECKING:
    from probe.model import Endpoint, Target

MAX_EVIDENCE_ELEMENTS = 8
FORGED_NS = "mtlsprobe-forged"


def forged_element(trust_domain: str, target: Target, marker: str) -> XfccElement:
    """An element shaped exactly like the server sidecar's, claiming a marker identity
    as the client. ``By=`` is the target's own identity when known, as an attacker would
    write it: a server (or app middleware) that drops only elements some other proxy
    wrote, and trusts those naming itself, must keep ours; the marker in ``URI=`` still
    tells ours apart from the genuine element."""
    ns = "default"
    if target.identity is not None:
        with contextlib.suppress(SpiffeIdError):
            ns = parse_spiffe_id(target.identity).namespace or ns
    elif "/" in target.name:
        ns = target.name.split("/", 1)[0]
    by = target.identity or istio_identity(trust_domain, ns, f"forged-{marker}")
    return XfccElement(
        by=(by,),
        hash=secrets.token_hex(32),
        subject="",
        uri=(istio_identity(trust_domain, FORGED_NS, marker),),
    )


def _not_genuine(el: XfccElement, expected_by: str | None, expected_uri: str | None) -> list[str]:
    """Why ``el`` cannot be the element the server sidecar appended for this call: it
    must name the target in ``By=`` and the probe in ``URI=`` (how many of each is the
    mesh check's judgement, not this one's)."""
    problems: list[str] = []
    for key, values, expected in (("By", el.by, expected_by), ("URI", el.uri, expected_uri)):
        if not values:
            problems.append(f"no {key}=")
        elif expected is not None and expected not in values:
            problems.append(f"{key}={'/'.join(values[:4])}, expected {expected}")
    return problems


def judge(
    marker: str,
    resp: MeshResponse,
    expect: Expect = Expect.STRICT,
    *,
    expected_by: str | None = None,
    expected_uri: str | None = None,
    own: OwnCerts | None = None,
    seen: TransportSeen | None = None,
) -> tuple[Verdict, str, str, dict[str, object]]:
    """Pure: (verdict, observed, reason, evidence). Raises ObservationError when the
    response cannot show what reached the app. On STRICT/PERMISSIVE the forged
    element's absence counts only next to the genuine element: the last one, naming
    the target in ``By=`` and the probe in ``URI=`` (each when known)."""
    if resp.sidecar_error is not None:
        raise ObservationError(
            f"could not observe: the call did not reach the app ({resp.sidecar_meaning}: "
            f"HTTP {resp.status} from the sidecar: {resp.sidecar_error})"
        )
    if resp.reflection is None:
        raise ProtocolViolation(
            f"HTTP {resp.status} but not a header reflection this probe reads (mtlsprobe "
            "serve, httpbin, go-httpbin, Istio's echo): cannot see the headers that reached "
            "the app"
        )
    if not resp.reflected:
        raise ProtocolViolation(
            f"the {resp.reflection.app.value} reflection does not show the marker header "
            f"{MARKER_HEADER} this request carried: it is not this request's, so it cannot "
            "show what reached the app"
        )
    ev: dict[str, object] = {
        "status": resp.status,
        "app": resp.reflection.app.value,
        "xfcc_values": len(resp.xfcc),
    }
    joined = join_values(resp.xfcc)
    try:
        elements: list[XfccElement] | None = parse_xfcc(joined) if joined.strip() else []
    except XfccError as exc:
        elements = None
        ev["xfcc_error"] = str(exc)
    if elements is not None:
        ev["xfcc_elements"] = [e.summary() for e in elements[-MAX_EVIDENCE_ELEMENTS:]]
    forged_seen = marker.lower() in "".join(resp.xfcc).lower()
    if not forged_seen and not elements and expect in (Expect.STRICT, Expect.PERMISSIVE):
        raise ObservationError(
            f"the app shows no XFCC at all, though the server's sidecar must append one on "
            f"an mTLS call ({expect.value}): either the app does not reflect it or the call "
            "was not mTLS; the forged header's absence proves nothing (the mesh check tells "
            "which)"
        )
    if not forged_seen and expect in (Expect.STRICT, Expect.PERMISSIVE):
        # An app that mangles what it shows (cut values, a proxy's own element) can hide
        # a forged element that did arrive: absence proves nothing without the genuine one.
        if elements is None:
            raise ObservationError(
                f"the app shows a malformed XFCC ({ev.get('xfcc_error')}): the server "
                "sidecar's genuine element is not visible, so the forged one's absence "
                "proves nothing"
            )
        problems = _not_genuine(elements[-1], expected_by, expected_uri)
        if problems:
            raise ObservationError(
                "the last XFCC element the app shows is not the server sidecar's genuine "
                f"element ({'; '.join(problems)}): the app or something in between alters "
                "XFCC, so the forged one's absence proves nothing"
            )
        # Genuine means written for this probe's certificate too: an app reached in
        # plaintext can fabricate By=/URI= (public names), not the certificate's hash.
        outcome, hash_text = compare_hash(
            elements[-1], own or OwnCerts(unknown="the probe's own certificate was not fetched")
        )
        ev["xfcc_hash"] = hash_text if outcome is not HashOutcome.MATCH else f"matched: {hash_text}"
        if outcome in (HashOutcome.MISMATCH, HashOutcome.UNDECIDABLE):
            raise ObservationError(
                f"{hash_text}: the last element is not the server sidecar's genuine one for "
                "this call, so the forged one's absence proves nothing"
            )
        if seen is not None and seen.transport is Transport.PLAINTEXT:
            # A genuine-looking element on a call the sidecar sent in plaintext was
            # replayed or made up by the app: it may hide a forged one as well.
            raise ObservationError(
                f"the app shows a genuine-looking XFCC element, but {seen.how}: no server "
                "sidecar wrote it for this call, so the forged one's absence proves nothing"
            )
    if not forged_seen:
        if elements is None:
            reason = "the forged element did not reach the app (its XFCC is malformed otherwise)"
        elif elements:
            reason = (
                f"the forged element never reached the app; it got {len(elements)} genuine "
                f"element(s), the last By={'/'.join(elements[-1].by) or '?'}"
            )
            if str(ev.get("xfcc_hash", "")).startswith("not compared"):
                reason += f" (Hash= {ev['xfcc_hash']})"
        else:
            reason = "the forged element never reached the app (no XFCC at all)"
        return Verdict.PASS, "forged XFCC dropped", reason, ev
    if elements is None:
        return (
            Verdict.FAIL,
            "forged XFCC forwarded",
            "the forged identity reached the app inside a malformed XFCC header",
            ev,
        )
    hits = [
        i
        for i, e in enumerate(elements)
        if any(marker.lower() in v.lower() for v in e.identities())
    ]
    ev["forged_positions"] = hits
    if hits and hits[-1] == len(elements) - 1:
        return (
            Verdict.FAIL,
            "forged XFCC trusted",
            "the forged identity reached the app as the LAST (trusted) XFCC element: the app "
            "would believe whoever sends the header (the server's inbound forwards client XFCC "
            "instead of appending its own element)",
            ev,
        )
    return (
        Verdict.FAIL,
        "forged XFCC forwarded",
        f"the forged identity reached the app at element {hits[0] + 1 if hits else '?'} of "
        f"{len(elements)}, before the genuine one: apps reading the first element are fooled "
        "(the client side forwards the app's XFCC; Istio's outbound sanitizes it)",
        ev,
    )


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
        if target.expect is Expect.NONE:
            return "no server sidecar: nothing strips a forged XFCC; the app must not trust it"
        return None

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        assert target is not None
        marker = secrets.token_hex(8)
        forged = forged_element(ctx.targets.trust_domain, target, marker)
        resp, seen = witnessed(
            ctx,
            target,
            False,
            lambda: call(ctx, target, {"x-forwarded-client-cert": format_element(forged)}),
        )
        verdict, observed, reason, evidence = judge(
            marker,
            resp,
            target.expect,
            expected_by=target.identity,
            expected_uri=ctx.targets.source.identity,
            own=own_certs_for(ctx, resp),
            seen=seen,
        )
        evidence = {"forged": forged.summary(), **evidence}
        return make_result(
            self.name,
            target,
            None,
            verdict,
            reason,
            expected="forged XFCC dropped",
            observed=observed,
            evidence=evidence,
        )
