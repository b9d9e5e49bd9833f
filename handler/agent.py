"""The node agent: makes the node run exactly the VMs assigned to it.

Level-triggered: each pass compares what the controller assigned (kept from the assignment
stream) with the launcher directories on this node, starts or re-adopts what is missing,
stops what is no longer assigned, and reports each VM's observed phase. Slow stops run in a
small pool so one stubborn guest does not hold up the others."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from corral import status as vm_status
from corral.v1 import handler_pb2, launcher_pb2, vm_pb2
from handler.control import ControllerStubs
from handler.run_end import RunEnding
from handler.fencing import FenceDeadline, InstanceLocks
from handler import networks as node_networks
from handler import cpus
from handler.devices import DeviceError, Roots, RunDevices, node_paths
from handler.isolation import Isolation, hand_over_to
from handler.launchers import VM_FILE, Launcher, run_owner
from handler.spares import SparePool
from handler.vm_files import run_record_path
from handler.migration import Migrations, is_migrated_away
from handler.migration_proxy import MigrationTLS

log = logging.getLogger(__name__)

RESYNC_SECONDS = 2.0
#: A report the store does not reflect yet is sent again after this long.
REPORT_AGAIN_SECONDS = 5.0
#: After this many launchers in a row died at start, the VM is reported Failed.
MAX_QUICK_DEATHS = 5
RUNNABLE = (vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED, vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING)
DS = launcher_pb2


def observed_phase(status: launcher_pb2.DomainStatus | None) -> tuple[int, str, str] | None:
    """(phase, reason, message) a domain status means, or None while it is still starting."""
    if status is None or is_migrated_away(status):  # the guest left: not the run's end
        return None
    state = status.state
    if state in (DS.DOMAIN_STATE_RUNNING, DS.DOMAIN_STATE_PAUSED, DS.DOMAIN_STATE_SHUTTING_DOWN):
        return vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, "", ""
    if state == DS.DOMAIN_STATE_SHUTOFF:
        return vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, "GuestShutdown", "the guest powered off"
    if state == DS.DOMAIN_STATE_CRASHED:
        return vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED, "Crashed", status.message or status.reason
    return None


class NodeAgent(RunEnding):
    def __init__(self, *, node_name: str, state_dir: Path, launcher_command: list[str],
                 stubs: ControllerStubs, grace_seconds: int, locks: InstanceLocks,
                 deadline: FenceDeadline, isolation: Isolation | None = None,
                 save_dir: Path | None = None, device_roots: Roots | None = None,
                 allowed_bridges: tuple[str, ...] = (),
                 migration_listen: str = "", advertise_host: str = "",
                 migration_tls: MigrationTLS | None = None) -> None:
        self.node_name = node_name
        self.device_roots = device_roots or Roots(images=(), disks=())  # where VMs' disks may be
        self.allowed_bridges = allowed_bridges  # bridges VMs may join (names, patterns); none by default
        self.save_dir = save_dir or state_dir / "saved"  # shared storage in real clusters
        self.state_dir = state_dir
        self.launcher_command = launcher_command
        self.isolation = isolation  # per-VM users and cgroups (handler/isolation.py), or None
        self.stubs = stubs
        self.grace_seconds = grace_seconds
        self.desired: dict[str, vm_pb2.VirtualMachine] = {}  # by name, from the stream
        self.synced = False
        self.launchers: dict[str, Launcher] = {}  # by uid
        self.busy: set[str] = set()  # uids with a stop in progress
        self.reported: dict[str, tuple] = {}  # by run (instance uid): the last report sent
        self.locks = locks
        self.deadline = deadline
        self.locked: dict[str, int] = {}  # instance uid -> lease id its lock is bound to
        self.tokens: dict[str, int] = {}  # VM name -> highest assignment token seen
        self.hurried: set[str] = set()  # runs whose stop was forced while a graceful one waited
        self.save_failed: set[str] = set()  # runs whose save failed: not tried again
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="stop")
        self.spares = SparePool(command=launcher_command, log_path=state_dir / "spare-launcher.log")
        # Live migration (handler/migration.py); its proxy listens when migration_listen is set.
        self.migrations = Migrations(self, listen=migration_listen, advertise_host=advertise_host,
                                     tls=migration_tls)

    # -- inputs -----------------------------------------------------------------------------
    def set_assignments(self, vms: dict[str, vm_pb2.VirtualMachine]) -> None:
        with self.lock:
            desired = {}
            for name, vm in vms.items():
                if self._fresh(vm):
                    desired[name] = vm
                elif name in self.desired:  # a stale entry (older leader's) keeps what is followed
                    desired[name] = self.desired[name]
            self.desired = desired
            self.synced = True
        self.wake.set()

    def upsert(self, vm: vm_pb2.VirtualMachine) -> None:
        with self.lock:
            if self._fresh(vm):
                self.desired[vm.metadata.name] = vm
        self.wake.set()

    def _fresh(self, vm: vm_pb2.VirtualMachine) -> bool:
        """Refuse an assignment made under an older leader than one already obeyed for this VM
        (a deposed leader's late command)."""
        token = vm.status.assignment_token
        seen = self.tokens.get(vm.metadata.name, 0)
        if token < seen:
            log.warning("vm %s: ignoring an assignment with stale fencing token %d (seen %d)",
                        vm.metadata.name, token, seen)
            return False
        self.tokens[vm.metadata.name] = token
        return True

    def remove(self, name: str) -> None:
        with self.lock:
            self.desired.pop(name, None)
        self.wake.set()

    # -- adoption ---------------------------------------------------------------------------
    def adopt_existing(self) -> None:
        """After a (re)start: find every VM directory and reconnect to, or restart, its launcher."""
        vms_dir = self.state_dir / "vms"
        vms_dir.mkdir(parents=True, exist_ok=True)
        for vm_dir in sorted(vms_dir.iterdir()):
            if not run_record_path(vm_dir).exists() and not (vm_dir / VM_FILE).exists():
                shutil.rmtree(vm_dir, ignore_errors=True)
                continue
            try:
                launcher = Launcher(vm_dir=vm_dir, on_change=self.wake.set, isolation=self.isolation)
            except (OSError, DecodeError) as exc:  # with isolation a VM's user could have replaced it
                log.error("%s: unusable %s, skipping: %s", vm_dir, VM_FILE, exc)
                continue
            self.launchers[launcher.uid] = launcher
            if launcher.finished:
                continue
            if launcher.probe():
                log.info("vm %s: adopted launcher pid %d", launcher.vm.metadata.name, launcher.status.launcher_pid)
                launcher.follow()
            elif launcher.running():
                log.info("vm %s: adopted a launcher that is still starting", launcher.vm.metadata.name)
                launcher.follow()
            elif self.migrations.holds_back(None, launcher):
                log.info("vm %s: launcher gone after a migration job: waiting for its outcome", launcher.vm.metadata.name)
            else:
                log.info("vm %s: launcher gone, starting a new one to adopt its domain", launcher.vm.metadata.name)
                launcher.spawn(self.launcher_command)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.wake.wait(RESYNC_SECONDS)
            self.wake.clear()
            try:
                self.reconcile()
            except Exception:
                log.exception("reconcile failed")

    def reconcile(self) -> None:
        with self.lock:
            desired = {vm.status.instance_uid: vm for vm in self.desired.values() if vm.status.instance_uid}
            synced = self.synced
        for uid, vm in desired.items():
            if uid not in self.busy:
                if self.migrations.is_target(vm):  # an incoming live migration, not this node's yet
                    self._guarded(vm.metadata.name, self.migrations.reconcile_target, vm)
                else:
                    self._guarded(vm.metadata.name, self._reconcile_vm, uid, vm)
            elif self._end_requested(vm, uid) and vm.status.run_request.force and uid not in self.hurried:
                self._guarded(vm.metadata.name, self._hurry, vm)
            elif uid in self.migrations.jobs:
                self._guarded(vm.metadata.name, self.migrations.check_abort, vm)
        if synced:
            for uid in list(self.launchers):
                if uid not in desired and uid not in self.busy:
                    launcher = self.launchers[uid]
                    if self.migrations.removable(launcher):  # never start a launcher to stop it
                        self._in_pool(uid, self.migrations.remove_incoming, launcher)
                    else:
                        self._guarded(uid, self._stop, uid, release=None)

    def _guarded(self, what: str, step, *args, **kwargs) -> None:
        """One VM's trouble must not hold up the others."""
        try:
            step(*args, **kwargs)
        except Exception:
            log.exception("vm %s: reconcile step failed", what)

    def _reconcile_vm(self, uid: str, vm: vm_pb2.VirtualMachine) -> None:
        launcher = self.launchers.get(uid)
        if vm.metadata.HasField("delete_time"):
            self._stop(uid, release=vm)
        elif launcher is None:
            if vm.status.phase in RUNNABLE:
                self._start(vm)
        elif not launcher.finished and not launcher.running():
            if not self.migrations.holds_back(vm, launcher):
                self._restart_launcher(vm, launcher)
        elif not launcher.finished and self._end_requested(vm, uid):
            self._in_pool(uid, self._end_run, vm, launcher)
        else:
            self.migrations.adopted(vm, launcher)  # no-op unless the run just arrived by migration
            if not launcher.finished and self.migrations.reconcile_source(vm, launcher):
                return
            self._keep_lock(vm, launcher)
            self._report(vm, launcher)

    def _keep_lock(self, vm: vm_pb2.VirtualMachine, launcher: Launcher) -> None:
        """Re-bind a running instance's lock after the node took a new lease (or a restart)."""
        if launcher.finished or self.locked.get(launcher.uid) == self.locks.lease_id():
            return
        if self.locks.acquire(vm.metadata.name, launcher.uid):
            self.locked[launcher.uid] = self.locks.lease_id()

    def _unlock(self, launcher: Launcher) -> None:
        """The run is over on this node: let another run of the VM start anywhere."""
        self.locks.release(launcher.vm.metadata.name, launcher.uid)
        self.locked.pop(launcher.uid, None)

    def reclaim_guests(self) -> None:
        """After the node lease was lost: keep each running guest only if its instance lock is
        reclaimed under the new lease; destroy the others now (the leader may have declared
        their runs lost and started them elsewhere)."""
        for launcher in list(self.launchers.values()):
            if launcher.finished or not launcher.running():
                continue
            if self.locks.reclaim(launcher.vm.metadata.name, launcher.uid):
                self.locked[launcher.uid] = self.locks.lease_id()
                log.info("vm %s: run %s reclaimed", launcher.vm.metadata.name, launcher.uid)
                continue
            log.warning("vm %s: run %s was declared lost: destroying this copy", launcher.vm.metadata.name, launcher.uid)
            self.locked.pop(launcher.uid, None)
            try:
                launcher.kill()
            except (grpc.RpcError, ValueError) as exc:
                log.error("vm %s: could not destroy the lost run: %s", launcher.vm.metadata.name, exc)
                self._kill_leftover_qemu(launcher)

    def _start(self, vm: vm_pb2.VirtualMachine) -> None:
        if not self.deadline.valid():
            log.warning("vm %s: not starting: this node's lease is not current", vm.metadata.name)
            return
        if not self.locks.holds_with_assignment(vm) and not self.locks.acquire(vm.metadata.name,
                                                                                vm.status.instance_uid):
            return
        self.locked[vm.status.instance_uid] = self.locks.lease_id()
        if self.isolation is not None:
            self.isolation.wait_for_cache()
        vm = node_paths(vm, self.device_roots)  # the launcher's copy names what is checked
        vm_dir = Launcher.create_dir(state_dir=self.state_dir, vm=vm, isolation=self.isolation)
        devices_problem = self._prepare_devices(vm, vm_dir)
        launcher = Launcher(vm_dir=vm_dir, on_change=self.wake.set, isolation=self.isolation)
        if vm.status.restore_from.path:
            try:
                self._prepare_restore(vm, vm_dir)
            except OSError as exc:  # the launcher then reports the restore's failure
                log.error("vm %s: cannot prepare the restore: %s", vm.metadata.name, exc)
        self.launchers[launcher.uid] = launcher
        if devices_problem:
            self._fail_start(vm, launcher, "DiskUnavailable", devices_problem)
            return
        if vm.spec.dedicated_cpu_placement and not (vm_dir / cpus.CPUSET_FILE).exists():
            # Unpinned, its vCPUs would float over other runs' dedicated CPUs (KubeVirt refuses too).
            self._fail_start(vm, launcher, "InsufficientDedicatedCPUs",
                             f"node {self.node_name} has fewer than {vm.spec.vcpus} host CPUs free for "
                             "dedicated placement")
            return
        if not self._prepare_networks(vm, launcher):
            return
        launcher.spawn(self.launcher_command, self.spares)

    def _prepare_devices(self, vm: vm_pb2.VirtualMachine, vm_dir: Path) -> str | None:
        """The run's boot files, disks and cloud-init seed (handler/devices.py), before its
        launcher starts; why they cannot be made, or None."""
        owner = run_owner(vm_dir) if self.isolation is not None else None
        try:
            RunDevices(roots=self.device_roots, run_dir=vm_dir, scratch_parent=self.state_dir, owner=owner,
                       hand_over=hand_over_to(self.isolation, owner) if owner else None).prepare(vm)
            return None
        except (DeviceError, OSError) as exc:
            message = f"cannot prepare the VM's boot files or disks on node {self.node_name}: {exc}"
            log.error("vm %s: %s", vm.metadata.name, message)
            return message

    def _fail_start(self, vm: vm_pb2.VirtualMachine, launcher: Launcher, reason: str, message: str) -> None:
        """A run that cannot start: report it Failed and keep its directory (as a finished run)
        until the VM moves on; unreported, forget the attempt so the next pass starts over."""
        if self._send_report(vm, launcher, vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED, reason, message):
            launcher.mark_finished()
            launcher.close()
        else:
            launcher.remove_dir()
            self.launchers.pop(launcher.uid, None)
        self._unlock(launcher)

    def _prepare_networks(self, vm: vm_pb2.VirtualMachine, launcher: Launcher) -> bool:
        """The run's taps before its launcher starts; a bridge missing on this node fails the
        run at once, saying so."""
        message = self._taps_problem(vm, launcher.vm_dir)
        if message is None:
            return True
        log.error("vm %s: %s", vm.metadata.name, message)
        self._fail_start(vm, launcher, "NetworkUnavailable", message)
        return False

    def _taps_problem(self, vm: vm_pb2.VirtualMachine, vm_dir: Path) -> str | None:
        """Make the run's taps (bridge networks), owned by its user; why they cannot be, or None."""
        if not any(network.WhichOneof("binding") == "bridge" for network in vm.spec.networks):
            return None
        try:
            taken = node_networks.macs_in_use((other.vm for other in list(self.launchers.values())
                                               if not other.finished), vm)
            node_networks.prepare_taps(vm, owner_uid=run_owner(vm_dir)[0], allowed=self.allowed_bridges, taken=taken)
            return None
        except node_networks.NetworkSetupError as exc:
            return f"cannot attach the VM's networks on node {self.node_name}: {exc}"

    def _restart_launcher(self, vm: vm_pb2.VirtualMachine, launcher: Launcher) -> None:
        if launcher.quick_deaths >= MAX_QUICK_DEATHS:
            if self._send_report(vm, launcher, vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED, "LauncherFailed",
                                 f"the launcher keeps exiting at start: {launcher.log_tail()}"):
                self._in_pool(launcher.uid, self._finish, launcher)
            return
        if launcher.respawn_delay() > 0:
            return  # the periodic pass comes back
        log.warning("vm %s: launcher exited (%s), starting a new one", vm.metadata.name,
                    launcher.log_tail() or "its log is empty")
        launcher.spawn(self.launcher_command)

    def _report(self, vm: vm_pb2.VirtualMachine, launcher: Launcher) -> None:
        if launcher.ended is not None and not launcher.finished:  # a requested end not yet reported
            reason, message, saved = launcher.ended
            if self._send_report(vm, launcher, vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED, reason, message,
                                 saved_state_path=saved):
                self._in_pool(launcher.uid, self._finish, launcher)
            return
        observed = observed_phase(launcher.status)
        if observed is None or launcher.finished:
            return
        phase = observed[0]
        sent = self._send_report(vm, launcher, *observed)
        if sent and phase == vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING and vm.status.restore_from.path \
                and vm.status.phase == phase:
            self._forget_saved_file(vm)
        if sent and phase in vm_status.TERMINAL_PHASES:
            # The instance is over: free the launcher, keep the directory (serial log) until
            # the VM is deleted or moves on. Busy under the run's uid: the next run may be
            # assigned meanwhile, and removing this one must wait for _finish.
            self._in_pool(launcher.uid, self._finish, launcher)

    def ending(self, launcher: Launcher) -> bool:
        """Whether this run's end was reported and its launcher is being let go (_finish): the
        controller may already show the VM stopped while the run still holds its disks here."""
        last = self.reported.get(launcher.uid)
        return launcher.ended is not None or (last is not None and last[0][0] in vm_status.TERMINAL_PHASES)

    def _send_report(self, vm: vm_pb2.VirtualMachine, launcher: Launcher, phase: int, reason: str,
                     message: str, *, saved_state_path: str = "") -> bool:
        """Report a phase unless already reported; whether the controller has it."""
        status = launcher.status
        serial = status.serial_log_path if status else ""
        paused = status is not None and status.state == DS.DOMAIN_STATE_PAUSED
        guest = status.guest if status is not None and status.HasField("guest") else vm_pb2.GuestInfo()
        key = (phase, reason, message, serial, paused, guest.SerializeToString(deterministic=True))
        last_key, last_time = self.reported.get(launcher.uid, (None, 0.0))
        if last_key == key and (vm.status.phase == phase or time.monotonic() - last_time < REPORT_AGAIN_SECONDS):
            return True
        try:
            self.stubs.handler.ReportVirtualMachineStatus(handler_pb2.ReportVirtualMachineStatusRequest(
                node_name=self.node_name, name=vm.metadata.name, uid=vm.metadata.uid, phase=phase,
                reason=reason, message=message, serial_log_path=serial, instance_uid=launcher.uid,
                paused=paused, guest=guest, saved_state_path=saved_state_path), timeout=10)
        except (grpc.RpcError, ValueError) as exc:  # ValueError: the channel was just rotated
            detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
            log.warning("vm %s: report %s failed: %s", vm.metadata.name, vm_status.phase_name(phase), detail)
            return False
        self.reported[launcher.uid] = (key, time.monotonic())
        return True

    def _finish(self, launcher: Launcher) -> None:
        """End an instance whose guest stopped: stop its launcher and any QEMU left, then mark
        the directory finished. Retried on the next pass until nothing of it runs."""
        if launcher.running():
            try:
                launcher.kill()
            except (grpc.RpcError, ValueError) as exc:
                log.warning("vm %s: stopping the launcher failed, will retry: %s", launcher.vm.metadata.name, exc)
            if launcher.running():
                return
        self._kill_leftover_qemu(launcher)
        node_networks.remove_taps(launcher.vm)
        launcher.mark_finished()
        launcher.close()
        self._unlock(launcher)

    @staticmethod
    def _kill_leftover_qemu(launcher: Launcher) -> None:
        """Last resort when no launcher can be asked: QEMU of this VM still running."""
        for pid in launcher.qemu_pids():
            log.warning("vm %s: killing leftover QEMU pid %d", launcher.vm.metadata.name, pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _stop(self, uid: str, *, release: vm_pb2.VirtualMachine | None) -> None:
        launcher = self.launchers.get(uid)
        if launcher is None and release is not None:
            self._in_pool(uid, self._release, release)
        elif launcher is not None:
            self._in_pool(uid, self._stop_and_remove, launcher, release)

    def _stop_and_remove(self, launcher: Launcher, release: vm_pb2.VirtualMachine | None) -> None:
        name = launcher.vm.metadata.name
        if not launcher.finished or launcher.running() or launcher.qemu_pids():
            if not launcher.running():
                launcher.spawn(self.launcher_command)  # a launcher must adopt the domain to stop it
            grace = self._grace(release or launcher.vm)
            try:
                status = launcher.kill() if grace == 0 else launcher.shutdown(grace)
                log.info("vm %s: stopped (%s)", name, status.reason)
            except (grpc.RpcError, ValueError) as exc:
                log.warning("vm %s: stopping failed, will retry: %s", name, exc)
                return
            if launcher.running():
                return
            self._kill_leftover_qemu(launcher)
        node_networks.remove_taps(launcher.vm)  # idempotent: also after a restart
        launcher.remove_dir()
        self.launchers.pop(launcher.uid, None)
        self.reported.pop(launcher.uid, None)
        self.hurried.discard(launcher.uid)
        self.save_failed.discard(launcher.uid)
        self._unlock(launcher)
        if release is not None:
            self._release(release)

    def _release(self, vm: vm_pb2.VirtualMachine) -> None:
        try:
            self.stubs.handler.ReleaseVirtualMachine(handler_pb2.ReleaseVirtualMachineRequest(
                node_name=self.node_name, name=vm.metadata.name, uid=vm.metadata.uid), timeout=10)
            log.info("vm %s: released", vm.metadata.name)
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                log.warning("vm %s: release failed, will retry: %s", vm.metadata.name, exc.details())
        except ValueError as exc:
            log.warning("vm %s: release failed, will retry: %s", vm.metadata.name, exc)

    def _in_pool(self, uid: str, fn, *args) -> None:
        self.busy.add(uid)

        def run() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("background step for %s failed", uid)
            finally:
                self.busy.discard(uid)
                self.wake.set()

        self.pool.submit(run)
