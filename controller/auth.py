"""Who is calling: identities from client certificates, and what each may do.

Convention (mutual TLS; the controller's tls_client_ca_file signs every client certificate):

- a **node** certificate names its node: subject CN ``node:<name>`` and/or a SAN URI
  ``corral://node/<name>`` (when both are present they must agree). It may use only the
  HandlerService, and only for its own node: every call's ``node_name`` must be ``<name>``.
  A node credential therefore cannot read or change other nodes' VMs, nor create, update or
  delete any VM (KubeVirt CVE-2023-26484 was a node credential that could change every node).
- any other certificate is a **user** (administrators, API clients, the CLI): CN ``alice``,
  ``ci-bot``, ...  Users may use the public services (VirtualMachineService, NodeService,
  MigrationService) but not the HandlerService; what they may do there is their role, a SAN
  URI ``corral://role/admin`` (everything) or ``corral://role/viewer`` (Get, List and Watch
  only). A user certificate without a role is a viewer.
- health and reflection are open to every certificate the CA signed.

On a plaintext server there is no peer certificate and no check (local use only: the
controller warns loudly at start).
"""
from __future__ import annotations

import grpc

from controller.errors import RequestError
from corral.identity import (ADMIN, NODE_CN_PREFIX, NODE_URI_PREFIX, ROLE_URI_PREFIX, AuthContext, Identity,  # noqa: F401
                             identity_of)

HANDLER_SERVICE = "corral.v1.HandlerService"
#: Open to every certificate the CA signed.
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")
USER_SERVICES = ("corral.v1.VirtualMachineService", "corral.v1.NodeService", "corral.v1.MigrationService",
                 "corral.v1.VirtualMachinePoolService", "corral.v1.InstanceTypeService",
                 "corral.v1.PreferenceService", "corral.v1.VncService", "corral.v1.VirtualMachineSnapshotService")


def node_refusal(auth_context: AuthContext, node_name: str) -> str | None:
    """Why this caller may not act for handler ``node_name`` (None: it may)."""
    identity = identity_of(auth_context)
    if identity is None:
        return None
    if identity.kind == "node" and identity.name == node_name:
        return None
    if identity.kind == "node":
        return (f"certificate of node {identity.name!r} may act only for that node, "
                f"not for node {node_name!r}")
    if identity.kind == "invalid":
        return f"client certificate names several nodes or roles ({identity.name}): refused"
    return (f"{identity} is not a node certificate: the HandlerService needs a certificate with "
            f"CN {NODE_CN_PREFIX}{node_name} or SAN URI {NODE_URI_PREFIX}{node_name}")


def read_only(method: str) -> bool:
    """Get, List and Watch calls (what a viewer may make): /package.Service/Method."""
    return method.rsplit("/", 1)[-1].startswith(("Get", "List", "Watch"))


def service_refusal(auth_context: AuthContext, method: str) -> str | None:
    """Why this caller may not call ``method`` (/package.Service/Method) at all (None: may)."""
    identity = identity_of(auth_context)
    if identity is None:
        return None
    service = method.lstrip("/").split("/", 1)[0]
    if identity.kind == "invalid":
        return f"client certificate names several nodes or roles ({identity.name}): refused"
    if service in USER_SERVICES and identity.kind == "user" and identity.role != ADMIN and not read_only(method):
        return (f"{identity} may only read (Get, List, Watch), not call {method.rsplit('/', 1)[-1]}: "
                f"that needs a user certificate with SAN URI {ROLE_URI_PREFIX}{ADMIN}")
    if service in USER_SERVICES and identity.kind == "node":
        return (f"{identity} may only use {HANDLER_SERVICE} for its own node, not {service}: "
                f"use a user certificate for the API")
    if service == HANDLER_SERVICE and identity.kind != "node":
        return f"{identity} is not a node certificate: {HANDLER_SERVICE} is for node handlers"
    if service not in USER_SERVICES + (HANDLER_SERVICE,) + OPEN_SERVICES:
        return f"unknown service {service}"  # default deny: a new service must be placed above
    return None


def require_node(context: grpc.ServicerContext, node_name: str) -> None:
    """Raise RequestError(PERMISSION_DENIED) unless the peer may act for ``node_name``
    (for servicer methods wrapped in controller.errors.grpc_errors)."""
    refusal = node_refusal(context.auth_context(), node_name)
    if refusal:
        raise RequestError(grpc.StatusCode.PERMISSION_DENIED, refusal)
