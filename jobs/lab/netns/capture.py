"""The nat rules istio-init writes into a pod with a sidecar (tools/istio-iptables in
istio/istio, REDIRECT mode), as one ``iptables-restore`` input for the pod's namespace.

Outbound TCP goes to Envoy's 15001 except Envoy's own (UID/GID ``PROXY_UID``) and
localhost; inbound TCP goes to 15006 except the proxy's own ports. Envoy forwards
inbound calls to the app from 127.0.0.6, which the first output rule lets through.
The rules live in the pod's namespace only and vanish with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobs.lab.netns.net import netns_argv, run

PROXY_UID = 1337  # istio-proxy
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
INBOUND_PASSTHROUGH_SOURCE = "127.0.0.6"
# HBONE, Envoy admin, pilot-agent, health, Prometheus: never redirected inbound.
EXCLUDED_INBOUND = (15008, 15000, 15020, 15021, 15090)


def rules(uid: int = PROXY_UID, excluded: Sequence[int] = EXCLUDED_INBOUND) -> str:
    lines = [
        "*nat",
        ":ISTIO_INBOUND - [0:0]",
        ":ISTIO_IN_REDIRECT - [0:0]",
        ":ISTIO_OUTPUT - [0:0]",
        ":ISTIO_REDIRECT - [0:0]",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
    ]
    lines += [f"-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN" for p in excluded]
    lines += [
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_PORT}",
        f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}",
        # Envoy's inbound forwarding to the app.
        f"-A ISTIO_OUTPUT -s {INBOUND_PASSTHROUGH_SOURCE}/32 -o lo -j RETURN",
    ]
    for kind in ("uid", "gid"):
        lines += [
            # Envoy calling its own pod IP (an app calling its own Service): through inbound.
            f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --{kind}-owner {uid} "
            "-j ISTIO_IN_REDIRECT",
            # The app talking to itself over loopback: untouched.
            f"-A ISTIO_OUTPUT -o lo -m owner ! --{kind}-owner {uid} -j RETURN",
            # Envoy's own upstream connections: untouched.
            f"-A ISTIO_OUTPUT -m owner --{kind}-owner {uid} -j RETURN",
        ]
    lines += [
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def install(netns: str) -> None:
    """Write the rules into ``netns`` (what istio-init does before the pod starts)."""
    run(netns_argv(netns, ["iptables-restore", "--noflush"]), stdin=rules())


def counters(netns: str) -> str:
    """``iptables-save -c`` of the pod's nat table: proof that calls were redirected."""
    return run(netns_argv(netns, ["iptables-save", "-c", "-t", "nat"]))
