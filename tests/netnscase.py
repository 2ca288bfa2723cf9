"""Whether this machine can run the network-namespace lab (tests of ``lab --netns`` and
of ``run`` over it), and why not: the reason the skipped tests print."""

from __future__ import annotations

import os
import shutil
import sys


def why_not() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "lab --netns needs root (namespaces, veths, a bridge, iptables)"
    for tool in ("ip", "iptables-restore", "iptables-save", "setpriv"):
        if shutil.which(tool) is None:
            return f"'{tool}' is missing: as root, `make netns-deps` installs it"
    return None


WHY_NOT = why_not()
