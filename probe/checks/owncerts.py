"""The probe's own certificates, as its sidecar's Envoy admin shows them: what the
trusted XFCC element's ``Hash=`` must be bound to (``mesh``, ``xfcc-spoof``). Fetched
lazily, once per run, and once more when a hash matches none of them (a renewal)."""

from __future__ import annotations

import datetime
import threading
from typing import TYPE_CHECKING

from probe.xfcc import OwnCerts, XfccError, trusted_element

if TYPE_CHECKING:
    from probe.checks.base import RunContext
    from probe.checks.meshcall import MeshResponse

#: A certificate issued this long after the sidecar started is a renewal (the first one
#: arrives within seconds of start; Istio's CA may backdate notBefore a little).
RENEWAL_SLACK = 300.0


class _OwnCertsCache:
    """The probe's own certificates, fetched once per run from its sidecar's admin, and
    at most once more after a mismatch. Its own lock: no I/O under ctx.shared's lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.first: OwnCerts | None = None
        self.again: OwnCerts | None = None


def own_certs_for(ctx: RunContext, resp: MeshResponse) -> OwnCerts:
    """The certificates the trusted XFCC element of ``resp`` must be bound to. Fetched
    lazily (only once a response shows XFCC); when its ``Hash=`` is none of them, the
    sidecar is asked once more per run, since it may have renewed meanwhile."""
    if not resp.xfcc:
        return OwnCerts(unknown="no XFCC to compare")
    cache = ctx.shared("own-certs", _OwnCertsCache)
    with cache.lock:
        if cache.first is None:
            cache.first = _fetch_own(ctx, None)
        own = cache.again or cache.first
        if (
            own.unknown is not None
            or own.absent is not None
            or own.blind is not None
            or own.refreshed
        ):
            return own
        try:
            el = trusted_element(resp.xfcc)
        except XfccError:
            return own
        value = (el.hash or "").strip().lower() if el is not None else ""
        if value and value not in own.hashes:
            cache.again = _fetch_own(ctx, own)
            return cache.again
        return own


def _fetch_own(ctx: RunContext, before: OwnCerts | None) -> OwnCerts:
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    from probe.checks.self_cert import admin_url, fetch_secrets, uri_sans
    from probe.errors import ObservationError

    source_id = ctx.targets.source.identity
    if source_id is None:
        return OwnCerts(unknown="no source.identity: the probe's own certificate is not known")
    try:
        secrets = fetch_secrets(ctx)
    except ObservationError as exc:
        why = f"the probe's own certificate is not known ({exc.reason})"
        # Named in the targets file and not answering: a blind detector (error). Left to
        # the in-pod default (a run outside a pod, a stand-in proxy): not compared.
        if ctx.targets.source.sidecar_admin:
            return OwnCerts(blind=why)
        return OwnCerts(unknown=why)
    if not secrets.chains:
        return OwnCerts(blind=f"the probe's sidecar ({admin_url(ctx)}) shows no certificate at all")
    leaves = [chain[0] for chain in secrets.mtls_chains() if source_id in uri_sans(chain[0])]
    if not leaves:
        # It shows what its mTLS presents, and that is not the declared identity: an
        # element naming it as the client cannot come from this probe's connection.
        held = sorted({u for chain in secrets.mtls_chains() for u in uri_sans(chain[0])})
        return OwnCerts(
            absent=f"the probe's sidecar ({admin_url(ctx)}) presents "
            f"{', '.join(held) or 'no SPIFFE ID'}, no certificate for "
            f"source.identity {source_id}"
        )
    hashes = frozenset(hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest() for c in leaves)
    if before is None:
        return OwnCerts(hashes=hashes)
    newest = max(c.not_valid_before_utc for c in leaves)
    return OwnCerts(
        hashes=hashes | before.hashes, refreshed=True, retired_possible=_renewal(ctx, newest)
    )


def _renewal(ctx: RunContext, newest: datetime.datetime) -> str | None:
    """Why a certificate the sidecar no longer holds may still be in use, or None when
    its newest certificate is the first it ever had (issued before it started)."""
    from probe.checks.self_cert import admin_url, get_admin_json
    from probe.errors import ObservationError

    try:
        status, doc = get_admin_json(ctx, admin_url(ctx) + "/server_info")
    except ObservationError as exc:
        return f"the sidecar's start time is unknown ({exc.reason})"
    uptime = doc.get("uptime_current_epoch") if isinstance(doc, dict) else None
    text = uptime.removesuffix("s") if isinstance(uptime, str) else ""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 1e9:  # also NaN and infinities
        return f"the sidecar's start time is unknown (/server_info answered HTTP {status})"
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds)
    if (newest - started).total_seconds() > RENEWAL_SLACK:
        return (
            f"the sidecar renewed its certificate ({newest.isoformat()}) after it started "
            f"({started.isoformat(timespec='seconds')})"
        )
    return None
