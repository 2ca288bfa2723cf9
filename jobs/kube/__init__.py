"""The Kubernetes edge: the only package in ``jobs`` that imports ``kubernetes``.

``config.api_client`` finds the API server, ``client.Client`` makes every call (paged
lists, watches, get/create/delete, logs, each with a client-side timeout) and
``errors`` names why a call failed, as the one line users see."""

from jobs.kube.client import Client
from jobs.kube.config import api_client
from jobs.kube.errors import (
    APIError,
    BadResponse,
    ConfigError,
    Conflict,
    Denied,
    Expired,
    Forbidden,
    KubeError,
    NotFound,
    NotServed,
    ServerError,
    TimedOut,
    TransportError,
    Unauthorized,
    Unreachable,
)

__all__ = [
    "APIError",
    "BadResponse",
    "Client",
    "ConfigError",
    "Conflict",
    "Denied",
    "Expired",
    "Forbidden",
    "KubeError",
    "NotFound",
    "NotServed",
    "ServerError",
    "TimedOut",
    "TransportError",
    "Unauthorized",
    "Unreachable",
    "api_client",
]
