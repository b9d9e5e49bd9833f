"""Per-VM isolation, the handler's half: a user and a cgroup for each VM.

User: each VM directory is owned by a uid (gid the same number) taken from the node's range
[vm_uid_base, vm_uid_base + UID_COUNT): the lowest one no other VM directory of the node is
owned by, no running process uses and root's ledger (handler/uids.py) does not hold for
disks or save folders an ended run was given. No /etc/passwd entry is needed. The directory's owner
is the record (only root can change it, unlike a file inside it); the directory is 0700.
The launcher starts as root and switches to that owner before it touches the directory
(launcher/privileges.py), so its interpreter can live anywhere the VM users can read.

cgroup: `corral/<instance uid>` in each hierarchy (cgroup v2, or the v1 memory, cpu and pids
hierarchies), with memory = the VM's memory + an overhead for QEMU and the launcher, a CPU
quota of the vCPUs + CPU_OVERHEAD_CORES and a weight from the vCPUs, and a pids limit. The
launcher joins it before it starts QEMU, which inherits it. Without writable cgroups (not
root, read-only mount) the handler says so once and runs VMs without limits.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.v1 import vm_pb2
from handler.uids import UIDS_DIR, UidLedger

log = logging.getLogger(__name__)

UID_COUNT = 65536
CGROUP_PARENT = "corral"
CPU_PERIOD_US = 100_000
#: QEMU's own threads (I/O, TCG, migration) and the launcher, on top of the vCPUs.
CPU_OVERHEAD_CORES = 0.5
PIDS_MAX = 2048
#: v2 controllers enabled for the groups below CGROUP_PARENT.
V2_CONTROLLERS = ("memory", "cpu", "pids")
V1_CONTROLLERS = ("memory", "cpu", "pids")


# -- users ------------------------------------------------------------------------------------
#: Where libvirt locks a console's pty ("LCK.._pts_N" holding the holder's pid).
CONSOLE_LOCK_DIR = Path("/var/lock")


def _read_lock(path: Path) -> str:
    """A lock file's first bytes, opened without trusting it: /var/lock is writable by every VM
    user, so a symlink (to any file), a FIFO (blocking root) or a huge file may stand there."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return os.read(fd, 64).decode("ascii", "replace")
    finally:
        os.close(fd)


def remove_stale_console_locks(lock_dir: Path = CONSOLE_LOCK_DIR) -> list[Path]:
    """Remove pty locks whose holder is dead. libvirt removes a stale lock itself, but with
    per-VM users it cannot remove another user's from the sticky /var/lock, and the next
    guest given that pty then has no console. Root can; returns what it removed."""
    removed = []
    for lock in lock_dir.glob("LCK.._pts_*"):
        try:
            pid = int(_read_lock(lock).split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if pid > 0 and not Path(f"/proc/{pid}").exists():
            try:
                lock.unlink()
                removed.append(lock)
            except OSError:
                continue
    return removed


def lowest_free(used: set[int], base: int, count: int = UID_COUNT) -> int:
    for candidate in range(base, base + count):
        if candidate not in used:
            return candidate
    raise RuntimeError(f"all {count} VM user ids from {base} are in use")


def dir_owners(vms_dir: Path, *, exclude: Path | None = None) -> set[int]:
    owners = set()
    try:
        entries = list(os.scandir(vms_dir))
    except FileNotFoundError:
        return owners
    for entry in entries:
        if exclude is not None and entry.path == str(exclude):
            continue
        try:
            owners.add(entry.stat(follow_symlinks=False).st_uid)
        except OSError:
            continue
    return owners


#: World-writable places where a VM's user could leave files of its own (its uid owns them).
SHARED_WRITABLE_DIRS = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/run/lock"), Path("/dev/mqueue"))


def shared_dir_owners(dirs: tuple[Path, ...] = SHARED_WRITABLE_DIRS) -> set[int]:
    """Owners of what stands directly in the node's world-writable directories: a uid that
    left a file there is not handed to another VM (which would then own that file)."""
    owners: set[int] = set()
    for directory in dirs:
        owners |= dir_owners(directory)
    return owners


def process_uids() -> set[int]:
    """uids of running processes (another handler's VMs on the same machine, a leftover QEMU)."""
    uids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uids.add(os.stat(f"/proc/{entry}").st_uid)
            except OSError:
                continue
    return uids


# -- cgroups ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_quota_us: int
    vcpus: int
    pids: int = PIDS_MAX


def limits_for(vm: vm_pb2.VirtualMachine, *, overhead_mib: int) -> Limits:
    vcpus = max(vm.spec.vcpus, 1)
    return Limits(memory_bytes=(vm.spec.memory_mib + overhead_mib) * 1024 * 1024,
                  cpu_quota_us=int((vcpus + CPU_OVERHEAD_CORES) * CPU_PERIOD_US), vcpus=vcpus)


@dataclass(frozen=True)
class Layout:
    """Where the cgroup hierarchies are: one v2 tree, or a v1 mount per controller."""

    v2: Path | None = None
    v1: tuple[tuple[str, Path], ...] = ()

    @property
    def roots(self) -> list[Path]:
        """Each hierarchy once (v1 controllers can share a mount, e.g. cpu,cpuacct)."""
        if self.v2 is not None:
            return [self.v2]
        seen: list[Path] = []
        for _, path in self.v1:
            if path not in seen:
                seen.append(path)
        return seen


def parse_mounts(text: str, *, v2_controllers: str = "") -> Layout:
    """The layout from /proc/self/mounts. v1 hierarchies that carry memory win (a hybrid
    host's unified tree usually has no controllers); else the cgroup2 mount, when its
    cgroup.controllers (given as v2_controllers) has memory."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mount_point, fstype, options = Path(fields[1]), fields[2], fields[3].split(",")
        if fstype == "cgroup":
            for controller in V1_CONTROLLERS:
                if controller in options and controller not in v1:
                    v1[controller] = mount_point
        elif fstype == "cgroup2" and v2 is None:
            v2 = mount_point
    if "memory" in v1:
        return Layout(v1=tuple(sorted(v1.items())))
    if v2 is not None and "memory" in v2_controllers.split():
        return Layout(v2=v2)
    return Layout()


def detect_layout(mounts: str = "/proc/self/mounts") -> Layout:
    text = Path(mounts).read_text()
    v2_controllers = ""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            try:
                v2_controllers = (Path(fields[1]) / "cgroup.controllers").read_text()
            except OSError:
                pass
            break
    return parse_mounts(text, v2_controllers=v2_controllers)


def group_dirs(layout: Layout, name: str) -> list[Path]:
    return [root / CGROUP_PARENT / name for root in layout.roots]


def limit_writes(layout: Layout, name: str, limits: Limits) -> list[tuple[Path, str]]:
    """(file, value) to write, in order, to apply limits to the group `name`."""
    if layout.v2 is not None:
        group = layout.v2 / CGROUP_PARENT / name
        return [(group / "memory.max", str(limits.memory_bytes)),
                (group / "cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}"),
                (group / "cpu.weight", str(min(100 * limits.vcpus, 10000))),
                (group / "pids.max", str(limits.pids))]
    writes = []
    for controller, root in layout.v1:
        group = root / CGROUP_PARENT / name
        if controller == "memory":
            writes.append((group / "memory.limit_in_bytes", str(limits.memory_bytes)))
        elif controller == "cpu":
            writes += [(group / "cpu.cfs_period_us", str(CPU_PERIOD_US)),
                       (group / "cpu.cfs_quota_us", str(limits.cpu_quota_us)),
                       (group / "cpu.shares", str(min(1024 * limits.vcpus, 262144)))]
        elif controller == "pids":
            writes.append((group / "pids.max", str(limits.pids)))
    return writes


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)


class Cgroups:
    """Creates, fills and removes the VMs' groups; does nothing once found unusable."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.usable = bool(layout.roots)
        self._warned = False
        if not self.usable:
            self._disable("no cgroup v2 tree with the memory controller and no v1 memory hierarchy")

    def _disable(self, why: str) -> None:
        self.usable = False
        if not self._warned:
            self._warned = True
            log.warning("VMs run without cgroup limits: %s", why)

    def _prepare_parents(self) -> None:
        for root in self.layout.roots:
            (root / CGROUP_PARENT).mkdir(exist_ok=True)
        if self.layout.v2 is not None:
            enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
            for parent in (self.layout.v2, self.layout.v2 / CGROUP_PARENT):
                try:
                    _write(parent / "cgroup.subtree_control", enable)
                except OSError as exc:  # already enabled higher up, or not delegable
                    log.debug("enabling %s in %s: %s", enable, parent, exc)

    def create(self, name: str, limits: Limits) -> list[str]:
        """The group with its limits; returns its cgroup.procs files (empty: no cgroups)."""
        if not self.usable:
            return []
        try:
            self._prepare_parents()
            for group in group_dirs(self.layout, name):
                group.mkdir(exist_ok=True)
            for path, value in limit_writes(self.layout, name, limits):
                _write(path, value)
        except OSError as exc:
            self._disable(f"cannot set up cgroup {CGROUP_PARENT}/{name}: {exc}")
            return []
        return [str(group / "cgroup.procs") for group in group_dirs(self.layout, name)]

    @staticmethod
    def join(procs_files: list[str], pid: int) -> None:
        for path in procs_files:
            _write(Path(path), str(pid))

    def remove(self, name: str, *, timeout: float = 2.0) -> None:
        """Remove the group once its processes are gone (a killed QEMU takes a moment)."""
        if not self.layout.roots:
            return
        deadline = time.monotonic() + timeout
        for group in group_dirs(self.layout, name):
            while True:
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        log.warning("cannot remove cgroup %s: %s", group, exc)
                        break
                    time.sleep(0.05)


# -- the whole -----------------------------------------------------------------------------
class Isolation:
    """What the handler needs to run VMs isolated; None of it when isolation is off."""

    def __init__(self, *, uid_base: int, memory_overhead_mib: int, cgroups: Cgroups,
                 ledger: UidLedger | None = None) -> None:
        self.uid_base = uid_base
        self.memory_overhead_mib = memory_overhead_mib
        self.cgroups = cgroups
        self.ledger = ledger  # what each uid was given (handler/uids.py); None: directories only
        self.cache_ready = threading.Event()
        self._lock = threading.Lock()

    def claim_dir(self, vm_dir: Path) -> int:
        """Give vm_dir (just made by root) its own user, unless it has one; returns it. A uid
        is free when no VM directory is its, no process runs as it, nothing directly in /tmp
        and the like is its, and the ledger holds nothing of it (a disk or save folder handed
        to an ended run and not given back)."""
        with self._lock:
            current = os.stat(vm_dir, follow_symlinks=False).st_uid
            if self.uid_base <= current < self.uid_base + UID_COUNT:
                if self.ledger is not None:
                    self.ledger.claim(current, vm_dir.name)
                return current
            used = dir_owners(vm_dir.parent, exclude=vm_dir) | process_uids() | shared_dir_owners()
            if self.ledger is not None:
                used |= self.ledger.in_use()
            uid = lowest_free(used, self.uid_base)
            if self.ledger is not None:
                self.ledger.claim(uid, vm_dir.name)
            os.chown(vm_dir, uid, uid, follow_symlinks=False)
            os.chmod(vm_dir, 0o700)
            return uid

    def hand_over(self, fd: int, path: str, owner: tuple[int, int], mode: int | None = None) -> None:
        """Give an open file or folder outside the run's directory to the run's user,
        recorded so that it is given back before the uid is handed out again."""
        if self.ledger is not None:
            self.ledger.hand_over(fd, path, *owner, mode=mode)
            return
        os.fchown(fd, *owner)
        if mode is not None:
            os.fchmod(fd, mode)

    def give_back_path(self, uid: int, path: str) -> None:
        if self.ledger is not None:
            self.ledger.give_back_path(uid, path)

    def release(self, uid: int) -> bool:
        """The run of uid is gone (directory removed): give back what it was handed, free it."""
        if self.ledger is None or not self.uid_base <= uid < self.uid_base + UID_COUNT:
            return True
        return self.ledger.release(uid)

    def cgroup_for(self, name: str, vm: vm_pb2.VirtualMachine) -> list[str]:
        return self.cgroups.create(name, limits_for(vm, overhead_mib=self.memory_overhead_mib))

    def remove_cgroup(self, name: str) -> None:
        self.cgroups.remove(name)

    def wait_for_cache(self, timeout: float = 30.0) -> None:
        """Let the first launchers find the capabilities cache the handler is warming."""
        self.cache_ready.wait(timeout)


def hand_over_to(isolation: Isolation | None, owner: tuple[int, int]) -> Callable[[int, str, int], None]:
    """hand_over(fd, path, mode) giving open files to a run's user: through the uid ledger when
    isolated (so they are given back before the uid is reused), else a plain fchown."""
    if isolation is not None:
        return lambda fd, path, mode: isolation.hand_over(fd, path, owner, mode)

    def plain(fd: int, path: str, mode: int) -> None:
        os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    return plain


def isolation_problem(launcher_base: list[str], uid: int) -> str | None:
    """Why launchers could not run as VM user `uid` (None: they can): their interpreter and
    code must be readable by those users. Checked by running `--help` as that user."""
    try:
        result = subprocess.run([*launcher_base, "--help"], user=uid, group=uid, extra_groups=[],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, cwd="/", timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run the launcher as uid {uid}: {exc}"
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return f"the launcher does not start as uid {uid} (its files must be readable by VM users): {' '.join(tail)}"
    return None


def warm_capabilities_cache(command: list[str], *, log_path: Path, done: threading.Event) -> None:
    """Run the launcher's capabilities probe as root, filling the node's shared cache that
    VM users may read but not write (so no VM can poison another's capabilities)."""
    started = time.monotonic()
    try:
        with open(log_path, "ab") as log_file:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, cwd="/", timeout=120)
        if result.returncode != 0:
            log.warning("warming the capabilities cache failed (exit %d, see %s)", result.returncode, log_path)
        else:
            log.info("capabilities cache warm after %.2fs", time.monotonic() - started)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("warming the capabilities cache failed: %s", exc)
    finally:
        done.set()


def prepare_state_dir(state_dir: Path, cache_dir: Path) -> None:
    """VM users must reach their directories below state_dir/vms, read the fence file and the
    capabilities cache: search (x) on the way, read on the cache; nothing is listable else."""
    for path in (state_dir, state_dir / "vms"):
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, os.stat(path).st_mode & 0o7777 | 0o011)
    os.chmod(cache_dir, os.stat(cache_dir).st_mode & 0o7777 | 0o055)


def setup(*, mode: str, uid_base: int, memory_overhead_mib: int, launcher_base: list[str],
          warm_command: list[str], state_dir: Path, cache_dir: Path) -> Isolation | None:
    """Isolation as the settings ask, or None (off, or auto without root or usable launcher
    files). Raises RuntimeError when it is on and cannot work."""
    if mode == "off":
        return None
    problem = None
    if os.geteuid() != 0:
        problem = "the handler does not run as root"
    else:
        problem = isolation_problem(launcher_base, uid_base + UID_COUNT - 1)
    if problem:
        if mode == "on":
            raise RuntimeError(f"isolation is on but {problem}")
        log.warning("per-VM isolation is off: %s", problem)
        return None
    prepare_state_dir(state_dir, cache_dir)
    isolation = Isolation(uid_base=uid_base, memory_overhead_mib=memory_overhead_mib,
                          cgroups=Cgroups(detect_layout()),
                          ledger=UidLedger(state_dir / UIDS_DIR, uid_range=range(uid_base, uid_base + UID_COUNT)))
    threading.Thread(target=warm_capabilities_cache, args=(warm_command,), name="warm-capabilities",
                     kwargs={"log_path": state_dir / "warm-cache.log", "done": isolation.cache_ready},
                     daemon=True).start()
    log.info("per-VM isolation on: VM users from uid %d, cgroups %s", uid_base,
             ", ".join(str(root / CGROUP_PARENT) for root in isolation.cgroups.layout.roots) or "none")
    return isolation
