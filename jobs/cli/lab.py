"""``mtlsprobe lab``: bring up a local mesh of real Envoy sidecars, verify it with
the whole suite, and explain what was found."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from jobs.cli import flags
from jobs.cli.signals import raising_on
from probe.checks import KNOWN, OPT_IN, REGISTRY
from probe.cliargs import (
    UsageError,
    add_checks_flag,
    add_probe_flags,
    add_report_flags,
    emit_report,
    positive_int,
    probe_settings,
    words,
    write_report,
)

if TYPE_CHECKING:
    from jobs.lab.netns.lab import NetnsLab
    from jobs.lab.runner import LabRun
    from jobs.lab.runtime import Lab
    from jobs.lab.scenarios import Scenario
    from probe.html_report import RunInfo
    from probe.results import Result

DEFAULT_SCENARIOS = ("healthy", "broken", "blinded")


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Bring up a local Istio-like mesh of real Envoy sidecars from Kubernetes/Istio YAML "
        "(built-in scenarios or your own), run every check against it and print the report. "
        "With no arguments: the 'healthy' scenario, what the checks find in 'broken', and "
        "a 'blinded' probe that its negative control catches."
    )
    p.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help="built-in scenario(s): healthy, migration, broken, blinded, authz",
    )
    p.add_argument(
        "-f",
        "--file",
        action="append",
        type=Path,
        default=[],
        metavar="FILE.yaml",
        help="your own manifests (Namespaces, Deployments/Pods, Services, PeerAuthentications, "
        "DestinationRules, AuthorizationPolicies); repeatable, all files form one mesh",
    )
    p.add_argument(
        "--workloads",
        type=int,
        metavar="N",
        help="generate a STRICT mesh of N workloads (scale runs)",
    )
    flags.add_require_flag(p, note=" (default: the scenario's own)")
    add_checks_flag(
        p,
        tuple(REGISTRY),
        extra="; opt-in: wire (with --netns: a packet capture beside the probe's calls; a "
        "scenario that expects wire verdicts runs it by default)",
        known=tuple(KNOWN),
    )
    add_report_flags(p)
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the mesh running and print how to probe it by hand and how to stop it",
    )
    p.add_argument("--down", type=Path, metavar="WORKDIR", help="stop a mesh left up by --keep")
    from probe.evidence import add_flags as add_evidence_flags

    add_evidence_flags(p)
    p.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="where certificates, Envoy configs, logs and the targets file go "
        "(default: a temporary directory, removed afterwards unless --keep or a failure)",
    )
    add_probe_flags(p)
    p.add_argument(
        "--netns",
        action="store_true",
        help="root only: run every pod as a network namespace with its own IP, its sidecar "
        "behind Istio's iptables capture, and the probes as in a pod (no proxy setting)",
    )
    p.add_argument(
        "--envoys",
        type=positive_int,
        metavar="N",
        help="Envoy processes hosting the workload sidecars (default: one per 250 pods, max 2)",
    )


def _parse_list(
    given: list[str] | str | None, known: tuple[str, ...], flag: str
) -> list[str] | None:
    if not given:
        return None
    items = list(words(given))
    for x in items:
        if x not in known:
            raise UsageError(f"{flag}: unknown {x!r} (known: {', '.join(known)})")
    return items


def _scenarios(args: argparse.Namespace) -> tuple[list[Scenario], bool]:
    """The scenarios to run, and whether this is the guided demo (no arguments)."""
    from jobs.lab import scenarios as sc

    chosen: list[Scenario] = []
    try:
        chosen += [sc.builtin(name) for name in args.scenarios]
        if args.file:
            chosen.append(sc.from_files(args.file))
    except sc.ScenarioError as exc:
        raise UsageError(str(exc)) from None
    if args.workloads is not None:
        if args.workloads < 1:
            raise UsageError("--workloads must be >= 1")
        chosen.append(sc.generated(args.workloads))
    if chosen:
        return chosen, False
    return [sc.builtin(n) for n in DEFAULT_SCENARIOS], True


def main(args: argparse.Namespace) -> int:
    from jobs.lab.scenarios import REQUIREMENTS, ScenarioError
    from jobs.lab.supervisor import LabError, stop_pids_file
    from probe.results import EXIT_ERROR

    if args.down is not None:
        from jobs.lab.netns.net import STATE_FILE

        if (args.down / STATE_FILE).exists():
            return _down_netns(args.down)
        try:
            pids = stop_pids_file(args.down)
        except LabError as exc:
            raise UsageError(str(exc)) from None
        print(f"stopped {len(pids)} lab process(es) from {args.down}")
        return 0

    require = _parse_list(args.require, REQUIREMENTS, "--require")
    asked = _parse_list(args.checks, tuple(KNOWN), "--checks")
    scenarios, demo = _scenarios(args)
    if args.netns:
        _netns_preflight(args)
    if args.keep and len(scenarios) > 1:
        raise UsageError("--keep needs exactly one scenario (e.g. mtlsprobe lab healthy --keep)")
    from probe.evidence import from_args as evidence_from_args

    ev = evidence_from_args(args)

    temp = args.workdir is None
    root = Path(tempfile.mkdtemp(prefix="mtlsprobe-lab-")) if temp else args.workdir
    human = args.output == "table"
    out: TextIO = sys.stdout if human else sys.stderr
    runs: list[LabRun] = []
    roots: list[str] = []  # the mesh CAs' fingerprints, read before the workdir goes
    failed_bringup = False
    try:
        # SIGTERM/SIGHUP unwind like Ctrl-C does, so every ``finally`` tears the mesh down.
        with raising_on((signal.SIGTERM, signal.SIGHUP), lambda signum: SystemExit(128 + signum)):
            if demo:
                _print_intro(out)
            for i, scenario in enumerate(scenarios):
                workdir = root / scenario.name if len(scenarios) > 1 else root
                checks = asked or _default_checks(scenario)
                try:
                    run = _run_one(
                        args,
                        scenario,
                        workdir,
                        require=require,
                        checks=checks,
                        out=out,
                        index=i,
                        total=len(scenarios),
                    )
                except ScenarioError as exc:
                    raise UsageError(str(exc)) from None
                except LabError as exc:
                    failed_bringup = True
                    sys.stderr.write(f"mtlsprobe lab: {scenario.name}: {exc}\n")
                    continue
                runs.append(run)
                if ev.signer is not None:  # before the workdir goes
                    ev.add_material(f"targets:{scenario.name}", run.targets_path.read_bytes())
                roots.extend(_root_fingerprints(run))
                if human:
                    _print_run(run, out)
    finally:
        if temp and not args.keep and not failed_bringup:
            shutil.rmtree(root, ignore_errors=True)
    code = EXIT_ERROR if failed_bringup else _exit_code(runs, demo)
    results = _all_results(runs)
    info = _run_info(runs, roots, code)
    if not human:
        emit_report(results, args.output, None, info=info, evidence=ev, cluster="lab", stdout=True)
    elif demo:
        _print_closing(runs, out)
    if args.out is not None:
        write_report(results, args.output, args.out, evidence=ev, info=info)
    if ev.signer is not None and human:
        from probe.evidence import write_attestation

        write_attestation(ev, results, cluster="lab")
    if failed_bringup:
        sys.stderr.write(f"mtlsprobe lab: logs kept in {root}\n")
    return code


def _run_one(
    args: argparse.Namespace,
    scenario: Scenario,
    workdir: Path,
    *,
    require: list[str] | None,
    checks: list[str],
    out: TextIO,
    index: int,
    total: int,
) -> LabRun:
    reqs = list(scenario.require) if require is None else require
    label = f"Scenario {index + 1}/{total}: " if total > 1 else "Scenario: "
    out.write(f"\n== {label}{scenario.name}" + (f" — {scenario.title}" if scenario.title else ""))
    out.write("\n")
    if scenario.demonstrates:
        out.write(_wrap(scenario.demonstrates, "   ") + "\n")
    if reqs:
        out.write(f"   Compliance requirements: --require {','.join(reqs)}\n")
    out.flush()

    def ready(lab: Lab, run: LabRun) -> None:
        mesh = lab.mesh
        sidecars = sum(1 for p in mesh.pods if p.sidecar)
        namespaces = len({p.namespace for p in mesh.pods})
        hosts = len(lab.envoy_procs) - 1
        out.write(
            f"   Mesh up in {lab.ready_seconds:.1f}s: {_n(len(mesh.pods), 'pod')} "
            f"({sidecars} with a sidecar) in {_n(namespaces, 'namespace')}, "
            f"{_n(len(mesh.upstreams), 'service port')}; real Envoy: "
            f"{_n(hosts, 'process', 'processes')} hosting the sidecars + the probe's sidecar.\n"
        )
        out.flush()
        if args.keep:
            _print_keep(run, out)

    if args.netns:
        from jobs.lab.netns.lab import run_scenario_netns

        return run_scenario_netns(
            scenario,
            workdir,
            require=reqs,
            checks=checks,
            settings=probe_settings(args),
            on_ready=lambda lab, run: _print_netns_ready(lab, out),
        )
    from jobs.lab.runner import run_scenario

    if set(checks) == {WIRE}:
        return _wire_only_skips(scenario, workdir, reqs)
    run = run_scenario(
        scenario,
        workdir,
        require=reqs,
        checks=[c for c in checks if c != WIRE],
        settings=probe_settings(args),
        keep=args.keep,
        envoys=args.envoys,
        on_ready=ready,
    )
    if WIRE in checks:
        _skip_wire(run)
    return run


WIRE = "wire"
WIRE_SKIP = (
    "wire needs pods with their own network to capture between: run the lab as root with "
    "--netns (the loopback lab's pods share one loopback, and capturing needs CAP_NET_RAW)"
)
NOT_ROOT = " (this process is not root, so --netns is not available here)"


def _default_checks(scenario: Scenario) -> list[str]:
    """Every registered check, and an opt-in one the scenario expects verdicts of."""
    return list(REGISTRY) + [c for c in OPT_IN if any(e.check == c for e in scenario.expect)]


def _wire_only_skips(scenario: Scenario, workdir: Path, require: list[str]) -> LabRun:
    """``lab --checks wire`` without --netns: nothing to start, the skips say why."""
    from jobs.lab.build import build_lab
    from jobs.lab.netns.net import PodAddresses
    from jobs.lab.runner import LabRun, write_targets

    built = build_lab(scenario, PodAddresses(), require)
    workdir.mkdir(parents=True, exist_ok=True)
    run = LabRun(scenario, built, workdir, workdir / "targets.yaml")
    write_targets(built.targets, run.targets_path)
    run.results = list(built.findings)
    _skip_wire(run)
    return run


def _skip_wire(run: LabRun) -> None:
    """The loopback lab cannot run ``wire``: one ``skip`` per target saying why, and the
    scenario's wire expectations are not owed."""
    from jobs.lab.netns.lab import asked
    from jobs.lab.scenarios import judge
    from probe.checks.base import make_result
    from probe.results import Verdict

    targets = run.build.targets.targets
    why = WIRE_SKIP + (NOT_ROOT if os.geteuid() != 0 else "")
    run.results += [make_result(WIRE, t, None, Verdict.SKIP, why) for t in targets]
    if run.scenario.judged:
        run.mismatches = judge(asked(run.scenario, []), run.results)


def _netns_preflight(args: argparse.Namespace) -> None:
    from jobs.lab.netns.net import preflight
    from jobs.lab.supervisor import LabError

    if args.keep or args.envoys is not None:
        raise UsageError(
            "--netns runs one Envoy per pod and tears down at exit: no --keep/--envoys"
        )
    try:
        preflight()
    except LabError as exc:
        raise UsageError(str(exc)) from None


def _down_netns(workdir: Path) -> int:
    from jobs.lab.netns.lab import down
    from jobs.lab.supervisor import LabError

    try:
        stopped, left = down(workdir)
    except LabError as exc:
        raise UsageError(str(exc)) from None
    if left:
        sys.stderr.write(f"mtlsprobe lab --down: could not remove {', '.join(left)}\n")
        return 1
    print(f"stopped {stopped} lab process(es) and removed the lab network of {workdir}")
    return 0


def _print_netns_ready(lab: NetnsLab, out: TextIO) -> None:
    mesh = lab.mesh
    sidecars = sum(1 for p in mesh.pods if p.sidecar)
    out.write(
        f"   Mesh up in {lab.ready_seconds:.1f}s: {_n(len(mesh.pods), 'pod')} as network "
        f"namespaces ({sidecars} with a sidecar), {_n(len(mesh.upstreams), 'service port')}; "
        f"{_n(len(lab.envoy_procs), 'Envoy')} as UID 1337 behind Istio's capture rules; "
        "the probes run `mtlsprobe check` in their own pods.\n"
        f"   (If this process is killed: mtlsprobe lab --down {lab.workdir})\n"
    )
    out.flush()


def _n(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def _wrap(text: str, indent: str) -> str:
    import textwrap

    return textwrap.fill(
        " ".join(text.split()), width=96, initial_indent=indent, subsequent_indent=indent
    )


def _print_intro(out: TextIO) -> None:
    out.write(
        "mtlsprobe lab: a local Istio-like mesh of real Envoy sidecars, configured from\n"
        "Kubernetes and Istio YAML the way Istio configures them, with a mesh CA issuing\n"
        "SPIFFE certificates. The same checks that run in a cluster probe it from a probe\n"
        "without a sidecar (plaintext, peer-cert, foreign-client) and from one with a sidecar\n"
        "(mesh, xfcc-spoof, self), and judge what the wire did against what policy says.\n"
        "Negative controls run first: plaintext must reach a workload without a sidecar\n"
        "and a mesh call must show mTLS, or the verdicts that rest on them are errors.\n"
        "First a healthy mesh, then one with a real failure of each kind, then a probe\n"
        "whose traffic is reset by the network (a blind detector, caught by its control).\n"
    )


def _print_run(run: LabRun, out: TextIO) -> None:
    from probe.report import render_table

    colour = out.isatty() and "NO_COLOR" not in os.environ
    out.write("\n" + render_table(run.results, colour=colour))
    rate = len(run.results) / run.check_seconds if run.check_seconds > 0 else 0.0
    out.write(f"   checks took {run.check_seconds:.2f}s ({rate:.0f} results/s)\n")
    _print_capture(run, out)
    if run.scenario.judged:
        if run.mismatches:
            out.write(
                f"   !! {len(run.mismatches)} verdict(s) differ from what '{run.scenario.name}' "
                "expects:\n"
            )
            for m in run.mismatches:
                out.write(f"      {m}\n")
        else:
            out.write(f"   Every verdict is what '{run.scenario.name}' expects.\n")
    out.flush()


def _print_capture(run: LabRun, out: TextIO) -> None:
    from jobs.lab.netns.lab import NetnsRun

    if isinstance(run, NetnsRun):
        out.write(
            f"   Transparent capture: iptables redirected {_n(run.captured, 'connection')} of "
            "the sidecar probe into its Envoy's 15001 (its targets file has no sidecarProxy).\n"
        )


def _print_keep(run: LabRun, out: TextIO) -> None:
    out.write(
        f"\n   The mesh stays up (--keep). Targets file: {run.targets_path}\n"
        f"   Probe it by hand:  mtlsprobe check -f {run.targets_path}\n"
        f"   Stop it:           mtlsprobe lab --down {run.workdir}\n"
        f"   (PIDs in {run.workdir / 'pids'}; logs in {run.workdir})\n\n"
    )
    out.flush()


def _print_closing(runs: list[LabRun], out: TextIO) -> None:
    """Per target, what was found and why: the story of each failure in one place."""
    from probe.results import Verdict

    for run in runs:
        bad: dict[str, list[tuple[str, str, str]]] = {}
        seen: set[tuple[str, str]] = set()
        for r in run.results:
            if r.verdict not in (Verdict.FAIL, Verdict.ERROR) or (r.check, r.target) in seen:
                continue
            seen.add((r.check, r.target))
            why = next((e.why for e in run.scenario.expect if e.matches(r) and e.why), "")
            bad.setdefault(r.target, []).append((r.verdict.value.upper(), r.check, why or r.reason))
        if not bad:
            continue
        out.write(f"\nWhat the checks found in '{run.scenario.name}', target by target:\n")
        for target, items in bad.items():
            out.write(f"\n  {target}\n")
            for verdict, check, text in items:
                head = f"    {verdict:5} {check:15} "
                out.write(_wrap(text, " " * len(head)).replace(" " * len(head), head, 1) + "\n")
    matched = all(not r.mismatches for r in runs)
    out.write(
        "\n"
        + (
            "Every verdict is the one its scenario expects: the fails above are the product\n"
            "catching real problems, the errors a blind detector refusing to guess, so this\n"
            "demo exits 0.\n"
            if matched
            else "Some verdicts differ from what the scenarios expect (see above): exit 1.\n"
        )
        + "Next: `mtlsprobe lab migration` (PERMISSIVE namespaces, --require strict),\n"
        "`mtlsprobe lab -f your-policies.yaml` to rehearse your own YAML, `--keep` to poke\n"
        "at the mesh with `mtlsprobe check`, and `mtlsprobe lab --workloads 500` for scale.\n"
    )
    out.flush()


def _all_results(runs: list[LabRun]) -> list[Result]:
    """Every run's results; targets prefixed with the scenario when several ran."""
    from dataclasses import replace

    results = []
    for run in runs:
        for r in run.results:
            results.append(
                replace(r, target=f"{run.scenario.name}/{r.target}") if len(runs) > 1 else r
            )
    return results


def _root_fingerprints(run: LabRun) -> tuple[str, ...]:
    from probe.html_report import root_fingerprints
    from probe.model import TargetsFileError, load_targets

    try:
        return root_fingerprints(load_targets(run.targets_path).root_cert_file)
    except TargetsFileError:
        return ()


def _run_info(runs: list[LabRun], roots: list[str], code: int) -> RunInfo:
    from probe.html_report import RunInfo

    names = ", ".join(r.scenario.name for r in runs) or "no scenario came up"
    domains = sorted({r.build.targets.trust_domain for r in runs})
    return RunInfo(
        command="lab",
        cluster=f"local lab mesh (real Envoy): {names}",
        trust_domain=", ".join(domains) or None,
        root_fingerprints=tuple(dict.fromkeys(roots)),
        exit_code=code,
    )


def _exit_code(runs: list[LabRun], demo: bool) -> int:
    from probe.results import EXIT_FAIL, EXIT_OK, exit_code

    if demo:
        return EXIT_FAIL if any(r.mismatches for r in runs) else EXIT_OK
    return max((exit_code(r.results) for r in runs), default=EXIT_OK, key=_severity)


def _severity(code: int) -> int:
    return {0: 0, 2: 1, 1: 2}.get(code, 3)
