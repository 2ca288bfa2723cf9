"""The shipped manifests (k8s/) as ``kubectl kustomize`` renders them, and the RBAC
questions tests ask of them: which rules bind to which service account, and whether an
API call the code makes is allowed."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

K8S = Path(__file__).resolve().parent.parent / "k8s"


def render(path: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def rules_by_subject(objs: list[dict[str, Any]]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """service account -> [(namespace or '' for cluster-wide, rule)]"""
    roles = {
        (o["kind"], o["metadata"]["name"]): o for o in objs if o["kind"] in ("Role", "ClusterRole")
    }
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        role = roles[(b["roleRef"]["kind"], b["roleRef"]["name"])]
        scope = b["metadata"].get("namespace", "") if b["kind"] == "RoleBinding" else ""
        for s in b["subjects"]:
            out.setdefault(s["name"], []).extend((scope, r) for r in role["rules"])
    return out


def allowed(
    rules: list[tuple[str, dict[str, Any]]],
    verb: str,
    group: str,
    resource: str,
    ns: str,
    name: str | None,
) -> bool:
    for scope, rule in rules:
        if scope and scope != ns:
            continue
        if group not in rule.get("apiGroups", [""]) or resource not in rule["resources"]:
            continue
        if verb not in rule["verbs"]:
            continue
        names = rule.get("resourceNames")
        if names and name not in names:
            continue
        return True
    return False


def parse_call(
    method: str, path: str, query: dict[str, str]
) -> tuple[str, str, str, str, str | None]:
    seg = [s for s in path.split("/") if s]
    group, rest = ("", seg[2:]) if seg[0] == "api" else (seg[1], seg[3:])
    ns = ""
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        ns, rest = rest[1], rest[2:]
    elif rest[:1] == ["namespaces"] and len(rest) == 2:
        return ("get", "", "namespaces", "", rest[1])
    resource, name = rest[0], (rest[1] if len(rest) > 1 else None)
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    verb = {"POST": "create", "DELETE": "delete"}.get(method)
    if verb is None:
        verb = "watch" if query.get("watch") in ("true", "1") else ("get" if name else "list")
    return verb, group, resource, ns, name
