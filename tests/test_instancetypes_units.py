"""Unit tests of instance type and preference resolution (controller/instancetypes.py) and of
the validation of the fields they fill: pure functions, no etcd."""

import pytest

from controller import instancetypes as it
from corral.v1 import instancetype_pb2, vm_pb2
from corral.validation import ValidationError, spec_problems, subdomain_problem


def small() -> instancetype_pb2.InstanceTypeSpec:
    return instancetype_pb2.InstanceTypeSpec(vcpus=2, memory_mib=256, node_selector={"tier": "gold"})


def q35() -> instancetype_pb2.PreferenceSpec:
    spec = instancetype_pb2.PreferenceSpec(disk_bus=vm_pb2.DISK_BUS_SATA, machine_type="q35",
                                           firmware=vm_pb2.FIRMWARE_BIOS,
                                           preferred_cpu_topology=instancetype_pb2.PREFERRED_CPU_TOPOLOGY_CORES)
    spec.termination_grace_period_seconds = 30
    return spec


def sources() -> it.Sources:
    return it.Sources(instance_type=small(), instance_type_name="u1.small",
                      instance_type_revision="instancetype-u1.small-7", preference=q35(),
                      preference_name="linux.q35", preference_revision="preference-linux.q35-9")


def vm_spec() -> vm_pb2.VirtualMachineSpec:
    spec = vm_pb2.VirtualMachineSpec()
    spec.boot.kernel.kernel_path = "/guest/vmlinuz"
    spec.instance_type.name = "u1.small"
    spec.preference.name = "linux.q35"
    return spec


def test_apply_copies_the_type_and_fills_defaults() -> None:
    spec = vm_spec()
    spec.node_selector["zone"] = "a"
    it.apply(spec, sources())
    assert (spec.vcpus, spec.memory_mib) == (2, 256)
    assert dict(spec.node_selector) == {"zone": "a", "tier": "gold"}
    assert spec.instance_type.revision_name == "instancetype-u1.small-7"
    assert spec.preference.revision_name == "preference-linux.q35-9"
    assert (spec.disk_bus, spec.machine_type, spec.firmware) == (vm_pb2.DISK_BUS_SATA, "q35", vm_pb2.FIRMWARE_BIOS)
    assert spec.cpu_topology == vm_pb2.CpuTopology(sockets=1, cores=2, threads=1)
    assert spec.termination_grace_period_seconds == 30
    assert spec_problems(spec) == []


def test_a_preference_never_overrides_what_the_vm_set() -> None:
    spec = vm_spec()
    spec.disk_bus = vm_pb2.DISK_BUS_VIRTIO
    spec.machine_type = "pc"
    spec.termination_grace_period_seconds = 0  # set to 0 is set
    spec.cpu_topology.CopyFrom(vm_pb2.CpuTopology(sockets=2, cores=1, threads=1))
    it.apply(spec, sources())
    assert (spec.disk_bus, spec.machine_type) == (vm_pb2.DISK_BUS_VIRTIO, "pc")
    assert spec.termination_grace_period_seconds == 0
    assert spec.cpu_topology.sockets == 2


@pytest.mark.parametrize("field,value", [("vcpus", 4), ("memory_mib", 512), ("dedicated_cpu_placement", True)])
def test_a_vm_may_not_set_what_its_type_fixes(field: str, value) -> None:
    spec = vm_spec()
    setattr(spec, field, value)
    before = spec.SerializeToString()
    with pytest.raises(ValidationError, match=f"spec.{field} is fixed by instance type u1.small: leave it unset"):
        it.apply(spec, sources())
    assert spec.SerializeToString() == before  # nothing half-applied


def test_node_selector_may_add_but_not_change_the_types_keys() -> None:
    spec = vm_spec()
    spec.node_selector["tier"] = "gold"  # the same value: fine
    it.apply(spec, sources())
    spec = vm_spec()
    spec.node_selector["tier"] = "bronze"
    with pytest.raises(ValidationError, match=r"spec.node_selector\['tier'\]"):
        it.apply(spec, sources())


@pytest.mark.parametrize("preferred,expected", [
    (instancetype_pb2.PREFERRED_CPU_TOPOLOGY_UNSPECIFIED, None),
    (instancetype_pb2.PREFERRED_CPU_TOPOLOGY_SOCKETS, (4, 1, 1)),
    (instancetype_pb2.PREFERRED_CPU_TOPOLOGY_CORES, (1, 4, 1)),
    (instancetype_pb2.PREFERRED_CPU_TOPOLOGY_THREADS, (1, 1, 4))])
def test_preferred_topology(preferred: int, expected) -> None:
    topology = it.topology_for(preferred, 4)
    assert (None if topology is None else (topology.sockets, topology.cores, topology.threads)) == expected


def test_strip_undoes_apply_but_keeps_changes() -> None:
    spec = vm_spec()
    spec.node_selector["zone"] = "a"
    it.apply(spec, sources())
    unchanged = vm_spec()
    unchanged.node_selector["zone"] = "a"
    unchanged.instance_type.revision_name = spec.instance_type.revision_name
    unchanged.preference.revision_name = spec.preference.revision_name
    it.strip_resolved(spec, small(), q35(), 2)
    assert spec == unchanged
    spec = vm_spec()
    it.apply(spec, sources())
    spec.vcpus = 8  # a client changed a fixed value: it stays, and apply refuses it
    it.strip_resolved(spec, small(), q35(), 2)
    assert spec.vcpus == 8 and spec.memory_mib == 0
    with pytest.raises(ValidationError, match="spec.vcpus is fixed"):
        it.apply(spec, sources())


def test_revision_names() -> None:
    from corral.validation import MAX_CATALOGUE_NAME_LENGTH
    assert it.revision_name(it.INSTANCE_TYPE_KIND, "u1.small", 42) == "instancetype-u1.small-42"
    assert subdomain_problem(it.revision_name(it.PREFERENCE_KIND, "linux.q35", 7)) is None
    # The longest name a type may have still makes a valid revision name at etcd's largest revision.
    longest = "a" * MAX_CATALOGUE_NAME_LENGTH
    assert subdomain_problem(it.revision_name(it.INSTANCE_TYPE_KIND, longest, 2 ** 63 - 1)) is None


@pytest.mark.parametrize("name,ok", [("u1.small", True), ("linux", True), ("a-b.c-d.e", True),
                                     ("U1.small", False), ("u1..small", False), (".u1", False), ("u1.", False),
                                     ("u1_small", False), ("-u1", False), ("a" * 254, False), ("", False),
                                     ("u1.small\n", False)])
def test_subdomain_names(name: str, ok: bool) -> None:
    assert (subdomain_problem(name) is None) == ok


def test_validation_of_the_new_vm_fields() -> None:
    spec = vm_pb2.VirtualMachineSpec(vcpus=4, memory_mib=1000)
    spec.boot.kernel.kernel_path = "/guest/vmlinuz"
    assert spec_problems(spec) == []
    for machine, ok in (("pc", True), ("q35", True), ("pc-i440fx-7.2", True), ("pc-q35-8.0", True),
                        ("microvm", False), ("pc-q35-7.2 -x", False), ("Q35", False)):
        spec.machine_type = machine
        assert (spec_problems(spec) == []) == ok, machine
    spec.machine_type = ""
    spec.cpu_topology.CopyFrom(vm_pb2.CpuTopology(sockets=1, cores=2, threads=1))
    assert any("= 2 vCPUs, but spec.vcpus is 4" in p for p in spec_problems(spec))
    spec.cpu_topology.cores = 0
    assert any("spec.cpu_topology.cores must be between 1" in p for p in spec_problems(spec))
    spec.ClearField("cpu_topology")
    spec.hugepages.page_size = "4Ki"
    assert any("spec.hugepages.page_size '4Ki'" in p for p in spec_problems(spec))
    spec.hugepages.page_size = "2Mi"
    assert spec_problems(spec) == []
    spec.hugepages.page_size = "1Gi"  # 1000 MiB is not whole 1 GiB pages
    assert any("must be a multiple" in p for p in spec_problems(spec))
    spec.ClearField("hugepages")
    spec.disk_bus = 9
    spec.firmware = 5
    problems = " ".join(spec_problems(spec))
    assert "spec.disk_bus 9 is not one of" in problems and "spec.firmware 5 is not one of" in problems


def test_a_vm_with_an_instance_type_may_leave_its_size_unset_but_not_without_one() -> None:
    spec = vm_pb2.VirtualMachineSpec()
    spec.boot.kernel.kernel_path = "/guest/vmlinuz"
    assert any("spec.vcpus must be" in p for p in spec_problems(spec))
    spec.instance_type.name = "u1.small"
    assert spec_problems(spec) == []
    spec.instance_type.name = "U1 small"
    assert any("spec.instance_type.name 'U1 small' is not a DNS-1123 subdomain" in p for p in spec_problems(spec))


def test_catalogue_validation() -> None:
    assert it.instance_type_problems(small()) == []
    assert it.preference_problems(q35()) == []
    bad = instancetype_pb2.InstanceTypeSpec(vcpus=0, memory_mib=8)
    bad.hugepages.page_size = "3Mi"
    problems = " ".join(it.instance_type_problems(bad))
    assert "spec.vcpus must be between 1" in problems and "spec.memory_mib" in problems and "3Mi" in problems
    bad_pref = instancetype_pb2.PreferenceSpec(machine_type="virt", disk_bus=7, preferred_cpu_topology=9)
    problems = " ".join(it.preference_problems(bad_pref))
    assert "'virt'" in problems and "spec.disk_bus 7" in problems and "spec.preferred_cpu_topology 9" in problems


def test_a_vm_topology_is_checked_against_the_types_vcpus_once_resolved() -> None:
    spec = vm_spec()
    spec.cpu_topology.CopyFrom(vm_pb2.CpuTopology(sockets=2, cores=2, threads=1))
    assert spec_problems(spec) == []  # vcpus still unknown: not judged yet
    it.apply(spec, sources())
    assert any("= 4 vCPUs, but spec.vcpus is 2" in p for p in it.resolved_problems(spec))


def test_dedicated_vcpus_take_whole_cpus_never_overcommitted() -> None:
    from corral import scheduling
    from handler.node import node_record
    node = node_record(name="n1", labels={}, vcpus=4, memory_mib=8192, hypervisor="qemu", cpu_allocation_ratio=10)

    def vm(name: str, vcpus: int, dedicated: bool) -> vm_pb2.VirtualMachine:
        made = vm_pb2.VirtualMachine()
        made.metadata.name = name
        made.spec.vcpus, made.spec.memory_mib, made.spec.dedicated_cpu_placement = vcpus, 64, dedicated
        made.status.node_name, made.status.phase = "n1", vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
        return made

    # 3 of the 4 CPUs dedicated: 10 shared vCPUs fit on the last one, and no further dedicated CPU.
    running = [vm("d", 3, True)] + [vm(f"s{i}", 1, False) for i in range(9)]
    views = scheduling.build_views([node], {"n1"}, running)
    assert scheduling.choose_node(vm("s9", 1, False).spec, views) == ("n1", "")
    assert scheduling.choose_node(vm("d2", 1, True).spec, views) == \
        (None, "0/1 nodes are available: 1 Insufficient dedicated cpus.")
    # Without the shared ones, the fourth CPU can be dedicated, but not a fifth.
    views = scheduling.build_views([node], {"n1"}, [vm("d", 3, True)])
    assert scheduling.choose_node(vm("d2", 1, True).spec, views) == ("n1", "")
    views["n1"].add(vm("d2", 1, True).spec)
    assert scheduling.choose_node(vm("d3", 1, True).spec, views)[0] is None
    assert scheduling.choose_node(vm("s", 1, False).spec, views)[0] is None  # every CPU is someone's
    # The watch cache's running totals agree with a fresh count.
    allocation = scheduling.Allocation()
    for made in running:
        allocation.change(made.spec, +1)
    allocation.change(running[0].spec, -1)
    assert (allocation.vcpus, allocation.dedicated_vcpus) == (9, 0)


def test_node_cpu_allocation(tmp_path) -> None:
    from handler import cpus
    vms = tmp_path / "vms"
    for name in ("aaa", "bbb", "ccc"):
        (vms / name).mkdir(parents=True)
    host = [0, 1, 2, 3]
    assert cpus.allocate(vms / "aaa", 2, host) == (2, 3)  # the highest: CPU 0 stays the host's longest
    assert cpus.allocate(vms / "aaa", 2, host) == (2, 3)  # kept across a handler restart
    assert cpus.allocate(vms / "bbb", 1, host) == (1,)
    assert cpus.allocate(vms / "ccc", 2, host) is None  # only CPU 0 is free: too few
    (vms / "aaa").rmdir()  # a run whose directory is gone holds nothing
    assert cpus.allocate(vms / "ccc", 2, host) == (2, 3)
    cpus.release(vms / "bbb")
    assert not (tmp_path / "runs" / "bbb.cpuset").exists()
    assert cpus.parse_cpuset("3, 5\n") == (3, 5)
    for bad in ("1,1", "-1", "x"):
        with pytest.raises(ValueError):
            cpus.parse_cpuset(bad)
