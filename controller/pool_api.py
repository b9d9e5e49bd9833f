"""VirtualMachinePoolService: pools are stored as asked (validated whole, so a pool that is
accepted can always make its VMs); the leader's pool reconciler (controller/pool_reconciler.py)
makes the VMs follow. Deleting a pool marks it; the reconciler deletes (or orphans) its VMs,
then the pool."""
from __future__ import annotations


import grpc
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from controller import pagination, pools
from controller.api import list_page, watch_objects
from controller.errors import RequestError, grpc_errors
from controller.limits import ThreadBoundStreams
from controller.objects import new_metadata
from controller.pool_reconciler import ORPHAN_ANNOTATION, resolve_spec
from corral import status as vm_status
from corral.resources import POOLS
from corral.selectors import matches, parse_selector
from corral.store import Conflict, Store
from corral.v1 import pool_pb2 as P
from corral.v1 import pool_pb2_grpc
from corral.validation import (ValidationError, label_problems, name_problem, user_annotation_problems,
                               validate_new_vm)

KIND = "VirtualMachinePool"


def _name_problems(name: str, field: str = "metadata.name") -> list[str]:
    problem = name_problem(name, field)
    if problem:
        return [problem]
    if len(name) > pools.MAX_POOL_NAME:
        return [f"{field} {name!r} is longer than {pools.MAX_POOL_NAME} characters: its VMs are named "
                "NAME-INDEX, and a VM name is at most 63"]
    return []


def _check_name(name: str) -> None:
    problems = _name_problems(name, "name")
    if problems:
        raise ValidationError(problems)


def spec_problems(pool: P.VirtualMachinePool, store: Store) -> list[str]:
    """Everything wrong with a pool's spec, so that an accepted pool can make its VMs."""
    spec = pool.spec
    problems = []
    if not 0 <= spec.replicas <= pools.MAX_REPLICAS:
        problems.append(f"spec.replicas {spec.replicas} is out of range: 0 to {pools.MAX_REPLICAS}")
    template = spec.virtual_machine_template
    problems.extend(label_problems(template.metadata.labels, "spec.virtual_machine_template.metadata.labels"))
    problems.extend(user_annotation_problems(template.metadata.annotations,
                                             "spec.virtual_machine_template.metadata.annotations"))
    if template.metadata.name:
        problems.append("spec.virtual_machine_template.metadata.name must be empty: the pool names its VMs "
                        "NAME-INDEX")
    if not spec.selector:
        problems.append("spec.selector is required (for example the template's app=NAME label)")
    else:
        try:
            selector = parse_selector(spec.selector)
        except ValueError as exc:
            problems.append(f"spec.selector: {exc}")
        else:
            if not matches(selector, template.metadata.labels):
                labels = ",".join(f"{k}={v}" for k, v in sorted(template.metadata.labels.items())) or "none"
                problems.append(f"spec.selector {spec.selector!r} does not match the template's labels "
                                f"({labels}): the pool's VMs must match its selector")
    problem = pools.max_unavailable_problem(spec.max_unavailable)
    if problem:
        problems.append(problem)
    policy = spec.scale_in_policy
    if policy.order not in P.ScaleInOrder.values():
        problems.append(f"spec.scale_in_policy.order {policy.order} is not a known order")
    if policy.prefer_label_selector:
        try:
            parse_selector(policy.prefer_label_selector)
        except ValueError as exc:
            problems.append(f"spec.scale_in_policy.prefer_label_selector: {exc}")
    if policy.state_preservation not in P.StatePreservation.values():
        problems.append(f"spec.scale_in_policy.state_preservation {policy.state_preservation} is not known")
    healing = spec.auto_healing
    if not 0 <= healing.failed_runs <= pools.MAX_FAILED_RUNS:
        problems.append(f"spec.auto_healing.failed_runs must be 0 (default 3) to {pools.MAX_FAILED_RUNS} "
                        "(a VM keeps the times of its last phase transitions only)")
    if not 0 <= healing.window_seconds <= 7 * 86400:
        problems.append("spec.auto_healing.window_seconds must be 0 (default 600) to 604800 (a week)")
    if not template.HasField("spec"):
        problems.append("spec.virtual_machine_template.spec is required")
        return problems
    for disk in template.spec.disks:
        if (disk.WhichOneof("source") == "persistent" and not disk.read_only
                and pools.VM_NAME_PLACEHOLDER not in disk.persistent.path):
            problems.append(f"spec.virtual_machine_template.spec.disks[{disk.name}]: a writable persistent disk "
                            f"shared by every VM of the pool would be corrupted: put {pools.VM_NAME_PLACEHOLDER} in "
                            "its path (each VM gets its own) or make it read_only")
    # The template as VM 0 would be made from it: the VM's own checks, then its instance type.
    vm = pools.new_vm(pool, 0, "check")
    try:
        validate_new_vm(vm)
        resolve_spec(store, vm, dry_run=True)
    except ValidationError as exc:
        problems.extend(f"spec.virtual_machine_template: {p}" for p in exc.problems)
    return problems


def _validate(pool: P.VirtualMachinePool, store: Store) -> None:
    problems = _name_problems(pool.metadata.name)
    problems += label_problems(pool.metadata.labels, "metadata.labels")
    problems += user_annotation_problems(pool.metadata.annotations, "metadata.annotations")
    problems += spec_problems(pool, store)
    if problems:
        raise ValidationError(problems)


def _attempts(resource_version: int) -> Retrying:
    """Retry on a concurrent write (the reconciler writes status) unless the caller named the
    version it read: then one attempt, and a stale one is ABORTED."""
    return Retrying(retry=retry_if_exception_type(Conflict), reraise=True,
                    stop=stop_after_attempt(1 if resource_version else 8))


class VirtualMachinePoolService(pool_pb2_grpc.VirtualMachinePoolServiceServicer):
    def __init__(self, *, store: Store, threaded: ThreadBoundStreams | None = None) -> None:
        self.store = store
        self.threaded = threaded or ThreadBoundStreams(total=16, per_identity=4)

    @grpc_errors
    def CreateVirtualMachinePool(self, request, context):
        given = request.virtual_machine_pool
        _validate(given, self.store)
        pool = P.VirtualMachinePool()
        new_metadata(pool.metadata, given.metadata)
        pool.spec.CopyFrom(given.spec)
        pool.status.template_revision = pools.template_revision(pool)
        return P.CreateVirtualMachinePoolResponse(virtual_machine_pool=self.store.create(POOLS, pool))

    @grpc_errors
    def GetVirtualMachinePool(self, request, context):
        _check_name(request.name)
        return P.GetVirtualMachinePoolResponse(virtual_machine_pool=self.store.get(POOLS, request.name))

    @grpc_errors
    def ListVirtualMachinePools(self, request, context):
        selector = parse_selector(request.label_selector)
        items, token, revision = list_page(self.store, POOLS, size=pagination.page_size(request.page_size),
                                           token=request.page_token,
                                           keep=lambda pool: matches(selector, pool.metadata.labels))
        return P.ListVirtualMachinePoolsResponse(virtual_machine_pools=items, next_page_token=token,
                                                 resource_version=revision)

    @grpc_errors
    def UpdateVirtualMachinePool(self, request, context):
        given = request.virtual_machine_pool
        if given.metadata.resource_version <= 0:
            raise ValidationError(["metadata.resource_version is required for an update (read the pool first)"])
        _validate(given, self.store)
        current = self._current(given.metadata.name, given.metadata.resource_version)
        if given.spec.selector != current.spec.selector:
            raise ValidationError([f"spec.selector cannot change (it is {current.spec.selector!r}): create "
                                   "another pool"])
        current.metadata.labels.clear()
        current.metadata.labels.update(given.metadata.labels)
        current.metadata.annotations.clear()
        current.metadata.annotations.update(given.metadata.annotations)
        current.spec.CopyFrom(given.spec)
        return P.UpdateVirtualMachinePoolResponse(virtual_machine_pool=self.store.update(POOLS, current))

    def _current(self, name: str, resource_version: int) -> P.VirtualMachinePool:
        """The stored pool, if at ``resource_version`` (0: any) and not being deleted."""
        current = self.store.get(POOLS, name)
        if resource_version and current.metadata.resource_version != resource_version:
            raise Conflict(f"VirtualMachinePool {name!r} is at resource_version "
                           f"{current.metadata.resource_version}, not {resource_version}: read it again and retry")
        if current.metadata.HasField("delete_time"):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"VirtualMachinePool {name!r} is being deleted")
        return current

    @grpc_errors
    def ScaleVirtualMachinePool(self, request, context):
        _check_name(request.name)
        if not 0 <= request.replicas <= pools.MAX_REPLICAS:
            raise ValidationError([f"replicas {request.replicas} is out of range: 0 to {pools.MAX_REPLICAS}"])
        for attempt in _attempts(request.resource_version):
            with attempt:
                pool = self._current(request.name, request.resource_version)
                if pool.spec.replicas != request.replicas:
                    pool.spec.replicas = request.replicas
                    pool = self.store.update(POOLS, pool)
        return P.ScaleVirtualMachinePoolResponse(virtual_machine_pool=pool)

    @grpc_errors
    def DeleteVirtualMachinePool(self, request, context):
        _check_name(request.name)
        for attempt in _attempts(request.resource_version):
            with attempt:
                pool = self.store.get(POOLS, request.name)
                if request.resource_version and pool.metadata.resource_version != request.resource_version:
                    raise Conflict(f"VirtualMachinePool {request.name!r} is at resource_version "
                                   f"{pool.metadata.resource_version}, not {request.resource_version}")
                orphaning = pool.metadata.annotations.get(ORPHAN_ANNOTATION) == "true"
                if pool.metadata.HasField("delete_time") and orphaning != request.orphan:
                    raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                       f"VirtualMachinePool {request.name!r} is already being deleted "
                                       f"{'leaving' if orphaning else 'with'} its VMs: that cannot change now")
                if not pool.metadata.HasField("delete_time"):
                    pool.metadata.delete_time.CopyFrom(vm_status.now())
                    if request.orphan:
                        pool.metadata.annotations[ORPHAN_ANNOTATION] = "true"
                    self.store.update(POOLS, pool)
        return P.DeleteVirtualMachinePoolResponse()

    @grpc_errors
    def WatchVirtualMachinePools(self, request, context):
        with self.threaded.hold(context, "a pool watch"):
            for kind, pool, revision in watch_objects(self.store, POOLS, request, context):
                yield P.WatchVirtualMachinePoolsResponse(type=kind, virtual_machine_pool=pool,
                                                         resource_version=revision)
