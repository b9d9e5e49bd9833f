"""Who a gRPC caller is, from its client certificate: what the controller (checking handlers
and users) and the handler (checking controllers) must read the same way.

A node certificate names its node: subject CN ``node:<name>`` and/or a SAN URI
``corral://node/<name>`` (when both are present they must agree); any other certificate is a
user, whose role is a SAN URI ``corral://role/<role>``: ``admin`` (everything a user may do),
``controller`` (a controller replica dialing handlers: consoles, pause, reset) or ``viewer``
(read only). A user certificate without a role is a viewer: a certificate grants no write
unless it says so. On a plaintext connection there is no identity.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

NODE_CN_PREFIX = "node:"
NODE_URI_PREFIX = "corral://node/"
ROLE_URI_PREFIX = "corral://role/"
#: A node's serving name: controllers dialing node NAME's handler accept only a certificate
#: with the DNS SAN ``NAME.node.corral`` (gRPC checks it in the handshake), whatever address
#: the node record says.
NODE_DNS_SUFFIX = ".node.corral"


def node_server_name(node_name: str) -> str:
    return f"{node_name}{NODE_DNS_SUFFIX}"
ADMIN, CONTROLLER, VIEWER = "admin", "controller", "viewer"
ROLES = frozenset({ADMIN, CONTROLLER, VIEWER})

AuthContext = Mapping[str, Sequence[bytes]]


@dataclasses.dataclass(frozen=True)
class Identity:
    kind: str  # "node", "user", or "invalid" (node names or roles that disagree, an unknown role)
    name: str  # the node name, or the certificate's CN for a user
    role: str = ""  # a user's: ADMIN, CONTROLLER or VIEWER

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}" + (f" ({self.role})" if self.role else "")


def _texts(auth_context: AuthContext, key: str) -> list[str]:
    return [value.decode(errors="replace") for value in auth_context.get(key, ())]


def identity_of(auth_context: AuthContext) -> Identity | None:
    """The caller's identity from gRPC's auth context; None on a plaintext connection."""
    if b"ssl" not in auth_context.get("transport_security_type", ()):
        return None
    common_names = _texts(auth_context, "x509_common_name")
    sans = _texts(auth_context, "x509_subject_alternative_name")
    nodes = {cn[len(NODE_CN_PREFIX):] for cn in common_names if cn.startswith(NODE_CN_PREFIX)}
    nodes |= {san[len(NODE_URI_PREFIX):] for san in sans if san.startswith(NODE_URI_PREFIX)}
    if len(nodes) > 1 or "" in nodes:
        return Identity("invalid", ", ".join(sorted(nodes)))
    if nodes:
        return Identity("node", nodes.pop())
    name = common_names[0] if common_names else (sans[0] if sans else "")
    roles = {san[len(ROLE_URI_PREFIX):] for san in sans if san.startswith(ROLE_URI_PREFIX)}
    if len(roles) > 1 or not roles <= ROLES:
        return Identity("invalid", f"{name}: roles {', '.join(sorted(roles))}")
    return Identity("user", name, roles.pop() if roles else VIEWER)
