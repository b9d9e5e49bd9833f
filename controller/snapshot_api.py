"""VirtualMachineSnapshotService, served by every replica from the store. Creating, deleting
or restoring records the request (checked against the VM as it is now); the leader's
SnapshotReconciler (controller/snapshots.py) carries it out on the node."""
from __future__ import annotations

import logging
import uuid

import grpc

from controller import pagination
from controller.api import list_page
from controller.errors import RequestError, grpc_errors
from controller.snapshots import restore_refusal, set_phase, snapshot_refusal
from corral import status as vm_status
from corral.resources import MIGRATIONS, SNAPSHOTS, VMS
from corral.selectors import matches, parse_selector
from corral.snapshots import snapshot_disks, tag_for
from corral.store import Store
from corral.v1 import snapshot_pb2, snapshot_pb2_grpc
from corral.validation import ValidationError, label_problems, name_problem

log = logging.getLogger(__name__)
S = snapshot_pb2


def _check_name(name: str, field: str = "name") -> None:
    problem = name_problem(name, field)
    if problem:
        raise ValidationError([problem])


def validate_new(snapshot: S.VirtualMachineSnapshot) -> None:
    problems = []
    if snapshot.metadata.name:
        problems += filter(None, [name_problem(snapshot.metadata.name, "metadata.name")])
    problems += filter(None, [name_problem(snapshot.spec.vm_name, "spec.vm_name")])
    problems += label_problems(snapshot.metadata.labels, "metadata.labels")
    if problems:
        raise ValidationError(problems)


def new_name(vm_name: str) -> str:
    """VM-NAME-snapshot-RANDOM, at most 63 characters."""
    return f"{vm_name[:45]}-snapshot-{uuid.uuid4().hex[:8]}"


class VirtualMachineSnapshotService(snapshot_pb2_grpc.VirtualMachineSnapshotServiceServicer):
    def __init__(self, *, store: Store) -> None:
        self.store = store

    @grpc_errors
    def CreateVirtualMachineSnapshot(self, request, context):
        given = request.snapshot
        validate_new(given)
        vm = self.store.get(VMS, given.spec.vm_name)
        migrations, _ = self.store.list_all(MIGRATIONS)
        why = snapshot_refusal(vm, migrations)
        if why:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, why)
        held, skipped, _problems = snapshot_disks(vm)
        snapshot = S.VirtualMachineSnapshot()
        snapshot.metadata.name = given.metadata.name or new_name(vm.metadata.name)
        snapshot.metadata.labels.update(given.metadata.labels)
        snapshot.metadata.labels.setdefault("corral.dev/vm", vm.metadata.name)
        snapshot.metadata.uid = str(uuid.uuid4())
        snapshot.metadata.create_time.CopyFrom(vm_status.now())
        snapshot.spec.vm_name = vm.metadata.name
        snapshot.status.vm_uid = vm.metadata.uid
        tag = tag_for(snapshot.metadata.uid)
        snapshot.status.disks.extend(S.SnapshotDisk(name=name, path=path, tag=tag) for name, path in held)
        snapshot.status.skipped_disks.extend(skipped)
        set_phase(snapshot, S.SNAPSHOT_PHASE_PENDING, "Pending", "waiting for the leader")
        stored = self.store.create(SNAPSHOTS, snapshot)
        log.info("snapshot %s of vm %s requested", stored.metadata.name, vm.metadata.name)
        return S.CreateVirtualMachineSnapshotResponse(snapshot=stored)

    @grpc_errors
    def GetVirtualMachineSnapshot(self, request, context):
        _check_name(request.name)
        return S.GetVirtualMachineSnapshotResponse(snapshot=self.store.get(SNAPSHOTS, request.name))

    @grpc_errors
    def ListVirtualMachineSnapshots(self, request, context):
        selector = parse_selector(request.label_selector)
        if request.vm_name:
            _check_name(request.vm_name, "vm_name")
        items, token, revision = list_page(
            self.store, SNAPSHOTS, size=pagination.page_size(request.page_size), token=request.page_token,
            keep=lambda s: matches(selector, s.metadata.labels) and (not request.vm_name or s.spec.vm_name == request.vm_name))
        return S.ListVirtualMachineSnapshotsResponse(snapshots=items, next_page_token=token, resource_version=revision)

    @grpc_errors
    def DeleteVirtualMachineSnapshot(self, request, context):
        _check_name(request.name)
        if request.resource_version < 0:
            raise ValidationError(["resource_version: must not be negative"])
        snapshot = self.store.get(SNAPSHOTS, request.name)
        if request.resource_version and request.resource_version != snapshot.metadata.resource_version:
            raise RequestError(grpc.StatusCode.ABORTED, f"snapshot {request.name!r} changed (resource_version "
                               f"{snapshot.metadata.resource_version}, not {request.resource_version})")
        if snapshot.status.restore.phase == S.RESTORE_PHASE_IN_PROGRESS:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"snapshot {request.name!r} is being restored: delete it once the restore ended")
        if snapshot.metadata.HasField("delete_time"):
            return S.DeleteVirtualMachineSnapshotResponse(snapshot=snapshot)
        snapshot.metadata.delete_time.CopyFrom(vm_status.now())
        stored = self.store.update(SNAPSHOTS, snapshot)
        log.info("snapshot %s: deletion requested", request.name)
        return S.DeleteVirtualMachineSnapshotResponse(snapshot=stored)

    @grpc_errors
    def RestoreVirtualMachineSnapshot(self, request, context):
        _check_name(request.name)
        snapshot = self.store.get(SNAPSHOTS, request.name)
        if snapshot.status.restore.phase == S.RESTORE_PHASE_IN_PROGRESS:
            return S.RestoreVirtualMachineSnapshotResponse(snapshot=snapshot)  # idempotent
        vm = self.store.get(VMS, snapshot.spec.vm_name)
        why = restore_refusal(vm, snapshot)
        if why:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, why)
        snapshot.status.restore.Clear()
        snapshot.status.restore.phase = S.RESTORE_PHASE_IN_PROGRESS
        snapshot.status.restore.start = request.start
        snapshot.status.restore.start_time.CopyFrom(vm_status.now())
        vm.status.restore_in_progress = snapshot.metadata.name
        vm_status.record_event(vm, "RestoreRequested", f"restore from snapshot {snapshot.metadata.name} requested")
        if not self.store.update_together([(SNAPSHOTS, snapshot), (VMS, vm)]):
            raise RequestError(grpc.StatusCode.ABORTED, "the VM or the snapshot changed meanwhile: try again")
        log.info("restore of vm %s from snapshot %s requested", vm.metadata.name, snapshot.metadata.name)
        return S.RestoreVirtualMachineSnapshotResponse(snapshot=self.store.get(SNAPSHOTS, request.name))
