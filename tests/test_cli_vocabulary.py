"""One CLI vocabulary: a shared flag has the same name, meaning and help in every command
that takes it; renamed flags keep working under their old spelling for a release, hidden
from --help but named in its epilog; no module reaches into another's private names."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest
import yaml

from jobs.cli.main import build_parser
from jobs.cli.main import main as cli_main
from probe.cliargs import UsageError

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "jobs" / "lab" / "scenarios"

# flag -> the commands that must define it identically
SHARED: dict[str, tuple[str, ...]] = {
    # control plane: cluster access, namespace scope, the mesh
    **{
        f: ("plan", "run", "agent")
        for f in (
            "--kubeconfig",
            "--context",
            "--in-cluster",
            "--request-timeout",
            "--namespace",
            "--all-namespaces",
            "--namespace-selector",
            "--include-system",
            "--istio-namespace",
            "--revision",
            "--trust-domain",
            "--root-namespace",
        )
    },
    "--probe-namespace": ("plan", "run"),
    "--require": ("plan", "run"),
    # data plane: how the checks probe and report
    "--timeout": ("check", "run", "agent", "lab"),
    "--concurrency": ("check", "run", "agent", "lab"),
    "--min-remaining": ("check", "run", "agent", "lab"),
    "--max-lifetime": ("check", "run", "agent", "lab"),
    "--output": ("check", "run", "lab"),
    "--out": ("check", "run", "lab"),
    "--wait-for-sidecar": ("check", "run"),
}

# (command, old spelling, new spelling, a value or None for a switch)
OLD_SPELLINGS = [
    ("plan", "--timeout", "--request-timeout", "7"),
    ("plan", "--selector", "--namespace-selector", "team=a"),
    ("plan", "--client-namespace", "--probe-namespace", "probes"),
    ("run", "--selector", "--namespace-selector", "team=a"),
    ("run", "--sidecar-wait", "--wait-for-sidecar", "7"),
    ("agent", "--root-cert", "--root-cert-file", "/etc/mesh/root.pem"),
]
NEEDS = {"agent": ["--kind", "plain"]}


def _command(name: str) -> argparse.ArgumentParser:
    parser = build_parser([name])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen: argparse.ArgumentParser = sub.choices[name]
    return chosen


def _action(p: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return p._option_string_actions[flag]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("flag", sorted(SHARED))
def test_a_shared_flag_is_one_flag_in_every_command(flag: str) -> None:
    seen = {}
    for cmd in SHARED[flag]:
        p = _command(cmd)
        a = _action(p, flag)
        assert a.help and a.help != argparse.SUPPRESS, (cmd, flag)
        seen[cmd] = (
            tuple(a.option_strings),
            a.dest,
            repr(a.default),
            a.help,
            a.metavar,
            a.type,
            a.nargs if flag != "--wait-for-sidecar" else None,  # check's takes it optional
            a.choices,
        )
        # and --help shows it: same spellings, same words
        shown = _flat(p.format_help())
        assert all(o in shown for o in a.option_strings), (cmd, flag)
        if flag != "--wait-for-sidecar":
            assert _flat(a.help % {"const": a.const}) in shown, (cmd, flag)
    if flag == "--wait-for-sidecar":  # a budget in both; check's alone may be given bare
        assert len({(v[1], v[4]) for v in seen.values()}) == 1, seen
        return
    assert len(set(seen.values())) == 1, seen


def test_timeout_is_the_network_timeout_everywhere_and_the_api_one_has_its_own_name() -> None:
    for cmd in ("check", "run", "agent", "lab"):
        assert "per network operation" in (_action(_command(cmd), "--timeout").help or "")
    for cmd in ("plan", "run", "agent"):
        assert "Kubernetes API" in (_action(_command(cmd), "--request-timeout").help or "")


@pytest.mark.parametrize(("cmd", "old", "new", "value"), OLD_SPELLINGS)
def test_an_old_spelling_still_works_and_is_hidden_from_help(
    cmd: str, old: str, new: str, value: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _command(cmd)
    base = NEEDS.get(cmd, [])
    given = [old] if value is None else [old, value]
    wanted = [new] if value is None else [new, value]
    via_old = p.parse_args([*base, *given])
    err = capsys.readouterr().err
    assert via_old == p.parse_args([*base, *wanted])
    # one line saying what to write instead
    assert err == f"mtlsprobe: {old} is now {new}; the old spelling goes in the next release\n"
    text = p.format_help()
    body, _, epilog = text.partition("Old spelling")
    assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", body), text
    assert f"{old} (now {new})" in _flat(epilog)
    assert "still accepted until the next release" in _flat(epilog)


def test_commands_without_renames_have_no_epilog() -> None:
    for cmd in ("check", "lab"):
        assert "Old spelling" not in _command(cmd).format_help()


def test_the_old_api_timeout_spelling_reaches_the_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``plan --timeout`` still bounds the API requests (now ``--request-timeout``)."""
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    assert cli_main(["plan", "--kubeconfig", str(cfg), "--timeout", "2"]) == 64
    err = capsys.readouterr().err
    assert "--timeout is now --request-timeout" in err
    assert "cannot reach the Kubernetes API at http://127.0.0.1:9" in err


def test_the_old_selector_spelling_is_checked_as_the_new_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifests = str(SCENARIOS / "migration.yaml")
    argv = ["plan", "--from-manifests", manifests, "-n", "a", "--selector", "x=y"]
    assert cli_main(argv) == 64
    err = capsys.readouterr().err
    assert "-n cannot be combined with --all-namespaces or --namespace-selector" in err


# ---- one validation for the shared flags ---------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trust-domain", "evil.org:443"], "--trust-domain 'evil.org:443': lowercase"),
        (["--revision", "../x"], "--revision '../x': not a Kubernetes name"),
        (["-n", "a", "--namespace-selector", "x=y"], "-n cannot be combined"),
        (["-n", "a", "-A"], "-n cannot be combined"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["plan", "--from-manifests", str(SCENARIOS / "migration.yaml")],
        ["run"],
        ["agent", "--kind", "plain", "--listen", "127.0.0.1:0"],
    ],
)
def test_every_command_refuses_bad_shared_flags_in_one_line(
    command: list[str], extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main([*command, *extra]) == 64
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("command", [["plan"], ["run"], ["agent", "--kind", "plain"]])
def test_in_cluster_means_the_same_in_every_command(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli_main([*command, "--in-cluster"]) == 64
    assert "--in-cluster: not running in a pod" in capsys.readouterr().err
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert cli_main([*command, "--in-cluster", "--context", "x"]) == 64
    assert "drop --kubeconfig/--context" in capsys.readouterr().err


def test_agent_options_are_typed_and_come_from_the_shared_groups() -> None:
    from jobs.cli.agent import options

    p = _command("agent")
    args = p.parse_args(
        [
            "--kind",
            "sidecar",
            "-n",
            "a,b",
            "-n",
            "c",
            "--include-system",
            "--root-namespace",
            "mesh-root",
            "--request-timeout",
            "30",
            "--interval",
            "20s",
            "--timeout",
            "2s",
            "--peers",
            "x, y,,x",
        ]
    )
    opts = options(args)
    assert opts.discovery is not None
    d = opts.discovery.options
    assert d.namespaces == ("a", "b", "c") and d.include_system
    assert d.root_namespace == "mesh-root"
    assert d.timeout == 20.0  # a request never outlasts the round interval
    assert opts.request_timeout == 30.0 and opts.peers == ("x", "y")
    assert opts.settings is not None and opts.settings.timeout == 2.0
    with pytest.raises(UsageError, match="--trust-domain"):
        options(p.parse_args(["--kind", "plain", "--trust-domain", "a/b"]))


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "soon", "5x"])
def test_every_seconds_flag_refuses_what_is_not_a_bounded_positive_span(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["check", "-f", "x.yaml", "--timeout", value],
        ["run", "--request-timeout", value],
        ["run", "--deadline", value],
        ["agent", "--kind", "plain", "--interval", value],
        ["lab", "--timeout", value],
    ):
        with pytest.raises(SystemExit) as exc:
            cli_main(argv)
        assert exc.value.code == 64, argv
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("mtlsprobe ")


def test_run_hands_the_probing_flags_to_its_probe_pods() -> None:
    """What ``run`` takes as ``check`` flags reaches ``check`` in the Job, parsed back
    to the same values; defaults are left to the probe."""
    from jobs.launch.jobspec import ROLES, RunSpec, probe_args

    run = _command("run").parse_args(
        ["--timeout", "3", "--concurrency", "8", "--min-remaining", "1d", "--max-lifetime", "2h"]
    )
    spec = RunSpec(
        run_id="r",
        image="i",
        timeout=run.timeout,
        concurrency=run.concurrency,
        min_remaining=run.min_remaining,
        max_lifetime=run.max_lifetime,
    )
    argv = probe_args(ROLES[0], ("plaintext",), spec, shards=1)
    check = _command("check").parse_args(argv[1:])
    for name in ("timeout", "concurrency", "min_remaining", "max_lifetime"):
        assert getattr(check, name) == getattr(run, name), name
    plain = probe_args(ROLES[0], ("plaintext",), RunSpec(run_id="r", image="i"), shards=1)
    assert not {"--concurrency", "--min-remaining", "--max-lifetime"} & set(plain)


def test_seconds_flags_take_a_number_or_a_duration() -> None:
    for text, want in (("2.5", 2.5), ("30s", 30.0), ("2m", 120.0), ("1e3", 1000.0)):
        assert _command("run").parse_args(["--timeout", text]).timeout == want
        assert _command("check").parse_args(["-f", "x", "--timeout", text]).timeout == want


# ---- no module reaches into another's private names ----------------------------------------------

# jobs/launch/cluster.py's use of discovery's transport helpers goes with the one Kubernetes
# edge (#11 step 1, jobs/kube/); nothing else may be added here.
KNOWN = {("jobs/launch/cluster.py", "jobs.plan.discovery")}


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for path in sorted([*ROOT.glob("probe/**/*.py"), *ROOT.glob("jobs/**/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if node.module.split(".")[0] not in ("probe", "jobs"):
                continue
            private = [
                a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")
            ]
            if private and (rel, node.module) not in KNOWN:
                found.append(f"{rel}:{node.lineno}: from {node.module} import {private}")
    assert found == []


# ---- the README's synopses name flags that exist ------------------------------------------------


def _readme_synopses() -> list[tuple[str, str]]:
    """(command, flag) for every flag in a README synopsis: a line ``mtlsprobe CMD …``
    and the indented ``[…]`` lines that continue it."""
    out: list[tuple[str, str]] = []
    command = None
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*mtlsprobe (check|plan|run|agent|lab) ", line)
        if m:
            command = m.group(1)
        elif not (command and re.match(r"^\s+\[", line)):
            command = None
            continue
        out += [(command, f) for f in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)]
    return out


def test_readme_synopses_use_the_current_spellings() -> None:
    found = _readme_synopses()
    assert {c for c, _ in found} >= {"check", "plan", "run", "agent"}
    for command, flag in found:
        action = _command(command)._option_string_actions.get(flag)
        assert action is not None, (command, flag)
        assert action.help != argparse.SUPPRESS, f"README uses the old spelling {flag}"


@pytest.mark.parametrize(
    "text", ["6h", "90d", "30m", "45s", "0.5s", "0", "1.25", "36h", "100000000s", "86401"]
)
def test_a_span_reads_back_as_the_same_duration(text: str) -> None:
    from probe.cliargs import parse_duration, span

    value = parse_duration(text)
    assert parse_duration(span(value)) == value
