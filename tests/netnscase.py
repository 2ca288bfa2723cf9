"""Whether this machine can run the network-namespace lab (tests of ``lab --netns`` and
of ``run`` over it), and why not: the reason the skipped tests print."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from jobs.lab.netns.net import leftovers, list_links, list_netns
from probe.checks.base import Settings


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

SETTINGS = Settings(timeout=5.0, concurrency=16)
# Not root, but able to read the checkout (a fresh clone may sit under a 0700 directory):
# what the lab's pods get too (jobs/lab/netns/net.py ``netns_argv``).
AS_NOBODY = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
]


def host_iptables() -> list[str]:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    return [ln for ln in out.splitlines() if not ln.startswith("#")]


class HostSnapshot:
    """The host's namespaces, links and iptables rules, to compare after a test."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.netns = set(list_netns())
        self.links = set(list_links())
        self.iptables = host_iptables()

    def assert_clean(self) -> None:
        assert leftovers(self.prefix) == []
        # Other labs may come and go meanwhile (their own prefixes): nothing new may be ours.
        assert not [n for n in set(list_netns()) - self.netns if n.startswith(self.prefix)]
        assert not [n for n in set(list_links()) - self.links if n.startswith(self.prefix)]
        new_rules = [r for r in host_iptables() if r not in self.iptables]
        # The lab never writes a host rule: its rules live in the pods' namespaces.
        assert not [r for r in new_rules if "ISTIO" in r or "10.243." in r or "100.64." in r]
