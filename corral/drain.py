"""Draining a node, as `kubectl drain` does it: from the client. Cordon the node, then move
every VM running there by its eviction strategy, and report progress until none is left.

The decisions (what to do with each VM, when a VM has left) are pure functions; `Drainer`
does the calls, so a drain interrupted half-way can simply be run again."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import grpc

from corral import status as vm_status
from corral.client import Client
from corral.v1 import migration_pb2, vm_pb2

ES = vm_pb2
MIGRATE, MIGRATE_OR_STOP, STOP, WAIT = "migrate", "migrate-or-stop", "stop", "wait"


def plan(vm: vm_pb2.VirtualMachine) -> str:
    """What the drain does with a VM, from its eviction strategy (unset: LiveMigrateIfPossible)."""
    return {ES.EVICTION_STRATEGY_LIVE_MIGRATE: MIGRATE,
            ES.EVICTION_STRATEGY_NONE: STOP,
            ES.EVICTION_STRATEGY_EXTERNAL: WAIT}.get(vm.spec.eviction_strategy, MIGRATE_OR_STOP)


def on_node(vm: vm_pb2.VirtualMachine, node: str) -> bool:
    """Whether a run of the VM still lives on the node."""
    return vm.status.node_name == node and vm.status.phase in vm_status.LIVE_PHASES


@dataclasses.dataclass
class VmDrain:
    name: str
    action: str
    migration: str = ""
    done: bool = False
    failed: str = ""
    last: str = ""


class Drainer:
    def __init__(self, client: Client, node: str, *, echo: Callable[[str], None],
                 poll_seconds: float = 1.0) -> None:
        self.client = client
        self.node = node
        self.echo = echo
        self.poll = poll_seconds

    def run(self, timeout: float) -> int:
        """Cordon, evict, wait; 0 when the node has no run left, 1 otherwise."""
        self.client.cordon_node(self.node)
        self.echo(f"node/{self.node} cordoned")
        vms = {vm.metadata.name: VmDrain(vm.metadata.name, plan(vm))
               for vm in self.client.list_vms() if on_node(vm, self.node)}
        if not vms:
            self.echo(f"node/{self.node} drained (no VMs)")
            return 0
        for item in vms.values():
            self._start(item)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [item for item in vms.values() if not item.done and not item.failed]
            if not pending:
                break
            for item in pending:
                self._check(item)
            time.sleep(self.poll)
        failed = [item for item in vms.values() if item.failed or not item.done]
        for item in failed:
            self.echo(f"error: vm/{item.name}: {item.failed or 'still on the node after the timeout'}")
        if not failed:
            self.echo(f"node/{self.node} drained")
        return 1 if failed else 0

    def _start(self, item: VmDrain) -> None:
        if item.action in (MIGRATE, MIGRATE_OR_STOP):
            try:
                migration = self.client.create_migration(item.name)
            except grpc.RpcError as err:
                self._migration_failed(item, err.details())
                return
            item.migration = migration.metadata.name
            self.echo(f"vm/{item.name}: migrating ({item.migration})")
        elif item.action == STOP:
            self._stop(item, "eviction strategy None")
        else:
            self.echo(f"vm/{item.name}: eviction strategy External: waiting for it to leave")

    def _stop(self, item: VmDrain, why: str) -> None:
        try:
            self.client.act_on_vm("Stop", item.name)
            self.echo(f"vm/{item.name}: stopping ({why})")
        except grpc.RpcError as err:
            item.failed = f"cannot stop: {err.details()}"

    def _migration_failed(self, item: VmDrain, why: str) -> None:
        if item.action == MIGRATE_OR_STOP:
            self.echo(f"vm/{item.name}: migration failed ({why}): stopping it instead")
            item.action = STOP
            self._stop(item, "could not migrate")
        else:
            item.failed = f"migration failed: {why}"

    def _check(self, item: VmDrain) -> None:
        try:
            vm = self.client.get_vm(item.name)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                item.done = True
                self.echo(f"vm/{item.name}: gone")
                return
            raise
        if not on_node(vm, self.node):
            item.done = True
            where = f"now on node {vm.status.node_name}" if vm.status.phase in vm_status.LIVE_PHASES else "stopped"
            self.echo(f"vm/{item.name}: left the node ({where})")
            return
        if item.migration and item.action != STOP:
            migration = self.client.get_migration(item.migration)
            phase = migration.status.phase
            if phase == migration_pb2.MIGRATION_PHASE_FAILED:
                item.migration = ""
                self._migration_failed(item, migration.status.message or migration.status.reason)
                return
            line = f"{migration_pb2.MigrationPhase.Name(phase).removeprefix('MIGRATION_PHASE_').lower()} " \
                   f"{migration.status.message}".strip()
            if line != item.last:
                item.last = line
                self.echo(f"vm/{item.name}: {line}")
