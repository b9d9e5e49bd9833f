"""Nodes as the API shows them: the record a handler registered, plus what the store says
now (Ready while the heartbeat lease key exists; what assigned VMs take)."""
from __future__ import annotations

from pyetcd import utils as etcd_utils

from corral import scheduling
from corral.resources import NODE_LEASES_FOLDER, NODES, VMS
from corral.store import Store
from corral.v1 import node_pb2, vm_pb2


def ready_node_names(store: Store, *, revision: int = 0) -> set[str]:
    folder = store.raw_key(NODE_LEASES_FOLDER)
    response = store.range(folder, etcd_utils.prefix_range_end(folder), revision=revision)
    return {kv.key[len(folder):].decode() for kv in response.kvs}


def snapshot(store: Store) -> tuple[list[node_pb2.Node], set[str], list[vm_pb2.VirtualMachine], int]:
    """Nodes, Ready node names and VMs, all read at one store revision."""
    vms, revision = store.list_all(VMS)
    nodes, _, _ = store.list(NODES, revision=revision)
    return nodes, ready_node_names(store, revision=revision), vms, revision


def list_node_views(store: Store) -> list[node_pb2.Node]:
    nodes, ready, vms, _ = snapshot(store)
    return present_nodes(nodes, scheduling.build_views(nodes, ready, vms))


def present_nodes(nodes: list[node_pb2.Node], views: dict[str, scheduling.NodeView]) -> list[node_pb2.Node]:
    """Node records as the API shows them: phase from readiness, what assigned VMs take."""
    result = []
    for node in nodes:
        view = views[node.metadata.name]
        shown = node_pb2.Node()
        shown.CopyFrom(node)
        shown.status.phase = node_pb2.NODE_PHASE_READY if view.ready else node_pb2.NODE_PHASE_NOT_READY
        shown.status.allocated.vcpus = view.allocated_vcpus
        shown.status.allocated.memory_mib = view.allocated_memory_mib
        shown.status.virtual_machine_count = view.vm_count
        result.append(shown)
    return result
