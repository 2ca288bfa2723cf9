"""Waiting for the probe pods of one run, as a state machine. Pure: no API calls, no
clock, no sleeping; the launcher looks at the cluster, feeds what it saw in, and acts on
the steps that come out.

Each slot (namespace, Job, completion index) is ``Waiting`` - remembering the newest
pod seen for it - until one look settles it:

- a pod of the index finished (its probe container terminated) -> ``Collect`` it: the
  launcher reads the log and ``judge.from_log`` decides;
- the newest pod can never start (image pull failure, failed before the probe ran) ->
  ``GiveUp`` (``probe-not-started``);
- the Job failed (deadline exceeded, backoff limit) and no pod of the index is still
  pending or running -> ``GiveUp`` (``job-failed``), naming what the last pod was doing.

Whatever is still waiting at the deadline is ``overdue``: an error naming why (the last
pod's state, the API failing, or no pod ever seen). Nothing settles as a pass here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobs.launch.judge import PodView, job_failure


@dataclass(frozen=True)
class Slot:
    """One completion index of one probe Job (index 0 for a Job that is not Indexed)."""

    namespace: str
    job: str
    index: int

    @property
    def job_key(self) -> tuple[str, str]:
        return self.namespace, self.job


@dataclass(frozen=True)
class Waiting:
    """Not settled yet. ``last``: the newest pod seen for the slot, kept across looks
    so a Job failure or the deadline can say what it was doing."""

    last: PodView | None = None


@dataclass(frozen=True)
class Collect:
    """The slot's pod finished: its log holds the results."""

    pod: PodView


@dataclass(frozen=True)
class GiveUp:
    """The slot can never report: everything it owes is an error with this reason."""

    reason: str
    cause: str  # evidence.error: probe-not-started | job-failed


Step = Waiting | Collect | GiveUp

NOT_STARTED = "probe-not-started"
JOB_FAILED = "job-failed"
OVERDUE = "deadline"  # evidence.error of what was still owed at the deadline


def observe(state: Waiting, pods: Sequence[PodView], job_failed: str | None) -> Step:
    """One look at a waiting slot: its pods (oldest first) and its Job's failure, if any."""
    finished = [p for p in pods if p.finished]
    if finished:
        return Collect(finished[0])
    if pods:
        state = Waiting(pods[-1])
        fatal = pods[-1].fatal
        if fatal:
            return GiveUp(fatal, NOT_STARTED)
    if job_failed and not any(p.live for p in pods):
        seen = state.last.stuck() if state.last is not None else "no probe pod was seen"
        return GiveUp(f"{job_failed}; {seen}", JOB_FAILED)
    return state


def overdue(state: Waiting, slot: Slot, job_failed: str | None, api_error: str) -> str:
    """Why a slot still waiting at the deadline never reported."""
    if state.last is not None:
        why = state.last.stuck()
    elif api_error:
        why = f"could not watch the probe Job: {api_error}"
    else:
        why = (
            f"no probe pod appeared for job {slot.job} in {slot.namespace} "
            "(service account missing, quota or admission? kubectl describe job)"
        )
    return f"{job_failed}; {why}" if job_failed else why


@dataclass
class Board:
    """Where every slot of the run stands. Settled slots leave ``waiting``; Job
    failures are remembered (a Job listed once as failed stays failed)."""

    waiting: dict[Slot, Waiting]
    failures: dict[tuple[str, str], str] = field(default_factory=dict)  # (ns, job) -> why
    api_error: str = ""  # the last look's API failure; cleared by a complete look

    @classmethod
    def of(cls, slots: Iterable[Slot]) -> Board:
        return cls({s: Waiting() for s in slots})

    @property
    def settled(self) -> bool:
        return not self.waiting

    def jobs_seen(self, namespace: str, jobs: Iterable[dict[str, Any]]) -> None:
        for jb in jobs:
            why = job_failure(jb)
            if why:
                self.failures[(namespace, jb["metadata"]["name"])] = why

    def observe(self, slot: Slot, pods: Sequence[PodView]) -> Step:
        """Move ``slot`` on what one look saw; a ``Collect`` or ``GiveUp`` settles it
        (the caller acts on it)."""
        step = observe(self.waiting[slot], pods, self.failures.get(slot.job_key))
        if isinstance(step, Waiting):
            self.waiting[slot] = step
        else:
            del self.waiting[slot]
        return step

    def first_waiting(self) -> Slot | None:
        return next(iter(self.waiting), None)

    def overdue(self) -> dict[Slot, str]:
        """At the deadline: every slot still waiting, and why."""
        return {
            slot: overdue(state, slot, self.failures.get(slot.job_key), self.api_error)
            for slot, state in self.waiting.items()
        }
