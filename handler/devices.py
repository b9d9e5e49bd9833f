"""A run's disks and cloud-init seed, made ready by the handler before its launcher starts.

The handler is root and trusted; the launcher and QEMU run as the run's own user and may only
touch what is handed to them. So the node-side checks live here: every path a VM names is
resolved (symlinks included) and must land inside one of the node's allowed roots; images are
inspected with an explicit format (never probed) and refused when they carry a backing file or
a qcow2 data-file (KubeVirt CVE-2022-1798, OpenStack's qcow2 data-file advisory: either lets a
guest read any file of the node). Then:

- ephemeral disk: a qcow2 overlay on the base (``-F`` names the base's format) in the run's
  directory, owned by the run's user; the base is only ever read. It goes with the directory.
- persistent disk (and a boot disk, which the guest writes in place): handed to the run's user
  (chown, as KubeVirt's virt-handler does), recorded in root's uid ledger (handler/uids.py) and
  given back when the run is removed, before its uid can be handed out again.
- kernel and initrd: files inside the image roots; the launcher's copy of the VM names the
  resolved paths (node_paths()), so QEMU opens what was checked.
- cloud-init: a NoCloud seed (ISO 9660, label ``cidata``: user-data, meta-data, network-config)
  built with genisoimage in the run's directory.

Files are built in a root-owned scratch directory and renamed into the run's directory, so
nothing the VM's user might have planted there is followed. Tools run from argument lists.
The paths the launcher uses come from corral/rundir.py.
"""
from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.v1 import vm_pb2
from corral.rundir import CLOUD_INIT_SEED_FILE, ephemeral_disk_path

FORMATS = {vm_pb2.DISK_FORMAT_RAW: "raw", vm_pb2.DISK_FORMAT_QCOW2: "qcow2"}
TOOL_TIMEOUT_SECONDS = 60


class DeviceError(Exception):
    """A disk or seed this node refuses or cannot make; str() says which and why."""


@dataclass(frozen=True)
class Roots:
    """The node's allowed directories: base images (ephemeral disks), persistent disks."""

    images: tuple[str, ...]
    disks: tuple[str, ...]


# -- pure checks ----------------------------------------------------------------------------
def inside(path: str, root: str) -> bool:
    """Whether the (resolved) path is the root or below it; a sibling 'root2' is not."""
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root + "/")


def image_problem(info: dict, fmt: str) -> str | None:
    """What `qemu-img info --output=json -f FMT` says is unsafe about a user's image, or None."""
    if info.get("format") != fmt:
        return f"is not {fmt} (qemu-img reads it as {info.get('format')!r})"
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        return f"has a backing file ({backing!r}); images with backing files are refused"
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        return f"has a qcow2 data-file ({data['data-file']!r}); images with external data files are refused"
    return None


def seed_files(vm: vm_pb2.VirtualMachine) -> dict[str, bytes]:
    """The NoCloud seed's files: meta-data (instance-id = the VM's uid, stable across runs;
    local-hostname = its name), user-data, and network-config when given."""
    meta = {"instance-id": vm.metadata.uid, "local-hostname": vm.metadata.name}
    files = {
        "meta-data": json.dumps(meta, indent=1).encode() + b"\n",  # JSON is YAML
        "user-data": vm.spec.cloud_init.user_data.encode(),
    }
    if vm.spec.cloud_init.network_data:
        files["network-config"] = vm.spec.cloud_init.network_data.encode()
    return files


def readable_by(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def overlay_command(base: str, base_format: str, overlay: str) -> list[str]:
    return ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", base, overlay]


def seed_command(output: str, files: list[str]) -> list[str]:
    return ["genisoimage", "-quiet", "-output", output, "-volid", "cidata", "-joliet", "-rock",
            "-input-charset", "utf-8", *files]


# -- node side ------------------------------------------------------------------------------
def resolve_under(path: str, roots: tuple[str, ...], what: str) -> str:
    """The real path of `path`, which must exist and lie inside one of `roots` (each resolved
    too); a symlink that leads out of them is refused."""
    resolved = os.path.realpath(path)
    if not any(inside(resolved, os.path.realpath(root)) for root in roots):
        via = f" (it resolves to {resolved!r})" if resolved != path else ""
        raise DeviceError(f"{what} {path!r} is outside this node's allowed directories "
                          f"{', '.join(roots) or '(none)'}{via}")
    try:
        st = os.stat(resolved)
    except FileNotFoundError:
        raise DeviceError(f"{what} {path!r} does not exist on this node") from None
    except OSError as exc:
        raise DeviceError(f"{what} {path!r}: {exc.strerror}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise DeviceError(f"{what} {path!r} is neither a regular file nor a block device")
    return resolved


def _run(command: list[str], what: str) -> str:
    try:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=TOOL_TIMEOUT_SECONDS, cwd="/")
    except (OSError, subprocess.SubprocessError) as exc:
        raise DeviceError(f"{what}: cannot run {command[0]}: {exc}") from None
    if result.returncode != 0:
        detail = " ".join(result.stderr.strip().splitlines()[-2:])
        raise DeviceError(f"{what}: {command[0]} failed: {detail}")
    return result.stdout


def check_image(path: str, fmt: str, what: str) -> None:
    """Refuse an image with a backing file or data-file (read with the explicit format)."""
    out = _run(["qemu-img", "info", "--output=json", "-f", fmt, path], f"{what} {path!r}")
    try:
        info = json.loads(out)
    except ValueError:
        raise DeviceError(f"{what} {path!r}: qemu-img info gave no JSON") from None
    problem = image_problem(info if isinstance(info, dict) else {}, fmt)
    if problem:
        raise DeviceError(f"{what} {path!r} {problem}")


def node_paths(vm: vm_pb2.VirtualMachine, roots: Roots) -> vm_pb2.VirtualMachine:
    """A copy of vm whose node paths (kernel, initrd, boot disk, persistent disks) are the real
    paths they resolve to inside the allowed roots, for the launcher's copy of the VM: what
    was checked is what QEMU opens, never a link that could be pointed elsewhere later. Paths
    that do not resolve inside the roots are left as they are (prepare() refuses them)."""
    copy = vm_pb2.VirtualMachine()
    copy.CopyFrom(vm)
    boot = copy.spec.boot

    def resolved(path: str, allowed: tuple[str, ...], what: str) -> str:
        try:
            return resolve_under(path, allowed, what) if path else path
        except DeviceError:
            return path

    if boot.WhichOneof("source") == "kernel":
        boot.kernel.kernel_path = resolved(boot.kernel.kernel_path, roots.images, "kernel")
        boot.kernel.initrd_path = resolved(boot.kernel.initrd_path, roots.images, "initrd")
    elif boot.WhichOneof("source") == "disk":
        boot.disk.image_path = resolved(boot.disk.image_path, roots.disks, "boot disk")
    for disk in copy.spec.disks:
        if disk.WhichOneof("source") == "persistent":
            disk.persistent.path = resolved(disk.persistent.path, roots.disks, "persistent disk")
    return copy


#: hand_over(fd, path, mode): give an open file outside the run's directory to the run's user
#: (recorded, handler/uids.py, so it is given back before the uid is reused).
HandOver = Callable[[int, str, int], None]


class RunDevices:
    """Prepares one run: `owner` is the run's uid and gid (None: no per-VM users, QEMU's
    files stay root's and QEMU runs as root, see launcher/host.py prepare_embed_root)."""

    def __init__(self, *, roots: Roots, run_dir: Path, scratch_parent: Path,
                 owner: tuple[int, int] | None, hand_over: HandOver | None = None) -> None:
        self.roots = roots
        self.run_dir = run_dir
        self.scratch_parent = scratch_parent
        self.owner = owner
        self.hand_over = hand_over

    def prepare(self, vm: vm_pb2.VirtualMachine) -> None:
        """Make every disk and the seed ready; raises DeviceError naming the disk and why."""
        self._boot(vm)
        if not vm.spec.disks and not vm.spec.HasField("cloud_init"):
            return
        scratch = Path(tempfile.mkdtemp(prefix=".devices-", dir=self.scratch_parent))
        try:
            for disk in vm.spec.disks:
                what = f"disk {disk.name!r}:"
                if disk.WhichOneof("source") == "ephemeral":
                    self._ephemeral(disk, scratch, what)
                elif disk.WhichOneof("source") == "persistent":
                    self._persistent(disk, what)
                else:
                    raise DeviceError(f"{what} no source")
            if vm.spec.HasField("cloud_init"):
                self._seed(vm, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _ephemeral(self, disk: vm_pb2.Disk, scratch: Path, what: str) -> None:
        fmt = FORMATS.get(disk.ephemeral.base_format)
        if fmt is None:
            raise DeviceError(f"{what} base_format must be RAW or QCOW2")
        base = resolve_under(disk.ephemeral.base_image_path, self.roots.images, f"{what} base image")
        if self.owner is not None and not readable_by(os.stat(base), self.owner[0], {self.owner[1], *_kvm_gid()}):
            raise DeviceError(f"{what} base image {base!r} is not readable by the VMs' users "
                              "(make it world-readable)")
        check_image(base, fmt, f"{what} base image")
        built = scratch / f"disk-{disk.name}.qcow2"
        _run(overlay_command(base, fmt, str(built)), f"{what} creating the overlay")
        self._hand_over(built, Path(ephemeral_disk_path(str(self.run_dir), disk.name)), 0o600)

    def _persistent(self, disk: vm_pb2.Disk, what: str) -> str:
        fmt = FORMATS.get(disk.persistent.format)
        if fmt is None:
            raise DeviceError(f"{what} format must be RAW or QCOW2")
        path = resolve_under(disk.persistent.path, self.roots.disks, f"{what} persistent disk")
        check_image(path, fmt, f"{what} persistent disk")
        self._give(path, disk.read_only)
        return path

    def persistent_disk(self, disk: vm_pb2.Disk) -> str:
        """A persistent disk added to the running VM (hotplug): the same checks and hand-over as
        at start; returns its resolved path (what QEMU must open). DeviceError when refused."""
        if disk.WhichOneof("source") != "persistent":
            raise DeviceError(f"disk {disk.name!r}: only persistent disks can be added to a running VM")
        return self._persistent(disk, f"disk {disk.name!r}:")

    def _give(self, path: str, read_only: bool) -> None:
        """Hand a resolved disk to the run's user (read and, unless read-only, write)."""
        if self.owner is None:
            return
        # O_NOFOLLOW: the path was just resolved; a link swapped in since is not followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode) | stat.S_IRUSR | (0 if read_only else stat.S_IWUSR)
            if self.hand_over is not None:
                self.hand_over(fd, path, mode)
            else:
                os.fchown(fd, *self.owner)
                os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def _boot(self, vm: vm_pb2.VirtualMachine) -> None:
        """Kernel and initrd must be files inside the image roots (readable by the VMs' users
        when isolated: QEMU opens them as the run's user); a boot disk is the guest's own,
        written in place, so it must be inside the disk roots and is handed over like a
        persistent disk. Nothing outside the roots is opened (not even by qemu-img)."""
        boot = vm.spec.boot
        if boot.WhichOneof("source") == "kernel":
            for what, path in (("kernel", boot.kernel.kernel_path), ("initrd", boot.kernel.initrd_path)):
                if not path:
                    continue
                resolved = resolve_under(path, self.roots.images, what)
                st = os.stat(resolved)
                if not stat.S_ISREG(st.st_mode):
                    raise DeviceError(f"{what} {path!r} is not a regular file")
                if self.owner is not None and not readable_by(st, self.owner[0], {self.owner[1], *_kvm_gid()}):
                    raise DeviceError(f"{what} {path!r} is not readable by the VMs' users (make it world-readable)")
        elif boot.WhichOneof("source") == "disk":
            fmt = FORMATS.get(boot.disk.format)
            if fmt is None:
                raise DeviceError("boot disk: format must be RAW or QCOW2")
            resolved = resolve_under(boot.disk.image_path, self.roots.disks, "boot disk")
            check_image(resolved, fmt, "boot disk")
            self._give(resolved, False)

    def _seed(self, vm: vm_pb2.VirtualMachine, scratch: Path) -> None:
        files_dir = scratch / "seed"
        files_dir.mkdir()
        names = []
        for name, content in seed_files(vm).items():
            (files_dir / name).write_bytes(content)
            names.append(str(files_dir / name))
        built = scratch / CLOUD_INIT_SEED_FILE
        _run(seed_command(str(built), names), "cloud-init: building the NoCloud seed")
        self._hand_over(built, self.run_dir / CLOUD_INIT_SEED_FILE, 0o400)

    def _hand_over(self, built: Path, target: Path, mode: int) -> None:
        """Give a file built in the scratch directory to the run: owner, mode, then a rename
        into the run's directory (replacing whatever is there, never following it)."""
        os.chmod(built, mode)
        if self.owner is not None:
            os.chown(built, *self.owner)
        os.rename(built, target)


def _kvm_gid() -> set[int]:
    """The launcher keeps supplementary group kvm (launcher/privileges.py)."""
    try:
        return {grp.getgrnam("kvm").gr_gid}
    except KeyError:
        return set()
