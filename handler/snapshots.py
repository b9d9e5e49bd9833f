"""Disk snapshots on this node: the NodeAgentService calls TakeDiskSnapshots,
RestoreDiskSnapshots and DeleteDiskSnapshots (controller -> handler).

A VM that runs here is snapshotted by its launcher (as the VM's user, in QEMU: see
launcher/snapshots.py). A VM without a run here has its disk files changed with
``qemu-img snapshot`` by the handler, which is root and so treats each disk as hostile:

- the path is resolved inside the node's disk roots (handler/devices.py, symlinks included)
  and opened O_PATH|O_NOFOLLOW; it must be a regular file with one link (a hard link planted
  under the roots could otherwise name a file outside them) and a qcow2 image with no backing
  file or data-file (read through that descriptor, format given, never probed);
- qemu-img opens the file only through ``/proc/self/fd/N`` of that descriptor (what was
  checked is what it opens), from an argument list, as the file's owner when that is not root;
- tags are ``corral-<uuid>``, never a user string (corral/snapshots.py).

qemu-img's own image lock refuses a disk that a QEMU has open, so a run that started
elsewhere meanwhile makes the call fail rather than corrupt the disk; that answer is
UNAVAILABLE (the leader retries it): right after a run ends its QEMU may still be exiting."""
from __future__ import annotations

import json
import logging
import os
import stat
import subprocess

import grpc

from corral.snapshots import valid_tag
from corral.v1 import snapshot_pb2, vm_pb2
from handler.devices import DeviceError, image_problem, resolve_under

log = logging.getLogger(__name__)

#: qemu-img snapshot only writes metadata; a slow shared file system may still take a while.
QEMU_IMG_TIMEOUT_SECONDS = 120
#: Freezing, the QEMU transaction and thawing, in the launcher.
LAUNCHER_TIMEOUT_SECONDS = 120.0


class SnapshotRefused(Exception):
    """The node refuses or cannot do it: (gRPC code, message)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def open_disk(path: str, disk_roots: tuple[str, ...], what: str) -> int:
    """An O_PATH descriptor on the disk file at ``path`` (resolved inside ``disk_roots``),
    never a link's target; refuses anything but a regular file with a single link."""
    try:
        resolved = resolve_under(path, disk_roots, what)
    except DeviceError as exc:
        raise SnapshotRefused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
    try:
        fd = os.open(resolved, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SnapshotRefused(grpc.StatusCode.FAILED_PRECONDITION, f"{what} {path!r}: {exc.strerror}") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file (qcow2 snapshots are kept in files)"
    elif st.st_nlink != 1:
        problem = f"has {st.st_nlink} hard links: refused (one could name a file outside the disk roots)"
    if problem:
        os.close(fd)
        raise SnapshotRefused(grpc.StatusCode.FAILED_PRECONDITION, f"{what} {path!r} {problem}")
    return fd


def _qemu_img(fd: int, args: list[str], what: str) -> str:
    """Run ``qemu-img ARGS /proc/self/fd/FD`` as the file's owner (root only for root's files)."""
    st = os.fstat(fd)
    # setpriv (util-linux) drops to the owner after exec: subprocess's own user=/group= would
    # fork without vfork, and gRPC's fork handlers abort such a child in this threaded process.
    owner = [] if st.st_uid == 0 else ["setpriv", f"--reuid={st.st_uid}", f"--regid={st.st_gid}", "--clear-groups"]
    # qemu-img snapshot takes no -f: the format is given in --image-opts (never probed).
    target = (f"driver=qcow2,file.driver=file,file.filename=/proc/self/fd/{fd}" if "--image-opts" in args
              else f"/proc/self/fd/{fd}")
    command = [*owner, "qemu-img", *args, target]
    try:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd="/",
                                pass_fds=(fd,), timeout=QEMU_IMG_TIMEOUT_SECONDS)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SnapshotRefused(grpc.StatusCode.INTERNAL, f"{what}: cannot run qemu-img: {exc}") from None
    if result.returncode != 0:
        detail = (" ".join(result.stderr.strip().splitlines()[-2:]).replace(target, "the disk")
                  or f"exit status {result.returncode}")
        if "lock" in detail.lower():  # a QEMU has it open: one still exiting after its run ended
            raise SnapshotRefused(grpc.StatusCode.UNAVAILABLE, f"{what} is in use (retried): {detail}")
        raise SnapshotRefused(grpc.StatusCode.INTERNAL, f"{what}: qemu-img {args[0]} failed: {detail}")
    return result.stdout


def image_tags(fd: int, what: str) -> set[str]:
    """The internal snapshot tags of a qcow2 image; refuses one with a backing or data file."""
    out = _qemu_img(fd, ["info", "--output=json", "-f", "qcow2"], what)
    try:
        info = json.loads(out)
    except ValueError:
        raise SnapshotRefused(grpc.StatusCode.INTERNAL, f"{what}: qemu-img info gave no JSON") from None
    problem = image_problem(info if isinstance(info, dict) else {}, "qcow2")
    if problem:
        raise SnapshotRefused(grpc.StatusCode.FAILED_PRECONDITION, f"{what} {problem}")
    return {s.get("name", "") for s in info.get("snapshots") or []}


def offline(action: str, tag: str, disks: list[snapshot_pb2.DiskSnapshotTarget],
            disk_roots: tuple[str, ...]) -> None:
    """``action`` (take, restore, delete) ``tag`` on each disk file; idempotent: a disk that
    already holds (take) or lacks (delete) the tag is left alone."""
    for disk in disks:
        what = f"disk {disk.name!r}"
        if action == "delete" and not os.path.lexists(disk.path):
            log.info("%s: %s is gone, and its snapshots with it", what, disk.path)
            continue
        if disk.format != vm_pb2.DISK_FORMAT_QCOW2:
            raise SnapshotRefused(grpc.StatusCode.FAILED_PRECONDITION, f"{what} is not qcow2")
        fd = open_disk(disk.path, disk_roots, what)
        try:
            tags = image_tags(fd, what)
            if action == "take" and tag not in tags:
                _qemu_img(fd, ["snapshot", "--image-opts", "-c", tag], what)
            elif action == "restore":
                if tag not in tags:
                    raise SnapshotRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                          f"{what} {disk.path!r} holds no snapshot {tag}")
                _qemu_img(fd, ["snapshot", "--image-opts", "-a", tag], what)
            elif action == "delete" and tag in tags:
                _qemu_img(fd, ["snapshot", "--image-opts", "-d", tag], what)
        finally:
            os.close(fd)
        log.info("%s: %s %s done", what, action, tag)


class NodeSnapshots:
    """The three NodeAgentService calls, for handler/server.py."""

    def __init__(self, agent) -> None:
        self.agent = agent

    def _check(self, name: str, tag: str, disks) -> None:
        if not name or not valid_tag(tag):
            raise SnapshotRefused(grpc.StatusCode.INVALID_ARGUMENT, "name and a tag corral-<uuid> are required")
        if not disks or any(not d.name or not d.path for d in disks):
            raise SnapshotRefused(grpc.StatusCode.INVALID_ARGUMENT, "disks must each have a name and a path")

    def _live_launcher(self, name: str, instance_uid: str):
        launcher = self.agent.launchers.get(instance_uid)
        if launcher is None or launcher.vm.metadata.name != name:
            raise SnapshotRefused(grpc.StatusCode.NOT_FOUND,
                                  f"run {instance_uid} of vm {name!r} is not hosted by node {self.agent.node_name}")
        if launcher.finished or launcher.closed.is_set():
            raise SnapshotRefused(grpc.StatusCode.FAILED_PRECONDITION, f"run {instance_uid} of vm {name!r} has finished")
        return launcher

    def _no_run_here(self, name: str) -> None:
        for launcher in list(self.agent.launchers.values()):
            if launcher.vm.metadata.name != name or launcher.finished or launcher.closed.is_set():
                continue
            if self.agent.ending(launcher):  # stopped, its launcher not yet gone: moments
                raise SnapshotRefused(grpc.StatusCode.ABORTED,
                                      f"vm {name!r}: its run {launcher.uid} on node {self.agent.node_name} "
                                      "is still ending: try again shortly")
            raise SnapshotRefused(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"vm {name!r} has a run on node {self.agent.node_name} "
                                  f"({launcher.uid}): its disks are in use")

    def _call_launcher(self, launcher, method: str, request):
        try:
            return getattr(launcher.stub, method)(request, timeout=LAUNCHER_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            raise SnapshotRefused(exc.code(), exc.details() or exc.code().name) from None
        except ValueError:  # the launcher's channel was closed: the run just ended
            raise SnapshotRefused(grpc.StatusCode.FAILED_PRECONDITION, "the run has finished") from None

    def take(self, request: snapshot_pb2.TakeDiskSnapshotsRequest) -> snapshot_pb2.TakeDiskSnapshotsResponse:
        self._check(request.name, request.tag, request.disks)
        if request.instance_uid:
            launcher = self._live_launcher(request.name, request.instance_uid)
            answer = self._call_launcher(launcher, "SnapshotDomainDisks", snapshot_pb2.SnapshotDomainDisksRequest(
                tag=request.tag, disks=[d.name for d in request.disks], freeze=True))
            return snapshot_pb2.TakeDiskSnapshotsResponse(indications=answer.indications,
                                                          freeze_message=answer.freeze_message)
        self._no_run_here(request.name)
        offline("take", request.tag, list(request.disks), self.agent.device_roots.disks)
        return snapshot_pb2.TakeDiskSnapshotsResponse()

    def restore(self, request: snapshot_pb2.RestoreDiskSnapshotsRequest) -> snapshot_pb2.RestoreDiskSnapshotsResponse:
        self._check(request.name, request.tag, request.disks)
        self._no_run_here(request.name)
        offline("restore", request.tag, list(request.disks), self.agent.device_roots.disks)
        return snapshot_pb2.RestoreDiskSnapshotsResponse()

    def delete(self, request: snapshot_pb2.DeleteDiskSnapshotsRequest) -> snapshot_pb2.DeleteDiskSnapshotsResponse:
        self._check(request.name, request.tag, request.disks)
        if request.instance_uid:
            launcher = self._live_launcher(request.name, request.instance_uid)
            self._call_launcher(launcher, "DeleteDomainDiskSnapshots", snapshot_pb2.DeleteDomainDiskSnapshotsRequest(
                tag=request.tag, disks=[d.name for d in request.disks]))
        else:
            self._no_run_here(request.name)
            offline("delete", request.tag, list(request.disks), self.agent.device_roots.disks)
        return snapshot_pb2.DeleteDiskSnapshotsResponse()
