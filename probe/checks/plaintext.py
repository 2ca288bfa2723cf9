"""``plaintext``: can a client without a sidecar talk plaintext to the pod port?

STRICT must refuse: Envoy accepts TCP, reads our bytes, finds no filter chain and
closes. We always send a real request first — a silent connect is held open for
15 s by Envoy's listener filter timeout and proves nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from probe import netio
from probe.checks.base import Check, RunContext, Scope, make_result
from probe.errors import ResetAfterRequest
from probe.model import Expect, Protocol
from probe.results import Result, Verdict

if TYPE_CHECKING:
    from probe.model import Endpoint, Target

# For tcp ports: bytes an echo-style server answers and a TLS-only chain rejects.
TCP_PAYLOAD = b"mtlsprobe plaintext probe\n"


def http_request(host: str) -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mtlsprobe\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii", "replace")


def is_tls_alert(data: bytes) -> bool:
    """A TLS record of type alert (21), protocol version 3.x."""
    return len(data) >= 3 and data[0] == 21 and data[1] == 3 and data[2] <= 4


def expected_for(expect: Expect) -> str:
    return "refused" if expect is Expect.STRICT else "accepted"


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
            try:
                data = netio.exchange(sock, payload, endpoint, timeout, want=12 if is_http else 1)
            except ResetAfterRequest as exc:
                return self._judge(target, endpoint, expected, "refused", exc.reason, {})
        finally:
            sock.close()
        if is_tls_alert(data):
            # A TLS-only server (not Envoy, which just closes) answering our plaintext
            # with an alert record has refused it, not accepted it.
            detail = f"answered with a TLS alert record ({data[:7].hex()}): it speaks only TLS"
            return self._judge(target, endpoint, expected, "refused", detail, {})
        if is_http:
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            if not line.startswith("HTTP/"):
                # Something answered, but not HTTP: it still accepted our plaintext bytes.
                detail = f"non-HTTP bytes answered the plaintext request: {data[:40]!r}"
            else:
                detail = f"plaintext answered with {line.strip()}"
            evidence: dict[str, object] = {"response": line[:120]}
        else:
            detail = f"plaintext bytes answered with {len(data)} bytes"
            evidence = {"response_bytes": len(data)}
        return self._judge(target, endpoint, expected, "accepted", detail, evidence)

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
