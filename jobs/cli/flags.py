"""Command-line flags that ``plan``, ``run`` and ``agent`` share, defined once so the
three commands cannot drift apart in name, default or meaning.

Validation is a separate call (``control_plane_problem``) rather than an argparse
``type=``: the CLI's usage errors are one line (exit 64), and argparse would print
the usage block before it.
"""

from __future__ import annotations

import argparse
import re

from jobs.plan.objects import DEFAULT_ISTIO_NAMESPACE

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def add_control_plane_flags(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """``--istio-namespace`` and ``--revision``: which istiod the plan believes. The mesh
    config (ConfigMap ``istio`` / ``istio-<rev>``) and the mesh root
    (``istio-ca-root-cert``) are read only from that namespace."""
    group.add_argument(
        "--istio-namespace",
        default=DEFAULT_ISTIO_NAMESPACE,
        metavar="NS",
        help="istiod's namespace: its mesh ConfigMap and the mesh root are read only "
        f"there (default: {DEFAULT_ISTIO_NAMESPACE})",
    )
    group.add_argument(
        "--revision",
        metavar="REV",
        help="istiod revision whose mesh config to read (ConfigMap istio-REV)",
    )


def control_plane_problem(args: argparse.Namespace) -> str | None:
    """The one-line usage error for the flags above, or None when they are usable."""
    for flag, value in (("--istio-namespace", args.istio_namespace), ("--revision", args.revision)):
        if value is not None and not _NAME.fullmatch(value):
            return f"{flag} {value!r}: not a Kubernetes name (lowercase, digits, '-')"
    return None
