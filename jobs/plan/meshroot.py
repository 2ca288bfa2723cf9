"""The mesh root (``istio-ca-root-cert``) and the one place it is trusted from.

istiod's namespace controller writes the ConfigMap ``istio-ca-root-cert`` (key
``root-cert.pem``) into every namespace it watches
(pilot/pkg/serviceregistry/kube/controller/namespacecontroller.go,
``CACertNamespaceConfigMap``). Every copy outside istiod's own namespace is only as
trustworthy as the ConfigMap write access of that namespace's users: a tenant who plants
a root of their own CA there would make peer-cert and self pass for certificates that
CA issued. The controller rewrites the copies it watches, but not in namespaces outside
istiod's discovery selectors, and not while istiod is down. Whoever can write ConfigMaps
in istiod's namespace can already replace the mesh config (``istio``) next to it, so
trusting that copy adds no one. The mesh ``rootNamespace`` is not used either: it is
configurable and often writable by policy authors, and holds just another copy.

Discovery (``jobs.plan.discovery``) reads only that copy; ``--from-manifests`` sees every
ConfigMap and reports a root found elsewhere as a note (never used).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from probe.constants import ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY

__all__ = ["ROOT_CERT_CONFIGMAP", "ROOT_CERT_KEY", "no_root_note", "pick_root_cert", "root_cert_of"]

_SHOWN = 5  # namespaces named in a note; the rest are counted


def root_cert_of(cm: Mapping[str, Any] | None) -> str | None:
    """The PEM in an ``istio-ca-root-cert`` ConfigMap, or None when it holds none."""
    data = cm.get("data") if cm is not None else None
    pem = data.get(ROOT_CERT_KEY) if isinstance(data, dict) else None
    return pem if isinstance(pem, str) and "BEGIN CERTIFICATE" in pem else None


def no_root_note(istio_namespace: str) -> str:
    return (
        f"ConfigMap {istio_namespace}/{ROOT_CERT_CONFIGMAP} (key {ROOT_CERT_KEY}) not found: "
        "no mesh root for chain checks (copies in other namespaces are never used: a "
        "tenant can write them; pass --istio-namespace if istiod runs elsewhere)"
    )


def pick_root_cert(
    roots: Iterable[tuple[str, str]], istio_namespace: str
) -> tuple[str | None, list[str]]:
    """From (namespace, PEM) pairs of every ``istio-ca-root-cert`` seen, the trusted root
    and notes: roots elsewhere that differ from it (or stand in for a missing one) are
    named, never used. Copies equal to the trusted root are what istiod writes: silent."""
    trusted: str | None = None
    others: dict[str, str] = {}
    for ns, pem in roots:
        if ns == istio_namespace:
            trusted = pem  # the last one, as kubectl apply would leave it
        else:
            others[ns] = pem
    differ = sorted(ns for ns, pem in others.items() if pem.strip() != (trusted or "").strip())
    notes: list[str] = []  # no root at all is usual in manifests: no note for that
    if differ:
        shown = ", ".join(differ[:_SHOWN])
        more = f" and {len(differ) - _SHOWN} more" if len(differ) > _SHOWN else ""
        what = (
            f"a root other than {istio_namespace}'s"
            if trusted is not None
            else f"a root while {istio_namespace} has none"
        )
        notes.append(
            f"ConfigMap {ROOT_CERT_CONFIGMAP} in {shown}{more} holds {what}: not used (the "
            "mesh root is trusted only from istiod's namespace; a tenant can write the copy "
            "in their own)"
        )
    return trusted, notes
