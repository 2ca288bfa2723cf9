"""Where the ``wire`` check gets its capture: a local one (``--wire-interface``, needs
CAP_NET_RAW, optionally inside ``--wire-netns``) or a report a capture agent wrote
(``--wire-report``: the JSON lines of ``mtlsprobe wire-capture``), or none here:
``--wire-claim`` (a probe pod of ``mtlsprobe run``) makes the marked calls and reports
what it sent, and the orchestrator judges it against the node agent's capture."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probe.checks.base import RunContext

_KEY = "wire-options"
INSTALL_HINT = (
    "kubectl apply -k k8s/overlays/wire (the node capture agent), or locally "
    "mtlsprobe check --checks wire --wire-interface IF as root"
)


@dataclass(frozen=True)
class WireOptions:
    interface: str | None = None
    netns: str | None = None
    report: Path | None = None
    pcap_dir: Path | None = None
    claim: bool = False

    @property
    def configured(self) -> bool:
        return self.interface is not None or self.report is not None or self.claim


def add_wire_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("wire check (packet capture; --checks wire)")
    g.add_argument(
        "--wire-interface",
        metavar="IF",
        help="capture here, on interface IF (needs CAP_NET_RAW: root in the lab)",
    )
    g.add_argument(
        "--wire-netns",
        metavar="NAME",
        help="the interface is in network namespace NAME (ip netns)",
    )
    g.add_argument(
        "--wire-report",
        type=Path,
        metavar="FILE",
        help="judge from this capture report (JSON lines of mtlsprobe wire-capture or the "
        "node agent), written while the check's calls ran",
    )
    g.add_argument(
        "--wire-claim",
        action="store_true",
        help="make the marked calls and report what was sent (markers, endpoints, times) "
        "without judging it: each result stays error until `mtlsprobe run` judges it from "
        "the node capture agent's report (set by run in its probe pods)",
    )
    g.add_argument(
        "--wire-pcap",
        type=Path,
        metavar="DIR",
        help="also write the captured packets to a pcap file in DIR (debugging only)",
    )


def install_wire_options(ctx: RunContext, args: argparse.Namespace) -> None:
    opts = WireOptions(
        interface=getattr(args, "wire_interface", None),
        netns=getattr(args, "wire_netns", None),
        report=getattr(args, "wire_report", None),
        pcap_dir=getattr(args, "wire_pcap", None),
        claim=bool(getattr(args, "wire_claim", False)),
    )
    from probe.cliargs import UsageError

    if opts.interface is not None and opts.report is not None:
        raise UsageError("--wire-interface and --wire-report exclude each other: capture or read")
    if opts.claim and (opts.interface is not None or opts.report is not None):
        raise UsageError(
            "--wire-claim leaves the judging to run: it excludes --wire-interface and --wire-report"
        )
    if opts.netns is not None and opts.interface is None:
        raise UsageError("--wire-netns needs --wire-interface (the interface in that namespace)")
    ctx.shared(_KEY, lambda: opts)


def options(ctx: RunContext) -> WireOptions:
    return ctx.shared(_KEY, WireOptions)
