"""``mtlsprobe evidence verify --key PUB FILE``: check a signed attestation.

Exit 0 when the DSSE signature verifies with the public key and the subject digest
matches the embedded report (and ``--report`` when given), printing the run's summary;
exit 1 on any mismatch with one line naming it; 64 for unusable input (no file, not a
key). No cluster access: an auditor runs this on a laptop.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from probe.results import EXIT_FAIL, EXIT_OK

MAX_REPORT_BYTES = 256 << 20


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Verify signed evidence written by --attest: the DSSE signature over the in-toto "
        "Statement and the digest of the results it carries."
    )
    sub = p.add_subparsers(dest="evidence_command", metavar="ACTION", required=True)
    v = sub.add_parser(
        "verify",
        help="check an attestation's signature and digests; print its summary",
        description="Check an attestation's signature and digests; print its summary.",
    )
    v.add_argument(
        "--key", required=True, type=Path, metavar="PUB.pem", help="the signer's public key"
    )
    v.add_argument(
        "--report",
        type=Path,
        metavar="REPORT.json",
        help="also check that this JSON report (-o json) is the one that was signed",
    )
    v.add_argument(
        "--json", action="store_true", help="print the verified Statement as JSON on stdout"
    )
    v.add_argument("file", type=Path, metavar="FILE", help="the attestation (DSSE envelope)")


def _read(path: Path, what: str) -> bytes:
    from probe.attest import AttestError, read_bounded
    from probe.cliargs import UsageError

    try:
        return read_bounded(path, what, MAX_REPORT_BYTES)
    except AttestError as exc:
        raise UsageError(str(exc)) from None


def main(args: argparse.Namespace) -> int:
    from probe.attest import AttestError, VerifyError, load_public_key, parse_envelope, verify
    from probe.cliargs import UsageError

    try:
        public = load_public_key(args.key)
    except AttestError as exc:
        raise UsageError(str(exc)) from None
    report = None
    if args.report is not None:
        try:
            report = json.loads(_read(args.report, "--report"))
        except ValueError:
            raise UsageError(f"--report {args.report}: not a JSON document") from None
    data = _read(args.file, "attestation")
    try:
        verified = verify(parse_envelope(data), public, report)
    except VerifyError as exc:
        sys.stderr.write(f"mtlsprobe evidence verify: {args.file}: NOT VERIFIED: {exc}\n")
        return EXIT_FAIL
    if args.json:
        sys.stdout.write(json.dumps(verified.statement, indent=2) + "\n")
    else:
        sys.stdout.write(verified.summary_line() + "\n")
        for item in verified.predicate.get("configuration") or []:
            if isinstance(item, dict) and isinstance(item.get("digest"), dict):
                sha = item["digest"].get("sha256", "?")
                sys.stdout.write(f"  configuration {item.get('name')}: sha256:{sha}\n")
    return EXIT_OK
