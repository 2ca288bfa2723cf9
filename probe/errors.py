"""Why a probe could not observe something, or what the wire refused.

Modelled on httpx's exception tree: the class names the cause, and ``reason`` is
the sentence users read. Everything under ``ObservationError`` is inconclusive and
becomes an ``error`` verdict; nothing here ever becomes a pass by itself.

    ProbeError
    ├── ObservationError            could not observe (verdict: error)
    │   ├── NothingListening        TCP connection refused
    │   ├── TimedOut
    │   │   ├── ConnectTimedOut
    │   │   └── ReadTimedOut
    │   ├── DNSFailure
    │   ├── NetworkUnreachable
    │   ├── SidecarUnavailable      the probe's own sidecar/proxy/admin is not there
    │   └── ProtocolViolation       the peer answered something we cannot parse
    └── Rejected                    the peer refused us after we spoke (an observation)
        ├── ResetAfterRequest       TCP accepted, request sent, then reset/EOF, no response
        └── TLSAlert                the TLS peer sent an alert (name in ``alert``)
"""

from __future__ import annotations


class ProbeError(Exception):
    """Base of everything a check can observe going wrong."""

    kind = "probe-error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ObservationError(ProbeError):
    kind = "inconclusive"


class NothingListening(ObservationError):
    kind = "nothing-listening"


class TimedOut(ObservationError):
    kind = "timeout"


class ConnectTimedOut(TimedOut):
    kind = "connect-timeout"


class ReadTimedOut(TimedOut):
    kind = "read-timeout"


class DNSFailure(ObservationError):
    kind = "dns"


class NetworkUnreachable(ObservationError):
    kind = "network"


class SidecarUnavailable(ObservationError):
    kind = "sidecar-unavailable"


class ProtocolViolation(ObservationError):
    kind = "protocol"


class Rejected(ProbeError):
    kind = "rejected"


class ResetAfterRequest(Rejected):
    kind = "reset-after-request"


class TLSAlert(Rejected):
    kind = "tls-alert"

    def __init__(self, reason: str, alert: str) -> None:
        super().__init__(reason)
        self.alert = alert
