"""Objects several checks share, built once per run through RunContext.shared."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe.errors import ObservationError
from probe.model import Protocol

if TYPE_CHECKING:
    import httpx
    from cryptography import x509
    from OpenSSL import SSL

    from probe.checks.base import RunContext
    from probe.model import Target
    from probe.pki import Issued


def mesh_roots(ctx: RunContext) -> list[x509.Certificate] | None:
    """The trust bundle from rootCertFile, or None when the file names none."""
    path = ctx.targets.root_cert_file
    if path is None:
        return None

    def build() -> list[x509.Certificate]:
        from probe.svid import load_roots

        try:
            roots = load_roots(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ObservationError(f"rootCertFile {path} unusable: {exc}") from None
        if not roots:
            raise ObservationError(f"rootCertFile {path} holds no PEM certificate")
        return roots

    return ctx.shared("mesh-roots", build)


def tls_context(ctx: RunContext, target: Target, client: Issued | None, tag: str) -> SSL.Context:
    from probe.tls import HTTP_ALPNS, TCP_ALPNS, client_context

    alpns = HTTP_ALPNS if target.protocol is Protocol.HTTP else TCP_ALPNS
    key = f"tls-context:{target.protocol.value}:{tag}"
    return ctx.shared(key, lambda: client_context(alpns, client))


def istio_sni(target: Target) -> str:
    """The SNI an Istio client sidecar sends: outbound_.<port>_._.<host>."""
    return f"outbound_.{target.port}_._.{target.host}"


def http_client(ctx: RunContext, via_sidecar: bool) -> httpx.Client:
    """One httpx.Client per run and route (building one costs ~40 ms)."""
    import httpx

    proxy = ctx.targets.source.sidecar_proxy if via_sidecar else None

    def build() -> httpx.Client:
        n = max(4, ctx.settings.concurrency)
        return httpx.Client(
            proxy=proxy,
            trust_env=False,
            timeout=httpx.Timeout(ctx.settings.timeout),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            headers={"user-agent": "mtlsprobe"},
            follow_redirects=False,
        )

    return ctx.shared(f"http-client:{proxy}", build, lambda c: c.close())


def sidecar_tls_skip(target: Target, *, no_sidecar: str, disabled: str) -> str | None:
    """Why a check that needs the server sidecar's TLS does not apply, if it does not."""
    from probe.model import Expect

    if target.expect is Expect.NONE:
        return no_sidecar
    if target.expect is Expect.DISABLE:
        return disabled
    return None
