"""Hotplug verbs: addvolume and removevolume (virtctl's, always persisted: the disk goes into
the VM's spec once the running guest has it), set-vcpus and set-memory (live up to the VM's
max_vcpus / max_memory_mib, then in its spec)."""

from __future__ import annotations

import re

import click
import grpc

from corral.cli.base import cli, client_of, rpc_message
from corral.cli.kinds import VM, names_of
from corral.v1 import vm_pb2

_FORMATS = {"raw": vm_pb2.DISK_FORMAT_RAW, "qcow2": vm_pb2.DISK_FORMAT_QCOW2}
_UNITS = {"": 1, "mi": 1, "m": 1, "gi": 1024, "g": 1024}


def parse_mib(text: str) -> int:
    """'512', '512Mi', '2Gi' -> MiB."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise click.BadParameter(f"{text!r} is not a size in MiB (512, 512Mi, 2Gi)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _one_vm(name: str) -> str:
    names = names_of(VM, (name,))
    if len(names) != 1:
        raise click.UsageError("give one virtual machine")
    return names[0]


def _call(ctx: click.Context, name: str, method: str, request, done: str) -> int:
    try:
        vm = client_of(ctx).vm_call(method, request)
    except grpc.RpcError as err:
        click.echo(f"error: {rpc_message(err)}", err=True)
        return 1
    click.echo(f"{VM}/{name} {done} ({vm.status.printable_status})")
    return 0


_version = click.option("--resource-version", type=click.IntRange(min=1), default=None,
                        help="Refuse (ABORTED) unless the VM is at this version.")


@cli.command("addvolume")
@click.argument("name", metavar="NAME")
@click.option("--volume-name", required=True, help="The disk's name (its serial in the guest).")
@click.option("--path", required=True, help="The disk image (or block device) on the VM's node.")
@click.option("--format", "fmt", type=click.Choice(sorted(_FORMATS)), default="raw", show_default=True)
@click.option("--read-only", is_flag=True, help="The guest cannot write to it.")
@_version
@click.pass_context
def addvolume(ctx: click.Context, name: str, volume_name: str, path: str, fmt: str, read_only: bool,
              resource_version: int | None) -> int:
    """Add a persistent disk: attached live (SCSI) when the VM runs, and kept in its spec."""
    vm = _one_vm(name)
    disk = vm_pb2.Disk(name=volume_name, persistent=vm_pb2.PersistentDisk(path=path, format=_FORMATS[fmt]),
                       read_only=read_only)
    request = vm_pb2.AddVolumeRequest(name=vm, disk=disk, resource_version=resource_version or 0)
    return _call(ctx, vm, "AddVolume", request, f"volume {volume_name} added")


@cli.command("removevolume")
@click.argument("name", metavar="NAME")
@click.option("--volume-name", required=True, help="The disk's name.")
@_version
@click.pass_context
def removevolume(ctx: click.Context, name: str, volume_name: str, resource_version: int | None) -> int:
    """Remove a disk: detached live when the VM runs, and from its spec."""
    vm = _one_vm(name)
    request = vm_pb2.RemoveVolumeRequest(name=vm, disk_name=volume_name, resource_version=resource_version or 0)
    return _call(ctx, vm, "RemoveVolume", request, f"volume {volume_name} removed")


@cli.command("set-vcpus")
@click.argument("name", metavar="NAME")
@click.argument("vcpus", type=click.IntRange(min=1))
@_version
@click.pass_context
def set_vcpus(ctx: click.Context, name: str, vcpus: int, resource_version: int | None) -> int:
    """Set a VM's vCPUs: plugged live (up to its max_vcpus) when it runs."""
    vm = _one_vm(name)
    request = vm_pb2.ResizeVirtualMachineRequest(name=vm, vcpus=vcpus, resource_version=resource_version or 0)
    return _call(ctx, vm, "ResizeVirtualMachine", request, f"has {vcpus} vCPUs")


@cli.command("set-memory")
@click.argument("name", metavar="NAME")
@click.argument("memory")
@_version
@click.pass_context
def set_memory(ctx: click.Context, name: str, memory: str, resource_version: int | None) -> int:
    """Set a VM's memory (512Mi, 2Gi): plugged live (virtio-mem, up to its max_memory_mib)."""
    vm = _one_vm(name)
    mib = parse_mib(memory)
    request = vm_pb2.ResizeVirtualMachineRequest(name=vm, memory_mib=mib, resource_version=resource_version or 0)
    return _call(ctx, vm, "ResizeVirtualMachine", request, f"has {mib} MiB")
