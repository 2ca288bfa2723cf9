"""Names fixed outside this code that more than one module needs: Istio's and Envoy's
well-known names, and the labels mtlsprobe puts on its own probe pods.

Each is defined here once so the planner, the launcher, the agent and the checks cannot
drift apart; docs/istio-behaviour.md says where Istio and Envoy define them. Names only
one module uses stay in that module.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# ---- Istio and Envoy ------------------------------------------------------------------

# The sidecar's Envoy admin listens on loopback only; the app container shares the
# pod's network namespace, so it reaches it (``/certs``, ``/stats``).
ENVOY_ADMIN = "http://127.0.0.1:15000"

# istiod's namespace controller writes the mesh root into this ConfigMap and key.
ROOT_CERT_CONFIGMAP = "istio-ca-root-cert"
ROOT_CERT_KEY = "root-cert.pem"

# istiod's own namespace (mesh ConfigMap, the trusted root copy) and, by default, the
# mesh root namespace of PeerAuthentication and DestinationRule.
DEFAULT_ISTIO_NAMESPACE = "istio-system"
# The ConfigMap istiod reads MeshConfig from (``istio-<rev>`` for a revision).
MESH_CONFIGMAP = "istio"

# Injection opt-in/opt-out: a label (current API); the annotation of the same name is
# deprecated but still read.
INJECT_LABEL = "sidecar.istio.io/inject"
# Written by the injector; auto-mTLS sends mTLS only to endpoints labelled ``istio``.
TLS_MODE_LABEL = "security.istio.io/tlsMode"
# The sidecar container (or native-sidecar init container).
PROXY_CONTAINER = "istio-proxy"
# Set on a pod once the CNI agent has redirected its traffic to ztunnel.
AMBIENT_REDIRECTION = "ambient.istio.io/redirection"

# ---- mtlsprobe's own pods --------------------------------------------------------------

# Where k8s/ installs mtlsprobe, and the service account its probe pods run as.
PROBE_NAMESPACE = "mtlsprobe"
PROBE_SERVICE_ACCOUNT = "mtlsprobe"

APP_NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
ROLE_LABEL = "mtlsprobe.dev/role"  # "sidecar" or "plain": which checks a probe pod runs

# Every probe pod ``mtlsprobe run`` launches carries these (DestinationRule
# workloadSelectors in the probe's namespace are matched against them).
PROBE_POD_LABELS: Mapping[str, str] = MappingProxyType(
    {
        APP_NAME_LABEL: "mtlsprobe",
        COMPONENT_LABEL: "probe",
        MANAGED_BY_LABEL: "mtlsprobe-run",
    }
)
