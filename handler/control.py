"""The handler's store writes, made by a controller for it: nodes hold no etcd credentials.

Every call goes to one controller replica (any replica serves them) and moves on to the next
when that one does not answer. A controller that answers UNAVAILABLE cannot reach the store;
both cases raise corral.store.Unavailable, which the heartbeat treats as it always treated a
store it could not reach (handler/node.py: fence, unless every controller says the store is
down for it too)."""
from __future__ import annotations

import logging
import threading

import grpc

from corral.store import StoreError, Unavailable
from corral.v1 import handler_pb2, handler_pb2_grpc, node_pb2

log = logging.getLogger(__name__)

#: Notice a controller that vanished without closing its connections (power loss, partition).
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class Refused(StoreError):
    """A controller refused the request (the node's identity, or what it asked)."""


class NodeControl:
    """HandlerService calls for node ``node_name``, over one channel per controller (kept open:
    the heartbeat, the agent's threads and the lock calls share them)."""

    def __init__(self, servers: list[str], *, node_name: str,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.servers = servers
        self.node_name = node_name
        self.credentials = credentials
        self._stubs: dict[str, handler_pb2_grpc.HandlerServiceStub] = {}
        self._channels: list[grpc.Channel] = []
        self._preferred = 0
        self._lock = threading.Lock()

    def _stub(self, address: str) -> handler_pb2_grpc.HandlerServiceStub:
        with self._lock:
            if address not in self._stubs:
                channel = (grpc.secure_channel(address, self.credentials, options=KEEPALIVE_OPTIONS)
                           if self.credentials is not None
                           else grpc.insecure_channel(address, options=KEEPALIVE_OPTIONS))
                self._channels.append(channel)
                self._stubs[address] = handler_pb2_grpc.HandlerServiceStub(channel)
            return self._stubs[address]

    def call(self, method: str, request, *, timeout: float = 5.0):
        """The first answer of the controllers, the preferred one first."""
        errors = []
        start = self._preferred
        for offset in range(len(self.servers)):
            index = (start + offset) % len(self.servers)
            address = self.servers[index]
            try:
                response = getattr(self._stub(address), method)(request, timeout=timeout)
                self._preferred = index
                return response
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise Refused(f"{method}: {exc.code().name}: {exc.details()}") from None
                errors.append(f"{address}: {exc.details()}")
        raise Unavailable(f"{method}: no controller made the write ({'; '.join(errors)})")

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    # -- what handler/node.py and handler/fencing.py need ---------------------------------------
    def register(self, record: node_pb2.Node) -> node_pb2.Node:
        status = record.status
        return self.call("RegisterNode", handler_pb2.RegisterNodeRequest(
            node_name=self.node_name, labels=record.metadata.labels, capacity=status.capacity,
            cpu_allocation_ratio=status.cpu_allocation_ratio or 1, hypervisor=status.hypervisor,
            address=status.address, post_copy_ready=status.post_copy_ready,
            post_copy_message=status.post_copy_message)).node

    def grant_lease(self, ttl: int) -> int:
        return self.call("GrantNodeLease", handler_pb2.GrantNodeLeaseRequest(
            node_name=self.node_name, ttl_seconds=ttl)).lease_id

    def renew_lease(self, lease_id: int, *, timeout: float) -> int:
        """Seconds the lease lives on; 0 when it expired (or is no longer the node's)."""
        return self.call("RenewNodeLease", handler_pb2.RenewNodeLeaseRequest(
            node_name=self.node_name, lease_id=lease_id), timeout=timeout).ttl_seconds

    def acquire_lock(self, vm_name: str, instance_uid: str, lease_id: int) -> tuple[bool, str]:
        answer = self.call("AcquireInstanceLock", handler_pb2.AcquireInstanceLockRequest(
            node_name=self.node_name, vm_name=vm_name, instance_uid=instance_uid, lease_id=lease_id))
        return answer.acquired, answer.holder

    def reclaim_lock(self, vm_name: str, instance_uid: str, lease_id: int) -> bool:
        return self.call("ReclaimInstanceLock", handler_pb2.ReclaimInstanceLockRequest(
            node_name=self.node_name, vm_name=vm_name, instance_uid=instance_uid, lease_id=lease_id)).reclaimed

    def release_lock(self, vm_name: str, instance_uid: str) -> None:
        self.call("ReleaseInstanceLock", handler_pb2.ReleaseInstanceLockRequest(
            node_name=self.node_name, vm_name=vm_name, instance_uid=instance_uid))


class ControllerStubs:
    """Stubs on a channel to one of the controllers; rotate() moves to the next address."""

    def __init__(self, servers: list[str], *, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.servers = servers
        self.credentials = credentials  # TLS (the node's certificate) when set, else plaintext
        self.index = -1
        self.channel: grpc.Channel | None = None
        self.rotate()

    def rotate(self, steps: int = 1) -> None:
        old = self.channel
        self.index = (self.index + steps) % len(self.servers)
        address = self.servers[self.index]
        self.channel = (grpc.secure_channel(address, self.credentials, options=KEEPALIVE_OPTIONS)
                        if self.credentials is not None
                        else grpc.insecure_channel(address, options=KEEPALIVE_OPTIONS))
        self.handler = handler_pb2_grpc.HandlerServiceStub(self.channel)
        if old is not None:
            old.close()

    @property
    def address(self) -> str:
        return self.servers[self.index]
