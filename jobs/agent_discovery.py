"""Each round's targets from the live cluster: discovery, then the plan."""

from __future__ import annotations

import argparse

from jobs.agent_sources import TargetSource


def discovery_source(args: argparse.Namespace) -> TargetSource:
    from probe.cli import UsageError

    raise UsageError("discovery is not available yet: pass --targets FILE")
