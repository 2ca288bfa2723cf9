"""``mtlsprobe lab``: a local mesh of real Envoy sidecars, configured from Kubernetes
and Istio YAML by the same policy engine as the cluster path, verified by the
same checks."""
