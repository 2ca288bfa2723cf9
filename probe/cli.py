"""``mtlsprobe check``: the standalone contract. No Kubernetes here, ever."""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from probe.checks import DEFAULT_CHECKS, REGISTRY, load_check, parse_check_list
from probe.results import EXIT_USAGE, Result, exit_code

if TYPE_CHECKING:
    from probe.checks.base import Check, RunContext
    from probe.model import TargetsFile

DEFAULT_CONCURRENCY = 32


class UsageError(Exception):
    """Bad flags or configuration: one line, exit 64."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90d``, ``6h``, ``30m``, ``45s`` or plain seconds."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 6h, 90d, 30m, 45s)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return v


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1")
    return int(text)


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run mTLS checks against the targets in a targets file and judge each observation "
        "against the expected mode. No Kubernetes access needed."
    )
    p.add_argument(
        "-f",
        "--file",
        required=True,
        type=Path,
        metavar="TARGETS.yaml",
        help="targets file (the stable contract; see README)",
    )
    p.add_argument(
        "--checks",
        default=None,
        metavar="LIST",
        help=f"comma-separated checks to run (default: {','.join(DEFAULT_CHECKS)}, and authz "
        f"when the targets file has authz cases; known: {','.join(REGISTRY)})",
    )
    p.add_argument(
        "-o",
        "--output",
        default="table",
        choices=("table", "json", "jsonl", "junit"),
        help="report format on stdout (default: table)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="also write the report to FILE (format from -o, or by suffix .json/.jsonl/.xml)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="per-operation network timeout (default: 5)",
    )
    p.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"checks in flight at once (default: {DEFAULT_CONCURRENCY})",
    )
    p.add_argument(
        "--min-remaining",
        type=parse_duration,
        default=timedelta(hours=6),
        metavar="DURATION",
        help="fail certificates expiring sooner (default: 6h)",
    )
    p.add_argument(
        "--max-lifetime",
        type=parse_duration,
        default=timedelta(days=90),
        metavar="DURATION",
        help="fail certificates valid for longer (default: 90d)",
    )
    from probe import shard, sidecar

    sidecar.add_flags(p)
    shard.add_flags(p)


def _format_for_file(path: Path, default: str) -> str:
    return {".json": "json", ".jsonl": "jsonl", ".xml": "junit"}.get(path.suffix.lower(), default)


def main(args: argparse.Namespace) -> int:
    from probe.sidecar import quitting

    with quitting(args):  # a classic sidecar must stop however the probe ends
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    from probe.checks.base import RunContext, Settings
    from probe.engine import run_checks
    from probe.model import TargetsFileError, load_targets

    try:
        names = parse_check_list(args.checks) if args.checks is not None else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        targets = load_targets(args.file)
    except TargetsFileError as exc:
        raise UsageError(str(exc)) from None
    if names is None:
        names = list(DEFAULT_CHECKS)
        if any(t.authz for t in targets.targets):
            names.append("authz")
    targets = _shard(args, targets, names)

    settings = Settings(
        timeout=args.timeout,
        concurrency=args.concurrency,
        min_remaining=args.min_remaining,
        max_lifetime=args.max_lifetime,
    )
    ctx = RunContext(targets, settings)
    stop = threading.Event()
    previous = _install_stop_handler(stop)
    try:
        try:
            checks = [load_check(n) for n in names]
            not_ready = _sidecar_not_ready(args, stop)
            if not_ready is None:
                results = run_checks(checks, ctx, stop=stop)
            else:
                results = _all_errors(checks, ctx, not_ready)
        finally:
            ctx.close()
        # The handler stays until the end: a SIGTERM during the report or the (bounded)
        # flush must not kill the process before the partial report and spans are out.
        emit_report(results, args.output, args.out)
        _export_telemetry(results, targets)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    return exit_code(results)


def _shard(args: argparse.Namespace, targets: TargetsFile, names: list[str]) -> TargetsFile:
    from probe import shard

    try:
        chosen = shard.from_args(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if chosen is None:
        return targets
    scopes = [load_check(n).scope.value for n in names]
    return shard.select(targets, *chosen, by_endpoint=shard.by_endpoint(scopes))


def _sidecar_not_ready(args: argparse.Namespace, stop: threading.Event) -> str | None:
    if args.wait_for_sidecar is None:
        return None
    from probe.sidecar import wait_ready

    return wait_ready(args.sidecar_ready_url, args.wait_for_sidecar, stop=stop)


def _all_errors(checks: list[Check], ctx: RunContext, reason: str) -> list[Result]:
    """Nothing observed through a sidecar that never came up: every planned check is
    an error with that reason (skips decided from the targets alone stay skips)."""
    from probe.checks.base import make_result
    from probe.engine import plan_work, with_case
    from probe.results import Verdict

    work, skips = plan_work(checks, ctx)
    errors = [
        with_case(
            w,
            make_result(
                w.check.name,
                w.target,
                w.endpoint,
                Verdict.ERROR,
                reason,
                observed="sidecar-not-ready",
                evidence={"error": "sidecar-not-ready"},
            ),
        )
        for w in work
    ]
    return errors + skips


def emit_report(results: list[Result], fmt: str, out: Path | None) -> None:
    from probe.report import render

    # no-color.org: a non-empty NO_COLOR disables colour; so does a dumb terminal.
    colour = (
        fmt == "table"
        and sys.stdout.isatty()
        and not os.environ.get("NO_COLOR")
        and os.environ.get("TERM") != "dumb"
    )
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A terminal or pipe in a non-UTF-8 locale must still get the report, not a crash.
        sys.stdout.reconfigure(errors="backslashreplace")
    sys.stdout.write(render(results, fmt, colour=colour))
    sys.stdout.flush()
    if out is not None:
        try:
            out.write_text(render(results, _format_for_file(out, fmt)), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--out {out}: cannot write: {exc.strerror or exc}") from None


def _export_telemetry(results: list[Result], targets: TargetsFile) -> None:
    if not any(k.startswith("OTEL_") for k in os.environ):
        return  # OTLP is configured by OTEL_* only: skip importing telemetry (logging)
    from probe import telemetry

    if telemetry.enabled():
        telemetry.export_run(results, source_identity=targets.source.identity, targets=targets)


def _install_stop_handler(stop: threading.Event) -> signal._HANDLER:
    """SIGTERM (Job deadline, pod deletion) stops the run; what is done is still reported."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, handler)
    return signal.getsignal(signal.SIGTERM)


__all__ = ["EXIT_USAGE", "UsageError", "configure", "main", "parse_duration"]
