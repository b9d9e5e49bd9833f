"""Where a VM fits: pure functions over node views, so the policy is testable without etcd.

A node fits a VM when it is Ready, not cordoned, has every label of the VM's node_selector
and has the VM's vCPUs and memory free (capacity reported by its handler minus what VMs
assigned to it take) and none of its node ports (user networks' port forwards) taken. Among the nodes that fit, the least allocated wins, which spreads VMs.

A VM with dedicated CPUs (dedicated_cpu_placement) takes whole host CPUs, never overcommitted:
each of its vCPUs counts as cpu_allocation_ratio shared vCPUs (the node's allocatable vCPUs are
its CPUs times that ratio), so dedicated vCPUs never exceed the node's CPUs and shared ones
never crowd them.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable

from corral import networks
from corral.v1 import node_pb2, vm_pb2

#: Phases in which a VM holds resources on its node.
ALLOCATING_PHASES = frozenset({vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED, vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING})


@dataclasses.dataclass(slots=True)
class NodeView:
    name: str
    labels: dict[str, str]
    ready: bool
    unschedulable: bool
    capacity_vcpus: int
    capacity_memory_mib: int
    allocated_vcpus: int = 0
    allocated_memory_mib: int = 0
    vm_count: int = 0
    node_ports: set[tuple[str, int]] = dataclasses.field(default_factory=set)  # (protocol, port)
    # Of allocated_vcpus, those of VMs with dedicated CPUs; and the node's CPU allocation ratio.
    dedicated_vcpus: int = 0
    cpu_ratio: int = 1
    # Why a post-copy migration cannot run into (or out of) the node; empty: it can.
    post_copy_problem: str = ""

    def cpu_units_used(self) -> int:
        """Allocatable vCPUs taken: a dedicated vCPU takes a whole CPU, cpu_ratio of them."""
        return self.allocated_vcpus + self.dedicated_vcpus * (self.cpu_ratio - 1)

    def cpu_units_for(self, spec: vm_pb2.VirtualMachineSpec) -> int:
        return spec.vcpus * self.cpu_ratio if spec.dedicated_cpu_placement else spec.vcpus

    def add(self, spec: vm_pb2.VirtualMachineSpec) -> None:
        self.node_ports |= networks.node_ports(spec)
        self.allocated_vcpus += spec.vcpus
        if spec.dedicated_cpu_placement:
            self.dedicated_vcpus += spec.vcpus
        self.allocated_memory_mib += spec.memory_mib
        self.vm_count += 1

    def plus(self, spec: vm_pb2.VirtualMachineSpec) -> "NodeView":
        """A copy with the VM added: views handed out by the watch cache are shared between
        passes and readers, so deciders never change one in place (see add_to)."""
        copy = dataclasses.replace(self, node_ports=set(self.node_ports))
        copy.add(spec)
        return copy

    def load_after(self, spec: vm_pb2.VirtualMachineSpec) -> float:
        cpu = (self.cpu_units_used() + self.cpu_units_for(spec)) / max(self.capacity_vcpus, 1)
        mem = (self.allocated_memory_mib + spec.memory_mib) / max(self.capacity_memory_mib, 1)
        return (cpu + mem) / 2


def holds_resources(vm: vm_pb2.VirtualMachine) -> bool:
    return bool(vm.status.node_name) and vm.status.phase in ALLOCATING_PHASES


def allocatable(node: node_pb2.Node) -> node_pb2.Resources:
    """What VMs may take on the node: its allocatable resources (host CPUs x the CPU allocation
    ratio), or its capacity in records of handlers that do not say."""
    status = node.status
    return status.allocatable if status.HasField("allocatable") else status.capacity


@dataclasses.dataclass
class Allocation:
    """What the VMs assigned to one node take: kept up to date event by event by the watch
    cache, so that a scheduler pass costs the number of nodes, not of VMs."""

    vcpus: int = 0
    memory_mib: int = 0
    count: int = 0
    ports: Counter = dataclasses.field(default_factory=Counter)  # (protocol, port) -> VMs using it
    dedicated_vcpus: int = 0  # of vcpus, those of VMs with dedicated CPUs

    def change(self, spec: vm_pb2.VirtualMachineSpec, sign: int) -> None:
        self.vcpus += sign * spec.vcpus
        if spec.dedicated_cpu_placement:
            self.dedicated_vcpus += sign * spec.vcpus
        self.memory_mib += sign * spec.memory_mib
        self.count += sign
        for port in networks.node_ports(spec):
            self.ports[port] += sign
            if self.ports[port] <= 0:
                del self.ports[port]


def allocated_on(vm: vm_pb2.VirtualMachine | None) -> tuple[str, ...]:
    """The nodes whose room the VM takes: its node, and a live migration's target (a migrating
    VM holds room on both)."""
    if vm is None or not holds_resources(vm):
        return ()
    target = vm.status.migration_target.node_name
    return (vm.status.node_name, target) if target and target != vm.status.node_name else (vm.status.node_name,)


def allocations(vms: Iterable[vm_pb2.VirtualMachine]) -> dict[str, Allocation]:
    result: dict[str, Allocation] = {}
    for vm in vms:
        for node in allocated_on(vm):
            result.setdefault(node, Allocation()).change(vm.spec, +1)
    return result


def post_copy_problem(node: node_pb2.Node) -> str:
    """Why post-copy cannot run on the node (its handler's check at start), empty when it can."""
    if node.status.post_copy_ready:
        return ""
    return node.status.post_copy_message or "its handler did not report post-copy support (an older handler)"


def view_of(node: node_pb2.Node, ready: bool, used: Allocation | None) -> NodeView:
    """One node's view: its record, readiness and what its VMs take."""
    room = allocatable(node)
    used = used or Allocation()
    return NodeView(name=node.metadata.name, labels=dict(node.metadata.labels), ready=ready,
                    unschedulable=node.spec.unschedulable, capacity_vcpus=room.vcpus,
                    capacity_memory_mib=room.memory_mib, allocated_vcpus=used.vcpus,
                    allocated_memory_mib=used.memory_mib, vm_count=used.count,
                    node_ports=set(used.ports), dedicated_vcpus=used.dedicated_vcpus,
                    cpu_ratio=max(node.status.cpu_allocation_ratio, 1),
                    post_copy_problem=post_copy_problem(node))


def views_from(nodes: Iterable[node_pb2.Node], ready: set[str],
               allocated: dict[str, Allocation]) -> dict[str, NodeView]:
    """A fresh view of every node."""
    return {node.metadata.name: view_of(node, node.metadata.name in ready, allocated.get(node.metadata.name))
            for node in nodes}


def add_to(views: dict[str, NodeView], node: str, spec: vm_pb2.VirtualMachineSpec) -> None:
    """Count a VM just placed on the node in this decider's views (a copy replaces the shared view)."""
    views[node] = views[node].plus(spec)


def build_views(nodes: Iterable[node_pb2.Node], ready: set[str],
                vms: Iterable[vm_pb2.VirtualMachine]) -> dict[str, NodeView]:
    return views_from(nodes, ready, allocations(vms))


def misfit(view: NodeView, spec: vm_pb2.VirtualMachineSpec) -> str | None:
    """Why the VM does not fit this node, or None if it does."""
    if not view.ready:
        return "node(s) were not ready"
    if view.unschedulable:
        return "node(s) were unschedulable"
    if any(view.labels.get(key) != value for key, value in spec.node_selector.items()):
        return "node(s) didn't match the node selector"
    if view.capacity_vcpus - view.cpu_units_used() < view.cpu_units_for(spec):
        return "Insufficient dedicated cpus" if spec.dedicated_cpu_placement else "Insufficient vcpus"
    if view.capacity_memory_mib - view.allocated_memory_mib < spec.memory_mib:
        return "Insufficient memory"
    if view.node_ports & networks.node_ports(spec):
        return "node(s) didn't have free ports for the requested node ports"
    return None


#: Like Kubernetes' percentageOfNodesToScore: on a large cluster, stop looking once this many
#: feasible nodes were found (at least MIN_FEASIBLE_TO_SCORE, or FEASIBLE_SHARE of the nodes),
#: starting where the previous search stopped, so that load still spreads over every node.
MIN_FEASIBLE_TO_SCORE = 100
FEASIBLE_SHARE = 0.05
_next_start = 0
#: Loads (the sum of the CPU and memory shares a node would have) closer than this are equal.
LOAD_TIE = 1e-9


def choose_node(spec: vm_pb2.VirtualMachineSpec, views: dict[str, NodeView]) -> tuple[str | None, str]:
    """The least-loaded fitting node and "", or None and a Kubernetes-style explanation.
    (misfit's checks inlined, with what the VM asks for computed once: this runs for up to
    every node for every VM placed. Loads within LOAD_TIE of each other are a tie, broken by
    fewer VMs, then by name.)"""
    global _next_start
    ordered = list(views.values())
    count = len(ordered)
    enough = max(MIN_FEASIBLE_TO_SCORE, int(count * FEASIBLE_SHARE))
    vcpus, memory, dedicated = spec.vcpus, spec.memory_mib, spec.dedicated_cpu_placement
    selector = list(spec.node_selector.items())
    ports = networks.node_ports(spec)
    best: NodeView | None = None
    best_load = 0.0
    found = 0
    start = _next_start % count if count else 0
    for index, view in enumerate(ordered[start:] + ordered[:start], start):
        if not view.ready or view.unschedulable:
            continue
        ratio = view.cpu_ratio
        used = view.allocated_vcpus + view.dedicated_vcpus * (ratio - 1) if view.dedicated_vcpus else view.allocated_vcpus
        need = vcpus * ratio if dedicated else vcpus
        capacity = view.capacity_vcpus
        memory_capacity = view.capacity_memory_mib
        memory_used = view.allocated_memory_mib
        if (capacity - used < need or memory_capacity - memory_used < memory
                or (selector and any(view.labels.get(key) != value for key, value in selector))
                or (ports and view.node_ports & ports)):
            continue
        load = (used + need) / (capacity or 1) + (memory_used + memory) / (memory_capacity or 1)
        if best is None or load < best_load - LOAD_TIE or (
                load <= best_load + LOAD_TIE and (view.vm_count, view.name) < (best.vm_count, best.name)):
            best, best_load = view, load
        found += 1
        if found >= enough:
            _next_start = index + 1
            break
    if best is not None:
        return best.name, ""
    reasons = Counter(misfit(view, spec) for view in ordered)
    detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    message = f"0/{len(views)} nodes are available" + (f": {detail}." if detail else ".")
    return None, message
