"""The check registry. Checks are imported on demand so ``--help`` stays fast."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probe.checks.base import Check

# name -> "module:Class"; order is the order results are reported in.
REGISTRY: dict[str, str] = {
    "plaintext": "probe.checks.plaintext:PlaintextCheck",
    "mesh": "probe.checks.mesh:MeshCheck",
    "peer-cert": "probe.checks.peer_cert:PeerCertCheck",
    "foreign-client": "probe.checks.foreign_client:ForeignClientCheck",
    "xfcc-spoof": "probe.checks.xfcc_spoof:XfccSpoofCheck",
    "self": "probe.checks.self_cert:SelfCheck",
    "authz": "probe.checks.authz:AuthzCheck",
}
#: Run unless --checks says otherwise; ``authz`` joins them when the targets file has cases.
DEFAULT_CHECKS = tuple(n for n in REGISTRY if n != "authz")

SIDECAR_CHECKS = ("mesh", "xfcc-spoof", "self")
PLAIN_CHECKS = ("plaintext", "peer-cert", "foreign-client")


def load_check(name: str) -> Check:
    module_name, _, cls_name = REGISTRY[name].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    check: Check = cls()
    return check


def parse_check_list(text: str) -> list[str]:
    """``plaintext,mesh`` -> names; raises ValueError naming an unknown check."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--checks is empty")
    for n in names:
        if n not in REGISTRY:
            raise ValueError(f"unknown check {n!r} (known: {', '.join(REGISTRY)})")
    return list(dict.fromkeys(names))
