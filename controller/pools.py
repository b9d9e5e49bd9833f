"""What a VirtualMachinePool wants done with its VMs: pure decisions on messages (no store),
so scaling, healing and rollout are testable alone; controller/pool_reconciler.py applies them.

A pool's VMs are named POOL-INDEX and carry the pool as their owner (by uid). Scaling up
takes the lowest free indices; scaling in picks victims by the pool's policy. A template
change rolls out as a new template revision: fields that do not touch the running guest are
changed in place; the rest need the run stopped, the spec replaced and a new run started, at
most max_unavailable VMs at a time (VMs not Running count against it)."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from controller.lifecycle import NODE_LOST
from corral import status as vm_status
from corral.selectors import matches, parse_selector
from corral.v1 import meta_pb2, pool_pb2, vm_pb2

POOL_KIND = "VirtualMachinePool"
#: The template revision a VM was made from (or last updated to).
REVISION_ANNOTATION = "corral.dev/pool-template-revision"
#: A VM whose run the rollout stopped, to replace its spec once the run ended.
ROLLOUT_ANNOTATION = "corral.dev/pool-rollout"
#: A VM scaled in with state preservation: stopped and kept, started again when the pool grows.
PARKED_ANNOTATION = "corral.dev/pool-scaled-in"
#: In a template's persistent disk paths: replaced by each VM's name.
VM_NAME_PLACEHOLDER = "$(VM_NAME)"
MAX_REPLICAS = 1000
#: A VM name is POOL-INDEX and a DNS label (63): room for "-" and a 4-digit index.
MAX_POOL_NAME = 58
DEFAULT_FAILED_RUNS = 3
#: A VM keeps its last 50 phase transitions, about 4 per failed run: counting failures further
#: back than this would be counting what is no longer there.
MAX_FAILED_RUNS = 10
DEFAULT_WINDOW_SECONDS = 600
#: Spec fields that do not change the running guest: a rollout changes them in place.
IN_PLACE_FIELDS = ("run_strategy", "termination_grace_period_seconds", "eviction_strategy")


def vm_name(pool_name: str, index: int) -> str:
    return f"{pool_name}-{index}"


def index_of(pool_name: str, name: str) -> int | None:
    """INDEX of POOL-INDEX (None for a name the pool does not make)."""
    match = re.fullmatch(re.escape(pool_name) + r"-(0|[1-9][0-9]{0,3})", name)
    return int(match.group(1)) if match else None


def template_revision(pool: pool_pb2.VirtualMachinePool) -> str:
    """A short hash of the template: VMs carrying it are up to date."""
    data = pool.spec.virtual_machine_template.SerializeToString(deterministic=True)
    return hashlib.sha256(data).hexdigest()[:12]


def owned_by(vm: vm_pb2.VirtualMachine, pool: pool_pb2.VirtualMachinePool) -> bool:
    owner = vm.metadata.owner
    return owner.kind == POOL_KIND and owner.uid == pool.metadata.uid


def spec_for(pool: pool_pb2.VirtualMachinePool, name: str) -> vm_pb2.VirtualMachineSpec:
    """The template's spec for VM ``name`` (see named)."""
    return named(pool.spec.virtual_machine_template.spec, name)


def named(template: vm_pb2.VirtualMachineSpec, name: str) -> vm_pb2.VirtualMachineSpec:
    """A copy of ``template`` for VM ``name``: each persistent disk path's placeholder becomes
    the VM's name (a DNS label: no '/' or '..'), so each VM has its own disk."""
    spec = vm_pb2.VirtualMachineSpec()
    spec.CopyFrom(template)
    for disk in spec.disks:
        if disk.WhichOneof("source") == "persistent":
            disk.persistent.path = disk.persistent.path.replace(VM_NAME_PLACEHOLDER, name)
    return spec


def set_template_metadata(vm: vm_pb2.VirtualMachine, pool: pool_pb2.VirtualMachinePool, revision: str) -> None:
    """Labels and annotations from the template, the revision, and the pool as owner."""
    template = pool.spec.virtual_machine_template.metadata
    vm.metadata.labels.clear()
    vm.metadata.labels.update(template.labels)
    vm.metadata.annotations.clear()
    vm.metadata.annotations.update(template.annotations)
    vm.metadata.annotations[REVISION_ANNOTATION] = revision
    vm.metadata.owner.CopyFrom(meta_pb2.OwnerReference(kind=POOL_KIND, name=pool.metadata.name,
                                                       uid=pool.metadata.uid))


def new_vm(pool: pool_pb2.VirtualMachinePool, index: int, revision: str) -> vm_pb2.VirtualMachine:
    """VM ``index`` of the pool as the template says (not yet resolved against instance types)."""
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = vm_name(pool.metadata.name, index)
    set_template_metadata(vm, pool, revision)
    vm.spec.CopyFrom(spec_for(pool, vm.metadata.name))
    return vm


def max_unavailable_problem(text: str) -> str | None:
    if text == "" or re.fullmatch(r"[1-9][0-9]{0,3}", text) or re.fullmatch(r"([1-9][0-9]?|100)%", text):
        return None
    return (f"spec.max_unavailable {text!r} is neither a count (1, 2, ...) nor a percentage of replicas "
            "(1% to 100%)")


def max_unavailable(pool: pool_pb2.VirtualMachinePool) -> int:
    """How many VMs a rollout may have down at once: a count, or a percentage of replicas
    rounded down; at least 1 (a rollout that may take nothing down would never progress)."""
    text = pool.spec.max_unavailable or "1"
    if text.endswith("%"):
        return max(1, pool.spec.replicas * int(text[:-1]) // 100)
    return max(1, int(text))


@dataclass
class Plan:
    """What one pass does for a pool. VMs are copies the reconciler may write."""

    create: list[int] = field(default_factory=list)  # indices
    delete: list[vm_pb2.VirtualMachine] = field(default_factory=list)
    update: list[vm_pb2.VirtualMachine] = field(default_factory=list)  # in place, or a rolled-out spec
    stop: list[vm_pb2.VirtualMachine] = field(default_factory=list)  # rollout: end the run first
    healed: list[str] = field(default_factory=list)  # names of VMs replaced for failing
    restart: set[str] = field(default_factory=set)  # updated VMs whose run the rollout stopped: start again
    park: list[vm_pb2.VirtualMachine] = field(default_factory=list)  # scaled in, kept stopped
    revive: list[vm_pb2.VirtualMachine] = field(default_factory=list)  # parked ones needed again
    status: pool_pb2.VirtualMachinePoolStatus = field(default_factory=pool_pb2.VirtualMachinePoolStatus)


def _copy(vm: vm_pb2.VirtualMachine) -> vm_pb2.VirtualMachine:
    copy = vm_pb2.VirtualMachine()
    copy.CopyFrom(vm)
    return copy


def _deleting(vm: vm_pb2.VirtualMachine) -> bool:
    return vm.metadata.HasField("delete_time")


def parked(vm: vm_pb2.VirtualMachine) -> bool:
    return PARKED_ANNOTATION in vm.metadata.annotations


def failing(vm: vm_pb2.VirtualMachine, healing: pool_pb2.AutoHealing, now_seconds: float) -> bool:
    """Its last N runs in a row failed, all within the window (auto-healing replaces it)."""
    if healing.disabled:
        return False
    runs = healing.failed_runs or DEFAULT_FAILED_RUNS
    window = healing.window_seconds or DEFAULT_WINDOW_SECONDS
    lost = any(c.type == "Ready" and c.reason == NODE_LOST for c in vm.status.conditions)
    failed_now = vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED and not lost  # not yet counted
    if vm.status.restart_count + (1 if failed_now else 0) < runs:
        return False
    failures = [t.time.ToNanoseconds() / 1e9 for t in vm.status.phase_transitions
                if t.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED]
    return len(failures) >= runs and now_seconds - failures[-runs] <= window


def scale_in_victims(pool: pool_pb2.VirtualMachinePool, active: list[vm_pb2.VirtualMachine],
                     count: int) -> list[vm_pb2.VirtualMachine]:
    """Which ``count`` VMs go: those matching prefer_label_selector first, then by order."""
    policy = pool.spec.scale_in_policy
    preferred = parse_selector(policy.prefer_label_selector) if policy.prefer_label_selector else None
    name = pool.metadata.name

    def created(vm: vm_pb2.VirtualMachine) -> int:
        return vm.metadata.create_time.ToNanoseconds()

    def key(vm: vm_pb2.VirtualMachine) -> tuple:
        first = 0 if preferred is not None and matches(preferred, vm.metadata.labels) else 1
        index = index_of(name, vm.metadata.name) or 0
        if policy.order == pool_pb2.SCALE_IN_ORDER_NEWEST:
            return first, -created(vm), -index
        if policy.order == pool_pb2.SCALE_IN_ORDER_OLDEST:
            return first, created(vm), -index
        return first, -index

    return sorted(active, key=key)[:count]


def _in_place(vm: vm_pb2.VirtualMachine, wanted: vm_pb2.VirtualMachineSpec, node_labels: dict | None) -> bool:
    """The spec differs only in fields the running guest does not see (and a node selector
    the VM's node still satisfies)."""
    current, target = vm_pb2.VirtualMachineSpec(), vm_pb2.VirtualMachineSpec()
    current.CopyFrom(vm.spec)
    target.CopyFrom(wanted)
    for name in IN_PLACE_FIELDS:
        current.ClearField(name)
        target.ClearField(name)
    if node_labels is not None and all(node_labels.get(k) == v for k, v in target.node_selector.items()):
        current.ClearField("node_selector")
        target.ClearField("node_selector")
    return current == target


def plan(pool: pool_pb2.VirtualMachinePool, vms: list[vm_pb2.VirtualMachine], *, now_seconds: float,
         wanted_spec, node_labels) -> Plan:
    """One pass for a live (not deleting) pool. ``vms`` are the VMs it owns; ``wanted_spec(name)``
    is the template's spec for a VM resolved as a new VM would be (instance types);
    ``node_labels(name)`` a node's labels (None: unknown node)."""
    result = Plan()
    revision = template_revision(pool)
    name = pool.metadata.name
    active = [vm for vm in vms if not _deleting(vm) and not parked(vm)]
    if not pool.spec.paused:
        healthy = []
        for vm in active:
            if failing(vm, pool.spec.auto_healing, now_seconds):
                result.delete.append(_copy(vm))
                result.healed.append(vm.metadata.name)
            else:
                healthy.append(vm)
        missing = pool.spec.replicas - len(healthy)
        # Parked VMs come back first, lowest index first, once their last run has ended (the
        # index of one still stopping is held below, as a going VM's is).
        waiting = sorted((vm for vm in vms if parked(vm) and not _deleting(vm)),
                         key=lambda vm: index_of(name, vm.metadata.name) or 0)
        stopped = [vm for vm in waiting if vm.status.phase not in vm_status.LIVE_PHASES]
        result.revive = [_copy(vm) for vm in stopped[:max(missing, 0)]]
        missing -= len(result.revive)
        # Indices stay stable: an index whose VM is going (replaced, or deleted by a person)
        # is made again once that VM is gone, not at another index meanwhile; a parked VM
        # keeps its index.
        serving = {index_of(name, vm.metadata.name) for vm in healthy + result.revive}
        going = {index_of(name, vm.metadata.name) for vm in vms} - serving
        index = 0
        while missing > 0:
            if index not in serving:
                if index not in going:
                    result.create.append(index)
                missing -= 1
            index += 1
        if missing < 0:
            victims = [_copy(vm) for vm in scale_in_victims(pool, healthy, -missing)]
            if pool.spec.scale_in_policy.state_preservation == pool_pb2.STATE_PRESERVATION_OFFLINE:
                result.park.extend(victims)
            else:
                result.delete.extend(victims)
        going = {vm.metadata.name for vm in result.delete + result.park}
        _roll_out(pool, [vm for vm in healthy if vm.metadata.name not in going], revision, result,
                  wanted_spec, node_labels)
    _status(pool, active, revision, result)
    return result


def _roll_out(pool, staying: list[vm_pb2.VirtualMachine], revision: str, result: Plan, wanted_spec,
              node_labels) -> None:
    # Down: not Running, or stopped by the rollout (its run may still be ending).
    unavailable = sum(1 for vm in staying if vm.status.phase != vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
                      or ROLLOUT_ANNOTATION in vm.metadata.annotations)
    budget = max_unavailable(pool) - unavailable
    for vm in sorted(staying, key=lambda v: index_of(pool.metadata.name, v.metadata.name) or 0):
        if vm.metadata.annotations.get(REVISION_ANNOTATION) == revision:
            continue
        wanted = wanted_spec(vm.metadata.name)
        live = vm.status.phase in vm_status.LIVE_PHASES
        labels = node_labels(vm.status.node_name) if live else None
        if not live or _in_place(vm, wanted, labels):
            # No run, or nothing the run sees changes (the rest of the spec is equal).
            updated = _copy(vm)
            set_template_metadata(updated, pool, revision)
            updated.spec.CopyFrom(wanted)
            result.update.append(updated)
            if not live and vm.metadata.annotations.get(ROLLOUT_ANNOTATION):
                result.restart.add(vm.metadata.name)
        elif vm.metadata.annotations.get(ROLLOUT_ANNOTATION) != revision and budget > 0:
            if vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING and ROLLOUT_ANNOTATION not in vm.metadata.annotations:
                budget -= 1
            stopping = _copy(vm)
            stopping.metadata.annotations[ROLLOUT_ANNOTATION] = revision
            result.stop.append(stopping)


def _status(pool, active: list[vm_pb2.VirtualMachine], revision: str, result: Plan) -> None:
    status = result.status
    status.CopyFrom(pool.status)
    status.replicas = len(active)
    status.ready_replicas = sum(1 for vm in active if vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING)
    status.updated_replicas = sum(1 for vm in active if vm.metadata.annotations.get(REVISION_ANNOTATION) == revision)
    status.template_revision = revision
    wanted = pool.spec.replicas
    set_condition(status, "Paused", pool.spec.paused, "Paused" if pool.spec.paused else "NotPaused",
               "the pool leaves its VMs alone" if pool.spec.paused else "")
    scaling = status.replicas != wanted or bool(result.create) or bool(result.delete)
    set_condition(status, "Scaling", scaling, "Scaling" if scaling else "AtReplicas",
               f"{status.replicas} of {wanted} VMs" if scaling else "")
    rolling = status.updated_replicas < status.replicas
    set_condition(status, "RollingOut", rolling, "RollingOut" if rolling else "Updated",
               f"{status.updated_replicas} of {status.replicas} VMs at revision {revision}" if rolling else "")
    ready = status.ready_replicas == wanted and status.updated_replicas == wanted and status.replicas == wanted
    if result.healed:
        set_condition(status, "ReplicaFailure", True, "AutoHealing",
                   f"replacing {', '.join(result.healed)}: its runs kept failing")
    elif ready:
        set_condition(status, "ReplicaFailure", False, "NoFailure", "")
    set_condition(status, "Ready", ready, "AllReady" if ready else "NotReady",
               "" if ready else f"{status.ready_replicas} of {wanted} VMs Running")


def set_condition(status: pool_pb2.VirtualMachinePoolStatus, type_: str, value: bool, reason: str, message: str) -> None:
    """Set a condition; its transition time moves only when its status does."""
    for condition in status.conditions:
        if condition.type == type_:
            if condition.status != value:
                condition.last_transition_time.CopyFrom(vm_status.now())
            condition.status, condition.reason, condition.message = value, reason, message
            return
    status.conditions.add(type=type_, status=value, reason=reason, message=message,
                          last_transition_time=vm_status.now())
