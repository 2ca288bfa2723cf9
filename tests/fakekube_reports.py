"""The fake API server, plus the policy report CRDs (``PolicyReport`` of
wgpolicyk8s.io/v1alpha2, ``Report`` of openreports.io/v1alpha1) served the way the real
API server serves a CRD:

- ``PUT`` (update) with optimistic concurrency: the body's ``metadata.resourceVersion``
  must be the stored one (409 Conflict otherwise), the name must match the path;
- create and update validate the body against the CRD's ``openAPIV3Schema`` (vendored in
  tests/data/crds, see its SOURCE.md) and answer 422 Invalid with the first error;
- fields the schema does not declare are pruned as a structural schema prunes them,
  and recorded in ``pruned`` (a test asserts nothing was: a pruned field is data lost).

``crd_schema(kind)`` gives the schema for tests that validate rendered objects directly.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

from tests.fakekube import FakeKube, Resource, _not_found, status_body

Obj = dict[str, Any]
CRDS = Path(__file__).resolve().parent / "data" / "crds"
REPORTS: tuple[Resource, ...] = (
    Resource("wgpolicyk8s.io", ("v1alpha2",), "policyreports", "PolicyReport"),
    Resource("openreports.io", ("v1alpha1",), "reports", "Report"),
)
_FILES = {
    ("wgpolicyk8s.io", "v1alpha2"): "wgpolicyk8s.io_policyreports.yaml",
    ("openreports.io", "v1alpha1"): "openreports.io_reports.yaml",
}


@cache
def _raw_schema(group: str, version: str) -> str:
    doc = yaml.safe_load((CRDS / _FILES[(group, version)]).read_text())
    for v in doc["spec"]["versions"]:
        if v["name"] == version:
            return json.dumps(v["schema"]["openAPIV3Schema"])
    raise KeyError(version)


def crd_schema(api_version: str) -> Obj:
    group, _, version = api_version.partition("/")
    schema: Obj = json.loads(_raw_schema(group, version))
    return schema


def pruned_fields(obj: Any, schema: Obj, path: str = "") -> list[str]:
    """Paths of fields a structural schema would drop (not declared, no
    additionalProperties, no preserve-unknown-fields); ``metadata`` is the API server's."""
    out: list[str] = []
    if isinstance(obj, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return out
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in obj.items():
            if path == "" and k in ("apiVersion", "kind", "metadata"):
                continue
            if props is not None and k in props:
                out += pruned_fields(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                out += pruned_fields(v, extra, f"{path}.{k}")
            elif props is not None:
                out.append(f"{path}.{k}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(obj):
            out += pruned_fields(v, schema["items"], f"{path}[{i}]")
    return out


def validate(obj: Obj) -> list[str]:
    """Schema errors (empty when valid), then fields that would be pruned."""
    schema = crd_schema(str(obj.get("apiVersion")))
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(obj)
    ]
    return errors + [f"{p}: would be pruned" for p in pruned_fields(obj, schema)]


@dataclass
class ReportKube(FakeKube):
    pruned: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        for r in REPORTS:
            self.serve(r)

    def __enter__(self) -> ReportKube:
        self.start()
        return self

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, Any]:
        route = self._route(urlsplit(raw_path).path)
        if route is None or route[0] not in REPORTS or method not in ("POST", "PUT"):
            return super().handle(method, raw_path, body)
        r, version, ns, name = route
        try:
            new = json.loads(body or b"{}")
        except ValueError:
            return 400, status_body(400, "BadRequest", "invalid JSON body")
        new["apiVersion"] = f"{r.group}/{version}"
        new["kind"] = r.kind
        errors = validate(new)
        schema_errors = [e for e in errors if not e.endswith("would be pruned")]
        if schema_errors:
            with self._lock:
                self.calls.append(_call(method, raw_path))
            return 422, status_body(422, "Invalid", f"{r.kind} is invalid: {schema_errors[0]}")
        self.pruned += [e for e in errors if e.endswith("would be pruned")]
        if method == "POST":
            return super().handle(method, raw_path, json.dumps(new).encode())
        # PUT: update in place, optimistic concurrency on resourceVersion.
        with self._lock:
            self.calls.append(_call(method, raw_path))
        if ("update", r.group, r.plural) in self._forbidden:
            return 403, self._forbidden_status("update", r, ns)
        with self._lock:
            objs = self.store[(r.group, r.plural)].get(ns or "", {})
            cur = objs.get(name or "")
            if cur is None:
                return 404, _not_found(r, name or "")
            md = new.setdefault("metadata", {})
            if md.get("name") != name:
                return 400, status_body(400, "BadRequest", "the name in the body does not match")
            if md.get("resourceVersion") != cur["metadata"]["resourceVersion"]:
                msg = (
                    f'Operation cannot be fulfilled on {r.plural}.{r.group} "{name}": the '
                    "object has been modified; please apply your changes to the latest version"
                )
                return 409, status_body(409, "Conflict", msg)
            md["namespace"] = ns
            md["uid"] = cur["metadata"]["uid"]
            md["creationTimestamp"] = cur["metadata"]["creationTimestamp"]
            md["resourceVersion"] = str(next(self._rv))
            objs[name or ""] = copy.deepcopy(new)
            self._sorted.clear()
        return 200, new

    def reports(self, plural: str = "policyreports", group: str = "wgpolicyk8s.io") -> list[Obj]:
        with self._lock:
            return [
                copy.deepcopy(o)
                for objs in self.store[(group, plural)].values()
                for o in objs.values()
            ]


def _call(method: str, raw_path: str) -> Any:
    from urllib.parse import parse_qs

    from tests.fakekube import Call

    parts = urlsplit(raw_path)
    return Call(method, parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()})
