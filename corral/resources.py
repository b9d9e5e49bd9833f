"""Where each kind of Corral object lives in the store."""
from __future__ import annotations

from corral import history
from corral.store import Kind
from corral.v1 import instancetype_pb2, migration_pb2, node_pb2, pool_pb2, snapshot_pb2, vm_pb2

VMS: Kind[vm_pb2.VirtualMachine] = Kind("vms", vm_pb2.VirtualMachine, beside=history.split,
                                         beside_folder=history.folder)
MIGRATIONS: Kind[migration_pb2.Migration] = Kind("migrations", migration_pb2.Migration)
NODES: Kind[node_pb2.Node] = Kind("nodes", node_pb2.Node)
POOLS: Kind[pool_pb2.VirtualMachinePool] = Kind("pools", pool_pb2.VirtualMachinePool)
INSTANCE_TYPES: Kind[instancetype_pb2.InstanceType] = Kind("instancetypes", instancetype_pb2.InstanceType)
PREFERENCES: Kind[instancetype_pb2.Preference] = Kind("preferences", instancetype_pb2.Preference)
#: Frozen copies of instance types and preferences, as VMs were sized from them.
REVISIONS: Kind[instancetype_pb2.Revision] = Kind("revisions", instancetype_pb2.Revision)
SNAPSHOTS: Kind[snapshot_pb2.VirtualMachineSnapshot] = Kind("snapshots", snapshot_pb2.VirtualMachineSnapshot)
#: A handler's heartbeat: a key bound to an etcd lease; while it exists the node is Ready.
NODE_LEASES_FOLDER = "node-leases/"
#: The key the controller leader holds; its create revision is the fencing token.
LEADER_KEY = "leader"
#: Trailing metadata of a node stream the leading replica turned away (WatchAssignmentsRequest
#: avoid_leader): the handler moves to another replica at once, without backing off.
LEADER_TURNED_AWAY = ("corral-leader", "1")
#: A run's instance lock, bound to its node's lease: while it exists no other run may start.
INSTANCE_LOCKS_FOLDER = "instance-locks/"


def instance_lock_value(node_name: str, instance_uid: str) -> bytes:
    """What a run's instance lock holds: the node and the run (handlers and the scheduler agree)."""
    return f"{node_name}/{instance_uid}".encode()
