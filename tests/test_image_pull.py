"""An image the nodes cannot pull is one clear error naming the image (#12 item 5).

The manifests' default image is published by no one until the user pushes their own;
`mtlsprobe run` must say which image, and what to do, instead of a generic pod error.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from jobs.launch.judge import IMAGE_HINT, pod_view
from tests.runcase import Env, probe_results, run

pytestmark = pytest.mark.timeout(120)

IMAGE = "registry.example.com/team/mtlsprobe:missing"


def _pod(reason: str, message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "p-0"},
        "spec": {"containers": [{"name": "probe", "image": IMAGE}]},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {"name": "probe", "state": {"waiting": {"reason": reason, "message": message}}}
            ],
        },
    }


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ErrImagePull", "rpc error: code = NotFound desc = manifest unknown"),
        ("ImagePullBackOff", "Back-off pulling image"),  # a kubelet message without the image
        ("InvalidImageName", 'couldn\'t parse image reference "x::y"'),
    ],
)
def test_pull_failure_names_the_image_from_the_spec(reason: str, message: str) -> None:
    fatal = pod_view(_pod(reason, message), "probe").fatal
    assert fatal is not None
    assert fatal.startswith(f"probe image {IMAGE!r} cannot be pulled: probe pod p-0: ")
    assert f"({reason})" in fatal and IMAGE_HINT in fatal and "\n" not in fatal


def test_other_waiting_reasons_are_not_blamed_on_the_image() -> None:
    fatal = pod_view(_pod("CreateContainerConfigError", "secret not found"), "probe").fatal
    assert fatal is not None and "image" not in fatal
    assert pod_view(_pod("ContainerCreating", ""), "probe").fatal is None


def test_run_reports_an_unpullable_image_as_one_error_naming_it(
    env: Env,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env.kube.behaviour = lambda job, index: "image"
    t0 = time.monotonic()
    code, doc, err = run(env, capsys, "--checks", "plaintext,mesh", "--image", IMAGE)
    assert time.monotonic() - t0 < 60  # gives up at once, not at the run's deadline
    assert doc is not None, err
    results = probe_results(doc)
    assert results and all(r["verdict"] == "error" for r in results), results
    # One cause for the whole run, whichever Job reported it: the image, named, and the fix.
    reasons = {r["reason"].split(": probe pod ")[0] for r in results}
    assert reasons == {f"probe image {IMAGE!r} cannot be pulled"}, reasons
    assert all(IMAGE_HINT in r["reason"] for r in results)
    assert code == 2
    assert env.kube.run_objects() == []
