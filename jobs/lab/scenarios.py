"""Lab scenarios: Kubernetes/Istio YAML plus an optional ``LabScenario`` document
that says what the scenario demonstrates and which verdicts it must produce.

Built-in scenarios ship as package data (``jobs/lab/scenarios/*.yaml``). A user's
own files (``-f``) are the same YAML without the LabScenario document; then the
lab's verdict is simply the product's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from probe import yamlfile, yamlload
from probe.results import Result, Verdict
from probe.textsafe import line

LAB_API = "lab.mtlsprobe.dev/v1"
LAB_KIND = "LabScenario"
BUILTIN = ("healthy", "migration", "broken", "blinded", "authz", "tls-off")
REQUIREMENTS = ("strict", "sidecar")


class ScenarioError(ValueError):
    """A scenario cannot be used; one line naming the file and the problem."""


@dataclass(frozen=True)
class Expectation:
    check: str
    target: str
    verdict: Verdict
    why: str = ""
    endpoint: str | None = None

    def matches(self, r: Result) -> bool:
        return (
            r.check == self.check
            and r.target == self.target
            and (self.endpoint is None or r.endpoint == self.endpoint)
        )


@dataclass(frozen=True)
class Scenario:
    name: str
    documents: tuple[dict[str, Any], ...]
    origin: str
    title: str = ""
    demonstrates: str = ""
    require: tuple[str, ...] = ()
    expect: tuple[Expectation, ...] = ()
    # True when a LabScenario document says which verdicts are right.
    judged: bool = False


@dataclass(frozen=True)
class Mismatch:
    """A result the scenario did not expect, or an expectation no result met."""

    check: str
    target: str
    endpoint: str | None
    expected: str
    got: str
    reason: str = ""

    def __str__(self) -> str:
        where = f"{self.check} {self.target}" + (f" {self.endpoint}" if self.endpoint else "")
        tail = f" ({self.reason})" if self.reason else ""
        return f"{where}: expected {self.expected}, got {self.got}{tail}"


@dataclass
class _Parts:
    lab: dict[str, Any] | None = None
    docs: list[dict[str, Any]] = field(default_factory=list)


def _split(raw: Iterable[object], origin: str) -> _Parts:
    parts = _Parts()
    for i, doc in enumerate(raw):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ScenarioError(f"{origin}: document {i + 1} is not a mapping")
        if doc.get("kind") == LAB_KIND:
            if parts.lab is not None:
                raise ScenarioError(f"{origin}: more than one {LAB_KIND} document")
            parts.lab = doc
        elif doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            parts.docs.extend(d for d in doc["items"] if isinstance(d, dict))
        else:
            parts.docs.append(doc)
    return parts


def _load_yaml(text: str, origin: str) -> _Parts:
    from jobs.plan.manifests import MANIFEST_LIMITS

    try:
        return _split(yamlload.load_all(text, MANIFEST_LIMITS), origin)
    except yamlload.YamlLoadError as exc:
        raise ScenarioError(f"{origin}: {exc}") from None


def _expectation(raw: object, origin: str, i: int) -> Expectation:
    where = f"{origin}: spec.expect[{i}]"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a mapping with check, target, verdict")
    try:
        verdict = Verdict(str(raw.get("verdict", "")).lower())
    except ValueError:
        raise ScenarioError(f"{where}: verdict must be pass, fail, error or skip") from None
    check, target = raw.get("check"), raw.get("target")
    if not isinstance(check, str) or not isinstance(target, str):
        raise ScenarioError(f"{where}: check and target are required strings")
    endpoint = raw.get("endpoint")
    return Expectation(
        check=check,
        target=target,
        verdict=verdict,
        why=str(raw.get("why", "")),
        endpoint=str(endpoint) if endpoint is not None else None,
    )


def _requirements(raw: object, origin: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or any(r not in REQUIREMENTS for r in raw):
        raise ScenarioError(f"{origin}: spec.require must be a list of {', '.join(REQUIREMENTS)}")
    return tuple(raw)


def _scenario(parts: _Parts, name: str, origin: str) -> Scenario:
    if parts.lab is None:
        return Scenario(name=name, documents=tuple(parts.docs), origin=origin)
    spec = parts.lab.get("spec") or {}
    if not isinstance(spec, dict):
        raise ScenarioError(f"{origin}: {LAB_KIND} spec must be a mapping")
    meta = parts.lab.get("metadata") or {}
    expect_raw = spec.get("expect") or []
    if not isinstance(expect_raw, list):
        raise ScenarioError(f"{origin}: spec.expect must be a list")
    return Scenario(
        name=str(meta.get("name") or name) if isinstance(meta, dict) else name,
        documents=tuple(parts.docs),
        origin=origin,
        title=str(spec.get("title", "")),
        demonstrates=str(spec.get("demonstrates", "")).strip(),
        require=_requirements(spec.get("require"), origin),
        expect=tuple(_expectation(e, origin, i) for i, e in enumerate(expect_raw)),
        judged=True,
    )


def builtin(name: str) -> Scenario:
    if name not in BUILTIN:
        raise ScenarioError(f"unknown scenario {name!r} (built-in: {', '.join(BUILTIN)})")
    text = resources.files("jobs.lab").joinpath("scenarios", f"{name}.yaml").read_text("utf-8")
    return _scenario(_load_yaml(text, f"scenario {name}"), name, f"built-in scenario {name}")


def from_files(paths: Sequence[Path]) -> Scenario:
    """A user's own manifests (one or more files), optionally with a LabScenario document."""
    merged = _Parts()
    from jobs.plan.manifests import MANIFEST_LIMITS

    for path in paths:
        origin = line(str(path), 300)
        try:
            text = yamlfile.read_text(path, MANIFEST_LIMITS.max_bytes)
        except yamlload.YamlLoadError as exc:
            raise ScenarioError(f"{origin}: {exc}") from None
        parts = _load_yaml(text, origin)
        if parts.lab is not None:
            if merged.lab is not None:
                raise ScenarioError(f"{origin}: a second {LAB_KIND} document")
            merged.lab = parts.lab
        merged.docs.extend(parts.docs)
    if not merged.docs:
        raise ScenarioError(f"{', '.join(map(str, paths))}: no Kubernetes objects found")
    name = paths[0].stem if len(paths) == 1 else "manifests"
    return _scenario(merged, name, ", ".join(map(str, paths)))


def judge(scenario: Scenario, results: Sequence[Result]) -> list[Mismatch]:
    """Every result must be what the scenario expects (unlisted: pass or skip), and
    every expectation must be met by at least one result."""
    out: list[Mismatch] = []
    met: set[int] = set()
    for r in results:
        hits = [i for i, e in enumerate(scenario.expect) if e.matches(r)]
        if hits:
            want = {scenario.expect[i].verdict for i in hits}
            met.update(hits)
            if r.verdict not in want:
                expected = "/".join(sorted(v.value for v in want))
                out.append(
                    Mismatch(r.check, r.target, r.endpoint, expected, r.verdict.value, r.reason)
                )
        elif r.verdict not in (Verdict.PASS, Verdict.SKIP):
            out.append(Mismatch(r.check, r.target, r.endpoint, "pass", r.verdict.value, r.reason))
    for i, e in enumerate(scenario.expect):
        if i not in met:
            out.append(Mismatch(e.check, e.target, e.endpoint, e.verdict.value, "no such result"))
    return out


def generated(workloads: int, per_namespace: int = 50) -> Scenario:
    """A healthy STRICT mesh of ``workloads`` single-pod workloads for scale runs."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "STRICT"}},
        }
    ]
    namespaces = max(1, -(-workloads // per_namespace))
    for n in range(namespaces):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": f"ns-{n}", "labels": {"istio-injection": "enabled"}},
            }
        )
    for i in range(workloads):
        ns, name = f"ns-{i % namespaces}", f"svc-{i}"
        labels = {"app": name}
        docs += [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": ns},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": name,
                            "containers": [
                                {
                                    "name": "echo",
                                    "image": "ghcr.io/mtlsprobe/echo",
                                    "ports": [{"containerPort": 8080, "name": "http"}],
                                }
                            ],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "selector": labels,
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                },
            },
        ]
    return Scenario(
        name=f"generated-{workloads}",
        documents=tuple(docs),
        origin=f"--workloads {workloads}",
        title=f"{workloads} workloads in {namespaces} STRICT namespaces",
        demonstrates="Scale: many sidecars per Envoy process, each with its own certificate.",
        judged=True,
    )
