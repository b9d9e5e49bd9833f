"""Hotplug rules shared by the controller (validation, what a resize asks for) and the
launcher (how much a virtio-mem device holds): pure functions, so both sides agree.

A VM that may grow while it runs says so at creation: ``max_vcpus`` (vCPUs are plugged up to
it, ``vcpus`` being how many are) and ``max_memory_mib`` (a virtio-mem device of
``max_memory_mib - memory_mib`` beside the memory the run boots with). Disks added to a
running VM go on its virtio-scsi controller, which every domain has, so no PCI slot runs out.
"""
from __future__ import annotations

from corral.v1 import vm_pb2

#: virtio-mem's block: the request moves in steps of it (2 MiB: x86's transparent huge page).
VIRTIO_MEM_BLOCK_MIB = 2
#: Linux adds memory in blocks of 128 MiB (x86_64) and uses only whole blocks of a virtio-mem
#: region: the device's size is rounded up to them (the request never exceeds the maximum).
GUEST_MEMORY_BLOCK_MIB = 128
#: How long a resize waits for the guest to take the vCPUs or memory before undoing it.
GUEST_TAKE_SECONDS = 15.0
#: Disks added to a running VM: on this bus (virtio-scsi).
HOTPLUG_DISK_BUS = vm_pb2.DISK_BUS_SCSI


def max_vcpus(spec: vm_pb2.VirtualMachineSpec) -> int:
    return spec.max_vcpus or spec.vcpus


def max_memory_mib(spec: vm_pb2.VirtualMachineSpec) -> int:
    return spec.max_memory_mib or spec.memory_mib


def memory_hotplug(spec: vm_pb2.VirtualMachineSpec) -> bool:
    """The VM has a virtio-mem device (its maximum is above what it boots with)."""
    return spec.max_memory_mib > spec.memory_mib > 0


def virtio_mem_size_mib(spec: vm_pb2.VirtualMachineSpec) -> int:
    """The virtio-mem device's size for a run booting with spec.memory_mib: room for the rest up
    to max_memory_mib, in whole guest memory blocks."""
    room = max(spec.max_memory_mib - spec.memory_mib, 0)
    return -(-room // GUEST_MEMORY_BLOCK_MIB) * GUEST_MEMORY_BLOCK_MIB


def problems(spec: vm_pb2.VirtualMachineSpec, *, max_vcpus_cap: int, max_memory_cap: int) -> list[str]:
    """What is wrong with a spec's hotplug maxima (empty: nothing)."""
    found: list[str] = []
    if spec.max_vcpus:
        if not spec.vcpus <= spec.max_vcpus <= max_vcpus_cap:
            found.append(f"spec.max_vcpus must be between spec.vcpus ({spec.vcpus}) and {max_vcpus_cap}, "
                         f"not {spec.max_vcpus}")
        if spec.dedicated_cpu_placement and spec.max_vcpus != spec.vcpus:
            found.append("spec.max_vcpus: vCPU hotplug is not available with dedicated_cpu_placement")
    if spec.max_memory_mib:
        if not spec.memory_mib <= spec.max_memory_mib <= max_memory_cap:
            found.append(f"spec.max_memory_mib must be between spec.memory_mib ({spec.memory_mib}) and "
                         f"{max_memory_cap}, not {spec.max_memory_mib}")
        if spec.HasField("hugepages") and spec.max_memory_mib != spec.memory_mib:
            found.append("spec.max_memory_mib: memory hotplug is not available with hugepages")
    return found


def resize_problems(spec: vm_pb2.VirtualMachineSpec, *, vcpus: int | None, memory_mib: int | None,
                    boot_memory_mib: int) -> list[str]:
    """What is wrong with resizing a VM to (vcpus, memory_mib) (None: unchanged).
    ``boot_memory_mib``: what the current run booted with (memory never shrinks below it)."""
    found: list[str] = []
    if vcpus is not None:
        if not spec.max_vcpus:
            found.append("vcpus: the VM has no spec.max_vcpus (set at creation) so its vCPUs cannot change "
                         "while it runs")
        elif not 1 <= vcpus <= spec.max_vcpus:
            found.append(f"vcpus must be between 1 and spec.max_vcpus ({spec.max_vcpus}), not {vcpus}")
    if memory_mib is not None:
        if not spec.max_memory_mib:
            found.append("memory_mib: the VM has no spec.max_memory_mib above its memory (set at creation) so "
                         "its memory cannot change while it runs")
        elif not boot_memory_mib <= memory_mib <= spec.max_memory_mib:
            found.append(f"memory_mib must be between {boot_memory_mib} (what the run booted with) and "
                         f"spec.max_memory_mib ({spec.max_memory_mib}), not {memory_mib}")
        elif (memory_mib - boot_memory_mib) % VIRTIO_MEM_BLOCK_MIB:
            found.append(f"memory_mib must differ from {boot_memory_mib} by a multiple of {VIRTIO_MEM_BLOCK_MIB} MiB")
    return found
