"""Negative controls: before trusting a detector's verdicts, prove on a known target that
it can see what it looks for.

A run that sees *every* plaintext call refused may be looking at a NetworkPolicy or a
CNI that resets all of the probe's traffic, not at mTLS; a mesh check may be blind if
the probe's own sidecar does not originate mTLS. So the engine runs the ``controls:``
of the targets file first, each with its detector's own check:

- ``plaintext`` control: the plaintext check's request must be *accepted* (an HTTP
  response / bytes back) by a workload without a sidecar.
- ``mesh`` control: the mesh check must *pass* on an echo workload with a sidecar (the
  last XFCC element names the probe and the server).

Each control yields one result with check ``control`` (evidence ``kind``: which detector).
A control that does not pass is an ``error`` (the detector is blind: nothing was
observed), and then every verdict that rests on that detector not seeing something
becomes ``error`` naming the blind detector:

- plaintext blind: every plaintext result observed ``refused`` (a STRICT pass, or a
  PERMISSIVE/NONE fail); an accepted plaintext is a positive observation and stands.
- mesh blind: every ``pass`` of mesh and xfcc-spoof.

Controls run only for the checks selected. Pure, apart from the check runs the engine
does for us.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from probe.model import Control, ControlKind
from probe.results import Result, Verdict

CHECK = "control"

#: The check that observes a control of each kind.
DETECTOR: Mapping[ControlKind, str] = {
    ControlKind.PLAINTEXT: "plaintext",
    ControlKind.MESH: "mesh",
}
#: The checks whose verdicts a control of each kind vouches for.
DEPENDENT: Mapping[ControlKind, tuple[str, ...]] = {
    ControlKind.PLAINTEXT: ("plaintext",),
    ControlKind.MESH: ("mesh", "xfcc-spoof"),
}
_EXPECTED = {
    ControlKind.PLAINTEXT: "plaintext accepted",
    ControlKind.MESH: "mTLS observed",
}
_SEES = {
    ControlKind.PLAINTEXT: "an acceptance",
    ControlKind.MESH: "mTLS",
}
_NOT_SEEN = {
    ControlKind.PLAINTEXT: "was not accepted",
    ControlKind.MESH: "did not show mTLS",
}
_HINT = {
    ControlKind.PLAINTEXT: "a NetworkPolicy or CNI may be resetting the probe's traffic",
    ControlKind.MESH: "the probe's sidecar may not be originating mTLS (a DestinationRule, a "
    "Sidecar resource or its certificate)",
}


def selected(controls: Iterable[Control], checks: Iterable[str]) -> list[Control]:
    """The controls that vouch for at least one selected check."""
    names = set(checks)
    return [c for c in controls if names.intersection(DEPENDENT[c.kind])]


def as_control(control: Control, observed: Result) -> Result:
    """The ``control`` result from the detector's own result on the control target."""
    kind = control.kind
    seen = observed.verdict is Verdict.PASS
    ev = {"kind": kind.value, "detector": DETECTOR[kind], **observed.evidence}
    if seen:
        reason = f"{DETECTOR[kind]} detector sees {_SEES[kind]}: {observed.reason}"
    else:
        reason = (
            f"{DETECTOR[kind]} detector blind: control {control.target.name} "
            f"{_NOT_SEEN[kind]}: {_cause(observed)}"
        )
        ev["detector_verdict"] = observed.verdict.value
    return Result(
        check=CHECK,
        target=control.target.name,
        endpoint=observed.endpoint,
        verdict=Verdict.PASS if seen else Verdict.ERROR,
        reason=reason,
        expected=_EXPECTED[kind],
        observed=observed.observed,
        evidence=ev,
        start_ns=observed.start_ns,
        end_ns=observed.end_ns,
    )


def _cause(r: Result) -> str:
    """Why the detector did not see the positive case, in the control's terms."""
    if r.verdict is Verdict.SKIP:
        return f"could not run: {r.reason}"
    if r.check == "plaintext" and r.observed == "refused":
        # The check's own words judge a NONE port that refused; here the refusal is the
        # symptom of a blind probe.
        alert = r.evidence.get("alert")
        if alert:
            return f"it answered with a TLS alert ({alert})"
        return "it was reset (TCP RST) right after the request, no response"
    return r.reason


@dataclass(frozen=True)
class Blind:
    """A detector a control showed blind: the first failed control names it."""

    kind: ControlKind
    control: str
    cause: str

    def reason(self) -> str:
        return (
            f"{DETECTOR[self.kind]} detector blind: control {self.control} "
            f"{_NOT_SEEN[self.kind]}: {self.cause} — {_HINT[self.kind]}"
        )


def blind_checks(pairs: Sequence[tuple[Control, Result]]) -> dict[str, Blind]:
    """check name -> why it is blind, from (control, detector result) pairs."""
    out: dict[str, Blind] = {}
    for control, observed in pairs:
        if observed.verdict is Verdict.PASS:
            continue
        blind = Blind(control.kind, control.target.name, _cause(observed))
        for check in DEPENDENT[control.kind]:
            out.setdefault(check, blind)
    return out


def rests_on_absence(r: Result) -> bool:
    """Whether ``r`` rests on its detector *not* seeing something (what blindness fakes)."""
    if r.check == "plaintext":
        return r.observed == "refused" and r.verdict in (Verdict.PASS, Verdict.FAIL)
    return r.verdict is Verdict.PASS


def apply(r: Result, blind: Mapping[str, Blind]) -> Result:
    """``r``, or an ``error`` naming the blind detector when it rests on that detector."""
    b = blind.get(r.check)
    if b is None or not rests_on_absence(r):
        return r
    return replace(
        r,
        verdict=Verdict.ERROR,
        reason=b.reason(),
        evidence={
            **r.evidence,
            "error": "detector-blind",
            "control": b.control,
            "verdict_if_not_blind": r.verdict.value,
        },
    )
