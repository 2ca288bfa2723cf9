"""The waiting state machine of ``mtlsprobe run`` (jobs/launch/wait.py): pure
transitions from what one look at the cluster showed, and the deadline."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from jobs.launch.judge import PodView
from jobs.launch.wait import (
    JOB_FAILED,
    NOT_STARTED,
    Board,
    Collect,
    GiveUp,
    Slot,
    Waiting,
    observe,
    overdue,
)

SLOT = Slot("mtlsprobe", "mtlsprobe-r1-plain", 0)
FAILED = "job mtlsprobe-r1-plain failed (DeadlineExceeded)"


def pod(name: str = "p-0", **kw: Any) -> PodView:
    base = PodView(
        name=name,
        index=0,
        phase="Pending",
        waiting_reason=None,
        waiting_message="",
        exit_code=None,
        terminated_reason="",
        terminated_message="",
        unschedulable=None,
        deleting=False,
    )
    return replace(base, **kw)


def test_no_pod_yet_keeps_waiting() -> None:
    assert observe(Waiting(), [], None) == Waiting()


def test_a_pending_pod_is_remembered_for_later_reasons() -> None:
    p = pod(unschedulable="0/3 nodes are available")
    assert observe(Waiting(), [p], None) == Waiting(p)
    # gone from the next list: the slot still remembers it
    assert observe(Waiting(p), [], None) == Waiting(p)


def test_a_finished_pod_is_collected_even_next_to_a_newer_one() -> None:
    done = pod("p-a", phase="Failed", exit_code=1)
    newer = pod("p-b", phase="Running")
    assert observe(Waiting(), [done, newer], FAILED) == Collect(done)


def test_an_image_that_cannot_be_pulled_gives_up_at_once() -> None:
    p = pod(waiting_reason="ImagePullBackOff", waiting_message="Back-off pulling image")
    step = observe(Waiting(), [p], None)
    assert isinstance(step, GiveUp) and step.cause == NOT_STARTED
    assert "image pull failed (ImagePullBackOff)" in step.reason


def test_a_failed_job_waits_for_its_live_pods_then_names_the_last_one() -> None:
    running = pod(phase="Running")
    assert observe(Waiting(), [running], FAILED) == Waiting(running)
    going = replace(running, deleting=True)
    step = observe(Waiting(running), [going], FAILED)
    assert step == GiveUp(f"{FAILED}; probe pod p-0 still running at the deadline", JOB_FAILED)
    step = observe(Waiting(), [], FAILED)
    assert step == GiveUp(f"{FAILED}; no probe pod was seen", JOB_FAILED)


def test_overdue_names_the_pod_the_api_or_the_missing_pod() -> None:
    stuck = pod(waiting_reason="ContainerCreating")
    assert (
        overdue(Waiting(stuck), SLOT, None, "") == "probe pod p-0 not started (ContainerCreating)"
    )
    assert overdue(Waiting(stuck), SLOT, FAILED, "boom").startswith(f"{FAILED}; probe pod p-0")
    assert overdue(Waiting(), SLOT, None, "HTTP 500") == "could not watch the probe Job: HTTP 500"
    assert overdue(Waiting(), SLOT, None, "").startswith(
        "no probe pod appeared for job mtlsprobe-r1-plain in mtlsprobe"
    )


def _job(name: str, failed: bool) -> dict[str, Any]:
    cond = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    return {"metadata": {"name": name}, "status": {"conditions": cond if failed else []}}


def test_board_settles_slots_and_keeps_job_failures() -> None:
    other = Slot("mtlsprobe", "mtlsprobe-r1-plain", 1)
    board = Board.of([SLOT, other])
    assert not board.settled and board.first_waiting() == SLOT
    board.jobs_seen("mtlsprobe", [_job("mtlsprobe-r1-plain", failed=False)])
    assert board.failures == {}
    done = pod(phase="Succeeded", exit_code=0)
    assert board.observe(SLOT, [done]) == Collect(done)
    assert list(board.waiting) == [other] and board.first_waiting() == other
    board.jobs_seen("mtlsprobe", [_job("mtlsprobe-r1-plain", failed=True)])
    board.jobs_seen("mtlsprobe", [])  # a later list without it does not forget
    assert board.overdue() == {
        other: "job mtlsprobe-r1-plain failed (BackoffLimitExceeded); no probe pod appeared "
        "for job mtlsprobe-r1-plain in mtlsprobe (service account missing, quota or "
        "admission? kubectl describe job)"
    }
    step = board.observe(other, [])
    assert isinstance(step, GiveUp) and step.cause == JOB_FAILED
    assert board.settled and board.overdue() == {} and board.first_waiting() is None
