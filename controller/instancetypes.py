"""Instance types and preferences (issue 12): how a VM that names them gets its values.

An instance type fixes a VM's size; a preference fills what the VM leaves unset. Both are
copied into the VM's spec when it is created, and the copy is recorded as a Revision (KubeVirt's
ControllerRevision) whose name the VM keeps: editing the type later changes no existing VM.

Split so the rules are testable without etcd: ``fetch`` reads what a spec names, ``apply``
copies it into the spec (pure), ``record`` writes the revisions; ``resolve`` does all three and
is what the API and the pool reconciler call.
"""
from __future__ import annotations

import dataclasses

import grpc

from controller.errors import RequestError
from corral.resources import INSTANCE_TYPES, PREFERENCES, REVISIONS
from corral.store import AlreadyExists, Kind, NotFound, Store
from corral.v1 import instancetype_pb2, vm_pb2
from corral.validation import (MAX_GRACE_SECONDS, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB, MACHINE_TYPE,
                               ValidationError, enum_problem, hugepages_problems, label_problems, shown,
                               spec_problems, topology_problem)

#: Annotations of a Revision: the kind and name of what it is a copy of.
SOURCE_KIND_ANNOTATION = "corral.dev/source-kind"
SOURCE_NAME_ANNOTATION = "corral.dev/source-name"
INSTANCE_TYPE_KIND = "InstanceType"
PREFERENCE_KIND = "Preference"


class Unresolvable(RequestError):
    """What a VM names does not exist (FAILED_PRECONDITION: create it, or name another)."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, message)


@dataclasses.dataclass
class Sources:
    """What a VM's references resolved to; ``new`` holds the revisions still to write."""

    instance_type: instancetype_pb2.InstanceTypeSpec | None = None
    instance_type_name: str = ""
    instance_type_revision: str = ""
    preference: instancetype_pb2.PreferenceSpec | None = None
    preference_name: str = ""
    preference_revision: str = ""
    new: list[instancetype_pb2.Revision] = dataclasses.field(default_factory=list)


# -- validation of the catalogue ---------------------------------------------------------------

def instance_type_problems(spec: instancetype_pb2.InstanceTypeSpec) -> list[str]:
    problems: list[str] = []
    if not 1 <= spec.vcpus <= MAX_VCPUS:
        problems.append(f"spec.vcpus must be between 1 and {MAX_VCPUS}, not {spec.vcpus}")
    if not MIN_MEMORY_MIB <= spec.memory_mib <= MAX_MEMORY_MIB:
        problems.append(f"spec.memory_mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, "
                        f"not {spec.memory_mib}")
    if spec.HasField("hugepages"):
        problems.extend(hugepages_problems(spec.hugepages, spec.memory_mib, "spec.hugepages"))
    problems.extend(label_problems(spec.node_selector, "spec.node_selector"))
    return problems


def preference_problems(spec: instancetype_pb2.PreferenceSpec) -> list[str]:
    problems = [problem for problem in (
        enum_problem(spec.disk_bus, vm_pb2.DiskBus, "spec.disk_bus"),
        enum_problem(spec.firmware, vm_pb2.Firmware, "spec.firmware"),
        enum_problem(spec.preferred_cpu_topology, instancetype_pb2.PreferredCpuTopology,
                     "spec.preferred_cpu_topology")) if problem]
    if spec.machine_type and not MACHINE_TYPE.match(spec.machine_type):
        problems.append(f"spec.machine_type {shown(spec.machine_type)} is not a machine type Corral knows: use "
                        "'pc', 'q35', or a versioned 'pc-i440fx-X.Y' or 'pc-q35-X.Y'")
    if (spec.HasField("termination_grace_period_seconds")
            and not 0 <= spec.termination_grace_period_seconds <= MAX_GRACE_SECONDS):
        problems.append(f"spec.termination_grace_period_seconds must be between 0 and {MAX_GRACE_SECONDS}, "
                        f"not {spec.termination_grace_period_seconds}")
    return problems


# -- pure rules ---------------------------------------------------------------------------------

def revision_name(kind: str, name: str, resource_version: int) -> str:
    """The revision of ``name`` at ``resource_version``: its content never changes, so a
    revision of that name, once written, is the right one (create-if-absent is idempotent)."""
    return f"{kind.lower()}-{name}-{resource_version}"


def topology_for(preferred: int, vcpus: int) -> vm_pb2.CpuTopology | None:
    """The CPU topology a preference asks for, laid out over ``vcpus`` (None: no preference)."""
    if vcpus < 1 or preferred == instancetype_pb2.PREFERRED_CPU_TOPOLOGY_UNSPECIFIED:
        return None
    if preferred == instancetype_pb2.PREFERRED_CPU_TOPOLOGY_CORES:
        return vm_pb2.CpuTopology(sockets=1, cores=vcpus, threads=1)
    if preferred == instancetype_pb2.PREFERRED_CPU_TOPOLOGY_THREADS:
        return vm_pb2.CpuTopology(sockets=1, cores=1, threads=vcpus)
    return vm_pb2.CpuTopology(sockets=vcpus, cores=1, threads=1)


def fixed_field_problems(spec: vm_pb2.VirtualMachineSpec, name: str,
                         instance_type: instancetype_pb2.InstanceTypeSpec) -> list[str]:
    """Fields the VM set that its instance type fixes: each named, so the user can drop it."""
    fixed = f"is fixed by instance type {name}: leave it unset"
    problems = [f"spec.{field} {fixed}" for field, is_set in (
        ("vcpus", spec.vcpus != 0), ("memory_mib", spec.memory_mib != 0),
        ("dedicated_cpu_placement", spec.dedicated_cpu_placement), ("hugepages", spec.HasField("hugepages")))
        if is_set]
    for key, value in sorted(instance_type.node_selector.items()):
        if key in spec.node_selector and spec.node_selector[key] != value:
            problems.append(f"spec.node_selector[{shown(key)}] is {shown(spec.node_selector[key])} but instance "
                            f"type {name} fixes it to {shown(value)}: leave it unset (other keys may be added)")
    return problems


def apply(spec: vm_pb2.VirtualMachineSpec, sources: Sources) -> None:
    """Copy the instance type's values into ``spec`` and fill what it left unset from the
    preference; raises ValidationError (nothing changed) when the VM sets what the type fixes."""
    size = sources.instance_type
    if size is not None:
        problems = fixed_field_problems(spec, sources.instance_type_name, size)
        if problems:
            raise ValidationError(problems)
        spec.vcpus = size.vcpus
        spec.memory_mib = size.memory_mib
        spec.dedicated_cpu_placement = size.dedicated_cpu_placement
        if size.HasField("hugepages"):
            spec.hugepages.CopyFrom(size.hugepages)
        spec.node_selector.update(size.node_selector)
        spec.instance_type.name = sources.instance_type_name
        spec.instance_type.revision_name = sources.instance_type_revision
    defaults = sources.preference
    if defaults is not None:
        if spec.disk_bus == vm_pb2.DISK_BUS_UNSPECIFIED:
            spec.disk_bus = defaults.disk_bus
        if not spec.machine_type:
            spec.machine_type = defaults.machine_type
        if spec.firmware == vm_pb2.FIRMWARE_UNSPECIFIED:
            spec.firmware = defaults.firmware
        topology = topology_for(defaults.preferred_cpu_topology, spec.vcpus)
        if not spec.HasField("cpu_topology") and topology is not None:
            spec.cpu_topology.CopyFrom(topology)
        if (not spec.HasField("termination_grace_period_seconds")
                and defaults.HasField("termination_grace_period_seconds")):
            spec.termination_grace_period_seconds = defaults.termination_grace_period_seconds
        spec.preference.name = sources.preference_name
        spec.preference.revision_name = sources.preference_revision


def strip_resolved(spec: vm_pb2.VirtualMachineSpec, instance_type: instancetype_pb2.InstanceTypeSpec | None,
                   preference: instancetype_pb2.PreferenceSpec | None, vcpus: int) -> None:
    """Undo ``apply`` on a spec sent back by a client: drop every value equal to what the
    recorded revisions put there (``vcpus``: the VM's, for the preferred topology), so the
    spec can be resolved again; a value the client changed stays, and is refused if fixed."""
    if instance_type is not None:
        for field in ("vcpus", "memory_mib", "dedicated_cpu_placement"):
            if getattr(spec, field) == getattr(instance_type, field):
                spec.ClearField(field)
        if spec.HasField("hugepages") and spec.hugepages == instance_type.hugepages:
            spec.ClearField("hugepages")
        for key, value in instance_type.node_selector.items():
            if spec.node_selector.get(key) == value:
                del spec.node_selector[key]
    if preference is not None:
        for field in ("disk_bus", "machine_type", "firmware"):
            if getattr(spec, field) == getattr(preference, field):
                spec.ClearField(field)
        if spec.HasField("cpu_topology") and spec.cpu_topology == topology_for(preference.preferred_cpu_topology,
                                                                                 vcpus):
            spec.ClearField("cpu_topology")
        if (spec.HasField("termination_grace_period_seconds")
                and preference.HasField("termination_grace_period_seconds")
                and spec.termination_grace_period_seconds == preference.termination_grace_period_seconds):
            spec.ClearField("termination_grace_period_seconds")


# -- the store ----------------------------------------------------------------------------------

def _pinned(store: Store, ref, kind: str, field: str):
    """The data of revision ``ref.revision_name``, checked to be a copy of ``ref.name``."""
    try:
        revision = store.get(REVISIONS, ref.revision_name)
    except NotFound:
        raise Unresolvable(f"revision {ref.revision_name!r} of {kind} {ref.name!r} not found: leave "
                           "revision_name unset to use the current one") from None
    if (revision.WhichOneof("data") != field
            or revision.metadata.annotations.get(SOURCE_NAME_ANNOTATION) != ref.name):
        raise ValidationError([f"spec.{field}.revision_name {shown(ref.revision_name)} is not a revision of "
                               f"{kind} {ref.name}"])
    return getattr(revision, field)


def _revision(kind: str, obj, field: str) -> instancetype_pb2.Revision:
    revision = instancetype_pb2.Revision()
    revision.metadata.name = revision_name(kind, obj.metadata.name, obj.metadata.resource_version)
    revision.metadata.annotations[SOURCE_KIND_ANNOTATION] = kind
    revision.metadata.annotations[SOURCE_NAME_ANNOTATION] = obj.metadata.name
    getattr(revision, field).CopyFrom(obj.spec)
    return revision


def _fetch_one(store: Store, ref, kind: Kind, source_kind: str, noun: str, field: str, listing: str,
               sources: Sources) -> tuple[object, str]:
    """(the spec, its revision name) of what ``ref`` names: a pinned revision when it gives
    revision_name, else the current object (whose revision is added to sources.new)."""
    if ref.revision_name:
        return _pinned(store, ref, noun, field), ref.revision_name
    try:
        found = store.get(kind, ref.name)
    except NotFound:
        raise Unresolvable(f"{noun} {ref.name!r} not found (spec.{field}.name): create it, or name one that "
                           f"exists ({listing})") from None
    revision = _revision(source_kind, found, field)
    sources.new.append(revision)
    return found.spec, revision.metadata.name


def fetch(store: Store, spec: vm_pb2.VirtualMachineSpec) -> Sources:
    """Read what ``spec`` names: a pinned revision when it gives revision_name, else the current
    instance type or preference (whose revision is then still to write)."""
    sources = Sources()
    if spec.instance_type.name:
        sources.instance_type_name = spec.instance_type.name
        sources.instance_type, sources.instance_type_revision = _fetch_one(
            store, spec.instance_type, INSTANCE_TYPES, INSTANCE_TYPE_KIND, "instance type", "instance_type",
            "InstanceTypeService.ListInstanceTypes, `corral get instancetypes`", sources)
    if spec.preference.name:
        sources.preference_name = spec.preference.name
        sources.preference, sources.preference_revision = _fetch_one(
            store, spec.preference, PREFERENCES, PREFERENCE_KIND, "preference", "preference",
            "PreferenceService.ListPreferences, `corral get preferences`", sources)
    return sources


def record(store: Store, sources: Sources) -> None:
    """Write the revisions ``sources`` still needs; one already there is the same copy."""
    for revision in sources.new:
        try:
            store.create(REVISIONS, revision)
        except AlreadyExists:
            pass


def resolved_problems(spec: vm_pb2.VirtualMachineSpec) -> list[str]:
    """The resolved spec's problems: as any VM's, and its CPU topology against the type's vCPUs."""
    problem = topology_problem(spec)
    return spec_problems(spec) + ([problem] if problem else [])


def names_any(spec: vm_pb2.VirtualMachineSpec) -> bool:
    """Whether the spec names an instance type or a preference (resolve has work to do)."""
    return bool(spec.instance_type.name or spec.preference.name)


def resolve(store: Store, vm: vm_pb2.VirtualMachine, *, dry_run: bool = False) -> Sources | None:
    """Fill ``vm.spec`` from the instance type and preference it names and (unless dry_run)
    record the revisions used; returns what it read (``record`` it later after a dry run).
    Raises ValidationError (INVALID_ARGUMENT) when the VM sets a field its type fixes or the
    result is invalid, Unresolvable (FAILED_PRECONDITION) when what it names does not exist;
    then nothing is written. A VM naming neither is left alone (None)."""
    if not names_any(vm.spec):
        return None
    sources = fetch(store, vm.spec)
    resolved = vm_pb2.VirtualMachineSpec()
    resolved.CopyFrom(vm.spec)
    apply(resolved, sources)
    problems = resolved_problems(resolved)
    if problems:
        raise ValidationError(problems)
    if not dry_run:
        record(store, sources)
    vm.spec.CopyFrom(resolved)
    return sources


def _recorded(store: Store, name: str, field: str):
    if not name:
        return None
    try:
        revision = store.get(REVISIONS, name)
    except NotFound:
        return None
    return getattr(revision, field) if revision.WhichOneof("data") == field else None


def resolve_update(store: Store, current: vm_pb2.VirtualMachine, given: vm_pb2.VirtualMachine) -> Sources:
    """Resolve an updated spec (the client sends back the resolved values): values equal to the
    current revisions' are dropped and resolved again, from the same revision while the
    reference's name is unchanged, from the current type or preference when it changed. Returns
    the sources, whose new revisions the caller records (``record``) once it writes the VM."""
    spec = given.spec
    for ref, now, field in ((spec.instance_type, current.spec.instance_type, "instance_type"),
                            (spec.preference, current.spec.preference, "preference")):
        if not ref.name:
            spec.ClearField(field)  # no longer sized/defaulted by it: the values stay as they are
            continue
        old = _recorded(store, now.revision_name, field)
        if field == "instance_type":
            strip_resolved(spec, old, None, 0)
        else:
            strip_resolved(spec, None, old, current.spec.vcpus)
        if ref.name == now.name and not ref.revision_name:
            ref.revision_name = now.revision_name
        elif ref.name != now.name and ref.revision_name == now.revision_name:
            ref.revision_name = ""  # the old reference's revision, sent back: not a pin
    if not (spec.instance_type.name or spec.preference.name):
        return Sources()
    sources = fetch(store, spec)
    resolved = vm_pb2.VirtualMachineSpec()
    resolved.CopyFrom(spec)
    apply(resolved, sources)
    problems = resolved_problems(resolved)
    if problems:
        raise ValidationError(problems)
    spec.CopyFrom(resolved)
    return sources
