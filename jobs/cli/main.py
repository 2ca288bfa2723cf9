"""The ``mtlsprobe`` command. Each subcommand's module is imported only when chosen,
so ``mtlsprobe check`` in a probe pod never loads the Kubernetes client."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from probe.results import EXIT_USAGE

# name -> (module with configure(parser) and main(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("probe.cli", "run checks against explicit targets (no Kubernetes needed)"),
    "serve": ("probe.echo", "the echo responder: reflects request headers as JSON"),
    "plan": ("jobs.cli.plan", "discover the mesh and print what every edge must do (no probing)"),
    "lab": ("jobs.cli.lab", "bring up a local mesh of real Envoy sidecars and verify it"),
    "run": ("jobs.cli.run", "launch probe Jobs in the cluster and aggregate one verdict"),
    "agent": ("jobs.cli.agent", "continuous probing on an interval, with metrics and health"),
    "evidence": ("jobs.cli.evidence", "verify a signed attestation written by --attest"),
}


class _Formatter(argparse.HelpFormatter):
    """argparse's help, wrapped without breaking a flag or a label at its hyphens."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        return textwrap.fill(
            " ".join(text.split()),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
        )


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 64 (README: exit codes), with one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _chosen(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mtlsprobe",
        description="Active verification of service-mesh mutual TLS: real calls, real "
        "certificates, a verdict per edge that fails closed.",
    )
    from probe import __version__

    # Not importlib.metadata: it costs ~60 ms of every start-up.
    parser.add_argument("--version", action="version", version=f"mtlsprobe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    chosen = _chosen(argv)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Formatter)
        if name == chosen:
            importlib.import_module(module).configure(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[args.command][0])
    from probe.cliargs import UsageError
    from probe.textsafe import line

    try:
        code: int = module.main(args)
    except UsageError as exc:
        # One line whatever a file or flag put in the message (newlines, escapes).
        sys.stderr.write(f"mtlsprobe {args.command}: error: {line(str(exc), 1000)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("mtlsprobe: interrupted\n")
        return 130
    except Exception as exc:
        if os.environ.get("MTLSPROBE_DEBUG"):
            import traceback  # only here: ~4 ms of every start-up

            traceback.print_exc()
        sys.stderr.write(
            f"mtlsprobe {args.command}: internal error: {type(exc).__name__}: "
            f"{line(str(exc), 300)} "
            "(set MTLSPROBE_DEBUG=1 for a traceback)\n"
        )
        return 70
    return code


if __name__ == "__main__":
    sys.exit(main())
