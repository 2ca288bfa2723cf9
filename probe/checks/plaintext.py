"""``plaintext``: can a client without a sidecar talk plaintext to the pod port?

STRICT must refuse, and only the enforcing proxy's own signature counts as a refusal:

- Envoy (an Istio sidecar in STRICT) reads our bytes, finds no filter chain and answers
  with an immediate TCP RST, no data (measured: ``ECONNRESET`` within milliseconds).
- A TLS-only server may instead answer with exactly one TLS alert record
  (``15 03 0x 00 02 <level 1|2> <description>``) and close.

Everything else is not a refusal: a FIN without data is what plaintext apps
(PostgreSQL, Kafka, Thrift) do with bytes they cannot parse (``error``); a reset that
comes only seconds later is an idle timeout, not a filter chain (``error``); bytes that
merely start like an alert are not one (``error``); any other answer means our
plaintext was accepted. We always send a real request first — a silent connect is held
open for 15 s by Envoy's listener filter timeout and proves nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from probe import netio
from probe.checks.base import Check, RunContext, Scope, make_result
from probe.model import Expect, Protocol
from probe.netio import Ending, Reply
from probe.results import Result, Verdict

if TYPE_CHECKING:
    from probe.model import Endpoint, Target

# For tcp ports: bytes an echo-style server answers and a TLS-only chain rejects.
TCP_PAYLOAD = b"mtlsprobe plaintext probe\n"

#: Envoy resets within milliseconds of reading unmatched bytes; a reset after this long
#: is something else (an app's idle timeout, a proxy giving up), not a filter chain.
PROMPT_RESET_S = 1.0

ALERT_RECORD_LEN = 7
_ALERT_LEVELS = {1: "warning", 2: "fatal"}
# RFC 8446 section 6 (and RFC 5246 for the older ones), by code.
_ALERT_NAMES = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    116: "certificate_required",
    120: "no_application_protocol",
}


def http_request(host: str) -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mtlsprobe\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii", "replace")


def tls_alert(data: bytes) -> str | None:
    """``"fatal protocol_version"`` when ``data`` is exactly one TLS alert record
    (content type 21, version 3.0-3.4, length 2, level warning|fatal), else None."""
    if (
        len(data) != ALERT_RECORD_LEN
        or data[0] != 21
        or data[1] != 3
        or data[2] > 4
        or data[3:5] != b"\x00\x02"
        or data[5] not in _ALERT_LEVELS
    ):
        return None
    return f"{_ALERT_LEVELS[data[5]]} {_ALERT_NAMES.get(data[6], f'alert {data[6]}')}"


def starts_like_alert(data: bytes) -> bool:
    """Bytes a reader could mistake for a TLS alert: type 21, then version major 3."""
    return data[:1] == b"\x15" and (len(data) == 1 or data[1] == 3)


def decided(data: bytes, is_http: bool) -> bool:
    """Whether the bytes so far settle the observation (stop reading). An alert is only
    an alert if the connection then ends, so alert-like bytes are read to the end."""
    if starts_like_alert(data):
        return len(data) > ALERT_RECORD_LEN
    return not is_http or b"\r\n" in data or len(data) >= 64


def expected_for(expect: Expect) -> str:
    return "refused" if expect is Expect.STRICT else "accepted"


@dataclass(frozen=True)
class Observation:
    """``observed`` is ``refused``, ``accepted`` or, when the wire showed neither, the
    kind of inconclusive answer (an ``error``)."""

    observed: str
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def conclusive(self) -> bool:
        return self.observed in ("refused", "accepted")


def classify(reply: Reply, is_http: bool) -> Observation:
    """Pure: what one plaintext exchange shows, from the bytes and how it ended."""
    # Timings stay out of reasons and evidence: two runs against the same wire must
    # report the same thing.
    data, ending = reply.data, reply.ending
    if not data:
        if ending is Ending.RESET:
            if reply.reset_at_send:
                # Nothing gets through, so plaintext is refused, but the server reset
                # before it could have read our bytes: say so, do not claim an answer.
                return Observation(
                    "refused",
                    "connection reset (TCP RST) before the request could be sent, no "
                    "response: the server resets every connection, not only plaintext",
                    {"ending": "reset", "reset_at": "send"},
                )
            if reply.elapsed <= PROMPT_RESET_S:
                return Observation(
                    "refused",
                    "connection reset (TCP RST) right after the request, no response",
                    {"ending": "reset"},
                )
            return Observation(
                "late-reset",
                f"reset only after more than {PROMPT_RESET_S:g}s, no response: not the "
                "enforcing proxy's immediate reset (an app or proxy timing out?)",
                {"ending": "reset"},
            )
        return Observation(
            "closed-without-answer",
            "closed without answer (FIN, no data), not a mesh refusal: Envoy resets; a "
            "plaintext app (PostgreSQL, Kafka, Thrift) closes like this on bytes it cannot "
            "parse",
            {"ending": "closed"},
        )
    alert = tls_alert(data)
    if alert is not None:
        if ending is Ending.OPEN:
            return Observation(
                "alert-held-open",
                f"sent a TLS alert record ({alert}) but kept the connection open: a TLS "
                "refusal closes",
                {"alert": alert, "ending": "open"},
            )
        return Observation(
            "refused",
            f"answered with one TLS alert record ({alert}, {data.hex()}) and closed: it "
            "speaks only TLS",
            {"alert": alert, "ending": ending.value},
        )
    if starts_like_alert(data):
        return Observation(
            "malformed-alert",
            f"answered {len(data)} bytes that start like a TLS alert but are not exactly one "
            f"alert record ({data[:16].hex()}): neither a refusal nor an application's answer",
            {"response_hex": data[:16].hex(), "ending": ending.value},
        )
    if is_http:
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        if not line.startswith("HTTP/"):
            # Something answered, but not HTTP: it still accepted our plaintext bytes.
            detail = f"non-HTTP bytes answered the plaintext request: {data[:40]!r}"
        else:
            detail = f"plaintext answered with {line.strip()[:120]}"
        return Observation("accepted", detail, {"response": line[:120]})
    return Observation(
        "accepted",
        f"plaintext bytes answered with {len(data)} bytes",
        {"response_bytes": len(data)},
    )


class PlaintextCheck(Check):
    name = "plaintext"
    scope: ClassVar[Scope] = Scope.ENDPOINT
    summary = "plaintext from outside the mesh is refused exactly where policy says STRICT"

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        assert target is not None and endpoint is not None
        timeout = ctx.settings.timeout
        expected = expected_for(target.expect)
        is_http = target.protocol is Protocol.HTTP
        payload = http_request(target.host) if is_http else TCP_PAYLOAD
        sock = netio.connect(endpoint, timeout)
        try:
            reply = netio.converse(
                sock, payload, endpoint, timeout, decided=lambda d: decided(d, is_http)
            )
        finally:
            sock.close()
        obs = classify(reply, is_http)
        if not obs.conclusive:
            return make_result(
                self.name,
                target,
                endpoint,
                Verdict.ERROR,
                obs.detail,
                expected=expected,
                observed=obs.observed,
                evidence={"error": obs.observed, **obs.evidence},
            )
        return self._judge(target, endpoint, expected, obs.observed, obs.detail, obs.evidence)

    def _judge(
        self,
        target: Target,
        endpoint: Endpoint,
        expected: str,
        observed: str,
        detail: str,
        evidence: Mapping[str, object],
    ) -> Result:
        if observed == expected:
            verdict = Verdict.PASS
            if observed == "refused":
                reason = f"refused as STRICT requires: {detail}"
            else:
                reason = f"accepted as {target.expect.value} allows: {detail}"
        else:
            verdict = Verdict.FAIL
            if observed == "accepted":
                reason = (
                    f"STRICT port accepted plaintext ({detail}): the port is not enforcing mTLS"
                )
            else:
                reason = (
                    f"expected {target.expect.value} to accept plaintext, but it was refused "
                    f"({detail}): the workload enforces mTLS that policy does not say"
                )
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
