"""Judge probe pods and their logs into results. Pure: API bodies and text in, results out.

Fail closed: whatever a pod owed and did not report (crash, OOM, image pull failure,
never scheduled, unreadable log, truncated output) becomes an ``error`` result per
missing (check, target, endpoint) naming the cause - never a pass, never silence.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from probe.checks.base import Scope
from probe.jsonline import json_object
from probe.model import TargetsFile
from probe.results import TIMING_KEY, Result, Verdict, parse_rfc3339_ns

Obj = dict[str, Any]
Key = tuple[str, str, str | None]  # (check, target, endpoint)

# Waiting reasons that will not fix themselves within a run.
FATAL_WAITING = {
    "ErrImagePull": "image pull failed",
    "ImagePullBackOff": "image pull failed",
    "ErrImageNeverPull": "image pull failed",
    "InvalidImageName": "invalid image name",
    "CreateContainerConfigError": "container config error",
    "CreateContainerError": "container could not be created",
}
# The image reasons: the run's one image is wrong or unreachable, and the user must act.
IMAGE_WAITING = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}
IMAGE_HINT = (
    "build it and push it where the nodes can pull it (make image push IMAGE=...), "
    "then pass --image or MTLSPROBE_IMAGE"
)
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class PodView:
    """What matters about one probe pod."""

    name: str
    index: int
    phase: str
    waiting_reason: str | None
    waiting_message: str
    exit_code: int | None  # probe container terminated
    terminated_reason: str
    terminated_message: str
    unschedulable: str | None
    deleting: bool
    image: str = ""  # the probe container's image, as the pod spec names it
    node: str = ""  # spec.nodeName: where a wire capture of its traffic is read
    ip: str = ""  # status.podIP: the source address of its flows

    @property
    def finished(self) -> bool:
        return self.exit_code is not None

    @property
    def live(self) -> bool:
        """Still pending or running (not on its way out)."""
        return not self.deleting and self.phase in ("Pending", "Running")

    @property
    def fatal(self) -> str | None:
        """Why this pod can never report, decided now; None while there is hope."""
        if self.waiting_reason in FATAL_WAITING:
            what = FATAL_WAITING[self.waiting_reason]
            msg = f": {_one_line(self.waiting_message)}" if self.waiting_message else ""
            if self.waiting_reason in IMAGE_WAITING:
                # Named from the spec: kubelet messages vary by runtime and may omit it.
                image = _one_line(self.image) or "?"
                return (
                    f"probe image {image!r} cannot be pulled: probe pod {self.name}: "
                    f"{what} ({self.waiting_reason}){msg}; {IMAGE_HINT}"
                )
            return f"probe pod {self.name}: {what} ({self.waiting_reason}){msg}"
        if self.phase == "Failed" and self.exit_code is None:
            return f"probe pod {self.name} failed before the probe ran"
        return None

    def stuck(self) -> str:
        """Why it had not reported by the deadline."""
        if self.unschedulable is not None:
            return f"probe pod {self.name} unschedulable: {_one_line(self.unschedulable)}"
        if self.waiting_reason:
            msg = f": {_one_line(self.waiting_message)}" if self.waiting_message else ""
            return f"probe pod {self.name} not started ({self.waiting_reason}){msg}"
        if self.phase == "Running":
            return f"probe pod {self.name} still running at the deadline"
        return f"probe pod {self.name} still {self.phase or 'Pending'} at the deadline"

    def crash(self) -> str | None:
        """Why the probe process ended abnormally (its results may be incomplete)."""
        if self.exit_code is None:
            return None
        if self.terminated_reason == "OOMKilled":
            return f"probe container OOMKilled (exit {self.exit_code}) in pod {self.name}"
        if self.exit_code in (0, 1, 2):
            return None
        tail = f": {_one_line(self.terminated_message)}" if self.terminated_message else ""
        reason = self.terminated_reason or "Error"
        return f"probe container exited {self.exit_code} ({reason}) in pod {self.name}{tail}"


def pod_view(pod: Obj, container: str) -> PodView:
    md = pod.get("metadata") or {}
    st = pod.get("status") or {}
    ann = md.get("annotations") or {}
    raw_index = ann.get(INDEX_ANNOTATION) or (md.get("labels") or {}).get(INDEX_ANNOTATION)
    index = int(raw_index) if isinstance(raw_index, str) and raw_index.isdigit() else 0
    waiting_reason, waiting_message = None, ""
    exit_code, term_reason, term_message = None, "", ""
    for cs in st.get("containerStatuses") or []:
        if cs.get("name") != container:
            continue
        state = cs.get("state") or {}
        if "terminated" in state:
            t = state["terminated"] or {}
            exit_code = int(t.get("exitCode", -1))
            term_reason = str(t.get("reason") or "")
            term_message = str(t.get("message") or "")
        elif "waiting" in state:
            w = state["waiting"] or {}
            waiting_reason = str(w.get("reason") or "") or None
            waiting_message = str(w.get("message") or "")
    image = ""
    for c in (pod.get("spec") or {}).get("containers") or []:
        if isinstance(c, dict) and c.get("name") == container:
            image = str(c.get("image") or "")
    unschedulable = None
    for cond in st.get("conditions") or []:
        scheduled = cond.get("type") == "PodScheduled" and cond.get("status") == "False"
        if scheduled and cond.get("reason") == "Unschedulable":
            unschedulable = str(cond.get("message") or "no node fits")
    return PodView(
        name=str(md.get("name", "?")),
        index=index,
        phase=str(st.get("phase") or "Pending"),
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        exit_code=exit_code,
        terminated_reason=term_reason,
        terminated_message=term_message,
        unschedulable=unschedulable,
        deleting=bool(md.get("deletionTimestamp")),
        image=image,
        node=str((pod.get("spec") or {}).get("nodeName") or ""),
        ip=str(st.get("podIP") or ""),
    )


def job_failure(job: Obj) -> str | None:
    """The Job's Failed condition, as one line (deadline exceeded, backoff limit...)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            reason = cond.get("reason") or "Failed"
            msg = _one_line(str(cond.get("message") or ""))
            return f"job {job['metadata']['name']} failed ({reason}){': ' + msg if msg else ''}"
    return None


@dataclass(frozen=True)
class Parsed:
    results: list[Result]
    ignored: int  # lines that were not result objects (stderr, sidecar chatter)
    last_text: str  # the last such line, for the error reason


def parse_log(text: str) -> Parsed:
    """``mtlsprobe check -o jsonl`` output, mixed with whatever else the pod printed."""
    results: list[Result] = []
    ignored, last = 0, ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        r = _result(line)
        if r is None:
            ignored += 1
            last = line
        else:
            results.append(r)
    return Parsed(results, ignored, _one_line(last))


def _result(line: str) -> Result | None:
    doc = json_object(line)
    if doc is None:
        return None
    try:
        verdict = Verdict(doc["verdict"])
        check, target, reason = doc["check"], doc["target"], doc["reason"]
    except (KeyError, ValueError):
        return None
    if not all(isinstance(v, str) for v in (check, target, reason)):
        return None
    endpoint = doc.get("endpoint")
    evidence = doc.get("evidence")
    start_ns, end_ns = _timing(doc.get(TIMING_KEY))
    return Result(
        check=check,
        target=target,
        verdict=verdict,
        reason=reason,
        endpoint=endpoint if isinstance(endpoint, str) else None,
        expected=_opt_str(doc.get("expected")),
        observed=_opt_str(doc.get("observed")),
        evidence=evidence if isinstance(evidence, dict) else {},
        source=_opt_str(doc.get("source")),
        request=_opt_str(doc.get("request")),
        start_ns=start_ns,
        end_ns=end_ns,
    )


def _timing(raw: object) -> tuple[int, int]:
    """(start, end) in epoch nanoseconds from ``check --timing``'s ``timing`` object;
    (0, 0) when absent or not a sane interval (the result itself still counts)."""
    if not isinstance(raw, dict):
        return 0, 0
    start, end = raw.get("start"), raw.get("end")
    if not isinstance(start, str) or not isinstance(end, str):
        return 0, 0
    s, e = parse_rfc3339_ns(start), parse_rfc3339_ns(end)
    if s is None or e is None or not 0 < s <= e:
        return 0, 0
    return s, e


def _opt_str(v: object) -> str | None:
    return v if isinstance(v, str) else None


def expected_keys(targets: TargetsFile, checks: Sequence[tuple[str, Scope | str]]) -> list[Key]:
    """What a probe over ``targets`` owes, per (check name, scope). A scope may also be
    given by its value (``"endpoint"``); it is compared as the enum."""
    keys: list[Key] = []
    for name, raw in checks:
        scope = Scope(raw)
        if scope is Scope.RUN:
            keys.append((name, "source", None))
            continue
        for t in targets.targets:
            if scope is Scope.ENDPOINT and t.endpoints:
                keys.extend((name, t.name, str(ep)) for ep in t.endpoints)
            else:
                keys.append((name, t.name, None))
    return keys


def missing(owed: Iterable[Key], got: Iterable[Result]) -> list[Key]:
    """Owed keys no result covers. A target-level result (a skip or error decided for
    the whole target) covers its endpoints; a run-level check is covered by any of
    its results."""
    have: set[Key] = set()
    run_checks: set[str] = set()
    for r in got:
        have.add((r.check, r.target, r.endpoint))
        run_checks.add(r.check)
    out: list[Key] = []
    for key in owed:
        check, target, endpoint = key
        if key in have or (check, target, None) in have:
            continue
        if target == "source" and endpoint is None and check in run_checks:
            continue
        out.append(key)
    return out


def from_log(owed: Sequence[Key], pod: PodView, text: str, **evidence: str) -> list[Result]:
    """What a finished probe pod reported: the results in its log (with ``evidence``
    added), and an error per owed key it did not report, naming why (crash, OOM, exit
    code, the last non-result line)."""
    parsed = parse_log(text)
    got = [replace(r, evidence={**r.evidence, **evidence}) for r in parsed.results]
    lacking = missing(owed, got)
    if lacking:
        cause = pod.crash()
        if cause is None:
            cause = f"probe pod {pod.name} exited {pod.exit_code} without reporting this result"
        if parsed.last_text:
            cause += f" (last log line: {parsed.last_text})"
        if parsed.ignored:
            cause += f"; {parsed.ignored} non-result log lines ignored"
        got += errors_for(lacking, cause, "probe-incomplete", **evidence)
    return got


def log_unreadable(owed: Sequence[Key], problem: str, **evidence: str) -> list[Result]:
    return errors_for(owed, f"probe logs unreadable: {problem}", "logs-unreadable", **evidence)


def errors_for(keys: Iterable[Key], reason: str, cause: str, **evidence: str) -> list[Result]:
    return [
        Result(
            check=c,
            target=t,
            endpoint=e,
            verdict=Verdict.ERROR,
            reason=reason,
            observed=cause,
            evidence={"error": cause, **evidence},
        )
        for c, t, e in keys
    ]


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]
