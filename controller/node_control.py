"""The HandlerService calls through which nodes get their store writes made: their record,
their heartbeat lease and their runs' instance locks. Nodes hold no etcd credentials (the
controller alone owns etcd), so each call is checked against the caller's node identity and
touches only that node's keys: a compromised node cannot register, keep alive, or take locks
for another (the class of KubeVirt's CVE-2023-26484).

The fencing properties stay those of handler/fencing.py: a handler computes its deadline from
the moment it SENT a renewal (etcd can only renew later than that), a lock is bound to the
node's lease and goes with it, and a reclaim is one transaction that checks the run is still
the node's while its lock is absent."""
from __future__ import annotations

import asyncio
import logging
import re
import uuid

import grpc
from pyetcd import transactions as T
from tenacity import retry, retry_if_exception_type, stop_after_attempt

from controller import auth
from controller.errors import RequestError, grpc_errors
from controller.lease_renewer import LeaseRenewer
from controller.watch_cache import WatchCache
from corral import status as vm_status
from corral.resources import INSTANCE_LOCKS_FOLDER, NODE_LEASES_FOLDER, NODES, VMS, instance_lock_value
from corral.store import Conflict, NotFound, Store
from corral.v1 import handler_pb2, node_pb2, vm_pb2
from corral.validation import ValidationError, label_problems, name_problem

log = logging.getLogger(__name__)

#: Labels a node may not give itself: they are the system's (and operators' placement relies
#: on them), except its own hostname label.
RESERVED_LABEL_PREFIX = "corral.dev/"
HOSTNAME_LABEL = "corral.dev/hostname"
MAX_NODE_LABELS = 64
MAX_VCPUS = 4096
MAX_MEMORY_MIB = 64 * 1024 * 1024  # 64 TiB
MAX_ALLOCATION_RATIO = 100
HYPERVISORS = ("kvm", "qemu", "test")
ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253}):[0-9]{1,5}\Z")
MIN_TTL, MAX_TTL = 3, 300
#: A node's own word on post-copy, kept to this many characters.
MAX_POST_COPY_MESSAGE = 500


def registration_problems(request: handler_pb2.RegisterNodeRequest) -> list[str]:
    """What a node may say about itself, bounded (it lands in the scheduler's arithmetic)."""
    problems = label_problems(request.labels, "labels")
    if len(request.labels) > MAX_NODE_LABELS:
        problems.append(f"at most {MAX_NODE_LABELS} labels, not {len(request.labels)}")
    for key, value in request.labels.items():
        if key == HOSTNAME_LABEL:
            if value != request.node_name:
                problems.append(f"label {HOSTNAME_LABEL} must be the node's own name {request.node_name!r}")
        elif key.startswith(RESERVED_LABEL_PREFIX) and not (key == "corral.dev/simulated" and
                                                             request.hypervisor == "test"):
            problems.append(f"label {key!r} is under {RESERVED_LABEL_PREFIX}, which nodes may not set")
    if not 1 <= request.capacity.vcpus <= MAX_VCPUS:
        problems.append(f"capacity.vcpus must be 1 to {MAX_VCPUS}, not {request.capacity.vcpus}")
    if not 1 <= request.capacity.memory_mib <= MAX_MEMORY_MIB:
        problems.append(f"capacity.memory_mib must be 1 to {MAX_MEMORY_MIB}, not {request.capacity.memory_mib}")
    if not 1 <= request.cpu_allocation_ratio <= MAX_ALLOCATION_RATIO:
        problems.append(f"cpu_allocation_ratio must be 1 to {MAX_ALLOCATION_RATIO}")
    if request.hypervisor not in HYPERVISORS:
        problems.append(f"hypervisor must be one of {', '.join(HYPERVISORS)}")
    if request.address and (not ADDRESS.match(request.address) or int(request.address.rsplit(":", 1)[1]) > 65535):
        problems.append(f"address {request.address[:80]!r} is not HOST:PORT")
    return problems


def node_from(request: handler_pb2.RegisterNodeRequest, existing: node_pb2.Node | None) -> node_pb2.Node:
    """The record as the node reports it, keeping what operators set (spec) and its uid."""
    node = node_pb2.Node()
    node.metadata.name = request.node_name
    node.metadata.labels.update(request.labels)
    node.metadata.labels[HOSTNAME_LABEL] = request.node_name
    node.status.capacity.CopyFrom(request.capacity)
    node.status.cpu_allocation_ratio = request.cpu_allocation_ratio
    node.status.allocatable.vcpus = request.capacity.vcpus * request.cpu_allocation_ratio
    node.status.allocatable.memory_mib = request.capacity.memory_mib
    node.status.hypervisor = request.hypervisor
    node.status.address = request.address
    node.status.post_copy_ready = request.post_copy_ready
    node.status.post_copy_message = request.post_copy_message[:MAX_POST_COPY_MESSAGE]
    node.status.registered_time.CopyFrom(vm_status.now())
    if existing is not None:
        node.spec.CopyFrom(existing.spec)
        node.metadata.uid = existing.metadata.uid
        node.metadata.create_time.CopyFrom(existing.metadata.create_time)
        node.metadata.resource_version = existing.metadata.resource_version
    else:
        node.metadata.uid = str(uuid.uuid4())
        node.metadata.create_time.CopyFrom(vm_status.now())
    return node


def runs_on(vm: vm_pb2.VirtualMachine, node: str, instance_uid: str) -> bool:
    """The run is the VM's on ``node``, or the one a live migration makes there."""
    target = vm.status.migration_target
    return bool(instance_uid) and ((vm.status.node_name == node and vm.status.instance_uid == instance_uid)
                                   or (target.node_name == node and target.instance_uid == instance_uid))


class NodeControlMethods:
    """Mixed into controller.handler_api.HandlerService (needs ``store`` and ``cache``)."""

    store: Store
    cache: WatchCache
    renewer: LeaseRenewer

    def _check(self, context, node: str) -> None:
        auth.require_node(context, node)
        problem = name_problem(node, "node_name")
        if problem:
            raise ValidationError([problem])

    def _lease_key(self, node: str) -> bytes:
        return self.store.raw_key(NODE_LEASES_FOLDER + node)

    def _current_lease(self, node: str, lease_id: int) -> bool:
        """Whether ``lease_id`` is the one the node's lease key is bound to: a node must never
        keep another's lease, or a stale one of its own, alive. The watch cache answers yes
        (a lease id is never reused, and the key names only the node's own leases); anything
        else is asked of etcd (the cache may not have seen a lease just granted)."""
        if self.cache.node_leases.get(node) == lease_id:
            return True
        kvs = self.store.range(self._lease_key(node)).kvs
        return bool(kvs) and kvs[0].lease == lease_id

    @grpc_errors
    @retry(retry=retry_if_exception_type(Conflict), stop=stop_after_attempt(8), reraise=True)
    def RegisterNode(self, request, context):
        self._check(context, request.node_name)
        problems = registration_problems(request)
        if problems:
            raise ValidationError(problems)
        try:
            existing = self.store.get(NODES, request.node_name)
        except NotFound:
            existing = None
        node = node_from(request, existing)
        stored = self.store.update(NODES, node) if existing is not None else self.store.create(NODES, node)
        log.info("node %s registered (%d vCPUs, %d MiB, %s)", request.node_name, request.capacity.vcpus,
                 request.capacity.memory_mib, request.address or "no address")
        return handler_pb2.RegisterNodeResponse(node=stored)

    @grpc_errors
    def GrantNodeLease(self, request, context):
        self._check(context, request.node_name)
        if not MIN_TTL <= request.ttl_seconds <= MAX_TTL:
            raise ValidationError([f"ttl_seconds must be {MIN_TTL} to {MAX_TTL}, not {request.ttl_seconds}"])
        lease_id = self.store.grant_lease(request.ttl_seconds)
        self.store.txn([], [T.Put(self._lease_key(request.node_name), request.node_name.encode(), lease=lease_id)])
        log.info("node %s heartbeat lease %x (ttl %ds)", request.node_name, lease_id, request.ttl_seconds)
        return handler_pb2.GrantNodeLeaseResponse(lease_id=lease_id, ttl_seconds=request.ttl_seconds)

    @grpc_errors
    async def RenewNodeLease(self, request, context):
        """A coroutine (no unary thread) renewing on the replica's shared keep-alive stream:
        every node calls it every few seconds."""
        self._check(context, request.node_name)
        current = (self.cache.node_leases.get(request.node_name) == request.lease_id
                   or await asyncio.to_thread(self._current_lease, request.node_name, request.lease_id))
        if not current:
            return handler_pb2.RenewNodeLeaseResponse(ttl_seconds=0)
        ttl = await self.renewer.renew(request.lease_id)
        return handler_pb2.RenewNodeLeaseResponse(ttl_seconds=max(ttl, 0))

    def _lock_key(self, vm_name: str) -> bytes:
        problem = name_problem(vm_name, "vm_name")
        if problem:
            raise ValidationError([problem])
        return self.store.raw_key(INSTANCE_LOCKS_FOLDER + vm_name)

    def _node_run(self, node: str, vm_name: str, instance_uid: str) -> vm_pb2.VirtualMachine:
        """The VM whose run this is on the node (the cache's copy when it says so: the run was
        assigned to the node at that revision; the lock itself keeps two runs apart)."""
        cached = self.cache.vms.get(vm_name)
        if cached is not None and runs_on(cached, node, instance_uid):
            return cached
        vm = self.store.get(VMS, vm_name)
        if not runs_on(vm, node, instance_uid):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"run {instance_uid} of VirtualMachine {vm_name!r} is not node {node!r}'s")
        return vm

    @grpc_errors
    def AcquireInstanceLock(self, request, context):
        node = request.node_name
        self._check(context, node)
        key = self._lock_key(request.vm_name)
        self._node_run(node, request.vm_name, request.instance_uid)
        if not self._current_lease(node, request.lease_id):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"lease {request.lease_id:x} is not node {node!r}'s current lease: take a new one")
        value = instance_lock_value(node, request.instance_uid)
        response = self.store.txn([T.Version(key) == 0], [T.Put(key, value, lease=request.lease_id)], [T.Get(key)])
        if response.succeeded:
            return handler_pb2.AcquireInstanceLockResponse(acquired=True)
        held = response.responses[0].response_range.kvs
        if held and held[0].value == value:
            if held[0].lease != request.lease_id:  # re-bind to the node's current lease
                self.store.txn([T.Value(key) == value], [T.Put(key, value, lease=request.lease_id)])
            return handler_pb2.AcquireInstanceLockResponse(acquired=True)
        return handler_pb2.AcquireInstanceLockResponse(acquired=False, holder=held[0].value.decode() if held else "")

    @grpc_errors
    def ReclaimInstanceLock(self, request, context):
        node = request.node_name
        self._check(context, node)
        key = self._lock_key(request.vm_name)
        try:
            vm = self.store.get(VMS, request.vm_name)
        except NotFound:
            return handler_pb2.ReclaimInstanceLockResponse(reclaimed=False)
        if (vm.status.node_name != node or vm.status.instance_uid != request.instance_uid
                or not self._current_lease(node, request.lease_id)):
            return handler_pb2.ReclaimInstanceLockResponse(reclaimed=False)
        value = instance_lock_value(node, request.instance_uid)
        response = self.store.txn(
            [T.Mod(self.store.key(VMS, request.vm_name)) == vm.metadata.resource_version, T.Version(key) == 0],
            [T.Put(key, value, lease=request.lease_id)], [T.Get(key)])
        if response.succeeded:
            return handler_pb2.ReclaimInstanceLockResponse(reclaimed=True)
        held = response.responses[0].response_range.kvs
        if held and held[0].value == value:  # still ours (under the old lease): re-bind it
            self.store.txn([T.Value(key) == value], [T.Put(key, value, lease=request.lease_id)])
            return handler_pb2.ReclaimInstanceLockResponse(reclaimed=True)
        return handler_pb2.ReclaimInstanceLockResponse(reclaimed=False)

    @grpc_errors
    def ReleaseInstanceLock(self, request, context):
        self._check(context, request.node_name)
        key = self._lock_key(request.vm_name)
        # The value names the node: a node can only ever delete a lock of its own runs.
        self.store.txn([T.Value(key) == instance_lock_value(request.node_name, request.instance_uid)],
                       [T.Delete(key)])
        return handler_pb2.ReleaseInstanceLockResponse()
