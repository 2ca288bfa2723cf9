"""Suite-wide settings that keep a run's outcome independent of luck and load, and the
fixtures the test modules share (helpers they share are plain modules next to this one).

Hypothesis draws its examples from a fixed seed per test (``derandomize``) and keeps
no example database, so a fresh clone and a warm checkout run the same examples; its
deadline and "too slow" health check measure wall time, which on a loaded machine says
nothing about the code. ``HYPOTHESIS_PROFILE=explore`` searches with fresh randomness.

Fixtures that start a server stop it when the test (or module) ends, failed or not.
Test modules import helpers, never each other:

- tlsservers, hostile_tls: real sockets and TLS servers, honest and lying;
- sidecar_standin: the sidecar, Envoy admin (and its documents) and pilot-agent stand-ins;
- strict_envoy: a real Envoy with STRICT listeners; ``envoy_running`` for any config;
- runone: ns-a/echo through the real engine; meshlab, labmesh: scenarios on the lab;
- kubebuild, fakekube, fakekube_jobs: Kubernetes objects and the fake API server;
- runcase, plancase: ``mtlsprobe run`` and plan-both-ways cases; procs: child processes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, settings

from probe.echo import EchoServer, Listen
from tests.fakekube import FakeKube
from tests.fakekube_jobs import JobKube
from tests.plancase import Both, planner
from tests.runcase import Env, echo_cluster
from tests.sidecar_standin import Agent, SidecarBehaviour, pilot_agent, sidecar
from tests.tlsservers import MeshPKI

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ---- PKI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> MeshPKI:
    """A mesh CA (EC, cluster.local) and its root file; one per test module."""
    return MeshPKI(tmp_path_factory.mktemp("pki"))


# ---- the echo responder ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[str, int]]:
    """The real echo responder (probe.echo) as ns-a/echo over HTTP: (host, port)."""
    with EchoServer([Listen("127.0.0.1", 0, "ns-a/echo")]) as srv:
        yield srv.addresses[0]


@pytest.fixture(scope="module")
def tcp_echo() -> Iterator[tuple[str, int]]:
    """The real echo responder as ns-a/db over raw TCP: (host, port)."""
    with EchoServer([Listen("127.0.0.1", 0, "ns-a/db", tcp=True)]) as srv:
        yield srv.addresses[0]


@pytest.fixture
def echo_port() -> Iterator[int]:
    """The echo responder as ns-a/echo, one per test: its port on 127.0.0.1."""
    with EchoServer([Listen("127.0.0.1", 0, "ns-a/echo")]) as srv:
        yield srv.addresses[0][1]


# ---- sidecar stand-ins -----------------------------------------------------------------------


@pytest.fixture
def proxy(echo_port: int) -> Iterator[str]:
    """The probe pod's sidecar stand-in, passing plaintext through to ``echo_port``."""
    with sidecar(SidecarBehaviour(mode="plaintext", upstream=("127.0.0.1", echo_port))) as url:
        yield url


@pytest.fixture
def agent() -> Iterator[Agent]:
    """pilot-agent's readiness and quit endpoints (tests/sidecar_standin.py)."""
    with pilot_agent() as a:
        yield a


# ---- the fake API server -------------------------------------------------------------------


@pytest.fixture
def fake_kube() -> Iterator[FakeKube]:
    """An empty fake API server (tests/fakekube.py), started."""
    with FakeKube() as kube:
        yield kube


@pytest.fixture
def env(tmp_path: Path, echo_port: int, proxy: str, agent: Agent) -> Iterator[Env]:
    """``mtlsprobe run``'s cluster (tests/runcase.py) on the fake API server with the
    simulated Job controller and kubelet, pods behind ``proxy`` and ``agent``."""
    kube = JobKube(proxy=proxy, agent=agent.url)
    echo_cluster(kube, echo_port)
    with kube:
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(yaml.safe_dump(kube.kubeconfig()))
        yield Env(kube, cfg, echo_port, tmp_path)


@pytest.fixture
def plan_both(tmp_path: Path) -> Iterator[Callable[..., Both]]:
    """Plans objects from YAML and from the fake API server; asserts the plans agree."""
    with planner(tmp_path) as run:
        yield run


@pytest.fixture
def prefix(tmp_path: Path) -> Iterator[str]:
    """A fresh object prefix for a namespace lab (``lab --netns``); whatever a failed test
    left under it is removed, and the host must be as clean afterwards."""
    from jobs.lab.netns.net import NetState, list_links, list_netns, teardown
    from tests.netnscase import HostSnapshot

    p = "mpt" + secrets.token_hex(2)
    snap = HostSnapshot(p)
    yield p
    teardown(
        NetState(
            p,
            f"{p}br",
            [n for n in list_netns() if n.startswith(p)],
            [n for n in list_links() if n.startswith(f"{p}h")],
        )
    )
    snap.assert_clean()
