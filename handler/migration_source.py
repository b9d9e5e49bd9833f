"""Live migration, the source node's part (handler/migration.py puts the two sides together).

Once the target is ready (``target_address`` set, no cancel), one job per run: a unix tunnel
in the run's directory to the target's proxy (with the node's TLS files: mutual TLS, the
target's certificate must name the target node, and QEMU's stream is tunnelled through it),
MigrateDomain on the launcher, RUNNING reports
with progress (at most one a second), then SUCCEEDED (with libvirt's figures; the run is then
finished here, which releases its instance lock for the target) or FAILED.
``cancel_requested`` makes the reconcile loop call AbortMigration. A handler restarted
mid-job calls MigrateDomain again: the launcher re-attaches to the running job."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import grpc

from corral.v1 import handler_pb2, launcher_pb2, migration_pb2, vm_pb2
from handler.launchers import Launcher, run_owner
from handler.migration_proxy import SourceTunnel, split_host_port
from handler.migration_creds import fetch_client_pair
from handler.migration_target import TLS_STREAM_PREFIX, TUNNELLED_STREAM

log = logging.getLogger(__name__)
M = migration_pb2
DS = launcher_pb2

TUNNEL_SOCKET = "mig.sock"
MIGRATING_MARKER = "migrating"
PROGRESS_EVERY_SECONDS = 1.0
#: How often a lost launcher stream is retried (the launcher restarts and re-attaches).
REATTACH_ATTEMPTS = 5


def migration_in_progress(vm: vm_pb2.VirtualMachine) -> bool:
    return bool(vm.status.migration_target.migration_name)


def is_migrated_away(status: launcher_pb2.DomainStatus | None) -> bool:
    """The launcher's final status on a source after the guest left: not the run's end."""
    return status is not None and status.state == DS.DOMAIN_STATE_SHUTOFF and status.reason == "migrated"


def abort_reason(vm: vm_pb2.VirtualMachine, migration_name: str) -> tuple[str, str]:
    """Why cancel_requested was set: the target failed or was lost (the controller says so in
    the target's cancel_reason), or a person cancelled."""
    target = vm.status.migration_target
    if target.migration_name != migration_name:
        return "Superseded", "the VM no longer carries this migration"
    if target.cancel_reason:
        return target.cancel_reason, target.cancel_message
    return "Cancelled", "the migration was cancelled"


@dataclass
class Job:
    """One outgoing migration job on the source node."""
    migration_name: str
    abort_sent: bool = False
    #: Why the abort was asked: (reason, message) for the FAILED report.
    abort_reason: tuple[str, str] = ("Cancelled", "the migration was cancelled")
    tunnel: SourceTunnel | None = None
    done: threading.Event = field(default_factory=threading.Event)


class SourceSide:
    """The source half of ``Migrations`` (a mixin: state lives in Migrations)."""

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
        """Root's mark 'migrating' while a job may be moving the guest: a handler restarted then
        must not start a launcher that would boot the guest afresh (see holds_back)."""
        launcher.mark(MIGRATING_MARKER, migration_name.encode())

    @staticmethod
    def _unmark(launcher: Launcher) -> None:
        launcher.unmark(MIGRATING_MARKER)

    def holds_back(self, vm: vm_pb2.VirtualMachine | None, launcher: Launcher) -> bool:
        """A source run whose launcher is gone after a job may have moved the guest: no new
        launcher (it would boot a second copy) while the migration is undecided. Once the
        VM carries no migration and is still this node's, the marker goes and the normal
        path (a new launcher adopting, or finding no guest) resumes."""
        if not launcher.marked(MIGRATING_MARKER) or launcher.running() or launcher.qemu_pids():
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
                                      instance_uid=launcher.uid, owner=run_owner(launcher.vm_dir),
                                      tls=self.tls, target_node=target.node_name)
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
        # QEMU's own TLS when the target offers it (tls+tcp://) and this node may leave the
        # tunnel (migration_stream tls or plaintext). Otherwise a TLS node tunnels whatever the
        # target reported, unless its operator chose plaintext: it never falls back to the clear.
        native = (target.migration_uri.startswith(TLS_STREAM_PREFIX) and self.tls is not None
                  and not self.tls.tunnels_stream)
        tunnelled = (target.migration_uri == TUNNELLED_STREAM
                     or (not native and self.tls is not None and self.tls.stream != "plaintext"))
        if target.migration_uri.startswith(TLS_STREAM_PREFIX) and self.tls is None:
            return None, ("MigrationFailed", f"the target wants QEMU's own TLS ({target.migration_uri}) and "
                                             "this node has no TLS files")
        stream_uri = target.migration_uri.removeprefix(TLS_STREAM_PREFIX)
        host = "" if tunnelled else split_host_port(stream_uri.removeprefix("tcp://"))[0]
        request = launcher_pb2.MigrateDomainRequest(
            destination_uri=f"qemu+unix:///session?socket={launcher.vm_dir / TUNNEL_SOCKET}",
            migration_uri=stream_uri, destination_xml=target.target_domain_xml,
            bandwidth_mib_per_second=target.bandwidth_mib_per_second,
            completion_timeout_seconds=target.completion_timeout_seconds,
            progress_timeout_seconds=target.progress_timeout_seconds,
            allow_post_copy=target.allow_post_copy, allow_auto_converge=target.allow_auto_converge,
            listen_address=host, tunnelled=tunnelled)
        if tunnelled:
            request.migration_uri = ""  # libvirt refuses one with a tunnel
        elif native:
            try:
                pair = fetch_client_pair(target.target_address, target.node_name, launcher.uid, self.tls)
            except (OSError, ValueError) as exc:
                return None, ("TunnelFailed", f"cannot get this migration's TLS files from node "
                                              f"{target.node_name}: {exc}")
            request.tls.CopyFrom(launcher_pb2.MigrationTLSFiles(ca_pem=pair.ca_pem, cert_pem=pair.cert_pem,
                                                                key_pem=pair.key_pem))
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
