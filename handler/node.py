"""The node's record and its heartbeat: a key bound to an etcd lease, both written by a
controller for the node (handler/control.py). While the key exists the node is Ready; if the
handler stops renewing, etcd removes it by itself."""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable

from corral import status as vm_status
from corral.store import StoreError
from corral.v1 import node_pb2
from handler.control import NodeControl
from handler.fencing import FenceDeadline

log = logging.getLogger(__name__)


def host_memory_mib() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def node_record(*, name: str, labels: dict[str, str], vcpus: int, memory_mib: int, hypervisor: str,
                address: str = "", cpu_allocation_ratio: int = 1, post_copy_ready: bool = False,
                post_copy_message: str = "") -> node_pb2.Node:
    """``address``: where the handler's NodeAgentService is reached (handler/server.py)."""
    node = node_pb2.Node()
    node.metadata.name = name
    node.metadata.labels.update(labels)
    node.metadata.labels.setdefault("corral.dev/hostname", name)
    node.status.capacity.vcpus = vcpus or (os.cpu_count() or 1)
    node.status.capacity.memory_mib = memory_mib or max(host_memory_mib() - 1024, 256)
    node.status.cpu_allocation_ratio = cpu_allocation_ratio
    node.status.allocatable.vcpus = node.status.capacity.vcpus * cpu_allocation_ratio
    node.status.allocatable.memory_mib = node.status.capacity.memory_mib
    node.status.hypervisor = hypervisor
    node.status.address = address
    node.status.post_copy_ready = post_copy_ready
    node.status.post_copy_message = post_copy_message
    node.status.registered_time.CopyFrom(vm_status.now())
    return node


class Heartbeat:
    """Keeps the node's lease key alive and, with it, the fencing deadline its launchers obey.

    A lease that expired means the controller may restart this node's VMs elsewhere: a guest
    is kept only if its run's instance lock is reclaimed first (see handler/fencing.py)."""

    def __init__(self, *, control: NodeControl, node_name: str, ttl_seconds: int, deadline: FenceDeadline,
                 outage_confirmed: Callable[[], bool], reclaim_guests: Callable[[], None]) -> None:
        self.control = control
        self.ttl = ttl_seconds
        self.node_name = node_name
        self.deadline = deadline
        self.outage_confirmed = outage_confirmed
        self.reclaim_guests = reclaim_guests
        self.lease_id: int | None = None

    def _grant(self, *, sent: float, reclaim: bool = False) -> None:
        """Take a new lease; when an old one was lost, reclaim this node's runs under it before
        the node turns Ready again and the deadline moves on."""
        self.lease_id = None
        lease_id = self.control.grant_lease(self.ttl)  # the node's lease key now names it: Ready
        self.lease_id = lease_id
        if reclaim:
            self.reclaim_guests()
        self.deadline.renewed(sent=sent, ttl=self.ttl)
        log.info("node %s heartbeat lease %x (ttl %ds)", self.node_name, lease_id, self.ttl)

    def beat_once(self) -> None:
        sent = time.monotonic()
        if self.lease_id is None:
            self._grant(sent=sent)
            return
        if self.control.renew_lease(self.lease_id, timeout=min(self.ttl / 3, 2.0)) > 0:
            self.deadline.renewed(sent=sent, ttl=self.ttl)
            return
        # The lease expired (a long store outage, or this node was cut off or hung). Its guests
        # live on only until the current deadline. Take a new lease, then keep each guest only
        # if its instance lock can be reclaimed (the leader has not declared the run lost).
        log.warning("node %s lease expired: reclaiming this node's runs under a new lease", self.node_name)
        self._grant(sent=sent, reclaim=True)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.beat_once()
                delay = self.ttl / 4
            except StoreError as exc:
                if self.outage_confirmed():
                    self.deadline.extend_for_outage()
                    log.warning("node %s cannot renew its lease, but no controller reaches the store "
                                "either: guests keep running (%s)", self.node_name, exc)
                else:
                    left = self.deadline.deadline - time.monotonic()
                    log.warning("node %s cannot renew its lease (%s); guests are fenced in %.1fs",
                                self.node_name, exc, max(left, 0.0))
                delay = 0.5
            except Exception:
                log.exception("heartbeat failed")
                delay = 0.5
            stop.wait(delay * (0.9 + random.random() * 0.2))
