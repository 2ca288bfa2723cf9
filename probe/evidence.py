"""The evidence options ``check``, ``run`` and ``lab`` share, and what they do after the
report: ``--compliance FILE`` (control IDs ride along in every format), ``--attest KEY``
with ``--attest-out`` (a signed in-toto attestation of the JSON results) and
``--openreports`` (``-o policyreport`` as openreports.io Reports).

Everything is loaded before probing (``from_args``): a bad mapping or key is a usage
error (exit 64) before any traffic, not after a long run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probe.attest import Material, Signer
    from probe.compliance import ControlMap
    from probe.results import Result

DEFAULT_ATTEST_OUT = "mtlsprobe.intoto.json"


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evidence")
    g.add_argument(
        "--compliance",
        type=Path,
        metavar="FILE",
        help="YAML mapping checks to control IDs (PCI DSS, NIST 800-53, SOC 2 ...); the IDs "
        "appear in the JSON, JUnit, policy report and attestation outputs",
    )
    g.add_argument(
        "--attest",
        type=Path,
        metavar="KEY",
        help="sign the JSON results as an in-toto test-result attestation in a DSSE "
        "envelope with this PEM private key (ECDSA P-256 or Ed25519)",
    )
    g.add_argument(
        "--attest-out",
        metavar="FILE",
        help=f"where the signed envelope goes (default: {DEFAULT_ATTEST_OUT}; '-': one JSON "
        "line on stdout after the report)",
    )
    g.add_argument(
        "--openreports",
        action="store_true",
        help="-o policyreport: openreports.io/v1alpha1 Report objects instead of "
        "wgpolicyk8s.io/v1alpha2 PolicyReports",
    )


@dataclass
class Evidence:
    controls: ControlMap | None = None
    report_kind: str = "policyreport"
    signer: Signer | None = None
    attest_out: str = DEFAULT_ATTEST_OUT
    materials: list[Material] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def add_material(self, name: str, data: bytes) -> None:
        from probe.attest import Material

        self.materials.append(Material(name, data))


def from_args(args: argparse.Namespace) -> Evidence:
    """Load the mapping and the key now; ``UsageError`` (one line) when unusable."""
    from probe.cliargs import UsageError

    ev = Evidence(
        report_kind="openreports" if getattr(args, "openreports", False) else "policyreport"
    )
    path: Path | None = getattr(args, "compliance", None)
    if path is not None:
        from probe.compliance import ComplianceFileError, read_controls

        try:
            ev.controls, data = read_controls(path)
        except ComplianceFileError as exc:
            raise UsageError(str(exc)) from None
        ev.add_material(f"compliance:{path.name}", data)
    key: Path | None = getattr(args, "attest", None)
    out = getattr(args, "attest_out", None)
    if out is not None and key is None:
        raise UsageError("--attest-out needs --attest KEY")
    if key is not None:
        from probe.attest import AttestError, Signer

        try:
            ev.signer = Signer.from_file(key)
        except AttestError as exc:
            raise UsageError(str(exc)) from None
        ev.attest_out = out or DEFAULT_ATTEST_OUT
    return ev


def write_attestation(
    ev: Evidence,
    results: Sequence[Result],
    *,
    cluster: str,
    run_id: str | None = None,
) -> None:
    """Sign the JSON report of ``results`` and write the envelope (no-op without a key)."""
    if ev.signer is None:
        return
    from probe import __version__
    from probe.attest import envelope, statement
    from probe.cliargs import UsageError
    from probe.report import json_tree

    report = json_tree(results, controls=ev.controls)
    extra = []
    if ev.controls is not None:
        extra.append(
            {"name": "compliance-controls", "annotations": {"controls": ev.controls.to_dict()}}
        )
    run = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ev.started))
    stmt = statement(
        report,
        results,
        cluster=cluster,
        run_id=run,
        version=__version__,
        materials=ev.materials,
        extra_configuration=extra,
    )
    text = json.dumps(envelope(stmt, ev.signer), separators=(",", ":")) + "\n"
    if ev.attest_out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        Path(ev.attest_out).write_text(text, encoding="utf-8")
    except OSError as exc:
        problem = exc.strerror or exc
        raise UsageError(f"--attest-out {ev.attest_out}: cannot write: {problem}") from None
    sys.stderr.write(f"mtlsprobe: signed attestation written to {ev.attest_out}\n")


__all__ = ["Evidence", "add_flags", "from_args", "write_attestation"]
