"""gRPC LauncherService: a thin mapping from RPCs to the Supervisor.

Failures are gRPC status codes (never a success/message envelope).
"""

from __future__ import annotations

import logging
from typing import Iterator

import grpc
import libvirt

from corral.v1 import launcher_pb2, launcher_pb2_grpc, snapshot_pb2

from corral.snapshots import valid_tag
from launcher import console, domain_xml, hotplug, migration, migration_tls, session, snapshots
from launcher.host import DomainNotFound, DomainOperationFailed, HypervisorUnavailable, LauncherError
from launcher.supervisor import Supervisor

log = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, error: LauncherError) -> None:
    """Map a typed launcher error to a status code (context.abort raises)."""
    if isinstance(error, migration.MigrationAborted):
        code = grpc.StatusCode.ABORTED
    elif isinstance(error, HypervisorUnavailable):
        code = grpc.StatusCode.UNAVAILABLE
    elif isinstance(error, DomainNotFound):
        code = grpc.StatusCode.NOT_FOUND
    elif isinstance(error, DomainOperationFailed):
        code = grpc.StatusCode.INTERNAL
    else:
        code = grpc.StatusCode.FAILED_PRECONDITION
    context.abort(code, f"{type(error).__name__}: {error}")


class LauncherServicer(launcher_pb2_grpc.LauncherServiceServicer):
    """Serves one VM's status and stop requests to the node handler."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    def GetDomainStatus(self, request: launcher_pb2.GetDomainStatusRequest,
                        context: grpc.ServicerContext) -> launcher_pb2.GetDomainStatusResponse:
        return launcher_pb2.GetDomainStatusResponse(status=self._sup.board.current())

    def WatchDomainStatus(self, request: launcher_pb2.WatchDomainStatusRequest,
                          context: grpc.ServicerContext
                          ) -> Iterator[launcher_pb2.WatchDomainStatusResponse]:
        board = self._sup.board
        # Start from the current status, then every later one, until the launcher exits.
        statuses, closed = board.wait(0, 0)
        seen = len(statuses)
        yield launcher_pb2.WatchDomainStatusResponse(status=statuses[-1])
        while context.is_active():
            fresh, closed = board.wait(seen, timeout=1.0)
            seen += len(fresh)
            for status in fresh:
                yield launcher_pb2.WatchDomainStatusResponse(status=status)
            if closed:
                return

    def ShutdownDomain(self, request: launcher_pb2.ShutdownDomainRequest,
                       context: grpc.ServicerContext) -> launcher_pb2.ShutdownDomainResponse:
        if request.grace_period_seconds < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "grace_period_seconds must be >= 0")
        try:
            status = self._sup.shutdown(request.grace_period_seconds)
        except LauncherError as e:
            log.error("ShutdownDomain failed: %s", e)
            _abort(context, e)
        return launcher_pb2.ShutdownDomainResponse(status=status)

    def KillDomain(self, request: launcher_pb2.KillDomainRequest,
                   context: grpc.ServicerContext) -> launcher_pb2.KillDomainResponse:
        try:
            status = self._sup.kill()
        except LauncherError as e:
            log.error("KillDomain failed: %s", e)
            _abort(context, e)
        return launcher_pb2.KillDomainResponse(status=status)

    def SaveDomain(self, request: launcher_pb2.SaveDomainRequest,
                   context: grpc.ServicerContext) -> launcher_pb2.SaveDomainResponse:
        if not request.path.startswith("/"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "path must be absolute")
        return launcher_pb2.SaveDomainResponse(
            status=self._domain_op("SaveDomain", lambda: self._sup.save(request.path), context))

    # Pause, resume, reboot, reset: idempotent; FAILED_PRECONDITION when not running.
    def _domain_op(self, name: str, op, context: grpc.ServicerContext) -> launcher_pb2.DomainStatus:
        try:
            return op()
        except LauncherError as e:
            log.warning("%s failed: %s", name, e)
            _abort(context, e)

    def PauseDomain(self, request: launcher_pb2.PauseDomainRequest,
                    context: grpc.ServicerContext) -> launcher_pb2.PauseDomainResponse:
        return launcher_pb2.PauseDomainResponse(status=self._domain_op("PauseDomain", self._sup.pause, context))

    def ResumeDomain(self, request: launcher_pb2.ResumeDomainRequest,
                     context: grpc.ServicerContext) -> launcher_pb2.ResumeDomainResponse:
        return launcher_pb2.ResumeDomainResponse(status=self._domain_op("ResumeDomain", self._sup.resume, context))

    def RebootDomain(self, request: launcher_pb2.RebootDomainRequest,
                     context: grpc.ServicerContext) -> launcher_pb2.RebootDomainResponse:
        return launcher_pb2.RebootDomainResponse(status=self._domain_op("RebootDomain", self._sup.reboot, context))

    def ResetDomain(self, request: launcher_pb2.ResetDomainRequest,
                    context: grpc.ServicerContext) -> launcher_pb2.ResetDomainResponse:
        return launcher_pb2.ResetDomainResponse(status=self._domain_op("ResetDomain", self._sup.reset, context))

    def AttachConsole(self, request_iterator: Iterator[launcher_pb2.AttachConsoleRequest],
                      context: grpc.ServicerContext) -> Iterator[launcher_pb2.AttachConsoleResponse]:
        """The serial console until the domain stops or the caller cancels (see console.py)."""
        try:
            session = console.ConsoleSession(self._sup.host, domain_xml.domain_uuid(self._sup.vm))
        except LauncherError as e:
            _abort(context, e)
        context.add_callback(lambda: session.close(wait=False))  # never blocks the server's thread
        for data in console.pump(session, (r.data for r in request_iterator), context.is_active):
            yield launcher_pb2.AttachConsoleResponse(data=data)

    # --- live migration (launcher/migration.py) -------------------------------------------

    def PrepareIncoming(self, request: launcher_pb2.PrepareIncomingRequest,
                        context: grpc.ServicerContext) -> launcher_pb2.PrepareIncomingResponse:
        try:
            xml = self._sup.prepare_incoming()
            if request.HasField("tls"):  # QEMU's own TLS: this migration's server files
                migration_tls.write_files(self._sup.vm_dir, request.tls, server=True)
        except LauncherError as e:
            _abort(context, e)
        except OSError as e:
            context.abort(grpc.StatusCode.INTERNAL, f"cannot write the migration's TLS files: {e}")
        return launcher_pb2.PrepareIncomingResponse(
            domain_xml=xml, libvirt_socket_path=session.libvirt_socket(self._sup.vm_dir))

    def MigrateDomain(self, request: launcher_pb2.MigrateDomainRequest,
                      context: grpc.ServicerContext) -> Iterator[launcher_pb2.MigrateDomainResponse]:
        """Progress of the (new or already running) job; the last message has done set, or
        the stream ends with ABORTED (cancelled, timeouts) or another error status."""
        if not request.destination_uri or not (request.migration_uri or request.tunnelled):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "destination_uri and migration_uri (or tunnelled) "
                          "are required")
        try:
            if request.HasField("tls"):  # QEMU's own TLS: this migration's client files
                migration_tls.write_files(self._sup.vm_dir, request.tls, server=False)
            job = self._sup.migrate(request)
        except OSError as e:
            context.abort(grpc.StatusCode.INTERNAL, f"cannot write the migration's TLS files: {e}")
        except LauncherError as e:
            log.warning("MigrateDomain refused: %s", e)
            _abort(context, e)
        seen = job.board.latest()
        while context.is_active():
            fresh, ended, error = job.board.wait(seen, timeout=1.0)
            seen += len(fresh)
            yield from fresh
            if ended:
                if error is not None:
                    _abort(context, error)
                return

    def AbortMigration(self, request: launcher_pb2.AbortMigrationRequest,
                       context: grpc.ServicerContext) -> launcher_pb2.AbortMigrationResponse:
        """Idempotent: without a running job there is nothing to abort."""
        self._sup.abort_migration()
        return launcher_pb2.AbortMigrationResponse()

    # --- disk snapshots (launcher/snapshots.py) --------------------------------------------

    def _snapshot_op(self, tag: str, context: grpc.ServicerContext, action: str, op):
        if not valid_tag(tag):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tag must be corral-<uuid>")
        try:
            with self._sup._op_lock:  # never during a start, shutdown or kill
                guest, _state = self._sup._live_guest_locked(action)
                return op(guest.domain)
        except LauncherError as e:
            _abort(context, e)
        except snapshots.SnapshotError as e:
            log.warning("%s failed: %s", action, e)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))

    def SnapshotDomainDisks(self, request: snapshot_pb2.SnapshotDomainDisksRequest,
                            context: grpc.ServicerContext) -> snapshot_pb2.SnapshotDomainDisksResponse:
        indications, note = self._snapshot_op(request.tag, context, "snapshot disks", lambda domain: snapshots.take(
            domain, self._sup.vm, request.tag, list(request.disks), freeze=request.freeze))
        return snapshot_pb2.SnapshotDomainDisksResponse(indications=indications, freeze_message=note)

    def DeleteDomainDiskSnapshots(self, request: snapshot_pb2.DeleteDomainDiskSnapshotsRequest,
                                  context: grpc.ServicerContext) -> snapshot_pb2.DeleteDomainDiskSnapshotsResponse:
        self._snapshot_op(request.tag, context, "delete disk snapshots", lambda domain: snapshots.delete(
            domain, self._sup.vm, request.tag, list(request.disks)))
        return snapshot_pb2.DeleteDomainDiskSnapshotsResponse()
    # --- hotplug (launcher/hotplug.py) ----------------------------------------------------

    def _on_live_guest(self, action: str, op, context: grpc.ServicerContext):
        """op(libvirt domain) on the running guest, serialised with the other operations."""
        sup = self._sup
        try:
            with sup._op_lock:
                guest, _state = sup._live_guest_locked(action)
                result = op(guest.domain)
                sup.refresh()
                return result, sup.board.current()
        except LauncherError as e:
            log.warning("%s failed: %s", action, e)
            _abort(context, e)
        except libvirt.libvirtError as e:
            log.warning("%s failed: %s", action, e)
            context.abort(grpc.StatusCode.INTERNAL, f"{action}: {e.get_error_message()}")

    def AttachDisk(self, request: launcher_pb2.AttachDiskRequest,
                   context: grpc.ServicerContext) -> launcher_pb2.AttachDiskResponse:
        _, status = self._on_live_guest(
            "attach a disk", lambda d: hotplug.attach_disk(d, request.disk, block_device=request.block_device), context)
        return launcher_pb2.AttachDiskResponse(status=status)

    def DetachDisk(self, request: launcher_pb2.DetachDiskRequest,
                   context: grpc.ServicerContext) -> launcher_pb2.DetachDiskResponse:
        _, status = self._on_live_guest("detach a disk", lambda d: hotplug.detach_disk(d, request.disk_name), context)
        return launcher_pb2.DetachDiskResponse(status=status)

    def ResizeDomain(self, request: launcher_pb2.ResizeDomainRequest,
                     context: grpc.ServicerContext) -> launcher_pb2.ResizeDomainResponse:
        """vCPUs first, then memory; each undone alone when the guest does not take it."""
        if request.vcpus < 0 or request.memory_mib < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "vcpus and memory_mib must not be negative")
        boot_memory = self._sup.vm.spec.memory_mib

        def resize(domain) -> tuple[int, int]:
            vcpus = hotplug.set_vcpus(domain, request.vcpus) if request.vcpus else domain.vcpusFlags(hotplug.LIVE)
            if request.memory_mib:
                memory = hotplug.set_memory(domain, boot_memory, request.memory_mib)
            elif hotplug.memory_hotplug_domain(domain):
                memory = boot_memory + hotplug.plugged_memory_mib(domain)[1]
            else:
                memory = boot_memory
            return vcpus, memory

        (vcpus, memory), status = self._on_live_guest("resize", resize, context)
        return launcher_pb2.ResizeDomainResponse(status=status, vcpus=vcpus, memory_mib=memory)
