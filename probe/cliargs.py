"""The command line's shared vocabulary: the usage error every command raises, the
argument types, renamed flags kept as hidden aliases, and the flag groups of the data
plane (probing settings, report output) that ``check``, ``run``, ``agent`` and ``lab``
share. It lives in ``probe/`` so ``mtlsprobe check`` uses it without the control plane;
the control plane's groups (cluster access, namespace scope, mesh) are in
``jobs/cli/flags.py``.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probe.checks.base import Settings
    from probe.evidence import Evidence
    from probe.html_report import RunInfo
    from probe.results import Result

REPORT_FORMATS = ("table", "json", "jsonl", "junit", "policyreport", "html")


class UsageError(Exception):
    """Bad flags or configuration: one line, exit 64."""


# ---- argument types ---------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90d``, ``6h``, ``30m``, ``45s`` or plain seconds."""
    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 6h, 90d, 30m, 45s)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return v


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1")
    return int(text)


def seconds(text: str) -> float:
    """A span in seconds, >= 0: a number (``2.5``) or a duration (``30s``, ``2m``), so
    every time flag of every command takes the same spellings."""
    try:
        v = float(text)
    except ValueError:
        return parse_duration(text).total_seconds()
    if not v >= 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return v


def positive_seconds(text: str) -> float:
    v = seconds(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return v


def words(items: Sequence[str] | str | None) -> tuple[str, ...]:
    """``a,b`` and repeated flags as one list, in order, without blanks or repeats."""
    raw = [items] if isinstance(items, str) else list(items or ())
    return tuple(dict.fromkeys(w.strip() for i in raw for w in i.split(",") if w.strip()))


# ---- renamed flags ------------------------------------------------------------------------------


class _OldSpelling(argparse.Action):
    """A flag's previous name: hidden from --help, parsed exactly as the new one, with
    one line on stderr saying what to write instead."""

    def __init__(
        self, option_strings: list[str], dest: str, *, new: argparse.Action, **_: Any
    ) -> None:
        super().__init__(
            option_strings,
            dest=new.dest,
            nargs=new.nargs,
            const=new.const,
            default=argparse.SUPPRESS,
            type=None if isinstance(new.type, str) else new.type,  # str: never used here
            choices=new.choices,
            help=argparse.SUPPRESS,
            metavar=new.metavar,
        )
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        name = self.new.option_strings[-1]
        sys.stderr.write(
            f"mtlsprobe: {option_string} is now {name}; the old spelling goes in the next release\n"
        )
        self.new(parser, namespace, values, name)


def old_spelling(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Keep ``old`` working as ``new`` (already added to ``parser``) until the next
    release, hidden from --help, and list it in the epilog."""
    parser.add_argument(old, action=_OldSpelling, new=parser._option_string_actions[new])
    names = [
        f"{a.option_strings[0]} (now {a.new.option_strings[-1]})"
        for a in parser._actions
        if isinstance(a, _OldSpelling)
    ]
    parser.epilog = (
        f"Old spelling{'s' if len(names) > 1 else ''} {', '.join(names)} still accepted "
        "until the next release."
    )


# ---- data-plane flag groups ---------------------------------------------------------------------

Group = argparse._ArgumentGroup | argparse.ArgumentParser


# The checks' settings as flags: (flag, argument type, metavar, help ending in the default).
# The flag names the ``Settings`` field (``--min-remaining`` -> ``min_remaining``).
_PROBE_FLAGS: tuple[tuple[str, Callable[[str], Any], str, str], ...] = (
    ("--timeout", positive_seconds, "SECONDS", "per network operation of the checks"),
    ("--concurrency", positive_int, "N", "checks in flight at once"),
    ("--min-remaining", parse_duration, "DURATION", "fail certificates expiring sooner"),
    ("--max-lifetime", parse_duration, "DURATION", "fail certificates valid for longer"),
)


def _field(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _shown(value: object) -> str:
    if isinstance(value, timedelta):
        return span(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_probe_flags(group: Group) -> None:
    """How the checks probe, with the checks' own defaults (``Settings``). ``--timeout``
    is always the per-operation network timeout (the Kubernetes API's is
    ``--request-timeout``)."""
    from probe.checks.base import Settings

    default = Settings()
    for flag, kind, metavar, text in _PROBE_FLAGS:
        value = getattr(default, _field(flag))
        group.add_argument(
            flag,
            type=kind,
            default=value,
            metavar=metavar,
            help=f"{text} (default: {_shown(value)})",
        )


def probe_settings(args: argparse.Namespace) -> Settings:
    """The checks' settings from the flags of ``add_probe_flags``."""
    from probe.checks.base import Settings

    return Settings(**{_field(flag): getattr(args, _field(flag)) for flag, *_ in _PROBE_FLAGS})


def span(value: timedelta) -> str:
    """A duration as ``parse_duration`` reads it, in its largest whole unit (``6h``)."""
    total = value.total_seconds()
    for unit in ("d", "h", "m"):
        if total and total % _UNITS[unit] == 0:
            return f"{total / _UNITS[unit]:.0f}{unit}"
    return f"{total:.6f}".rstrip("0").rstrip(".") + "s"  # never an exponent


def add_checks_flag(
    group: Group, names: Sequence[str], *, extra: str = "", known: Sequence[str] = ()
) -> None:
    """``--checks``; with ``known`` (more checks than the default), the default is None
    and the command decides (``check`` adds authz when the targets file has cases)."""
    default = ",".join(names)
    shown = f"all: {default}" if not known else default
    more = f"; known: {','.join(known)}" if known else ""
    group.add_argument(
        "--checks",
        default=None if known else default,
        metavar="LIST",
        help=f"comma-separated checks to run (default: {shown}){extra}{more}",
    )


def add_report_flags(group: Group, *, out: bool = True) -> None:
    group.add_argument(
        "-o",
        "--output",
        default="table",
        choices=REPORT_FORMATS,
        help="report format on stdout (default: table)",
    )
    if out:
        group.add_argument(
            "--out",
            type=Path,
            metavar="FILE",
            help="also write the report to FILE (format from -o, or by suffix .json/.jsonl/.xml)",
        )


def format_for_file(path: Path, default: str) -> str:
    suffixes = {
        ".json": "json",
        ".jsonl": "jsonl",
        ".xml": "junit",
        ".yaml": "policyreport",
        ".html": "html",
    }
    return suffixes.get(path.suffix.lower(), default)


def emit_report(
    results: list[Result],
    fmt: str,
    out: Path | None,
    *,
    timing: bool = False,
    evidence: Evidence | None = None,
    cluster: str = "local",
    run_id: str | None = None,
    info: RunInfo | None = None,
    stdout: bool = True,
) -> None:
    """The report on stdout in ``fmt`` and, with ``--out``, in FILE too; with
    ``evidence``, control IDs in it and the signed attestation after it. ``info`` is the
    run's identity for the html page (time, cluster, roots); ``stdout=False`` writes
    ``out`` only (the lab prints its own story there)."""
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
    if stdout:
        text = render(
            results, fmt, colour=colour, timing=timing, info=info, **_evidence_opts(evidence)
        )
        sys.stdout.write(text)
        sys.stdout.flush()
    if out is not None:
        write_report(results, fmt, out, timing=timing, evidence=evidence, info=info)
    if evidence is not None:
        from probe.evidence import write_attestation

        write_attestation(evidence, results, cluster=cluster, run_id=run_id)


def _evidence_opts(evidence: Evidence | None) -> dict[str, Any]:
    if evidence is None:
        return {}
    return {"controls": evidence.controls, "report_kind": evidence.report_kind}


def write_report(
    results: list[Result],
    fmt: str,
    out: Path,
    *,
    timing: bool = False,
    evidence: Evidence | None = None,
    info: RunInfo | None = None,
) -> None:
    from probe.report import render

    try:
        fmt = format_for_file(out, fmt)
        text = render(results, fmt, timing=timing, info=info, **_evidence_opts(evidence))
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write: {exc.strerror or exc}") from None
