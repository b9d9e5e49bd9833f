"""The node's record in the store and its heartbeat: a key bound to an etcd lease. While the
key exists the node is Ready; if the handler stops renewing, etcd removes it by itself."""
from __future__ import annotations

import logging
import os
import random
import threading

from pyetcd import transactions as T

from corral import status as vm_status
from corral.resources import NODE_LEASES_FOLDER, NODES
from corral.store import NotFound, Store, StoreError
from corral.v1 import node_pb2

log = logging.getLogger(__name__)


def host_memory_mib() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def node_record(*, name: str, labels: dict[str, str], vcpus: int, memory_mib: int, hypervisor: str) -> node_pb2.Node:
    node = node_pb2.Node()
    node.metadata.name = name
    node.metadata.labels.update(labels)
    node.metadata.labels.setdefault("corral.dev/hostname", name)
    node.status.capacity.vcpus = vcpus or (os.cpu_count() or 1)
    node.status.capacity.memory_mib = memory_mib or max(host_memory_mib() - 1024, 256)
    node.status.hypervisor = hypervisor
    node.status.registered_time.CopyFrom(vm_status.now())
    return node


def register(store: Store, node: node_pb2.Node) -> node_pb2.Node:
    """Write the node's record, keeping what operators set on it (cordon)."""
    try:
        existing = store.get(NODES, node.metadata.name)
        node.spec.CopyFrom(existing.spec)
        node.metadata.uid = existing.metadata.uid
    except NotFound:
        import uuid
        node.metadata.uid = str(uuid.uuid4())
        node.metadata.create_time.CopyFrom(vm_status.now())
    return store.put(NODES, node)


class Heartbeat:
    """Keeps the node's lease key alive; recreates it after an expiry or an etcd outage."""

    def __init__(self, *, store: Store, node_name: str, ttl_seconds: int) -> None:
        self.store = store
        self.ttl = ttl_seconds
        self.key = store.raw_key(NODE_LEASES_FOLDER + node_name)
        self.node_name = node_name
        self.lease_id: int | None = None
        self.beating = threading.Event()

    def _grant(self) -> None:
        lease_id = self.store.grant_lease(self.ttl)
        self.store.txn([], [T.Put(self.key, self.node_name.encode(), lease=lease_id)])
        self.lease_id = lease_id
        self.beating.set()
        log.info("node %s heartbeat lease %x (ttl %ds)", self.node_name, lease_id, self.ttl)

    def beat_once(self) -> None:
        if self.lease_id is None:
            self._grant()
            return
        if self.store.refresh_lease(self.lease_id, timeout=self.ttl / 3) <= 0:
            log.warning("node %s heartbeat lease expired: taking a new one", self.node_name)
            self.lease_id = None
            self._grant()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.beat_once()
                delay = self.ttl / 3
            except (StoreError, Exception) as exc:  # etcd down: keep trying, quickly
                log.warning("node %s heartbeat failed: %r", self.node_name, exc)
                delay = 0.5
            stop.wait(delay * (0.9 + random.random() * 0.2))

    def release(self) -> None:
        """On a clean exit: the node turns NotReady at once instead of after the TTL."""
        if self.lease_id is not None:
            try:
                self.store.revoke_lease(self.lease_id, timeout=1.0)
            except StoreError:
                pass
