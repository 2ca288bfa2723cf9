"""Compliance mapping: which audit controls each check provides evidence for.

An optional YAML file (``--compliance FILE``) maps checks to control IDs, so an
auditor reading a report, a PolicyReport or an attestation sees "PCI DSS 4.0 4.2.1"
beside the verdict that backs it. The mapping is the user's claim, not ours: the
file names the controls; mtlsprobe only carries the IDs along and, per control,
the worst verdict of the checks mapped to it (``status``).

    name: example-mapping            # optional, shown in reports
    controls:
      - framework: PCI DSS 4.0
        id: "4.2.1"
        title: Strong cryptography protects data in transit   # optional
        checks: [plaintext, mesh, peer-cert]

Loaded with the bounded YAML loader; an unknown check name is an error (a typo
must not silently map nothing).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probe import textsafe, yamlfile, yamlload
from probe.checks import REGISTRY
from probe.results import Result, Verdict

LIMITS = yamlload.Limits(max_bytes=1 << 20, max_depth=16)
MAX_CONTROLS = 1000
# Checks the data plane runs, plus the plan's findings (jobs.plan.planner names them;
# probe/ cannot import jobs/, a test keeps the two lists equal).
PLAN_CHECKS = ("policy", "require-strict", "require-sidecar")
KNOWN_CHECKS = (*REGISTRY, *PLAN_CHECKS)
_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,200}")
# Worst first: a control is only as good as the worst evidence for it (error is not pass).
_SEVERITY = (Verdict.FAIL, Verdict.ERROR, Verdict.PASS, Verdict.SKIP)


class ComplianceFileError(ValueError):
    """The mapping file cannot be used; one line naming the file and the problem."""


@dataclass(frozen=True)
class Control:
    framework: str
    id: str
    checks: tuple[str, ...]
    title: str | None = None

    @property
    def label(self) -> str:
        """``PCI DSS 4.0 4.2.1``: the framework and the ID, as auditors quote them."""
        return f"{self.framework} {self.id}"


@dataclass(frozen=True)
class ControlMap:
    controls: tuple[Control, ...]
    name: str | None = None

    def for_check(self, check: str) -> tuple[Control, ...]:
        return tuple(c for c in self.controls if check in c.checks)

    def labels(self, check: str) -> list[str]:
        """Control labels for one check (empty when the mapping names none)."""
        return [c.label for c in self.for_check(check)]

    def status(self, results: Iterable[Result]) -> list[dict[str, Any]]:
        """Per control: its checks, the verdict counts of their results and the worst
        verdict (``none`` when no result backs it: no evidence is not a pass)."""
        by_check: dict[str, list[Verdict]] = {}
        for r in results:
            by_check.setdefault(r.check, []).append(r.verdict)
        out: list[dict[str, Any]] = []
        for c in self.controls:
            seen = [v for ch in c.checks for v in by_check.get(ch, ())]
            counts = {v.value: seen.count(v) for v in Verdict}
            worst = next((v.value for v in _SEVERITY if v in seen), "none")
            entry: dict[str, Any] = {"framework": c.framework, "id": c.id, "label": c.label}
            if c.title:
                entry["title"] = c.title
            entry.update({"checks": list(c.checks), "status": worst, "summary": counts})
            out.append(entry)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "controls": [
                {
                    "framework": c.framework,
                    "id": c.id,
                    **({"title": c.title} if c.title else {}),
                    "checks": list(c.checks),
                }
                for c in self.controls
            ],
        }


def load_controls(path: Path) -> ControlMap:
    """The mapping in ``path``; ``ComplianceFileError`` with one line on any problem."""
    return read_controls(path)[0]


def read_controls(path: Path) -> tuple[ControlMap, bytes]:
    """The mapping and the exact bytes it was read from (what an attestation digests:
    one read, so the digest is of the mapping that was used)."""
    where = textsafe.line(str(path), 200)
    try:
        text = yamlfile.read_text(path, LIMITS.max_bytes)
        doc = yamlload.load_one(text, LIMITS)
    except yamlload.YamlLoadError as exc:
        raise ComplianceFileError(f"compliance file {where}: {exc}") from None
    return parse_controls(doc, where), text.encode("utf-8")


def parse_controls(doc: object, origin: str) -> ControlMap:
    def fail(problem: str) -> ComplianceFileError:
        return ComplianceFileError(f"compliance file {origin}: {problem}")

    if not isinstance(doc, Mapping):
        raise fail("expected a mapping with a 'controls' list")
    unknown = set(doc) - {"name", "controls", "description"}
    if unknown:
        raise fail(f"unknown key {textsafe.bounded(sorted(map(str, unknown))[0], 60)}")
    name = doc.get("name")
    if name is not None and not (isinstance(name, str) and _TEXT.fullmatch(name)):
        raise fail("'name' must be one line of text (at most 200 characters)")
    raw = doc.get("controls")
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise fail("'controls' must be a non-empty list")
    if len(raw) > MAX_CONTROLS:
        raise fail(f"more than {MAX_CONTROLS} controls")
    controls: list[Control] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        c = _parse_control(item, f"controls[{i}]", fail)
        if (c.framework, c.id) in seen:
            raise fail(f"controls[{i}]: {textsafe.bounded(c.label, 80)} is listed twice")
        seen.add((c.framework, c.id))
        controls.append(c)
    return ControlMap(tuple(controls), name)


def _parse_control(item: object, where: str, fail: Any) -> Control:
    if not isinstance(item, Mapping):
        raise fail(f"{where}: expected a mapping with framework, id and checks")
    unknown = set(item) - {"framework", "id", "title", "checks"}
    if unknown:
        raise fail(f"{where}: unknown key {textsafe.bounded(sorted(map(str, unknown))[0], 60)}")
    fields: dict[str, str] = {}
    for key in ("framework", "id", "title"):
        value = item.get(key)
        if value is None and key == "title":
            continue
        if isinstance(value, int | float) and not isinstance(value, bool) and key == "id":
            raise fail(f"{where}.id: quote it (YAML reads {value!r} as a number)")
        if not (isinstance(value, str) and _TEXT.fullmatch(value) and value.strip()):
            raise fail(f"{where}.{key}: must be one line of text (at most 200 characters)")
        fields[key] = value.strip()
    checks = item.get("checks")
    if not isinstance(checks, Sequence) or isinstance(checks, str) or not checks:
        raise fail(f"{where}.checks: must be a non-empty list of check names")
    for ch in checks:
        if ch not in KNOWN_CHECKS:
            raise fail(
                f"{where}.checks: unknown check {textsafe.bounded(ch, 60)} "
                f"(known: {', '.join(KNOWN_CHECKS)})"
            )
    return Control(
        framework=fields["framework"],
        id=fields["id"],
        checks=tuple(dict.fromkeys(checks)),
        title=fields.get("title"),
    )


__all__ = ["KNOWN_CHECKS", "ComplianceFileError", "Control", "ControlMap", "load_controls"]
