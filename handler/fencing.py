"""The handler's half of node self-fencing, and the per-VM instance locks.

Fencing: after each renewal of the node lease the handler writes a deadline (CLOCK_MONOTONIC
seconds) into a file every launcher of the node watches (launcher/fencing.py): the moment the
renewal was sent plus the lease TTL, less a safety margin. etcd cannot expire the lease before
that moment, so by the time the controller sees the node NotReady its guests are already
being stopped, and the controller waits a margin on top before starting them elsewhere.

One exception keeps guests alive through a store outage: while the lease cannot be renewed,
the deadline is pushed OUTAGE_GRACE_SECONDS ahead only if every configured controller answers
that it cannot reach the store either. No leader can then restart anything (restarting needs
a store write), and the controllers' node-loss margin is longer than the grace.

Instance locks: before a run of a VM starts, the handler has a controller take
/corral/instance-locks/NAME bound to its node lease. A second run cannot start on any node while the lock is held,
whatever the controller believes, and the lock goes when the node's lease goes.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import grpc

from corral.store import StoreError
from corral.v1 import handler_pb2, handler_pb2_grpc, vm_pb2
from handler.control import NodeControl

log = logging.getLogger(__name__)

FENCE_SAFETY_SECONDS = 2.0  # destroying a guest takes up to ~2 s (measured under TCG)
OUTAGE_GRACE_SECONDS = 3.0


class WatchdogDevice:
    """A Linux watchdog device (/dev/watchdog, e.g. softdog or a board's): the backstop for
    when the launchers themselves are gone. Petted with every renewed deadline; if the handler
    dies or stops renewing, the device resets the node, and with it every guest, before the
    controller's node-loss margin ends. Its timeout is set to the node lease TTL."""

    WDIOC_SETTIMEOUT = 0xC0045706

    def __init__(self, path: str, *, timeout_seconds: int) -> None:
        self.fd = os.open(path, os.O_WRONLY)
        try:
            import fcntl
            import struct
            fcntl.ioctl(self.fd, self.WDIOC_SETTIMEOUT, struct.pack("i", timeout_seconds))
        except OSError:
            log.info("watchdog %s: timeout not settable here; keep it at most the lease TTL", path)

    def pet(self) -> None:
        os.write(self.fd, b"\0")

    def disarm(self) -> None:
        """Magic close: only when this node runs no guests."""
        os.write(self.fd, b"V")
        os.close(self.fd)


class FenceDeadline:
    """The deadline file launchers obey (and the watchdog device, when there is one)."""

    def __init__(self, path: str, *, watchdog: WatchdogDevice | None = None) -> None:
        self.path = path
        self.deadline = 0.0
        self.watchdog = watchdog

    def set(self, deadline: float) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="ascii") as handle:
            handle.write(f"{deadline:.3f}\n")
        os.chmod(tmp, 0o644)  # launchers run as other users
        os.replace(tmp, self.path)
        self.deadline = deadline
        if self.watchdog is not None and deadline > time.monotonic():
            self.watchdog.pet()

    def renewed(self, *, sent: float, ttl: float) -> None:
        self.set(sent + ttl - FENCE_SAFETY_SECONDS)

    def extend_for_outage(self) -> None:
        self.set(max(self.deadline, time.monotonic() + OUTAGE_GRACE_SECONDS))

    def valid(self) -> bool:
        return time.monotonic() < self.deadline


def store_down_everywhere(servers: list[str], *, node_name: str, timeout: float = 0.7,
                          credentials: grpc.ChannelCredentials | None = None) -> bool:
    """True only if every controller answers that the store is unreachable for it too."""
    for address in servers:
        try:
            with (grpc.secure_channel(address, credentials) if credentials is not None
                  else grpc.insecure_channel(address)) as channel:
                answer = handler_pb2_grpc.HandlerServiceStub(channel).GetStoreHealth(
                    handler_pb2.GetStoreHealthRequest(node_name=node_name), timeout=timeout)
        except grpc.RpcError:
            return False  # unknown: this node may be the one cut off
        if answer.store_reachable:
            return False
    return True


class InstanceLocks:
    """Locks held by this node's lease, one per running VM (by VM name), taken and released by
    a controller for the node (handler/control.py)."""

    def __init__(self, *, control: NodeControl, node_name: str, lease_id: Callable[[], int | None]) -> None:
        self.control = control
        self.node_name = node_name
        self.lease_id = lease_id

    def holds_with_assignment(self, vm: vm_pb2.VirtualMachine) -> bool:
        """The leader made the run's lock in the assignment's transaction, bound to the lease
        this node holds now: it exists (it goes only with that lease, whose fencing deadline the
        caller has checked, or by this node's own release), so no call is needed."""
        lease = self.lease_id()
        return bool(lease) and vm.status.instance_lock_lease == lease

    def acquire(self, vm_name: str, instance_uid: str) -> bool:
        """Take (or keep, re-binding to the current lease) the lock; False if another holds it."""
        lease = self.lease_id()
        if not lease:
            return False
        try:
            acquired, holder = self.control.acquire_lock(vm_name, instance_uid, lease)
        except StoreError as exc:
            log.warning("vm %s: cannot take the instance lock: %s", vm_name, exc)
            return False
        if not acquired:
            log.warning("vm %s: run %s waits: the instance lock is held by %s", vm_name, instance_uid, holder or "?")
        return acquired

    def reclaim(self, vm_name: str, instance_uid: str) -> bool:
        """After the node's lease was lost: take the lock again for a run that is still this
        node's, atomically with checking that the VM did not change meanwhile. The leader marks
        a run lost only while its lock is absent, so exactly one of the two can happen."""
        lease = self.lease_id()
        if not lease:
            return False
        try:
            return self.control.reclaim_lock(vm_name, instance_uid, lease)
        except StoreError as exc:
            log.warning("vm %s: cannot reclaim the instance lock: %s", vm_name, exc)
            return False

    def release(self, vm_name: str, instance_uid: str) -> None:
        try:
            self.control.release_lock(vm_name, instance_uid)
        except StoreError as exc:
            log.warning("vm %s: cannot release the instance lock (it goes with the node lease): %s", vm_name, exc)
