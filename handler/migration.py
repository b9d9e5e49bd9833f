"""Live migration, the handler's part (the controller's is controller/migrations.py): the
target side is handler/migration_target.py, the source side handler/migration_source.py, the
proxy between nodes handler/migration_proxy.py; here they are put together with the reports
both sides send to the controller."""
from __future__ import annotations

import logging
import threading
import time

import grpc

from corral.v1 import handler_pb2, launcher_pb2, migration_pb2, vm_pb2
from handler.migration_proxy import MigrationTLS, TargetProxy, split_host_port
from handler.migration_source import (Job, SourceSide, abort_reason, is_migrated_away,  # noqa: F401 (re-exported)
                                      migration_in_progress)
from handler.migration_target import (Incoming, TargetSide, arrival_downtime_ms, free_port,  # noqa: F401
                                      unmigratable)

log = logging.getLogger(__name__)
M = migration_pb2


class Migrations(TargetSide, SourceSide):
    """Used by the node agent (handler/agent.py): ``reconcile_target`` for VMs migrating to
    this node, ``reconcile_source`` for its running VMs, ``check_abort`` while a job runs."""

    def __init__(self, agent, *, listen: str = "", advertise_host: str = "",
                 tls: MigrationTLS | None = None) -> None:
        self.agent = agent
        #: The node's TLS (handler/migration_proxy.py): the proxy and the tunnels speak mutual
        #: TLS and QEMU's stream is tunnelled through them; None: plaintext, stream direct.
        self.tls = tls
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
        self.proxy = TargetProxy(listen, self.resolve, tls=self.tls, credentials=self.credentials_for)
        host = split_host_port(listen)[0]
        if host in ("", "0.0.0.0", "::", "*"):
            host = advertise_host
        self.advertise_host = host
        self.proxy.start()
        log.info("migration proxy on %s (advertised %s), %s", listen, self.address,
                 "mutual TLS, QEMU's stream tunnelled through it" if self.tls and self.tls.tunnels_stream else
                 "mutual TLS for libvirt's connection, QEMU's stream direct in QEMU's own TLS with one-off "
                 "credentials per migration (post-copy possible)" if self.tls and self.tls.stream == "tls" else
                 "mutual TLS for libvirt's connection, QEMU's stream direct and UNENCRYPTED "
                 "(migration_stream: plaintext; post-copy possible)" if self.tls else
                 "PLAINTEXT (no TLS files), QEMU's stream direct and unencrypted")
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
