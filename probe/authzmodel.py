"""AuthorizationPolicy cases of the targets contract (``authz:`` per target): which probe
identity makes which request, and what the target's sidecar must do with it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from probe.fields import MAX_ECHO_PATH, is_request_path, key_name, spiffe_field
from probe.textsafe import bounded


class AuthzExpect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


#: Bound per target: a plan picks a few requests per rule and probe identity.
MAX_AUTHZ_CASES = 1024
MAX_POLICY_CHARS = 317  # "<namespace (63)>/<name (253)>"
_METHOD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_AUTHZ_KEYS = {"source", "method", "path", "expect", "policy"}


@dataclass(frozen=True)
class AuthzCase:
    """One request the probe whose identity is ``source`` makes to a target, and what
    the target's sidecar must do with it; ``policy`` names the AuthorizationPolicy
    expected to decide (``<ns>/<name>``, or ``default`` when none applies)."""

    source: str
    expect: AuthzExpect
    policy: str
    method: str | None = None  # None (with path) on tcp ports
    path: str | None = None

    @property
    def request(self) -> str:
        """``GET /x``, or ``tcp``: how reports name the request."""
        return f"{self.method} {self.path}" if self.method is not None else "tcp"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.method is not None:
            out["method"] = self.method
            out["path"] = self.path
        out["expect"] = self.expect.value
        out["policy"] = self.policy
        return out


def parse_authz(
    raw: object, where: str, fail: Any, trust_domain: str | None, *, tcp: bool
) -> tuple[AuthzCase, ...]:
    """A target's ``authz:`` list; ``tcp``: the target is a tcp port (no method, path)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise fail(where, "must be a list of {source, method, path, expect, policy}")
    if len(raw) > MAX_AUTHZ_CASES:
        raise fail(where, f"{len(raw)} cases: at most {MAX_AUTHZ_CASES} per target")
    out: list[AuthzCase] = []
    seen: set[tuple[str, str | None, str | None]] = set()
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise fail(at, "must be a mapping")
        unknown = set(item) - _AUTHZ_KEYS
        if unknown:
            raise fail(f"{at}.{key_name(unknown)}", "unknown key")
        if item.get("source") is None:
            raise fail(f"{at}.source", "required, the SPIFFE ID of the probe that calls")
        source = spiffe_field(item["source"], f"{at}.source", fail, trust_domain)
        expect = next((e for e in AuthzExpect if e.value == item.get("expect")), None)
        if expect is None:
            raise fail(f"{at}.expect", f"{bounded(item.get('expect'))}: want allow or deny")
        policy = item.get("policy")
        if not (
            isinstance(policy, str)
            and 0 < len(policy) <= MAX_POLICY_CHARS
            and policy.isprintable()
            and " " not in policy
            and (policy == "default" or policy.count("/") == 1)
        ):
            raise fail(f"{at}.policy", "want <namespace>/<name> of a policy, or default")
        method, path = item.get("method"), item.get("path")
        if tcp:
            if method is not None or path is not None:
                raise fail(at, "a tcp target's case has no method or path")
        else:
            if not (
                isinstance(method, str) and 0 < len(method) <= 20 and set(method) <= _METHOD_CHARS
            ):
                raise fail(f"{at}.method", "required on http targets: an upper-case HTTP method")
            if not is_request_path(path):
                raise fail(
                    f"{at}.path",
                    "required on http targets: an absolute request path (printable ASCII, no "
                    f"spaces or #, at most {MAX_ECHO_PATH} characters)",
                )
        key = (source, method, path)
        if key in seen:
            raise fail(at, "duplicate case (same source, method and path)")
        seen.add(key)
        out.append(AuthzCase(source, expect, policy, method, path))
    return tuple(out)
