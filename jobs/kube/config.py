"""Where the API server is and who we are: the pod's service account in a cluster, else a
kubeconfig. Failures are ``ConfigError`` with the line users see."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from jobs.kube.errors import ConfigError

SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def api_client(kubeconfig: str | None, context: str | None, timeout: float = 10.0) -> Any:
    """A ``kubernetes.client.ApiClient``: in-cluster configuration when running in a pod
    (and no kubeconfig or context was named), else the kubeconfig (``--kubeconfig``,
    ``$KUBECONFIG``, ``~/.kube/config``). ``timeout`` is accepted for the callers' sake;
    each request carries its own (``jobs.kube.client.Client``)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
    except config.ConfigException as exc:
        raise ConfigError(f"no usable Kubernetes configuration: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read kubeconfig: {exc}") from None
    cfg.retries = False  # bounded: one attempt per request, the timeout is the budget
    return client.ApiClient(cfg)


def token_subject() -> str | None:
    """The service account from the pod's token (a JWT; read, not verified), to name who
    lacks a permission when a 403 does not say."""
    try:
        with open(SA_TOKEN, encoding="ascii") as f:
            payload = f.read().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (OSError, IndexError, ValueError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None
