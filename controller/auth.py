"""Who is calling: identities from client certificates, and what each may do.

Convention (mutual TLS; the controller's tls_client_ca_file signs every client certificate):

- a **node** certificate names its node: subject CN ``node:<name>`` and/or a SAN URI
  ``corral://node/<name>`` (when both are present they must agree). It may use only the
  HandlerService, and only for its own node: every call's ``node_name`` must be ``<name>``.
  A node credential therefore cannot read or change other nodes' VMs, nor create, update or
  delete any VM (KubeVirt CVE-2023-26484 was a node credential that could change every node).
- any other certificate is a **user** (administrators, API clients, the CLI): CN ``admin``,
  ``ci-bot``, ...  Users may use the public services (VirtualMachineService, NodeService) but not
  the HandlerService.
- health and reflection are open to every certificate the CA signed.

On a plaintext server there is no peer certificate and no check (local use only: the
controller warns loudly at start).
"""
from __future__ import annotations

import grpc

from controller.errors import RequestError
from corral.identity import NODE_CN_PREFIX, NODE_URI_PREFIX, AuthContext, Identity, identity_of  # noqa: F401

HANDLER_SERVICE = "corral.v1.HandlerService"
USER_SERVICES = ("corral.v1.VirtualMachineService", "corral.v1.NodeService", "corral.v1.MigrationService")


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
        return f"client certificate names several nodes ({identity.name}): refused"
    return (f"{identity} is not a node certificate: the HandlerService needs a certificate with "
            f"CN {NODE_CN_PREFIX}{node_name} or SAN URI {NODE_URI_PREFIX}{node_name}")


def service_refusal(auth_context: AuthContext, method: str) -> str | None:
    """Why this caller may not call ``method`` (/package.Service/Method) at all (None: may)."""
    identity = identity_of(auth_context)
    if identity is None:
        return None
    service = method.lstrip("/").split("/", 1)[0]
    if identity.kind == "invalid":
        return f"client certificate names several nodes ({identity.name}): refused"
    if service in USER_SERVICES and identity.kind == "node":
        return (f"{identity} may only use {HANDLER_SERVICE} for its own node, not {service}: "
                f"use a user certificate for the API")
    if service == HANDLER_SERVICE and identity.kind != "node":
        return f"{identity} is not a node certificate: {HANDLER_SERVICE} is for node handlers"
    return None


def require_node(context: grpc.ServicerContext, node_name: str) -> None:
    """Raise RequestError(PERMISSION_DENIED) unless the peer may act for ``node_name``
    (for servicer methods wrapped in controller.errors.grpc_errors)."""
    refusal = node_refusal(context.auth_context(), node_name)
    if refusal:
        raise RequestError(grpc.StatusCode.PERMISSION_DENIED, refusal)


class AuthorizationInterceptor(grpc.ServerInterceptor):
    """Refuses, with PERMISSION_DENIED, calls to services the peer's identity may not use
    (service_refusal); per-node checks are in the HandlerService itself (require_node)."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def guard(behavior):
            def guarded(request_or_iterator, context):
                refusal = service_refusal(context.auth_context(), method)
                if refusal:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
                return behavior(request_or_iterator, context)
            return guarded

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                guard(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                guard(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                guard(handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            guard(handler.stream_stream), handler.request_deserializer, handler.response_serializer)
