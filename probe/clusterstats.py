"""The probe's own sidecar as the witness of one call's transport.

A tcp round trip or an HTTP status from an app that does not reflect headers shows
the target is reachable, not that the call was mTLS. The client sidecar knows: Envoy
counts, per upstream cluster, the connections it opens (``upstream_cx_total``,
``upstream_cx_connect_fail``, gauge ``upstream_cx_active``), the requests it sends
(``upstream_rq_total``) and the TLS handshakes it completes (``ssl.handshake``, after
the server certificate passed the cluster's validation context, SAN match included)
or fails (``ssl.connection_error``). Names verified against Envoy's cluster and TLS
statistics docs and the lab's real Envoy 1.40. Istio names the cluster for a service
port ``outbound|<port>||<host>``; the lab's probe sidecar does the same.

The counters are read before and after the call, with calls to the same cluster from
this process serialised, and judged here (pure):

- attribution: exactly one request (HTTP) or one established connection (tcp) went
  through the cluster meanwhile, so the delta is this call's;
- TLS, fresh connection: the cluster had no open connection before (always so for tcp:
  one upstream connection per downstream one), and every connection opened for the
  call completed a handshake;
- TLS, reused connection (HTTP): every connection the cluster ever opened completed a
  handshake or failed before carrying data (``cx_total == handshake +
  connection_error + connect_fail``), so whichever one carried the request was TLS;
- plaintext: a fresh connection with no handshake attempted, or a cluster that never
  completed a handshake yet carried the request.

Anything else is unknown, never TLS. What this proves is that the probe's sidecar
spoke TLS to a server whose certificate it accepted; that the server asked for the
client certificate is what the plaintext and peer-cert checks show. Istio records no
``cluster.outbound`` stats unless the probe pod asks (ProxyConfig
``proxyStatsMatcher.inclusionPrefixes: [cluster.outbound]``, which the Job specs and the
agent DaemonSet set); without them the transport is unknown and says so.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

_COUNTERS = {
    "upstream_cx_total": "cx_total",
    "upstream_cx_active": "cx_active",
    "upstream_cx_connect_fail": "connect_fail",
    "upstream_rq_total": "rq_total",
    "ssl.handshake": "handshake",
    "ssl.connection_error": "ssl_error",
}
ENABLE_HINT = (
    "Istio records these only when the probe pod's ProxyConfig asks for them: annotation "
    "proxy.istio.io/config: '{proxyStatsMatcher: {inclusionPrefixes: [cluster.outbound]}}'"
)


def cluster_name(host: str, port: int) -> str:
    """Istio's outbound cluster for a service port (no subset)."""
    return f"outbound|{port}||{host}"


def stats_params(cluster: str) -> dict[str, str]:
    """Query for Envoy admin ``/stats``: just this cluster's counters, as JSON."""
    names = "|".join(re.escape(k) for k in _COUNTERS)
    return {"format": "json", "filter": f"^cluster\\.{re.escape(cluster)}\\.({names})$"}


@dataclass(frozen=True)
class Counters:
    cx_total: int
    cx_active: int
    connect_fail: int
    rq_total: int
    handshake: int
    ssl_error: int


def parse_counters(doc: Any, cluster: str) -> Counters | None:
    """The cluster's counters from ``/stats?format=json``; None when any is missing
    (the sidecar does not record them, or has no such cluster)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("stats"), list):
        return None
    prefix = f"cluster.{cluster}."
    got: dict[str, int] = {}
    for item in doc["stats"]:
        if not isinstance(item, dict):
            continue
        name, value = item.get("name"), item.get("value")
        if not isinstance(name, str) or not name.startswith(prefix):
            continue
        field = _COUNTERS.get(name[len(prefix) :])
        if field is None or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            continue
        got[field] = value
    if len(got) != len(_COUNTERS):
        return None
    return Counters(**got)


class Transport(StrEnum):
    TLS = "tls"
    PLAINTEXT = "plaintext"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class TransportSeen:
    transport: Transport
    how: str  # one clause for the reason
    evidence: dict[str, Any]


def judge_transport(cluster: str, before: Counters, after: Counters, tcp: bool) -> TransportSeen:
    """Pure: what the counters around one call (and nothing else) prove about it."""
    delta = {k: getattr(after, k) - getattr(before, k) for k in asdict(before)}
    ev: dict[str, Any] = {
        "cluster": cluster,
        "delta": {k: v for k, v in delta.items() if k != "cx_active"},
        "active_before": before.cx_active,
        "totals_after": asdict(after),
    }

    def seen(t: Transport, how: str) -> TransportSeen:
        return TransportSeen(t, how, ev)

    if any(v < 0 for k, v in delta.items() if k != "cx_active"):
        return seen(Transport.UNKNOWN, f"{cluster}'s counters went backwards (sidecar restarted?)")
    opened = delta["cx_total"] - delta["connect_fail"]
    ours, unit = (opened, "connection") if tcp else (delta["rq_total"], "request")
    if ours != 1:
        why = (
            "the call did not go through it (another route, or the sidecar names its "
            "clusters otherwise)"
            if ours == 0
            else "other traffic shared the cluster"
        )
        return seen(
            Transport.UNKNOWN,
            f"{ours} {unit}s went through {cluster} during the call, not 1: {why}",
        )
    if (tcp or before.cx_active == 0) and opened >= 1:
        if delta["handshake"] == opened:
            return seen(
                Transport.TLS,
                f"the probe's sidecar opened {opened} new connection(s) on {cluster} for this "
                f"call and completed a TLS handshake on each (ssl.handshake +{delta['handshake']}) "
                "with a server certificate its validation context accepted",
            )
        if delta["handshake"] == 0 and delta["ssl_error"] == 0:
            return seen(
                Transport.PLAINTEXT,
                f"the probe's sidecar opened a new connection on {cluster} for this call and "
                f"attempted no TLS handshake (upstream_cx_total +{delta['cx_total']}, "
                "ssl.handshake +0): it sent the call in plaintext",
            )
        return seen(
            Transport.UNKNOWN,
            f"{opened} connection(s) opened on {cluster} for this call, {delta['handshake']} "
            f"TLS handshake(s), {delta['ssl_error']} TLS error(s): cannot tell which carried it",
        )
    if after.cx_total == after.handshake + after.ssl_error + after.connect_fail:
        return seen(
            Transport.TLS,
            f"the request reused a connection, and every connection the probe's sidecar has "
            f"opened on {cluster} ({after.cx_total}) completed a TLS handshake or failed before "
            "carrying data",
        )
    if after.handshake == 0 and after.ssl_error == 0:
        return seen(
            Transport.PLAINTEXT,
            f"the request reused a connection, and the probe's sidecar has never attempted a TLS "
            f"handshake on {cluster} ({after.cx_total} connections): it sent the call in plaintext",
        )
    return seen(
        Transport.UNKNOWN,
        f"the request reused a pooled connection and {cluster} has carried both TLS and "
        "plaintext connections: cannot tell which one",
    )
