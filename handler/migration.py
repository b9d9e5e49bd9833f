"""Live migration, the handler's part (the controller's is controller/migrations.py).

Target node: a VM whose ``status.migration_target.node_name`` is this node while
``status.node_name`` is another gets an *incoming* run: its directory (same instance uid: the
run continues here), the marker ``DIR/incoming`` and a launcher in incoming mode. Once the
launcher answers PrepareIncoming, the handler picks a free port for QEMU's stream and
reports TARGET_READY (its proxy's address, the domain XML, tcp://NODE:PORT). When the
guest arrives (the launcher's domain is RUNNING) it reports SUCCEEDED; if the launcher dies
first, FAILED (the source then aborts). If the migration goes away while the VM is not
assigned here, the incoming run is removed (launcher, QEMU, libvirt daemons, directory).
No VM phase is ever reported for an incoming run. After the switch the normal path adopts
the launcher (``DIR/arrived`` notes it; a restarted launcher knows by its own "started"
marker that the guest is there); if the source's report switched the VM first, the target
sends the downtime (only it knows) in a late SUCCEEDED report.

Source node: once the target is ready (``target_address`` set, no cancel), one job per run:
a unix tunnel in the run's directory to the target's proxy, MigrateDomain on the launcher,
RUNNING reports with progress (at most one a second), then SUCCEEDED (with libvirt's figures;
the run is then finished here, which releases its instance lock for the target) or FAILED.
``cancel_requested`` makes the reconcile loop call AbortMigration. A handler restarted
mid-job calls MigrateDomain again: the launcher re-attaches to the running job."""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field

import grpc

from corral.v1 import handler_pb2, launcher_pb2, migration_pb2, vm_pb2
from handler import networks as node_networks
from handler.launchers import INCOMING_MARKER, Launcher, run_owner
from handler.vm_files import open_in_vm_dir
from handler.migration_proxy import SourceTunnel, TargetProxy, split_host_port

log = logging.getLogger(__name__)
M = migration_pb2
DS = launcher_pb2

#: The handler's note that an incoming run became a normal one (the launcher's own is its
#: "started" marker; DIR/incoming stays: it names the run's cgroup, see Launcher.cgroup_name).
ARRIVED_MARKER = "arrived"
TUNNEL_SOCKET = "mig.sock"
MIGRATING_MARKER = "migrating"
#: libvirt's session socket of a run (the launcher's XDG_RUNTIME_DIR is DIR/run).
LIBVIRT_SOCKET = "run/libvirt/libvirt-sock"
PROGRESS_EVERY_SECONDS = 1.0
PREPARE_TIMEOUT_SECONDS = 60.0
#: How often a lost launcher stream is retried (the launcher restarts and re-attaches).
REATTACH_ATTEMPTS = 5


def migration_in_progress(vm: vm_pb2.VirtualMachine) -> bool:
    return bool(vm.status.migration_target.migration_name)


def is_migrated_away(status: launcher_pb2.DomainStatus | None) -> bool:
    """The launcher's final status on a source after the guest left: not the run's end."""
    return status is not None and status.state == DS.DOMAIN_STATE_SHUTOFF and status.reason == "migrated"


def arrival_downtime_ms(status: launcher_pb2.DomainStatus) -> int:
    """libvirt's downtime, which only the target knows: the target launcher's status message
    on arrival says "migrated in, downtime N ms, ..." (launcher/migration.py)."""
    match = re.search(r"downtime (\d+) ms", status.message)
    return int(match.group(1)) if match else 0


def abort_reason(vm: vm_pb2.VirtualMachine, migration_name: str) -> tuple[str, str]:
    """Why cancel_requested was set: the target failed or was lost (the controller says so in
    the target's cancel_reason), or a person cancelled."""
    target = vm.status.migration_target
    if target.migration_name != migration_name:
        return "Superseded", "the VM no longer carries this migration"
    if target.cancel_reason:
        return target.cancel_reason, target.cancel_message
    return "Cancelled", "the migration was cancelled"


def unmigratable(vm: vm_pb2.VirtualMachine) -> str:
    """Why the guest cannot move (empty: it can): a writable ephemeral disk lives in the
    source run's directory and would arrive empty (no storage migration yet)."""
    for disk in vm.spec.disks:
        if disk.WhichOneof("source") == "ephemeral" and not disk.read_only:
            return (f"disk {disk.name!r} is ephemeral and writable: its writes live on the source node "
                    "(no storage migration yet)")
    return ""


def free_port(host: str) -> int:
    """A TCP port free on host now (QEMU binds it when the migration starts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Incoming:
    """What the target node keeps of one incoming run."""
    migration_name: str
    libvirt_socket: str = ""
    ready: handler_pb2.ReportMigrationStatusRequest | None = None
    succeeded: bool = False
    failed: handler_pb2.ReportMigrationStatusRequest | None = None
    failed_sent: bool = False
    preparing: bool = False


@dataclass
class Job:
    """One outgoing migration job on the source node."""
    migration_name: str
    abort_sent: bool = False
    #: Why the abort was asked: (reason, message) for the FAILED report.
    abort_reason: tuple[str, str] = ("Cancelled", "the migration was cancelled")
    tunnel: SourceTunnel | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Migrations:
    """Used by the node agent (handler/agent.py): ``reconcile_target`` for VMs migrating to
    this node, ``reconcile_source`` for its running VMs, ``check_abort`` while a job runs."""

    def __init__(self, agent, *, listen: str = "", advertise_host: str = "") -> None:
        self.agent = agent
        self.incoming: dict[str, Incoming] = {}  # by instance uid
        self.jobs: dict[str, Job] = {}  # by instance uid
        self.ended_here: set[str] = set()  # migrations this source failed before starting a job
        self.late_downtime: dict[str, str] = {}  # arrived runs whose downtime is still to send: migration name
        self.lock = threading.Lock()
        self.proxy: TargetProxy | None = None
        self.advertise_host = advertise_host
        self.proxy_problem = ""
        if listen:
            try:
                self.start_proxy(listen, advertise_host)
            except OSError as exc:  # the node still runs its VMs; incoming migrations fail, saying why
                self.proxy_problem = f"the migration proxy cannot listen on {listen}: {exc}"
                log.error("%s: this node cannot be a migration target", self.proxy_problem)
        else:
            self.proxy_problem = "this node's migration proxy is off (migration_listen is empty)"

    # -- the proxy --------------------------------------------------------------------------
    def start_proxy(self, listen: str, advertise_host: str) -> str:
        self.proxy = TargetProxy(listen, self.resolve)
        host = split_host_port(listen)[0]
        if host in ("", "0.0.0.0", "::", "*"):
            host = advertise_host
        self.advertise_host = host
        self.proxy.start()
        log.info("migration proxy on %s (advertised %s)", listen, self.address)
        return self.address

    @property
    def address(self) -> str:
        if self.proxy is None:
            return ""
        host = f"[{self.advertise_host}]" if ":" in self.advertise_host else self.advertise_host
        return f"{host}:{self.proxy.port}"

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        for job in list(self.jobs.values()):
            if job.tunnel is not None:
                job.tunnel.close()

    def resolve(self, instance_uid: str) -> str | None:
        """The libvirt socket of a run this node receives now, else None."""
        with self.agent.lock:
            vm = next((vm for vm in self.agent.desired.values() if vm.status.instance_uid == instance_uid), None)
        if vm is None or not self.is_target(vm):
            return None
        launcher = self.agent.launchers.get(instance_uid)
        if launcher is None or launcher.finished:
            return None
        state = self.incoming.get(instance_uid)
        return (state.libvirt_socket if state and state.libvirt_socket
                else str(launcher.vm_dir / LIBVIRT_SOCKET))

    # -- target -------------------------------------------------------------------------------
    def is_target(self, vm: vm_pb2.VirtualMachine) -> bool:
        node = self.agent.node_name
        return vm.status.node_name != node and vm.status.migration_target.node_name == node

    @staticmethod
    def is_incoming(launcher: Launcher) -> bool:
        """Started as a migration target and not (yet) adopted as this node's run."""
        return (launcher.vm_dir / INCOMING_MARKER).exists() and not (launcher.vm_dir / ARRIVED_MARKER).exists()

    def reconcile_target(self, vm: vm_pb2.VirtualMachine) -> None:
        agent = self.agent
        uid = vm.status.instance_uid
        target = vm.status.migration_target
        launcher = agent.launchers.get(uid)
        state = self.incoming.get(uid)
        if launcher is not None and not self.is_incoming(launcher):
            return  # a run of this VM this node ran before (finished): not ours to touch
        if state is not None and state.migration_name != target.migration_name:
            # Another migration of the same run (the first one failed and was retried).
            self.incoming.pop(uid, None)
            if launcher is not None:
                agent._in_pool(uid, self.remove_incoming, launcher)
            return
        if state is not None and (state.failed is not None or state.succeeded):
            if state.failed is not None and not state.failed_sent:
                state.failed_sent = self._send(vm, state.failed)
            return
        if launcher is None and self.proxy is None:
            state = self.incoming.setdefault(uid, Incoming(migration_name=target.migration_name))
            if state.failed is None:
                self._target_failed(vm, state, self.proxy_problem)
            elif not state.failed_sent:
                state.failed_sent = self._send(vm, state.failed)
            return
        if launcher is None and state is None and unmigratable(vm):
            state = self.incoming[uid] = Incoming(migration_name=target.migration_name)
            self._target_failed(vm, state, unmigratable(vm))
            return
        if launcher is None:
            if not agent.deadline.valid():
                log.warning("vm %s: not preparing the migration target: this node's lease is not current",
                            vm.metadata.name)
                return
            try:
                launcher = self._spawn_incoming(vm)
            except OSError as exc:
                state = self.incoming[uid] = Incoming(migration_name=target.migration_name)
                self._target_failed(vm, state, str(exc))
                return
        if state is None:
            state = self.incoming[uid] = Incoming(migration_name=target.migration_name)
            if target.target_address:  # reported before this handler restarted: keep it
                state.ready = self._request(vm, handler_pb2.MIGRATION_ROLE_TARGET, M.MIGRATION_PHASE_TARGET_READY)
                state.ready.target_address = target.target_address
                state.ready.target_domain_xml = target.target_domain_xml
                state.ready.migration_uri = target.migration_uri
        status = launcher.status
        if status is not None and status.state == DS.DOMAIN_STATE_RUNNING:
            report = self._request(vm, handler_pb2.MIGRATION_ROLE_TARGET, M.MIGRATION_PHASE_SUCCEEDED)
            report.downtime_ms = arrival_downtime_ms(status)
            state.succeeded = self._send(vm, report)
            if state.succeeded:
                log.info("vm %s: the guest arrived (migration %s)", vm.metadata.name, target.migration_name)
            return
        if status is not None and status.state == DS.DOMAIN_STATE_CRASHED:
            self._target_failed(vm, state, f"the incoming domain ended: {status.reason} {status.message}".strip())
            return
        if not launcher.running():
            self._target_failed(vm, state, f"the incoming launcher exited: {launcher.log_tail()}")
            return
        if state.ready is None and not state.preparing:
            state.preparing = True
            agent._in_pool(uid, self._prepare, vm, launcher, state)
        elif state.ready is not None and (target.target_address, target.migration_uri) != (
                state.ready.target_address, state.ready.migration_uri):
            self._send(vm, state.ready)  # not in the store yet: again

    def _spawn_incoming(self, vm: vm_pb2.VirtualMachine) -> Launcher:
        agent = self.agent
        if agent.isolation is not None:
            agent.isolation.wait_for_cache()
        vm_dir = Launcher.create_dir(state_dir=agent.state_dir, vm=vm, isolation=agent.isolation)
        marker = vm_dir / INCOMING_MARKER
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.close(fd)
        launcher = Launcher(vm_dir=vm_dir, on_change=agent.wake.set, isolation=agent.isolation)
        agent.launchers[launcher.uid] = launcher
        # Persistent disks (shared storage) handed to this run's user, the cloud-init seed made
        # again, bridge taps created: what a start does, so the target's domain XML resolves.
        problem = agent._prepare_devices(vm, vm_dir) or agent._taps_problem(vm, vm_dir)
        if problem is not None:
            raise OSError(problem)
        log.info("vm %s: preparing the target of migration %s", vm.metadata.name,
                 vm.status.migration_target.migration_name)
        launcher.spawn(agent.launcher_command)
        return launcher

    def _prepare(self, vm: vm_pb2.VirtualMachine, launcher: Launcher, state: Incoming) -> None:
        """(In the pool.) Wait for the incoming launcher, then report TARGET_READY."""
        name = vm.metadata.name
        deadline = time.monotonic() + PREPARE_TIMEOUT_SECONDS
        try:
            while True:
                try:
                    response = launcher.stub.PrepareIncoming(launcher_pb2.PrepareIncomingRequest(), timeout=30)
                    break
                except grpc.RpcError as exc:
                    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION) \
                            and time.monotonic() < deadline and launcher.running():
                        time.sleep(0.2)
                        continue
                    self._target_failed(vm, state, f"the incoming launcher is not ready: {exc.details()}")
                    return
                except ValueError:  # its channel was closed: the incoming run was removed
                    return
            state.libvirt_socket = response.libvirt_socket_path
            host = self.advertise_host
            port = free_port(host)
            report = self._request(vm, handler_pb2.MIGRATION_ROLE_TARGET, M.MIGRATION_PHASE_TARGET_READY)
            report.target_address = self.address
            report.target_domain_xml = response.domain_xml
            report.migration_uri = f"tcp://{f'[{host}]' if ':' in host else host}:{port}"
            state.ready = report
            log.info("vm %s: target ready at %s (stream %s)", name, report.target_address, report.migration_uri)
            self._send(vm, report)
        finally:
            state.preparing = False

    def _target_failed(self, vm: vm_pb2.VirtualMachine, state: Incoming, message: str) -> None:
        log.warning("vm %s: migration target failed: %s", vm.metadata.name, message)
        state.failed = self._request(vm, handler_pb2.MIGRATION_ROLE_TARGET, M.MIGRATION_PHASE_FAILED,
                                     reason="TargetFailed", message=message)
        state.failed_sent = self._send(vm, state.failed)

    def adopted(self, vm: vm_pb2.VirtualMachine, launcher: Launcher) -> None:
        """The VM is this node's now: the incoming run is a normal run. If the source's report
        switched the VM first, the downtime (which only this end knows) is sent late."""
        late = self.late_downtime.get(launcher.uid)
        if late is not None and launcher.status is not None and launcher.status.state == DS.DOMAIN_STATE_RUNNING:
            self.late_downtime.pop(launcher.uid)
            downtime = arrival_downtime_ms(launcher.status)
            log.info("vm %s: migration %s: downtime %d ms (%s)", vm.metadata.name, late, downtime,
                     launcher.status.message or "the launcher did not say")
            if downtime:
                self._send(vm, handler_pb2.ReportMigrationStatusRequest(
                    node_name=self.agent.node_name, vm_name=vm.metadata.name, vm_uid=vm.metadata.uid,
                    migration_name=late, role=handler_pb2.MIGRATION_ROLE_TARGET,
                    phase=M.MIGRATION_PHASE_SUCCEEDED, downtime_ms=downtime))
        state = self.incoming.pop(launcher.uid, None)
        if state is not None or self.is_incoming(launcher):
            if state is not None and not state.succeeded:
                self.late_downtime[launcher.uid] = state.migration_name
            os.close(open_in_vm_dir(launcher.vm_dir / ARRIVED_MARKER, os.O_WRONLY | os.O_CREAT))
            log.info("vm %s: run %s adopted after its migration", vm.metadata.name, launcher.uid)

    def removable(self, launcher: Launcher) -> bool:
        """A run no longer assigned here that the normal stop must not handle (it would start a
        launcher to stop the guest): an incoming run, or a source run whose guest left."""
        return self.is_incoming(launcher) or self.holds_back(None, launcher)

    def remove_incoming(self, launcher: Launcher) -> None:
        """(In the pool.) The migration went away (or the guest left this node): stop the
        run's launcher, any QEMU and libvirt daemons of its directory, and remove it."""
        name = launcher.vm.metadata.name
        log.info("vm %s: removing run %s (%s)", name, launcher.uid,
                 "incoming, its migration went away" if self.is_incoming(launcher) else "its guest migrated away")
        try:
            if launcher.running():
                launcher.kill()
        except (grpc.RpcError, ValueError) as exc:
            log.info("vm %s: incoming launcher did not stop by itself (%s): killing it", name,
                     exc.details() if isinstance(exc, grpc.RpcError) else exc)
        if launcher.process is not None and launcher.process.poll() is None:
            launcher.process.kill()
            launcher.process.wait(5)
        elif launcher.status is not None and launcher.running():
            try:
                os.kill(launcher.status.launcher_pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        self.agent._kill_leftover_qemu(launcher)
        if launcher.qemu_pids():
            return  # still there: the next pass tries again
        node_networks.remove_taps(launcher.vm)
        launcher.remove_dir()  # stops the run's libvirt daemons too
        self.agent.launchers.pop(launcher.uid, None)
        self.incoming.pop(launcher.uid, None)
        self.agent._unlock(launcher)  # a no-op unless this node held the run's lock

    # -- source -------------------------------------------------------------------------------
    def reconcile_source(self, vm: vm_pb2.VirtualMachine, launcher: Launcher) -> bool:
        """For a VM of this node: start the job when the target is ready. True when the
        normal reporting must be skipped (the guest has left)."""
        uid = launcher.uid
        target = vm.status.migration_target
        if is_migrated_away(launcher.status):
            # The job ended with success but was not reported (a handler restart): say so,
            # then end the run here. Never reported as the run's end.
            if target.migration_name and target.node_name != self.agent.node_name:
                if not self._report(vm, handler_pb2.MIGRATION_ROLE_SOURCE, M.MIGRATION_PHASE_SUCCEEDED):
                    return True
            self.agent._in_pool(uid, self.agent._finish, launcher)
            return True
        if not target.migration_name or target.node_name == self.agent.node_name:
            return False
        if target.cancel_requested and uid not in self.jobs:
            # Cancelled (or the target failed) before any job started here: the source ends it.
            if target.migration_name not in self.ended_here:
                reason, message = abort_reason(vm, target.migration_name)
                if self._report(vm, handler_pb2.MIGRATION_ROLE_SOURCE, M.MIGRATION_PHASE_FAILED,
                                reason=reason, message=f"{message} (before the job started)"):
                    self.ended_here.add(target.migration_name)
            return False
        if not target.target_address or not target.migration_uri:
            return False
        status = launcher.status
        if status is None or status.state not in (DS.DOMAIN_STATE_RUNNING, DS.DOMAIN_STATE_PAUSED):
            return False
        if uid in self.jobs:
            return False
        job = self.jobs[uid] = Job(migration_name=target.migration_name)
        self.agent._in_pool(uid, self._run_job, vm, launcher, job)
        return False

    @staticmethod
    def _mark(launcher: Launcher, migration_name: str) -> None:
        """DIR/migrating while a job may be moving the guest: a handler restarted then must not
        start a launcher that would boot the guest afresh (see holds_back)."""
        fd = os.open(launcher.vm_dir / MIGRATING_MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, migration_name.encode())
        finally:
            os.close(fd)

    @staticmethod
    def _unmark(launcher: Launcher) -> None:
        try:
            (launcher.vm_dir / MIGRATING_MARKER).unlink()
        except FileNotFoundError:
            pass

    def holds_back(self, vm: vm_pb2.VirtualMachine | None, launcher: Launcher) -> bool:
        """A source run whose launcher is gone after a job may have moved the guest: no new
        launcher (it would boot a second copy) while the migration is undecided. Once the
        VM carries no migration and is still this node's, the marker goes and the normal
        path (a new launcher adopting, or finding no guest) resumes."""
        if not (launcher.vm_dir / MIGRATING_MARKER).exists() or launcher.running() or launcher.qemu_pids():
            return False
        if vm is not None and not migration_in_progress(vm) and vm.status.node_name == self.agent.node_name:
            self._unmark(launcher)
            return False
        return True

    def check_abort(self, vm: vm_pb2.VirtualMachine) -> None:
        """(Reconcile loop, the run is busy with its job.) Abort on cancel_requested."""
        uid = vm.status.instance_uid
        job = self.jobs.get(uid)
        target = vm.status.migration_target
        if job is None or job.abort_sent or job.done.is_set():
            return
        if not (target.cancel_requested or target.migration_name != job.migration_name):
            return
        launcher = self.agent.launchers.get(uid)
        if launcher is None:
            return
        job.abort_sent = True
        job.abort_reason = abort_reason(vm, job.migration_name)

        def abort() -> None:
            try:
                launcher.stub.AbortMigration(launcher_pb2.AbortMigrationRequest(), timeout=30)
                log.info("vm %s: migration %s: abort sent", vm.metadata.name, job.migration_name)
            except (grpc.RpcError, ValueError) as exc:
                log.warning("vm %s: abort of migration %s failed: %s", vm.metadata.name, job.migration_name,
                            exc.details() if isinstance(exc, grpc.RpcError) else exc)
                job.abort_sent = False  # the next pass tries again

        threading.Thread(target=abort, name=f"mig-abort-{uid[:8]}", daemon=True).start()

    def _run_job(self, vm: vm_pb2.VirtualMachine, launcher: Launcher, job: Job) -> None:
        """(In the pool, the run busy.) The migration job, start to end."""
        name = vm.metadata.name
        target = vm.status.migration_target
        try:
            self._mark(launcher, job.migration_name)
            job.tunnel = SourceTunnel(launcher.vm_dir / TUNNEL_SOCKET, target_address=target.target_address,
                                      instance_uid=launcher.uid, owner=run_owner(launcher.vm_dir))
            job.tunnel.start()
            final, error = self._migrate(vm, launcher, job)
        except OSError as exc:
            final, error = None, ("TunnelFailed", f"cannot open the migration tunnel: {exc}")
        finally:
            if job.tunnel is not None:
                job.tunnel.close()
        try:
            if final is not None:
                log.info("vm %s: migration %s done (downtime %d ms)", name, job.migration_name, final.downtime_ms)
                self._report_until_taken(vm, self._request(vm, handler_pb2.MIGRATION_ROLE_SOURCE,
                                                           M.MIGRATION_PHASE_SUCCEEDED, progress=final))
                launcher._reap()  # the launcher exits by itself after the guest left
                self.agent._finish(launcher)  # the run is over here: releases its lock for the target
            else:
                reason, message = error
                log.warning("vm %s: migration %s failed: %s: %s", name, job.migration_name, reason, message)
                self._report_until_taken(vm, self._request(vm, handler_pb2.MIGRATION_ROLE_SOURCE,
                                                           M.MIGRATION_PHASE_FAILED, reason=reason, message=message))
                self._unmark(launcher)
        finally:
            job.done.set()
            self.jobs.pop(launcher.uid, None)

    def _migrate(self, vm: vm_pb2.VirtualMachine, launcher: Launcher, job: Job):
        """(final response, None) on success, else (None, (reason, message))."""
        target = vm.status.migration_target
        host = split_host_port(target.migration_uri.removeprefix("tcp://"))[0]
        request = launcher_pb2.MigrateDomainRequest(
            destination_uri=f"qemu+unix:///session?socket={launcher.vm_dir / TUNNEL_SOCKET}",
            migration_uri=target.migration_uri, destination_xml=target.target_domain_xml,
            bandwidth_mib_per_second=target.bandwidth_mib_per_second,
            completion_timeout_seconds=target.completion_timeout_seconds,
            progress_timeout_seconds=target.progress_timeout_seconds,
            allow_post_copy=target.allow_post_copy, allow_auto_converge=target.allow_auto_converge,
            listen_address=host)
        last_sent = 0.0
        for attempt in range(REATTACH_ATTEMPTS):
            log.info("vm %s: migration %s to %s%s", vm.metadata.name, job.migration_name, target.node_name,
                     " (re-attaching)" if attempt else "")
            try:
                for response in launcher.stub.MigrateDomain(request):
                    if response.done:
                        return response, None
                    if time.monotonic() - last_sent >= PROGRESS_EVERY_SECONDS:
                        last_sent = time.monotonic()
                        self._report(vm, handler_pb2.MIGRATION_ROLE_SOURCE, M.MIGRATION_PHASE_RUNNING,
                                     progress=response)
                return None, ("MigrationFailed", "the launcher ended the migration without a result")
            except ValueError:
                return None, ("MigrationFailed", "the run was closed during the migration")
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
            launcher_gone = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                     grpc.StatusCode.UNKNOWN) and not details.startswith("HypervisorUnavailable")
            if not launcher_gone:
                if is_migrated_away(self._status(launcher)):
                    break  # it completed anyway
                lowered = details.lower()
                if "no progress for" in lowered or "did not complete within" in lowered:
                    return None, ("Timeout", details)
                if code == grpc.StatusCode.ABORTED or job.abort_sent:
                    reason, message = job.abort_reason
                    return None, (reason, f"{message} (the source aborted the job: {details})")
                return None, ("MigrationFailed", details)
            # The launcher went away mid-job: wait for it (or a new one) and re-attach.
            status = self._wait_for_launcher(launcher)
            if status is None:
                return None, ("SourceFailed", f"the source launcher exited during the migration: {details}")
            if is_migrated_away(status):
                break
            if status.state not in (DS.DOMAIN_STATE_RUNNING, DS.DOMAIN_STATE_PAUSED):
                return None, ("SourceFailed", f"the guest is {DS.DomainState.Name(status.state)} on the source")
        else:
            return None, ("MigrationFailed", "the launcher stream kept breaking")
        return launcher_pb2.MigrateDomainResponse(done=True), None

    def _status(self, launcher: Launcher) -> launcher_pb2.DomainStatus | None:
        try:
            return launcher.stub.GetDomainStatus(launcher_pb2.GetDomainStatusRequest(), timeout=5).status
        except (grpc.RpcError, ValueError):
            return launcher.status

    def _wait_for_launcher(self, launcher: Launcher, timeout: float = 20.0) -> launcher_pb2.DomainStatus | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not launcher.running():
                launcher.spawn(self.agent.launcher_command)
            try:
                return launcher.stub.GetDomainStatus(launcher_pb2.GetDomainStatusRequest(), timeout=5).status
            except grpc.RpcError:
                time.sleep(0.5)
            except ValueError:
                return None
        return None

    # -- reports ------------------------------------------------------------------------------
    def _request(self, vm: vm_pb2.VirtualMachine, role: int, phase: int, *, reason: str = "", message: str = "",
                 progress: launcher_pb2.MigrateDomainResponse | None = None) -> handler_pb2.ReportMigrationStatusRequest:
        request = handler_pb2.ReportMigrationStatusRequest(
            node_name=self.agent.node_name, vm_name=vm.metadata.name, vm_uid=vm.metadata.uid,
            migration_name=vm.status.migration_target.migration_name, role=role, phase=phase,
            reason=reason, message=message)
        if progress is not None:
            request.mode = progress.mode
            request.data_total_bytes = progress.data_total_bytes
            request.data_processed_bytes = progress.data_processed_bytes
            request.data_remaining_bytes = progress.data_remaining_bytes
            request.downtime_ms = progress.downtime_ms
        return request

    def _report(self, vm: vm_pb2.VirtualMachine, role: int, phase: int, **kwargs) -> bool:
        return self._send(vm, self._request(vm, role, phase, **kwargs))

    def _report_until_taken(self, vm: vm_pb2.VirtualMachine, request, attempts: int = 120) -> bool:
        """A job's outcome: retried while no controller answers (bounded: a stopping handler
        must not hang; the next handler finds the outcome again from the launcher)."""
        for _ in range(attempts):
            if self._send(vm, request):
                return True
            time.sleep(1.0)
        return False

    def _send(self, vm: vm_pb2.VirtualMachine, request: handler_pb2.ReportMigrationStatusRequest) -> bool:
        """Whether the controller took the report, or it no longer applies (then True too:
        nothing to retry)."""
        try:
            self.agent.stubs.handler.ReportMigrationStatus(request, timeout=10)
            return True
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                log.info("vm %s: migration report %s not taken: %s", vm.metadata.name,
                         M.MigrationPhase.Name(request.phase), exc.details())
                return True
            log.warning("vm %s: migration report %s failed: %s", vm.metadata.name,
                        M.MigrationPhase.Name(request.phase), exc.details())
        except ValueError as exc:  # the channel was just rotated
            log.warning("vm %s: migration report failed: %s", vm.metadata.name, exc)
        return False
