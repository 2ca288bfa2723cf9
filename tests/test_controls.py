"""Negative controls (``controls:``): the contract, and the engine turning verdicts of a
blind detector into errors, against real servers (a control whose traffic is reset
stands in for a NetworkPolicy/CNI that resets everything the probe sends)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from probe.checks.base import Check, RunContext, Scope, Settings, make_result
from probe.checks.peer_cert import PeerCertCheck
from probe.checks.plaintext import PlaintextCheck
from probe.engine import run_checks
from probe.model import (
    Control,
    ControlKind,
    Endpoint,
    Expect,
    Protocol,
    Source,
    Target,
    TargetsFile,
    TargetsFileError,
    load_targets,
    parse_targets,
)
from probe.results import Result, Verdict
from tests.tlsservers import (
    nothing_listening,
    plaintext_http,
    reset_after_read,
    serving,
)

TD = "cluster.local"
PROBE_ID = f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe"
ECHO_ID = f"spiffe://{TD}/ns/mtlsprobe/sa/echo"

CONTRACT = """
trustDomain: cluster.local
targets: []
controls:                      # optional; negative controls, run before the targets
  - name: mtlsprobe/echo-plain
    kind: plaintext
    host: echo-plain.mtlsprobe.svc.cluster.local
    port: 8080
    endpoints: ["10.1.2.3:8080"]
    protocol: http
  - name: mtlsprobe/echo-mesh
    kind: mesh
    host: echo.mtlsprobe.svc.cluster.local
    port: 8080
    identity: spiffe://cluster.local/ns/mtlsprobe/sa/echo
    echo: true
"""


# --- the contract ------------------------------------------------------------------


def test_contract_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(CONTRACT)
    tf = load_targets(path)
    plain, mesh = tf.controls
    assert plain.kind is ControlKind.PLAINTEXT and mesh.kind is ControlKind.MESH
    assert plain.target.expect is Expect.NONE  # a plaintext control accepts plaintext
    assert plain.target.endpoints == (Endpoint("10.1.2.3", 8080),)
    assert mesh.target.expect is Expect.STRICT and mesh.target.echo
    assert mesh.target.identity == ECHO_ID
    # The YAML shape round-trips (plan -o yaml writes it).
    again = parse_targets(yaml.safe_load(yaml.safe_dump(tf.to_dict())), "again")
    assert again.controls == tf.controls
    assert tf.to_dict()["controls"][0]["kind"] == "plaintext"


def test_files_without_controls_are_unchanged() -> None:
    tf = parse_targets({"trustDomain": TD, "targets": []}, "x")
    assert tf.controls == () and "controls" not in tf.to_dict()


def _control(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "c",
        "kind": "plaintext",
        "host": "h",
        "port": 80,
        "endpoints": ["10.0.0.1:80"],
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


BAD: dict[str, tuple[object, str]] = {
    "not-a-list": ({"name": "c"}, "controls: must be a list"),
    "kind-missing": ([_control(kind=None)], "controls[0] (c).kind: None: want plaintext or mesh"),
    "kind-unknown": ([_control(kind="wire")], "'wire': want plaintext or mesh"),
    "plain-strict": ([_control(expect="STRICT")], "controls[0] (c).expect: a plaintext control"),
    "plain-no-endpoints": ([_control(endpoints=[])], "controls[0] (c).endpoints: a plaintext"),
    "mesh-no-echo": (
        [_control(kind="mesh", identity=ECHO_ID)],
        "controls[0] (c).echo: a mesh control must reflect headers",
    ),
    "mesh-tcp": (
        [_control(kind="mesh", identity=ECHO_ID, echo=True, protocol="tcp")],
        "controls[0] (c).protocol",
    ),
    "mesh-no-identity": ([_control(kind="mesh", echo=True)], "controls[0] (c).identity"),
    "mesh-none": (
        [_control(kind="mesh", identity=ECHO_ID, echo=True, expect="NONE")],
        "needs a server sidecar",
    ),
    "target-field": ([_control(port=0)], "controls[0] (c).port: 0 is not a port number"),
    "unknown-key": ([_control(colour="red")], "controls[0] (c).colour: unknown key"),
    "duplicate": ([_control(), _control()], "controls[1] (c): duplicate name"),
    "entry-not-mapping": (["c"], "controls[0]: must be a mapping"),
    "huge-kind": ([_control(kind="x" * 100_000)], "controls[0] (c).kind: 'xxxxxxxx"),
    "escape-in-name": ([_control(name="a\nb\x1b[2J", kind=None)], "controls[0].kind: None"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_controls_are_one_line_naming_the_field(case: str) -> None:
    raw, needle = BAD[case]
    with pytest.raises(TargetsFileError) as err:
        parse_targets({"trustDomain": TD, "targets": [], "controls": raw}, "f.yaml")
    assert needle in str(err.value), str(err.value)
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)
    assert len(str(err.value)) < 300


def test_bad_control_exits_64_from_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(CONTRACT.replace("kind: mesh", "kind: wire"))
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli.main", "check", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 64, proc.stderr
    assert "controls[1] (mtlsprobe/echo-mesh).kind" in proc.stderr


# --- the engine, on real sockets ---------------------------------------------------------


def _target(name: str, ep: Endpoint, expect: Expect = Expect.STRICT) -> Target:
    return Target(name=name, host=f"{name}.svc", port=ep.port, expect=expect, endpoints=(ep,))


def _plain_control(ep: Endpoint, name: str = "mtlsprobe/echo-plain") -> Control:
    return Control(ControlKind.PLAINTEXT, _target(name, ep, Expect.NONE))


def run(
    targets: tuple[Target, ...],
    controls: tuple[Control, ...],
    checks: list[Check] | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    tf = TargetsFile(
        trust_domain=TD, targets=targets, source=Source(identity=PROBE_ID), controls=controls
    )
    ctx = RunContext(tf, Settings(timeout=1.0))
    try:
        return run_checks(checks or [PlaintextCheck()], ctx, on_result=on_result)
    finally:
        ctx.close()


def test_healthy_control_passes_and_strict_refusals_stand() -> None:
    with serving(plaintext_http) as app, serving(reset_after_read) as strict:
        app_ep = app.endpoint
        results = run((_target("ns/strict", strict.endpoint),), (_plain_control(app_ep),))
    control, verdict = results
    assert control.check == "control" and control.verdict is Verdict.PASS, control
    assert control.target == "mtlsprobe/echo-plain" and control.endpoint == str(app_ep)
    assert control.evidence["kind"] == "plaintext" and "HTTP/1.1 200" in control.reason
    assert verdict.check == "plaintext" and verdict.verdict is Verdict.PASS, verdict


def test_reset_control_blinds_every_refusal_but_not_acceptance() -> None:
    """Everything the probe sends is reset (the control too): refusals prove nothing."""
    with (
        serving(reset_after_read) as policy,
        serving(reset_after_read) as strict,
        serving(plaintext_http) as leaky,
        serving(plaintext_http) as permissive,
    ):
        results = run(
            (
                _target("ns/strict", strict.endpoint),
                _target("ns/leaky", leaky.endpoint),
                _target("ns/perm-refused", policy.endpoint, Expect.PERMISSIVE),
                _target("ns/perm-ok", permissive.endpoint, Expect.PERMISSIVE),
            ),
            (_plain_control(policy.endpoint),),
        )
    by = {(r.check, r.target): r for r in results}
    control = by[("control", "mtlsprobe/echo-plain")]
    assert control.verdict is Verdict.ERROR, control
    assert control.reason.startswith(
        "plaintext detector blind: control mtlsprobe/echo-plain was not accepted: "
    ), control.reason
    strict_r = by[("plaintext", "ns/strict")]
    assert strict_r.verdict is Verdict.ERROR, strict_r
    assert strict_r.reason.startswith(
        "plaintext detector blind: control mtlsprobe/echo-plain was not accepted: "
    )
    assert "a NetworkPolicy or CNI may be resetting the probe's traffic" in strict_r.reason
    assert strict_r.evidence["error"] == "detector-blind"
    assert strict_r.evidence["verdict_if_not_blind"] == "pass"
    # An accepted plaintext is a positive observation: the fail stands.
    assert by[("plaintext", "ns/leaky")].verdict is Verdict.FAIL
    # A refusal-based fail is not evidence either; an acceptance-based pass is.
    assert by[("plaintext", "ns/perm-refused")].verdict is Verdict.ERROR
    assert by[("plaintext", "ns/perm-ok")].verdict is Verdict.PASS


@pytest.mark.parametrize("kind", ["nothing-listening", "no-endpoints"])
def test_a_control_that_cannot_observe_blinds_too(kind: str) -> None:
    ep = nothing_listening()
    control = _plain_control(ep)
    if kind == "no-endpoints":
        control = Control(ControlKind.PLAINTEXT, Target("c", "c", 80, Expect.NONE))
    with serving(reset_after_read) as strict:
        results = run((_target("ns/strict", strict.endpoint),), (control,))
    assert [r.verdict for r in results] == [Verdict.ERROR, Verdict.ERROR], results
    assert "detector blind" in results[1].reason


def test_one_failed_control_of_several_is_enough_to_blind() -> None:
    with serving(plaintext_http) as good, serving(reset_after_read) as strict:
        results = run(
            (_target("ns/strict", strict.endpoint),),
            (_plain_control(good.endpoint, "a"), _plain_control(nothing_listening(), "b")),
        )
    assert [r.verdict for r in results] == [Verdict.PASS, Verdict.ERROR, Verdict.ERROR]
    assert "control b was not accepted" in results[2].reason


def test_controls_run_only_for_selected_checks() -> None:
    with serving(reset_after_read) as policy:
        results = run(
            (_target("ns/x", policy.endpoint, Expect.NONE),),
            (_plain_control(policy.endpoint),),
            checks=[PeerCertCheck()],
        )
    assert [r.check for r in results] == ["peer-cert"]


def test_streamed_results_are_controls_first_and_already_judged() -> None:
    seen: list[Result] = []
    with serving(reset_after_read) as policy:
        results = run(
            (_target("ns/strict", policy.endpoint),),
            (_plain_control(policy.endpoint),),
            on_result=seen.append,
        )
    assert [r.check for r in seen] == ["control", "plaintext"]
    assert seen == results
    assert json.dumps([r.to_dict() for r in results])  # the contract's JSON holds


class _Fixed(Check):
    """An in-test check answering one verdict per target name (no I/O)."""

    scope: ClassVar[Scope] = Scope.TARGET

    def __init__(self, name: str, verdicts: dict[str, Verdict]) -> None:
        self.name = name  # type: ignore[misc]
        self.verdicts = verdicts

    def run(self, ctx: RunContext, target: Target | None, endpoint: Endpoint | None) -> Result:
        assert target is not None
        return make_result(self.name, target, None, self.verdicts[target.name], "fixed")


def _mesh_control() -> Control:
    t = Target("mtlsprobe/echo-mesh", "echo", 8080, Expect.STRICT, identity=ECHO_ID, echo=True)
    return Control(ControlKind.MESH, t)


@pytest.mark.parametrize("control_verdict", [Verdict.FAIL, Verdict.ERROR, Verdict.SKIP])
def test_failed_mesh_control_blinds_mesh_and_xfcc_spoof_passes(control_verdict: Verdict) -> None:
    t = Target("ns/a", "a", 80, Expect.STRICT, identity=ECHO_ID, echo=True)
    u = Target("ns/b", "b", 80, Expect.STRICT, identity=ECHO_ID, echo=True)
    verdicts = {"mtlsprobe/echo-mesh": control_verdict, "ns/a": Verdict.PASS, "ns/b": Verdict.FAIL}
    checks: list[Check] = [_Fixed("mesh", verdicts), _Fixed("xfcc-spoof", verdicts)]
    results = run((t, u), (_mesh_control(),), checks=checks)
    by = {(r.check, r.target): r for r in results}
    assert by[("control", "mtlsprobe/echo-mesh")].verdict is Verdict.ERROR
    for check in ("mesh", "xfcc-spoof"):
        r = by[(check, "ns/a")]
        assert r.verdict is Verdict.ERROR, r
        assert r.reason.startswith("mesh detector blind: control mtlsprobe/echo-mesh did not")
        assert by[(check, "ns/b")].verdict is Verdict.FAIL  # what was seen failing stands


def test_passing_mesh_control_changes_nothing() -> None:
    t = Target("ns/a", "a", 80, Expect.STRICT, identity=ECHO_ID, echo=True)
    verdicts = {"mtlsprobe/echo-mesh": Verdict.PASS, "ns/a": Verdict.PASS}
    results = run(
        (t,), (_mesh_control(),), checks=[_Fixed("mesh", verdicts), _Fixed("xfcc-spoof", verdicts)]
    )
    assert [(r.check, r.verdict) for r in results] == [
        ("control", Verdict.PASS),
        ("mesh", Verdict.PASS),
        ("xfcc-spoof", Verdict.PASS),
    ]


def test_xfcc_spoof_alone_still_runs_the_mesh_control_with_the_real_mesh_check() -> None:
    """Nothing listens where the mesh control points: the real mesh check cannot see
    mTLS there, so xfcc-spoof's pass is not trusted."""
    ep = nothing_listening()
    control = Control(
        ControlKind.MESH,
        Target("mtlsprobe/echo-mesh", ep.host, ep.port, Expect.STRICT, identity=ECHO_ID, echo=True),
    )
    t = Target("ns/a", "a", 80, Expect.STRICT, identity=ECHO_ID, echo=True)
    results = run((t,), (control,), checks=[_Fixed("xfcc-spoof", {"ns/a": Verdict.PASS})])
    assert [(r.check, r.verdict) for r in results] == [
        ("control", Verdict.ERROR),
        ("xfcc-spoof", Verdict.ERROR),
    ], results
    assert results[0].evidence["detector"] == "mesh"


def test_plain_control_does_not_touch_mesh_verdicts() -> None:
    t = Target("ns/a", "a", 80, Expect.STRICT, identity=ECHO_ID, echo=True)
    verdicts = {"ns/a": Verdict.PASS}
    results = run(
        (t,),
        (_plain_control(nothing_listening()),),
        checks=[PlaintextCheck(), _Fixed("mesh", verdicts)],
    )
    by = {r.check: r for r in results}
    assert by["control"].verdict is Verdict.ERROR and by["mesh"].verdict is Verdict.PASS


def test_protocol_field_of_a_plaintext_control_is_kept() -> None:
    tf = parse_targets(
        {"trustDomain": TD, "targets": [], "controls": [_control(protocol="tcp")]}, "x"
    )
    assert tf.controls[0].target.protocol is Protocol.TCP


def test_an_interrupted_run_leaves_the_control_an_error() -> None:
    import threading

    stop = threading.Event()
    stop.set()
    with serving(plaintext_http) as app, serving(reset_after_read) as strict:
        tf = TargetsFile(
            trust_domain=TD,
            targets=(_target("ns/strict", strict.endpoint),),
            controls=(_plain_control(app.endpoint),),
        )
        ctx = RunContext(tf, Settings(timeout=1.0))
        try:
            results = run_checks([PlaintextCheck()], ctx, stop=stop)
        finally:
            ctx.close()
    assert [(r.check, r.verdict) for r in results] == [
        ("control", Verdict.ERROR),
        ("plaintext", Verdict.ERROR),
    ], results
    assert "interrupted" in results[0].reason
