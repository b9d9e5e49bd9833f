"""NodeAgentService's hotplug calls (handler/server.py forwards them here): a disk added to a
running VM is prepared exactly as a disk of a starting run is (handler/devices.py: the node's
disk roots, its real path, qemu-img info refusing backing and data files, handed to the run's
user), then the run's launcher attaches the resolved path; detaches and resizes go straight to
the launcher, which checks what the guest took (launcher/hotplug.py)."""
from __future__ import annotations

import logging
import os
import stat
from typing import TYPE_CHECKING

import grpc

from corral.v1 import launcher_pb2, node_agent_pb2, vm_pb2
from handler.devices import DeviceError, RunDevices, resolve_under
from handler.isolation import hand_over_to
from handler.launchers import Launcher, run_owner

if TYPE_CHECKING:
    from handler.agent import NodeAgent

log = logging.getLogger(__name__)

#: Attaching and detaching answer in about a second; a resize waits for the guest (30 s).
LAUNCHER_HOTPLUG_TIMEOUT_SECONDS = 75.0


def _call(launcher: Launcher, request, context: grpc.ServicerContext, method: str, launcher_request):
    try:
        return getattr(launcher.stub, method)(launcher_request, timeout=LAUNCHER_HOTPLUG_TIMEOUT_SECONDS)
    except grpc.RpcError as exc:
        context.abort(exc.code(), f"vm {request.name!r}: {exc.details()}")
    except ValueError:  # the launcher's channel was closed: the run just ended
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"run {request.instance_uid} of vm "
                      f"{request.name!r} has finished")


def attach_disk(agent: NodeAgent, launcher: Launcher, request: node_agent_pb2.AttachInstanceDiskRequest,
                context: grpc.ServicerContext) -> node_agent_pb2.AttachInstanceDiskResponse:
    disk = vm_pb2.Disk()
    disk.CopyFrom(request.disk)
    owner = run_owner(launcher.vm_dir) if agent.isolation is not None else None
    devices = RunDevices(roots=agent.device_roots, run_dir=launcher.vm_dir, scratch_parent=agent.state_dir,
                         owner=owner, hand_over=hand_over_to(agent.isolation, owner) if owner else None)
    try:
        disk.persistent.path = devices.persistent_disk(disk)
        block = stat.S_ISBLK(os.stat(disk.persistent.path).st_mode)
    except (DeviceError, OSError) as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"node {agent.node_name} refuses the disk: {exc}")
    response = _call(launcher, request, context, "AttachDisk",
                     launcher_pb2.AttachDiskRequest(disk=disk, block_device=block))
    log.info("vm %s: disk %s attached (%s)", request.name, disk.name, disk.persistent.path)
    return node_agent_pb2.AttachInstanceDiskResponse(status=response.status)


def detach_disk(agent: NodeAgent, launcher: Launcher, request: node_agent_pb2.DetachInstanceDiskRequest,
                context: grpc.ServicerContext) -> node_agent_pb2.DetachInstanceDiskResponse:
    response = _call(launcher, request, context, "DetachDisk",
                     launcher_pb2.DetachDiskRequest(disk_name=request.disk_name))
    log.info("vm %s: disk %s detached", request.name, request.disk_name)
    _give_back(agent, launcher, request.path)
    return node_agent_pb2.DetachInstanceDiskResponse(status=response.status)


def _give_back(agent: NodeAgent, launcher: Launcher, path: str) -> None:
    """A detached persistent disk goes back to root now (not when the run ends): the run's user
    keeps no hold on a disk its guest no longer has (the uid ledger records what was handed)."""
    if agent.isolation is None or not path:
        return
    try:
        resolved = resolve_under(path, agent.device_roots.disks, "persistent disk")
        agent.isolation.give_back_path(run_owner(launcher.vm_dir)[0], resolved)
    except (DeviceError, OSError) as exc:
        log.warning("vm %s: could not give %s back after the detach: %s", launcher.vm.metadata.name, path, exc)


def resize(launcher: Launcher, request: node_agent_pb2.ResizeInstanceRequest,
           context: grpc.ServicerContext) -> node_agent_pb2.ResizeInstanceResponse:
    response = _call(launcher, request, context, "ResizeDomain",
                     launcher_pb2.ResizeDomainRequest(vcpus=request.vcpus, memory_mib=request.memory_mib))
    log.info("vm %s: resized to %d vCPUs, %d MiB", request.name, response.vcpus, response.memory_mib)
    return node_agent_pb2.ResizeInstanceResponse(status=response.status, vcpus=response.vcpus,
                                                 memory_mib=response.memory_mib)
