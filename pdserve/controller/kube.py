"""The Kubernetes edge: each pool is a Deployment; read its status, patch its scale.

The controller only ever changes `spec.replicas`, through the scale subresource
(`patch_namespaced_deployment_scale`; RBAC: get on deployments, patch on deployments/scale).
A scale-down relies on the worker pods' preStop drain: Kubernetes picks the pods to delete,
and each one stops taking routes, finishes its streams and releases its KV leases within its
terminationGracePeriodSeconds before it exits; meanwhile the pool reads as pending (a
terminating pod, or more pods than asked), so the controller does not act on it again.
"""

from __future__ import annotations

from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import OpenApiException
from urllib3.exceptions import HTTPError

from kv_transfer.pages import Role
from pdserve.controller.pools import POOLS, ByPool, PoolStatus

# What a call through the kubernetes client raises when it fails: an API status, or no
# connection (urllib3, under it).
_API_ERRORS = (OpenApiException, HTTPError, OSError)


class KubeError(Exception):
    """The Kubernetes API could not be read or written; names the Deployment."""


class AppsApi(Protocol):
    """The two calls of kubernetes.client.AppsV1Api the controller makes."""

    def read_namespaced_deployment(self, name: str, namespace: str) -> Any:
        """The V1Deployment; raises ApiException (404: no such Deployment)."""

    def patch_namespaced_deployment_scale(self, name: str, namespace: str, body: Any) -> Any:
        """Sets the Deployment's spec.replicas from `body` ({"spec": {"replicas": n}})."""


def connect_apps_api() -> AppsApi:
    """An AppsV1Api with the pod's service account (in-cluster), else the kubeconfig's
    current context. Raises kubernetes.config.ConfigException when neither is there."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.AppsV1Api()


def pool_status(deployment: Any) -> PoolStatus:
    """The PoolStatus of a V1Deployment (fields a fresh status leaves out read as 0)."""
    spec, status = deployment.spec, deployment.status
    generation = deployment.metadata.generation or 0
    return PoolStatus(
        replicas=spec.replicas if spec.replicas is not None else 1,  # Kubernetes' default
        pod_replicas=status.replicas or 0,
        ready_replicas=status.ready_replicas or 0,
        updated_replicas=status.updated_replicas or 0,
        unavailable_replicas=status.unavailable_replicas or 0,
        terminating_replicas=getattr(status, "terminating_replicas", None) or 0,
        is_observed=(status.observed_generation or 0) >= generation,
    )


class DeploymentPools:
    """Both pools' Deployments in one namespace; `scale` is the only write."""

    def __init__(self, api: AppsApi, namespace: str, names: ByPool[str]) -> None:
        self._api = api
        self._namespace = namespace
        self._names = names

    def read(self) -> ByPool[PoolStatus]:
        """Both pools' status now; KubeError naming the Deployment that could not be read."""
        return ByPool(*(self._read(pool) for pool in POOLS))

    def scale(self, pool: Role, replicas: int) -> None:
        """Sets the pool's Deployment to `replicas` (≥ 1: a pool is never scaled to 0)."""
        if replicas < 1:
            raise ValueError(f"replicas: a pool is never scaled below 1; got {replicas}")
        name = self._names.of(pool)
        try:
            self._api.patch_namespaced_deployment_scale(
                name, self._namespace, {"spec": {"replicas": replicas}}
            )
        except _API_ERRORS as exc:
            raise KubeError(f"deployment {self._namespace}/{name}: scale failed: {exc}") from exc

    def _read(self, pool: Role) -> PoolStatus:
        name = self._names.of(pool)
        try:
            return pool_status(self._api.read_namespaced_deployment(name, self._namespace))
        except _API_ERRORS as exc:
            raise KubeError(f"deployment {self._namespace}/{name}: read failed: {exc}") from exc
