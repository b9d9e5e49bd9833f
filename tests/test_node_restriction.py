"""Nodes hold no store credentials (issue 10.2): what a handler needs written, a controller
writes for it, and only for the node its certificate names. Each test plays a compromised
node (n1's certificate) going after another node (n2) and shows it refused, nothing changed."""
from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest

from corral.resources import INSTANCE_LOCKS_FOLDER, NODE_LEASES_FOLDER, NODES, VMS, instance_lock_value
from corral.store import Conflict, NotFound, Store
from corral.v1 import handler_pb2 as H
from corral.v1 import handler_pb2_grpc, node_pb2, vm_pb2
from tests.certs import make_ca
from tests.test_mtls import TLSCluster, _pending_vm, _refused

DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    ca = make_ca(directory)
    return {
        "ca": ca,
        "server": ca.issue(directory, "server", "corral-controller", ips=("127.0.0.1",), dns=("localhost",),
                           uris=("corral://role/controller",)),
        "admin": ca.issue(directory, "admin", "admin", uris=("corral://role/admin",)),
        **{name: ca.issue(directory, name, f"node:{name}", uris=(f"corral://node/{name}",), ips=("127.0.0.1",),
                          dns=(f"{name}.node.corral",)) for name in ("n1", "n2")},
    }


@pytest.fixture(scope="module")
def cluster(etcd, certs, tmp_path_factory):
    made = TLSCluster(certs=certs, etcd=etcd, base=tmp_path_factory.mktemp("restriction"),
                      prefix=f"/t-{uuid.uuid4().hex[:8]}/", guest_dir=Path("/nonexistent"))
    made.start_tls_controller()
    yield made
    made.close()


@pytest.fixture(scope="module")
def store(cluster):
    """The test's own view of etcd (a node has none)."""
    made = Store(endpoints=[cluster.etcd.endpoint], prefix=cluster.prefix)
    yield made
    made.close()


def as_node(cluster, name: str) -> handler_pb2_grpc.HandlerServiceStub:
    return handler_pb2_grpc.HandlerServiceStub(cluster.secure_channel(name))


def registration(node: str, **changes) -> H.RegisterNodeRequest:
    request = H.RegisterNodeRequest(node_name=node, capacity=node_pb2.Resources(vcpus=4, memory_mib=4096),
                                    cpu_allocation_ratio=1, hypervisor="qemu", address="127.0.0.1:7101")
    for key, value in changes.items():
        if key == "labels":
            request.labels.update(value)
        elif key == "capacity":
            request.capacity.CopyFrom(value)
        else:
            setattr(request, key, value)
    return request


@pytest.fixture(scope="module")
def n2(cluster, store):
    """Node n2, registered with a lease, and a VM assigned to it whose lock it holds."""
    stub = as_node(cluster, "n2")
    stub.RegisterNode(registration("n2"), timeout=10)
    lease = stub.GrantNodeLease(H.GrantNodeLeaseRequest(node_name="n2", ttl_seconds=60), timeout=10).lease_id
    cluster.create(_pending_vm("on-n2"))
    for _ in range(20):  # as the scheduler would assign it (racing its Unschedulable note)
        vm = store.get(VMS, "on-n2")
        vm.status.node_name, vm.status.instance_uid = "n2", "run-1"
        vm.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED
        try:
            store.update(VMS, vm)
            break
        except Conflict:
            continue
    answer = stub.AcquireInstanceLock(H.AcquireInstanceLockRequest(node_name="n2", vm_name="on-n2",
                                                                   instance_uid="run-1", lease_id=lease), timeout=10)
    assert answer.acquired
    return {"lease": lease, "vm": "on-n2"}


def test_a_node_cannot_write_for_another(cluster, store, n2):
    n1 = as_node(cluster, "n1")
    before = store.get(NODES, "n2")
    calls = [
        lambda: n1.RegisterNode(registration("n2", address="10.6.6.6:7101"), timeout=10),
        lambda: n1.GrantNodeLease(H.GrantNodeLeaseRequest(node_name="n2", ttl_seconds=60), timeout=10),
        lambda: n1.RenewNodeLease(H.RenewNodeLeaseRequest(node_name="n2", lease_id=n2["lease"]), timeout=10),
        lambda: n1.AcquireInstanceLock(H.AcquireInstanceLockRequest(
            node_name="n2", vm_name=n2["vm"], instance_uid="run-1", lease_id=n2["lease"]), timeout=10),
        lambda: n1.ReclaimInstanceLock(H.ReclaimInstanceLockRequest(
            node_name="n2", vm_name=n2["vm"], instance_uid="run-1", lease_id=n2["lease"]), timeout=10),
        lambda: n1.ReleaseInstanceLock(H.ReleaseInstanceLockRequest(
            node_name="n2", vm_name=n2["vm"], instance_uid="run-1"), timeout=10),
    ]
    for call in calls:
        error = _refused(call)
        assert error.code() == DENIED and "may act only for that node" in error.details()
    after = store.get(NODES, "n2")
    assert after.status.address == "127.0.0.1:7101" and after.metadata.resource_version == before.metadata.resource_version
    assert store.range(store.raw_key(INSTANCE_LOCKS_FOLDER + n2["vm"])).kvs[0].value == instance_lock_value("n2", "run-1")


def test_a_node_cannot_use_another_nodes_lease_or_runs_in_its_own_name(cluster, store, n2):
    n1 = as_node(cluster, "n1")
    n1.RegisterNode(registration("n1"), timeout=10)
    own = n1.GrantNodeLease(H.GrantNodeLeaseRequest(node_name="n1", ttl_seconds=30), timeout=10).lease_id
    # n2's lease id, presented as n1's: not renewed (it would keep a dead node Ready).
    assert n1.RenewNodeLease(H.RenewNodeLeaseRequest(node_name="n1", lease_id=n2["lease"]), timeout=10).ttl_seconds == 0
    assert n1.RenewNodeLease(H.RenewNodeLeaseRequest(node_name="n1", lease_id=own), timeout=10).ttl_seconds > 0
    # n2's run, locked in n1's name: refused (the run is not n1's).
    error = _refused(lambda: n1.AcquireInstanceLock(H.AcquireInstanceLockRequest(
        node_name="n1", vm_name=n2["vm"], instance_uid="run-1", lease_id=own), timeout=10))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "is not node 'n1'" in error.details()
    assert not n1.ReclaimInstanceLock(H.ReclaimInstanceLockRequest(
        node_name="n1", vm_name=n2["vm"], instance_uid="run-1", lease_id=own), timeout=10).reclaimed
    # Releasing in its own name deletes only a lock naming n1: n2's stays.
    n1.ReleaseInstanceLock(H.ReleaseInstanceLockRequest(node_name="n1", vm_name=n2["vm"], instance_uid="run-1"),
                           timeout=10)
    held = store.range(store.raw_key(INSTANCE_LOCKS_FOLDER + n2["vm"])).kvs
    assert held and held[0].value == instance_lock_value("n2", "run-1") and held[0].lease == n2["lease"]
    assert store.range(store.raw_key(NODE_LEASES_FOLDER + "n2")).kvs[0].lease == n2["lease"]


@pytest.mark.parametrize("changes, words", [
    ({"labels": {"corral.dev/dedicated": "gpu"}}, "which nodes may not set"),
    ({"labels": {"corral.dev/hostname": "n2"}}, "must be the node's own name"),
    ({"capacity": node_pb2.Resources(vcpus=100000, memory_mib=1024)}, "capacity.vcpus"),
    ({"capacity": node_pb2.Resources(vcpus=4, memory_mib=0)}, "capacity.memory_mib"),
    ({"cpu_allocation_ratio": 1000}, "cpu_allocation_ratio"),
    ({"hypervisor": "xen"}, "hypervisor"),
    ({"address": "evil host:1"}, "is not HOST:PORT"),
])
def test_what_a_node_says_about_itself_is_bounded(cluster, store, changes, words):
    n1 = as_node(cluster, "n1")
    try:
        before = store.get(NODES, "n1").metadata.resource_version
    except NotFound:
        before = 0
    error = _refused(lambda: n1.RegisterNode(registration("n1", **changes), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), error.details()
    try:
        after = store.get(NODES, "n1").metadata.resource_version
    except NotFound:
        after = 0
    assert after == before


def test_a_lease_ttl_out_of_bounds_is_refused(cluster):
    n1 = as_node(cluster, "n1")
    for ttl in (0, 1, 100000):
        error = _refused(lambda: n1.GrantNodeLease(H.GrantNodeLeaseRequest(node_name="n1", ttl_seconds=ttl),
                                                   timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
