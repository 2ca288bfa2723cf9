"""``mtlsprobe wire-capture``: capture on one interface for a bounded time and print what
was seen, per marker and per TCP direction, as JSON lines (``probe.wire.record``): the
report the node capture agent gives and ``check --wire-report`` reads."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from probe.cliargs import UsageError, positive_int, positive_seconds


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
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            _window(args, done)
            if not args.repeat or done.is_set():
                return 0
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _window(args: argparse.Namespace, done: threading.Event) -> None:
    """One bounded capture, then its report (stdout, or FILE replaced atomically)."""
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
    ended = threading.Event()

    def waiter() -> None:
        cap.wait()
        ended.set()

    threading.Thread(target=waiter, daemon=True).start()
    try:
        while not ended.wait(0.2) and not done.is_set():
            pass
    finally:
        obs = cap.stop()
    text = "".join(line + "\n" for line in obs.to_jsonl())
    if args.out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, args.out)
