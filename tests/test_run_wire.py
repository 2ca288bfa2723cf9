"""``run --checks wire`` with the node capture agent (k8s/overlays/wire) installed, against
the fake API server: the sidecar probe pod (the real ``mtlsprobe check --wire-claim``)
makes the marked calls and logs its claims; the agent's pod log, served by the fake,
is a capture report written here from what the probe claimed (an honest agent) or a lie;
run judges each target with ``probe.wire.judge``.

Every agent that did not see the probe's own traffic (another run's markers, an echo of
the probe's log, a blind capture, a missing flow, an unreadable log, no agent on the
node, windows that split the calls) gets ``error`` or ``fail``, never ``pass``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from jobs.launch.cluster import WIRE_API_CALLS, WIRE_NS
from probe.wire.claim import KEY, Claim
from probe.wire.markers import new_marker
from probe.wire.record import FlowStat, MarkerSeen, Observation, Summary
from tests import kubebuild as kb
from tests.fakekube_jobs import JobKube
from tests.runcase import Env, echo_cluster, run
from tests.sidecar_standin import Agent
from tests.wireagent import DAEMONSET, agent_pod, install_daemonset

pytestmark = pytest.mark.timeout(180)

NODE = "node-a"
PROBE_IP = "10.244.1.7"
AGENT_POD = "mtlsprobe-wire-x7k2p"
CONTROL = {"app": "ctl", "app.kubernetes.io/component": "mtlsprobe-control"}
MESH = "ns-a/app:80"
ARGS = ("--checks", "wire", "--deadline", "60", "--wire-wait", "3")

# (the claims the probe logged) -> the agent's pod log
Report = Callable[[list[Claim]], str]


@dataclass
class WireKube(JobKube):
    """JobKube whose probe pods run on ``NODE`` with ``PROBE_IP``, serving DaemonSets and
    the capture agent's log from ``report`` (given the probe's claims, read at request
    time from the sidecar pod's log)."""

    report: Report | None = None
    agent_reads: int = 0
    claims_seen: list[Claim] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.serve(DAEMONSET)  # served, empty: the overlay not installed is a 404

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        owners = (obj.get("metadata") or {}).get("ownerReferences") or []
        if obj.get("kind") == "Pod" and any(o.get("kind") == "Job" for o in owners):
            obj = copy.deepcopy(obj)
            obj["spec"]["nodeName"] = NODE
        return super().add(obj)

    def _set_status(self, pod: dict[str, Any], status: dict[str, Any]) -> bool:
        return super()._set_status(pod, {**status, "podIP": PROBE_IP, "hostIP": "192.168.0.2"})

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, Any]:
        path = urlsplit(raw_path).path
        agent_log = path.startswith(f"/api/v1/namespaces/{WIRE_NS}/pods/") and path.endswith("/log")
        if method == "GET" and agent_log:
            fault = self.fault_for(method, path)
            if fault is not None:
                return fault
            if path.split("/")[6] in self.store[("", "pods")].get(WIRE_NS, {}):
                self.agent_reads += 1
                self.claims_seen = self.claims()
                assert self.report is not None
                super().handle(method, raw_path, body)  # recorded, as any call
                return 200, self.report(self.claims_seen)
        return super().handle(method, raw_path, body)

    def claims(self) -> list[Claim]:
        """The claims in the probe pods' logs (kept after the run deleted the pods)."""
        out: list[Claim] = []
        for (ns, _pod), text in list(self.logs.items()):
            if ns == WIRE_NS:
                continue
            for line in text.splitlines():
                if line.startswith("{"):
                    doc = json.loads(line)
                    if doc.get("check") == "wire" and KEY in (doc.get("evidence") or {}):
                        out.append(Claim.from_dict(doc["evidence"][KEY]))
        return out


def install_agent(kube: JobKube, ready: int = 1, node: str = NODE) -> None:
    uid = install_daemonset(kube, ready)
    kube.add(agent_pod(AGENT_POD, node, uid, ready=ready > 0))


@pytest.fixture
def wenv(tmp_path: Path, echo_port: int, proxy: str, agent: Agent) -> Iterator[Env]:
    """ns-a/app (an injected pod at 127.0.0.2), ns-a/echo (no sidecar) and the plaintext
    control ns-a/ctl (127.0.0.3), on the fake API server with the agent not yet installed."""
    kube = WireKube(proxy=proxy, agent=agent.url)
    echo_cluster(kube, echo_port)
    kube.add_all(
        [
            kb.pod("app-0", "ns-a", {"app": "app"}, ip="127.0.0.2", ports=[("http", echo_port)]),
            kb.service("app", "ns-a", {"app": "app"}, [kb.sport(80, echo_port)]),
            kb.endpoint_slice(
                "app-x", "ns-a", "app", [("127.0.0.2", "app-0", True)], [("http", echo_port)]
            ),
            kb.service("ctl", "ns-a", {"app": "ctl"}, [kb.sport(80, echo_port)]),
            kb.pod(
                "ctl-0", "ns-a", CONTROL, ip="127.0.0.3", sidecar=False, ports=[("http", echo_port)]
            ),
        ]
    )
    with kube:
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        yield Env(kube, cfg, echo_port, tmp_path)


# ---- capture reports, honest and not --------------------------------------------------------


def _summary(started: float, ended: float, **kw: Any) -> Summary:
    base: dict[str, Any] = dict(
        interface="any",
        netns=None,
        started=started,
        ended=ended,
        packets=40,
        bytes=9000,
        kernel_drops=0,
        truncated=0,
        flows_dropped=0,
        sightings_dropped=0,
        stopped="deadline",
    )
    return Summary(**{**base, **kw})


def _tls_flow(src: str, dst: str) -> FlowStat:
    return FlowStat(
        src,
        dst,
        packets=8,
        bytes=3000,
        gaps=0,
        syn=True,
        tls_records=6,
        handshakes=3,
        app_after_handshake=2,
        app_records=2,
        not_tls_at=None,
        encap="",
    )


def _plain_flow(src: str, dst: str) -> FlowStat:
    return FlowStat(
        src,
        dst,
        packets=4,
        bytes=300,
        gaps=0,
        syn=True,
        tls_records=0,
        handshakes=0,
        app_after_handshake=0,
        app_records=0,
        not_tls_at=0,
        encap="",
    )


def _seen(marker: str, src: str, dst: str) -> MarkerSeen:
    return MarkerSeen(marker, src, dst, packet=3, frame_offset=70, stream_offset=16, encap="")


def _lines(obs: Observation) -> str:
    return "".join(line + "\n" for line in obs.to_jsonl())


CHATTER = "mtlsprobe wire-capture: capturing on any for 60s\n"


def capture(
    *,
    flows: bool = True,
    control: bool = True,
    leak: bool = False,
    control_marker: Callable[[Claim], str] = lambda c: c.control_marker,
    window: Callable[[Claim], list[tuple[float, float]]] = lambda c: [(c.started - 1, c.ended + 1)],
) -> Report:
    """An agent's log: an old unrelated window, then the windows ``window`` gives, each
    holding what the switches say the capture saw of the probe's calls."""

    def report(claims: list[Claim]) -> str:
        out = CHATTER + _lines(Observation(_summary(1000.0, 1060.0), (), ()))
        if not claims:
            return out
        c0 = claims[0]
        ctl_src, ctl_dst = f"{PROBE_IP}:45000", c0.control_endpoints[0]
        for started, ended in window(c0):
            fl: list[FlowStat] = [_plain_flow(ctl_src, ctl_dst)]
            seen: list[MarkerSeen] = []
            if control:
                seen.append(_seen(control_marker(c0), ctl_src, ctl_dst))
            for k, c in enumerate(claims):
                src = f"{PROBE_IP}:{41000 + k}"
                if flows:
                    fl.append(_tls_flow(src, c.endpoints[0]))
                    fl.append(_tls_flow(c.endpoints[0], src))
                if leak:
                    seen.append(_seen(c.marker, src, c.endpoints[0]))
            out += CHATTER + _lines(Observation(_summary(started, ended), tuple(fl), tuple(seen)))
        return out

    return report


def _kube(env: Env) -> WireKube:
    assert isinstance(env.kube, WireKube)
    return env.kube


def _wire(doc: Any) -> dict[str, dict[str, Any]]:
    return {r["target"]: r for r in doc["results"] if r["check"] == "wire"}


def _go(env: Env, capsys: pytest.CaptureFixture[str], report: Report, *extra: str) -> Any:
    assert isinstance(env.kube, WireKube)
    env.kube.report = report
    install_agent(env.kube)
    code, doc, err = run(env, capsys, *ARGS, *extra)
    assert doc is not None, err
    wire = _wire(doc)
    assert set(wire) >= {MESH}, (wire, err)
    # The probe's own verdict for the sidecar-less echo: plaintext is what policy says.
    assert wire["ns-a/echo:80"]["verdict"] == "skip"
    return code, wire


# ---- the tests -------------------------------------------------------------------------------


def test_overlay_absent_or_not_ready_is_a_skip_and_nothing_is_deployed(
    wenv: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc, _err = run(wenv, capsys, *ARGS)
    wire = _wire(doc)
    assert wire and all(r["verdict"] == "skip" for r in wire.values()), wire
    assert all("kubectl apply -k k8s/overlays/wire" in r["reason"] for r in wire.values())
    assert "not installed" in wire[MESH]["reason"]
    install_agent(wenv.kube, ready=0)
    code, doc, _err = run(wenv, capsys, *ARGS)
    wire = _wire(doc)
    assert all(r["verdict"] == "skip" for r in wire.values()), wire
    assert "no pod of daemonset mtlsprobe-wire/mtlsprobe-wire is ready" in wire[MESH]["reason"]
    assert "kubectl apply -k k8s/overlays/wire" in wire[MESH]["reason"]
    assert not [c for c in wenv.kube.calls if c.method in ("POST", "PUT", "PATCH", "DELETE")]
    assert code == 0


def test_healthy_capture_passes_from_the_agent_on_the_probe_pods_node(
    wenv: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, wire = _go(wenv, capsys, capture())
    r = wire[MESH]
    assert r["verdict"] == "pass", (r["reason"], r["evidence"])
    assert r["reason"].startswith("TLS on the wire: 10.244.1.7:41000 -> 127.0.0.2:")
    assert r["evidence"]["captureAgent"] == f"capture agent {WIRE_NS}/{AGENT_POD} on node {NODE}"
    assert r["evidence"]["probeNode"] == NODE and r["evidence"]["probePodIP"] == PROBE_IP
    (claim,) = _kube(wenv).claims_seen
    assert r["evidence"]["marker"] == claim.marker
    assert claim.control == "ns-a/ctl:80" and claim.control_endpoints[0].startswith("127.0.0.3:")
    # The sidecar Job was told to only make the calls; nothing else was launched for wire.
    job_args = [a for args in wenv.kube.probe_runs for a in args]
    assert "--wire-claim" in job_args
    # Only reads in the agent's namespace, and only those the overlay grants.
    wire_calls = {c for c in wenv.kube.api_calls() if c[3] == WIRE_NS}
    assert wire_calls == set(WIRE_API_CALLS), wire_calls
    assert code == 0


def test_marker_in_cleartext_fails_quoting_it(
    wenv: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, wire = _go(wenv, capsys, capture(leak=True))
    r = wire[MESH]
    (claim,) = _kube(wenv).claims_seen
    assert r["verdict"] == "fail", r
    assert f"marker {claim.marker} in cleartext on {PROBE_IP}:41000 -> 127.0.0.2:" in r["reason"]
    assert code == 1


def test_flow_not_in_the_capture_is_an_error(wenv: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, wire = _go(wenv, capsys, capture(flows=False))
    assert wire[MESH]["verdict"] == "error"
    assert wire[MESH]["evidence"]["error"] == "flow-not-seen"
    assert code == 2


def test_control_not_seen_makes_every_wire_verdict_an_error(
    wenv: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, wire = _go(wenv, capsys, capture(control=False, leak=True))
    r = wire[MESH]
    assert r["verdict"] == "error"
    assert r["reason"].startswith("the capture is blind: it did not see the control's plaintext")
    assert r["evidence"]["verdict_if_not_blind"] == "fail"
    assert code == 2


@pytest.mark.parametrize("status", [403, 404])
def test_unreadable_agent_log_is_an_error(
    wenv: Env, capsys: pytest.CaptureFixture[str], status: int
) -> None:
    wenv.kube.fail(f"/api/v1/namespaces/{WIRE_NS}/pods/{AGENT_POD}/log", status)
    code, wire = _go(wenv, capsys, capture())
    r = wire[MESH]
    assert r["verdict"] == "error", r
    assert r["evidence"]["error"] == "capture-unreadable"
    assert f"capture agent {WIRE_NS}/{AGENT_POD} on node {NODE} could not be read" in r["reason"]
    assert code == 2


def test_no_agent_on_the_probe_pods_node_is_an_error(
    wenv: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    assert isinstance(wenv.kube, WireKube)
    wenv.kube.report = capture()
    install_agent(wenv.kube, node="node-b")  # Ready, but elsewhere
    code, doc, _err = run(wenv, capsys, *ARGS)
    r = _wire(doc)[MESH]
    assert r["verdict"] == "error", r
    assert r["reason"].startswith(f"no Ready capture agent on node {NODE}")
    assert _kube(wenv).agent_reads == 0
    assert code == 2


def test_agent_reporting_another_runs_markers_is_not_a_pass(
    wenv: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, wire = _go(wenv, capsys, capture(control_marker=lambda c: new_marker()))
    assert wire[MESH]["verdict"] == "error"
    assert wire[MESH]["evidence"]["error"] == "capture-blind"
    assert code == 2


def test_agent_echoing_the_probes_claim_is_not_a_pass(
    wenv: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log that repeats the probe's own lines (its claims, markers and all) holds no
    capture report: error once --wire-wait is over; one that turns the claim into
    sightings of every marker is a fail."""

    def echo(claims: list[Claim]) -> str:
        return "".join(
            json.dumps(
                {
                    "check": "wire",
                    "target": MESH,
                    "verdict": "pass",
                    "reason": "seen",
                    "evidence": {KEY: c.to_dict()},
                }
            )
            + "\n"
            for c in claims
        )

    code, wire = _go(wenv, capsys, echo)
    r = wire[MESH]
    assert r["verdict"] == "error", r
    assert r["evidence"]["error"] == "capture-not-covering"
    assert "0 report(s) read" in r["reason"]
    assert code == 2


def test_agent_echoing_every_marker_as_seen_fails(
    wenv: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, wire = _go(wenv, capsys, capture(flows=True, leak=True))
    assert wire[MESH]["verdict"] == "fail"
    assert code == 1


def test_windows_that_split_the_calls_are_an_error_at_once(
    wenv: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    def split(c: Claim) -> list[tuple[float, float]]:
        mid = (c.started + c.ended) / 2
        return [(c.started - 30, mid), (mid, c.ended + 30)]

    code, wire = _go(wenv, capsys, capture(window=split), "--wire-wait", "120")
    r = wire[MESH]
    assert r["verdict"] == "error", r
    assert "straddle capture windows" in r["reason"] and "--overlap" in r["reason"]
    assert _kube(wenv).agent_reads == 1  # no waiting for a window that cannot come
    assert code == 2


def test_run_waits_for_the_window_that_covers_the_calls(
    wenv: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first read finds only a window that ended before the calls did; the covering
    one is in the log at the next read."""
    assert isinstance(wenv.kube, WireKube)
    kube = wenv.kube
    early = capture(window=lambda c: [(c.started - 50, c.started + 0.01)])
    full = capture()

    def later(claims: list[Claim]) -> str:
        return (early if kube.agent_reads < 2 else full)(claims)

    code, wire = _go(wenv, capsys, later, "--wire-wait", "60", "--poll-interval", "1")
    assert wire[MESH]["verdict"] == "pass", wire[MESH]
    assert kube.agent_reads >= 2
    assert code == 0
