"""mtlsprobe's data plane: what runs inside a probe pod. Never imports the Kubernetes client."""

__version__ = "0.1.0"
