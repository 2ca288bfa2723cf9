"""Sidecars, injection and ambient enrolment as Istio decides them (jobs/plan/injection.py).

Moved from tests/test_policy.py when jobs/plan/policy.py's older annotation-based helpers were
removed; the cases are the same, except that a copied ``sidecar.istio.io/status``
annotation alone is no sidecar (issue 17 rule 4). The injector's full decision table is
in tests/test_plan_safety.py."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.plan.injection import (
    ambient_enrolled,
    ambient_labeled,
    as_created,
    has_sidecar,
    injected,
    would_inject,
)
from tests.kubebuild import pod


def _bare(**kw: Any) -> dict[str, Any]:
    return pod("p", "shop", sidecar=False, **kw)


@pytest.mark.parametrize(
    ("desc", "obj", "want"),
    [
        # A record the injector writes, copied along with templates: not a proxy.
        ("status annotation alone", _bare(annotations={"sidecar.istio.io/status": "{}"}), False),
        ("istio-proxy container", pod("p", "shop"), True),
        (
            "native sidecar init container",
            {
                **_bare(),
                "spec": {
                    "containers": [{"name": "app"}],
                    "initContainers": [{"name": "istio-proxy", "restartPolicy": "Always"}],
                },
            },
            True,
        ),
        (
            "istio-proxy init container without restartPolicy Always (istio-init style)",
            {
                **_bare(),
                "spec": {
                    "containers": [{"name": "app"}],
                    "initContainers": [{"name": "istio-proxy"}],
                },
            },
            False,
        ),
        (
            "tlsMode label alone is not a sidecar",
            _bare(labels={"security.istio.io/tlsMode": "istio"}),
            False,
        ),
        ("nothing", _bare(), False),
    ],
)
def test_has_sidecar(desc: str, obj: dict[str, Any], want: bool) -> None:
    assert has_sidecar(obj) is want, desc


@pytest.mark.parametrize(
    ("ns_labels", "pod_labels", "want"),
    [
        ({"istio-injection": "enabled"}, {}, True),
        ({"istio-injection": "enabled"}, {"sidecar.istio.io/inject": "false"}, False),
        ({"istio.io/rev": "canary"}, {}, True),
        ({"istio-injection": "disabled"}, {"sidecar.istio.io/inject": "true"}, False),
        ({}, {"sidecar.istio.io/inject": "true"}, True),
        ({}, {}, False),
    ],
)
def test_would_inject(ns_labels: dict[str, str], pod_labels: dict[str, str], want: bool) -> None:
    assert would_inject(_bare(labels=pod_labels), ns_labels) is want


def test_ambient_enrollment_needs_label_and_redirection() -> None:
    redirected = {"ambient.istio.io/redirection": "enabled"}
    amb = {"istio.io/dataplane-mode": "ambient"}
    assert ambient_enrolled(_bare(annotations=redirected), amb)
    assert ambient_enrolled(_bare(labels=amb, annotations=redirected), {})
    assert not ambient_enrolled(_bare(), amb), "labelled but not redirected"
    assert not ambient_enrolled(
        _bare(labels={"istio.io/dataplane-mode": "none"}, annotations=redirected), amb
    ), "pod opted out"
    assert not ambient_enrolled(pod("p", "shop", annotations=redirected), amb), "has a sidecar"


def test_ambient_label_on_the_pod_wins_over_the_namespace() -> None:
    amb = {"istio.io/dataplane-mode": "ambient"}
    assert ambient_labeled(_bare(), amb)
    assert ambient_labeled(_bare(labels=amb), {})
    assert not ambient_labeled(_bare(labels={"istio.io/dataplane-mode": "none"}), amb)
    assert not ambient_labeled(_bare(), {})


def test_injected_pod_carries_what_the_injector_writes() -> None:
    """What planning reads off an injected pod: the proxy container (has_sidecar) and the
    tlsMode label auto-mTLS keys on; the original body is left untouched."""
    bare = _bare(labels={"app": "a"})
    out = injected(bare)
    assert has_sidecar(out) and not has_sidecar(bare)
    assert out["metadata"]["labels"] == {"app": "a", "security.istio.io/tlsMode": "istio"}
    assert "sidecar.istio.io/status" in out["metadata"]["annotations"]
    assert bare["metadata"]["labels"] == {"app": "a"}


def test_as_created_injects_only_what_the_webhook_would() -> None:
    enabled = {"istio-injection": "enabled"}
    fresh = _bare()
    del fresh["status"]  # not read back from a cluster: admission still to come
    assert has_sidecar(as_created(fresh, enabled))
    assert not has_sidecar(as_created(fresh, {}))
    # Read back from a cluster (it has an IP): admitted already, never injected again.
    assert not has_sidecar(as_created(_bare(), enabled))
