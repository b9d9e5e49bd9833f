"""MigrationService: the public face of live migrations, served by every replica from the
store. Creating one records the request; the leader admits it (controller/migrations.py) and
the nodes carry it out."""
from __future__ import annotations

import logging
import uuid

import grpc

from controller import pagination
from controller.api import list_page, watch_objects
from controller.errors import RequestError, grpc_errors
from controller.limits import ThreadBoundStreams
from controller.migrations import ACTIVE_PHASES, FINAL_PHASES, new_name, not_migratable, phase_name, set_phase
from corral import status as vm_status
from corral.resources import MIGRATIONS, VMS
from corral.selectors import matches, parse_selector
from corral.store import Store
from corral.v1 import migration_pb2, migration_pb2_grpc, vm_pb2
from corral.validation import ValidationError, label_problems, name_problem

log = logging.getLogger(__name__)
M = migration_pb2


def _check_name(name: str, field: str = "name") -> None:
    problem = name_problem(name, field)
    if problem:
        raise ValidationError([problem])


def validate_new(migration: migration_pb2.Migration) -> None:
    problems = []
    if migration.metadata.name:
        problems += filter(None, [name_problem(migration.metadata.name, "metadata.name")])
    problems += filter(None, [name_problem(migration.spec.vm_name, "spec.vm_name")])
    if migration.spec.target_node:
        problems += filter(None, [name_problem(migration.spec.target_node, "spec.target_node")])
    problems += label_problems(migration.metadata.labels, "metadata.labels")
    policy = migration.spec.policy
    for field in ("bandwidth_mib_per_second", "completion_timeout_per_gib_seconds", "progress_timeout_seconds"):
        if policy.HasField(field) and getattr(policy, field) < (0 if field.startswith("bandwidth") else 1):
            problems.append(f"spec.policy.{field}: must be {'0 or more' if field.startswith('bandwidth') else 'at least 1'}")
    if problems:
        raise ValidationError(problems)


class MigrationService(migration_pb2_grpc.MigrationServiceServicer):
    def __init__(self, *, store: Store, threaded: ThreadBoundStreams | None = None) -> None:
        self.store = store
        self.threaded = threaded or ThreadBoundStreams(total=16, per_identity=4)

    @grpc_errors
    def CreateMigration(self, request, context):
        given = request.migration
        validate_new(given)
        vm = self.store.get(VMS, given.spec.vm_name)
        if vm.status.phase != vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING or vm.metadata.HasField("delete_time"):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {vm.metadata.name!r} is {vm_status.printable_status(vm)}: "
                               "only a Running VM can be migrated")
        if vm.status.migration_target.migration_name:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {vm.metadata.name!r} is already migrating "
                               f"(migration {vm.status.migration_target.migration_name})")
        if vm.status.snapshot_in_progress:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {vm.metadata.name!r} is being snapshotted "
                               f"(snapshot {vm.status.snapshot_in_progress}): migrate it once that ended")
        why_not = not_migratable(vm)
        if why_not:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {vm.metadata.name!r} cannot be live-migrated: {why_not}")
        if given.spec.target_node == vm.status.node_name:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"VirtualMachine {vm.metadata.name!r} already runs on node {vm.status.node_name!r}")
        migration = M.Migration()
        migration.metadata.name = given.metadata.name or new_name(vm.metadata.name)
        migration.metadata.labels.update(given.metadata.labels)
        migration.metadata.labels.setdefault("corral.dev/vm", vm.metadata.name)
        migration.metadata.uid = str(uuid.uuid4())
        migration.metadata.create_time.CopyFrom(vm_status.now())
        migration.spec.CopyFrom(given.spec)
        migration.status.source_node = vm.status.node_name
        set_phase(migration, M.MIGRATION_PHASE_PENDING)
        stored = self.store.create(MIGRATIONS, migration)
        log.info("migration %s of vm %s requested", stored.metadata.name, vm.metadata.name)
        return M.CreateMigrationResponse(migration=stored)

    @grpc_errors
    def GetMigration(self, request, context):
        _check_name(request.name)
        return M.GetMigrationResponse(migration=self.store.get(MIGRATIONS, request.name))

    @grpc_errors
    def ListMigrations(self, request, context):
        selector = parse_selector(request.label_selector)
        if request.vm_name:
            _check_name(request.vm_name, "vm_name")
        items, token, revision = list_page(
            self.store, MIGRATIONS, size=pagination.page_size(request.page_size), token=request.page_token,
            keep=lambda m: matches(selector, m.metadata.labels) and (not request.vm_name or m.spec.vm_name == request.vm_name))
        return M.ListMigrationsResponse(migrations=items, next_page_token=token, resource_version=revision)

    @grpc_errors
    def WatchMigrations(self, request, context):
        with self.threaded.hold(context, "a migration watch"):
            for kind, migration, revision in watch_objects(self.store, MIGRATIONS, request, context):
                yield M.WatchMigrationsResponse(type=kind, migration=migration, resource_version=revision)

    @grpc_errors
    def CancelMigration(self, request, context):
        _check_name(request.name)
        migration = self.store.get(MIGRATIONS, request.name)
        if migration.status.phase in FINAL_PHASES:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"migration {request.name!r} already ended ({phase_name(migration.status.phase)})")
        if migration.status.cancel_requested:
            return M.CancelMigrationResponse(migration=migration)
        migration.status.cancel_requested = True
        if migration.status.phase not in ACTIVE_PHASES:  # not admitted yet: nothing runs
            migration.status.reason, migration.status.message = "Cancelled", "cancelled before it started"
            set_phase(migration, M.MIGRATION_PHASE_FAILED)
        stored = self.store.update(MIGRATIONS, migration)
        return M.CancelMigrationResponse(migration=stored)
