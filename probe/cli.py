"""``mtlsprobe check``: the standalone contract. No Kubernetes here, ever."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from probe.checks import DEFAULT_CHECKS, KNOWN, OPT_IN, load_check, parse_check_list
from probe.cliargs import (
    UsageError,
    add_checks_flag,
    add_probe_flags,
    add_report_flags,
    emit_report,
    probe_settings,
    seconds,
)
from probe.results import EXIT_USAGE, Result, exit_code
from probe.wire.options import add_wire_flags, install_wire_options

if TYPE_CHECKING:
    from probe.checks.base import Check, RunContext
    from probe.evidence import Evidence
    from probe.html_report import RunInfo
    from probe.model import TargetsFile
    from probe.sidecar import SidecarOptions


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
    add_checks_flag(
        p,
        DEFAULT_CHECKS,
        extra=", and authz when the targets file has authz cases; opt-in: " + ",".join(OPT_IN),
        known=tuple(KNOWN),
    )
    add_report_flags(p)
    p.add_argument(
        "--timing",
        action="store_true",
        help="add each result's start, end and duration (key timing) to json/jsonl output "
        "(what mtlsprobe run's probe pods print, for its traces)",
    )
    add_probe_flags(p)
    add_wire_flags(p)
    _add_sidecar_flags(p)
    _add_shard_flags(p)
    from probe import evidence

    evidence.add_flags(p)


def _add_sidecar_flags(p: argparse.ArgumentParser) -> None:
    from probe.sidecar import DEFAULT_WAIT, QUIT_URL, READY_URL

    g = p.add_argument_group("probe pod sidecar")
    g.add_argument(
        "--wait-for-sidecar",
        nargs="?",
        type=seconds,
        const=DEFAULT_WAIT,
        default=None,
        metavar="SECONDS",
        help="wait (bounded; default %(const)s s) for the pod's sidecar to be ready before "
        "probing; if it never is, every check is an error",
    )
    g.add_argument(
        "--quit-sidecar",
        action="store_true",
        help="on exit, ask a classic sidecar to stop (POST quitquitquit) so the Job completes; "
        "not needed for native sidecars",
    )
    g.add_argument(
        "--sidecar-ready-url",
        default=os.environ.get("MTLSPROBE_SIDECAR_READY_URL", READY_URL),
        metavar="URL",
        help=f"readiness endpoint (default: $MTLSPROBE_SIDECAR_READY_URL or {READY_URL})",
    )
    g.add_argument(
        "--sidecar-quit-url",
        default=os.environ.get("MTLSPROBE_SIDECAR_QUIT_URL", QUIT_URL),
        metavar="URL",
        help=f"quit endpoint (default: $MTLSPROBE_SIDECAR_QUIT_URL or {QUIT_URL})",
    )


def _shard_arg(text: str) -> tuple[int, int]:
    from probe.shard import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_shard_flags(p: argparse.ArgumentParser) -> None:
    from probe.shard import INDEX_ENV

    g = p.add_argument_group("sharding (Indexed Jobs)")
    g.add_argument(
        "--shard",
        type=_shard_arg,
        metavar="INDEX/COUNT",
        help="probe only shard INDEX of COUNT (a stable hash of each target/endpoint picks "
        "its shard; every pod may read the same file)",
    )
    g.add_argument(
        "--shards",
        type=int,
        metavar="COUNT",
        help=f"probe shard ${INDEX_ENV} of COUNT (for an Indexed Job's pods)",
    )


def _sidecar_options(args: argparse.Namespace) -> SidecarOptions:
    from probe.sidecar import SidecarOptions

    return SidecarOptions(
        wait=args.wait_for_sidecar,
        ready_url=args.sidecar_ready_url,
        quit=args.quit_sidecar,
        quit_url=args.sidecar_quit_url,
    )


def main(args: argparse.Namespace) -> int:
    from probe.sidecar import quitting

    sidecar = _sidecar_options(args)
    with quitting(sidecar):  # a classic sidecar must stop however the probe ends
        return _main(args, sidecar)


@contextlib.contextmanager
def _loading() -> Iterator[None]:
    """Start-up (modules, the targets file, the checks) makes objects that live as long
    as the process: the cyclic collector would walk them again and again and find
    nothing, so it is off meanwhile; afterwards they are frozen out of its sight."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _main(args: argparse.Namespace, sidecar: SidecarOptions) -> int:
    with _loading():
        targets, checks, ev = _load(args)
        from probe import report  # noqa: F401  - every run renders one; loaded here
        from probe.checks.base import RunContext
        from probe.engine import run_checks

    ctx = RunContext(targets, probe_settings(args))
    install_wire_options(ctx, args)
    stop = threading.Event()
    previous = _install_stop_handler(stop)
    try:
        try:
            not_ready = _sidecar_not_ready(sidecar, stop)
            if not_ready is None:
                results = run_checks(checks, ctx, stop=stop)
            else:
                results = _all_errors(checks, ctx, not_ready)
        finally:
            ctx.close()
        # The handler stays until the end: a SIGTERM during the report or the (bounded)
        # flush must not kill the process before the partial report and spans are out.
        emit_report(
            results,
            args.output,
            args.out,
            timing=args.timing,
            evidence=ev,
            cluster="local",
            info=_run_info(targets, "check", results) if _draws_html(args) else None,
        )
        _export_telemetry(results, targets)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    return exit_code(results)


def _load(args: argparse.Namespace) -> tuple[TargetsFile, list[Check], Evidence]:
    """The targets (this shard's), the chosen checks, and the evidence options."""
    from probe.evidence import from_args
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
    ev = from_args(args)
    if ev.signer is not None:
        ev.add_material(f"targets:{args.file.name}", args.file.read_bytes())
    return targets, [load_check(n) for n in names], ev


def _shard(args: argparse.Namespace, targets: TargetsFile, names: list[str]) -> TargetsFile:
    from probe import shard

    try:
        chosen = shard.chosen(shard.ShardOptions(shard=args.shard, shards=args.shards))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if chosen is None:
        return targets
    scopes = [load_check(n).scope for n in names]
    return shard.select(targets, *chosen, by_endpoint=shard.by_endpoint(scopes))


def _sidecar_not_ready(sidecar: SidecarOptions, stop: threading.Event) -> str | None:
    if sidecar.wait is None:
        return None
    from probe.sidecar import wait_ready

    return wait_ready(sidecar.ready_url, sidecar.wait, stop=stop)


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


def _draws_html(args: argparse.Namespace) -> bool:
    """Whether a report goes out as html, the one format that draws the run's identity
    (its module, hashing the roots, is left unloaded otherwise)."""
    from probe.cliargs import format_for_file

    return args.output == "html" or (
        args.out is not None and format_for_file(args.out, args.output) == "html"
    )


def _run_info(targets: TargetsFile, command: str, results: list[Result]) -> RunInfo:
    from probe.html_report import RunInfo, root_fingerprints

    return RunInfo(
        command=command,
        trust_domain=targets.trust_domain,
        root_fingerprints=root_fingerprints(targets.root_cert_file),
        source_identity=targets.source.identity,
        exit_code=exit_code(results),
    )


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


__all__ = ["EXIT_USAGE", "configure", "main"]
