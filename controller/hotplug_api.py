"""AddVolume, RemoveVolume and ResizeVirtualMachine (VirtualMachineService, controller/api.py
delegates here): the spec says what the VM has, so a change to a running VM is made live first
(NodeAgentService on the run's node, which asks its launcher) and written to the spec only once
it took; a VM without a run has its spec changed directly (its next run has the change).

The caller's resource_version (when given) is checked before anything is done (ABORTED when
the VM changed). Once the guest took a change, the spec write is retried over concurrent status
writes as long as the run is the same; a run that ended meanwhile, or a clash, undoes the live
change (a detach, or the previous size) and answers ABORTED, so the spec never claims what the
guest does not have, nor the guest has what the spec does not say."""
from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from controller.errors import RequestError
from controller.node_agents import NODE_AGENT_TIMEOUT_SECONDS, NodeAgents, upstream_error
from controller.nodes import snapshot
from controller.watch_cache import WatchCache
from corral import hotplug, scheduling, status as vm_status
from corral.logs import log_vm
from corral.resources import VMS
from corral.store import Conflict, NotFound, Store
from corral.v1 import node_agent_pb2, vm_pb2
from corral.validation import MIN_MEMORY_MIB, ValidationError, disk_problems, name_problem, spec_problems

log = logging.getLogger(__name__)

#: A resize waits for the guest (launcher/hotplug.py GUEST_TAKE_SECONDS), on top of the call.
RESIZE_TIMEOUT_SECONDS = NODE_AGENT_TIMEOUT_SECONDS + 60.0


class Hotplug:
    def __init__(self, *, store: Store, cache: WatchCache, node_agents: NodeAgents) -> None:
        self.store = store
        self.cache = cache
        self.node_agents = node_agents

    # -- reading and writing ----------------------------------------------------------------
    def _read(self, name: str, resource_version: int, verb: str) -> vm_pb2.VirtualMachine:
        problem = name_problem(name, "name")
        if problem:
            raise ValidationError([problem])
        vm = self.store.get(VMS, name)  # NOT_FOUND
        if resource_version and resource_version != vm.metadata.resource_version:
            raise Conflict(f"VirtualMachine {name!r} is at resource_version {vm.metadata.resource_version}, "
                           f"not {resource_version}: read it again and retry")
        if vm.metadata.HasField("delete_time"):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot {verb}: VirtualMachine {name!r} "
                               "is being deleted")
        busy = vm.status.snapshot_in_progress or vm.status.restore_in_progress
        if busy:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot {verb}: the disks of VirtualMachine "
                               f"{name!r} are being snapshotted or restored (snapshot {busy}): retry once it ended")
        return vm

    @staticmethod
    def _live(vm: vm_pb2.VirtualMachine, verb: str) -> bool:
        """Whether the VM has a run on a node (the change must be made there first)."""
        if vm.status.phase not in vm_status.LIVE_PHASES or not vm.status.node_name:
            return False
        if vm.status.HasField("migration_target"):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot {verb}: VirtualMachine "
                               f"{vm.metadata.name!r} is migrating (wait until it is done)")
        if vm_status.run_request_applies(vm):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot {verb}: the run of VirtualMachine "
                               f"{vm.metadata.name!r} is being stopped")
        return True

    def _write(self, vm: vm_pb2.VirtualMachine, change: Callable[[vm_pb2.VirtualMachine], str | None],
               undo: Callable[[], None] | None, *, retry: bool = True) -> vm_pb2.VirtualMachine:
        """Apply change to the VM as read, then (on a concurrent write) as stored again; change
        returns why it no longer applies (then undo, ABORTED). With undo (the change was made
        live), the run must still be the one it was made on."""
        run = vm.status.instance_uid
        problem: str | None = None
        attempts = 10 if retry else 1
        try:
            for attempt in Retrying(retry=retry_if_exception_type(Conflict), stop=stop_after_attempt(attempts),
                                    reraise=True):
                with attempt:
                    current = vm if attempt.retry_state.attempt_number == 1 else self.store.get(VMS, vm.metadata.name)
                    if undo is not None and (current.status.instance_uid != run or not self._still_live(current)):
                        problem = "its run ended while the change was made"
                    else:
                        problem = change(current)
                    if problem is None:
                        said = current.status.events[-1].message if current.status.events else "changed"
                        stored = self.store.update(VMS, current)
                        log_vm(log, stored, "vm %s: %s", stored.metadata.name, said)
                        return stored
        except (Conflict, NotFound):
            if undo is not None:
                undo()
            raise
        if undo is not None:
            undo()
        raise Conflict(f"VirtualMachine {vm.metadata.name!r} changed meanwhile: {problem}")

    @staticmethod
    def _still_live(vm: vm_pb2.VirtualMachine) -> bool:
        return vm.status.phase in vm_status.LIVE_PHASES and not vm.metadata.HasField("delete_time")

    def _agent(self, vm: vm_pb2.VirtualMachine, call: str, request, timeout: float = NODE_AGENT_TIMEOUT_SECONDS):
        stub, _name, _uid = self.node_agents.live_run(vm)
        try:
            return getattr(stub, call)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise upstream_error(exc, vm.status.node_name) from None

    # -- disks ----------------------------------------------------------------------------
    def add_volume(self, request: vm_pb2.AddVolumeRequest) -> vm_pb2.VirtualMachine:
        verb = "add a volume"
        vm = self._read(request.name, request.resource_version, verb)
        disk = vm_pb2.Disk()
        disk.CopyFrom(request.disk)
        if disk.WhichOneof("source") != "persistent":
            raise ValidationError(["disk: only a persistent disk (path, format) can be added as a volume"])
        live = self._live(vm, verb)
        if not disk.bus:
            disk.bus = hotplug.HOTPLUG_DISK_BUS
        elif live and disk.bus != hotplug.HOTPLUG_DISK_BUS:
            raise ValidationError(["disk.bus: a disk added to a running VM must be SCSI (virtio-scsi)"])
        clash = _disk_clash(vm, disk)
        if clash:
            raise RequestError(grpc.StatusCode.ALREADY_EXISTS, clash)
        problems = disk_problems([*vm.spec.disks, disk])
        if problems:
            raise ValidationError(problems)

        def change(current: vm_pb2.VirtualMachine) -> str | None:
            clash = _disk_clash(current, disk)
            if clash:
                return clash
            current.spec.disks.append(disk)
            vm_status.record_event(current, "VolumeAdded", f"disk {disk.name!r} added"
                                   + (f" to the run on node {current.status.node_name}" if live else ""))
            return None

        undo = None
        if live:
            self._agent(vm, "AttachInstanceDisk", node_agent_pb2.AttachInstanceDiskRequest(
                name=vm.metadata.name, instance_uid=vm.status.instance_uid, disk=disk))
            undo = lambda: self._undo_attach(vm, disk)  # noqa: E731
        return self._write(vm, change, undo, retry=live or not request.resource_version)

    def _undo_attach(self, vm: vm_pb2.VirtualMachine, disk: vm_pb2.Disk) -> None:
        try:
            self._agent(vm, "DetachInstanceDisk", node_agent_pb2.DetachInstanceDiskRequest(
                name=vm.metadata.name, instance_uid=vm.status.instance_uid, disk_name=disk.name,
                path=disk.persistent.path))
        except RequestError as exc:
            log.warning("vm %s: could not detach disk %s again: %s", vm.metadata.name, disk.name, exc)

    def remove_volume(self, request: vm_pb2.RemoveVolumeRequest) -> vm_pb2.VirtualMachine:
        verb = "remove a volume"
        vm = self._read(request.name, request.resource_version, verb)
        problem = name_problem(request.disk_name, "disk_name")
        if problem:
            raise ValidationError([problem])
        named = [d for d in vm.spec.disks if d.name == request.disk_name]
        if not named:
            raise NotFound(f"VirtualMachine {request.name!r} has no disk named {request.disk_name!r}")
        live = self._live(vm, verb)
        if live:
            self._agent(vm, "DetachInstanceDisk", node_agent_pb2.DetachInstanceDiskRequest(
                name=vm.metadata.name, instance_uid=vm.status.instance_uid, disk_name=request.disk_name,
                path=named[0].persistent.path if named[0].WhichOneof("source") == "persistent" else ""))

        def change(current: vm_pb2.VirtualMachine) -> str | None:
            kept = [d for d in current.spec.disks if d.name != request.disk_name]
            del current.spec.disks[:]
            current.spec.disks.extend(kept)
            vm_status.record_event(current, "VolumeRemoved", f"disk {request.disk_name!r} removed")
            return None

        # A detached disk has nothing to undo: whatever happens, the spec must lose it.
        return self._write(vm, change, None, retry=live or not request.resource_version)

    # -- vCPUs and memory ---------------------------------------------------------------------
    def resize(self, request: vm_pb2.ResizeVirtualMachineRequest) -> vm_pb2.VirtualMachine:
        verb = "resize"
        vcpus = request.vcpus if request.HasField("vcpus") else None
        memory = request.memory_mib if request.HasField("memory_mib") else None
        if vcpus is None and memory is None:
            raise ValidationError(["give vcpus, memory_mib or both"])
        vm = self._read(request.name, request.resource_version, verb)
        problems = hotplug.resize_problems(vm.spec, vcpus=vcpus, memory_mib=memory, boot_memory_mib=MIN_MEMORY_MIB)
        if problems:
            raise ValidationError(problems)
        if not self._live(vm, verb):
            return self._write(vm, lambda current: _resized(current, vcpus, memory, live=False), None,
                               retry=not request.resource_version)
        if vcpus is not None and vcpus < vm.spec.vcpus:
            # libvirt gives the guest 5 s to eject a vCPU and then leaves its own count stale
            # even when the guest ejects it later (seen under TCG): not offered live.
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"cannot remove vCPUs from the running VirtualMachine {vm.metadata.name!r} "
                               f"({vm.spec.vcpus} -> {vcpus}): stop it first (vCPUs are only added live)")
        self._check_room(vm, vcpus, memory)
        before = (vm.spec.vcpus, vm.spec.memory_mib)
        answer = self._agent(vm, "ResizeInstance", node_agent_pb2.ResizeInstanceRequest(
            name=vm.metadata.name, instance_uid=vm.status.instance_uid, vcpus=vcpus or 0, memory_mib=memory or 0),
            timeout=RESIZE_TIMEOUT_SECONDS)

        def undo() -> None:
            try:
                self._agent(vm, "ResizeInstance", node_agent_pb2.ResizeInstanceRequest(
                    name=vm.metadata.name, instance_uid=vm.status.instance_uid, vcpus=before[0],
                    memory_mib=before[1] if memory is not None else 0), timeout=RESIZE_TIMEOUT_SECONDS)
            except RequestError as exc:
                log.warning("vm %s: could not undo the resize: %s", vm.metadata.name, exc)

        return self._write(vm, lambda current: _resized(current, answer.vcpus, answer.memory_mib, live=True), undo)

    def _check_room(self, vm: vm_pb2.VirtualMachine, vcpus: int | None, memory: int | None) -> None:
        """The run's node must have the growth free (what its VMs take counts what is plugged:
        the spec's vcpus and memory_mib)."""
        if self.cache.fresh():
            _nodes, views = self.cache.node_views()
        else:
            nodes, ready, vms, _ = snapshot(self.store)
            views = scheduling.build_views(nodes, ready, vms)
        view = views.get(vm.status.node_name)
        if view is None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"node {vm.status.node_name!r} is not registered")
        grow = vm_pb2.VirtualMachineSpec(vcpus=max((vcpus or vm.spec.vcpus) - vm.spec.vcpus, 0),
                                         memory_mib=max((memory or vm.spec.memory_mib) - vm.spec.memory_mib, 0),
                                         dedicated_cpu_placement=vm.spec.dedicated_cpu_placement)
        free_cpu = view.capacity_vcpus - view.cpu_units_used()
        free_memory = view.capacity_memory_mib - view.allocated_memory_mib
        if view.cpu_units_for(grow) > free_cpu or grow.memory_mib > free_memory:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"node {view.name!r} has no room: {free_cpu} vCPUs and {free_memory} MiB free, "
                               f"the resize needs {grow.vcpus} more vCPUs and {grow.memory_mib} MiB more memory")


def _disk_clash(vm: vm_pb2.VirtualMachine, disk: vm_pb2.Disk) -> str | None:
    for existing in vm.spec.disks:
        if existing.name == disk.name:
            return f"VirtualMachine {vm.metadata.name!r} already has a disk named {disk.name!r}"
        if existing.WhichOneof("source") == "persistent" and existing.persistent.path == disk.persistent.path:
            return f"VirtualMachine {vm.metadata.name!r} already has {disk.persistent.path!r} (disk {existing.name!r})"
    return None


def _resized(vm: vm_pb2.VirtualMachine, vcpus: int | None, memory: int | None, *, live: bool) -> str | None:
    """Write the new size into the spec (and, for a run, status); None, or why not."""
    if vcpus is not None:
        vm.spec.vcpus = vcpus
    if memory is not None:
        vm.spec.memory_mib = memory
    problems = spec_problems(vm.spec)
    if problems:
        return "; ".join(problems)
    # What a run has after its last resize; without a run there is nothing to say.
    vm.status.current_vcpus = vm.spec.vcpus if live else 0
    vm.status.current_memory_mib = vm.spec.memory_mib if live else 0
    vm_status.record_event(vm, "Resized", f"{vm.spec.vcpus} vCPUs, {vm.spec.memory_mib} MiB"
                           + (" (live)" if live else " (from the next run)"))
    return None
