"""``mtlsprobe wire-capture``: capture on one interface for a bounded time and print what
was seen, per marker and per TCP direction, as JSON lines (``probe.wire.record``): the
report the node capture agent gives and ``check --wire-report`` reads."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from probe.cliargs import UsageError, positive_int, positive_seconds

if TYPE_CHECKING:
    from probe.wire.capture import Capture
    from probe.wire.record import Observation


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-i",
        "--interface",
        required=True,
        metavar="IF",
        help="interface to capture, or 'any' for every interface of the namespace",
    )
    p.add_argument("--netns", metavar="NAME", help="the interface is in network namespace NAME")
    p.add_argument(
        "--seconds",
        type=positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="capture this long, then report (default 60; SIGTERM ends it early)",
    )
    p.add_argument(
        "--max-bytes",
        type=positive_int,
        default=512 << 20,
        metavar="N",
        help="stop after N captured bytes (default 512 MiB; the report then says so)",
    )
    p.add_argument(
        "--repeat",
        action="store_true",
        help="capture window after window until SIGTERM, one report per window (the node "
        "agent: its pod log is the report stream)",
    )
    p.add_argument(
        "--overlap",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --repeat: each window opens this long before the previous one closes "
        "(default: a third of --seconds), so calls shorter than this lie whole inside one "
        "window's report (what `mtlsprobe run` reads)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the report to FILE (atomically, when the capture ends) instead of stdout",
    )
    p.add_argument(
        "--pcap",
        type=Path,
        metavar="DIR",
        help="also write the packets to a pcap file in DIR (debugging; otherwise nothing of "
        "the packets is written anywhere)",
    )


def main(args: argparse.Namespace) -> int:
    overlap = _overlap(args)
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        cap = _start(args)
        while True:
            nxt = None
            if args.repeat and overlap > 0:
                # The next window opens before this one closes: a session of calls
                # shorter than the overlap lies whole inside one window, so a reader
                # never needs two reports (a marker split across them would be lost).
                _wait(cap, done, time.monotonic() + args.seconds - overlap)
                if not done.is_set():
                    nxt = _start(args)
            _wait(cap, done, None)
            _emit(args, cap.stop())
            if not args.repeat or done.is_set():
                if nxt is not None:
                    _emit(args, nxt.stop())
                return 0
            cap = nxt if nxt is not None else _start(args)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _overlap(args: argparse.Namespace) -> float:
    if args.overlap is None:
        return args.seconds / 3 if args.repeat else 0.0
    if not args.repeat:
        raise UsageError("--overlap: only with --repeat (windows after windows)")
    if not 0 <= args.overlap < args.seconds:
        raise UsageError(f"--overlap: {args.overlap:g}s must be shorter than --seconds")
    return float(args.overlap)


def _start(args: argparse.Namespace) -> Capture:
    """Open one bounded capture window (the socket is open when this returns)."""
    from probe.wire.capture import Capture, CaptureError, CaptureOptions

    cap = Capture(
        CaptureOptions(
            args.interface,
            netns=args.netns,
            seconds=args.seconds,
            max_bytes=args.max_bytes,
            pcap_dir=args.pcap,
        )
    )
    try:
        cap.start()
    except CaptureError as exc:
        raise UsageError(str(exc)) from None
    # The socket is open: a caller may start its traffic now.
    where = args.interface + (f" in {args.netns}" if args.netns else "")
    sys.stderr.write(f"mtlsprobe wire-capture: capturing on {where} for {args.seconds:g}s\n")
    sys.stderr.flush()
    return cap


def _wait(cap: Capture, done: threading.Event, until: float | None) -> None:
    """Until the window ends by itself, SIGTERM, or ``until`` (monotonic)."""
    while not done.is_set():
        left = 0.2 if until is None else min(0.2, until - time.monotonic())
        if left <= 0 or cap.ended(left):
            return


def _emit(args: argparse.Namespace, obs: Observation) -> None:
    """One window's report: stdout, or FILE replaced atomically."""
    text = "".join(line + "\n" for line in obs.to_jsonl())
    if args.out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, args.out)
