"""Live migration, the target node's part (handler/migration.py puts the two sides together).

A VM whose ``status.migration_target.node_name`` is this node while ``status.node_name`` is
another gets an *incoming* run: its directory (same instance uid: the run continues here), the
marker ``DIR/incoming`` and a launcher in incoming mode. Once the launcher answers
PrepareIncoming, the handler reports TARGET_READY (its proxy's address, the domain XML, and
how QEMU's stream comes: see ``stream_uri``). When the guest arrives (the
launcher's domain is RUNNING) it reports SUCCEEDED; if the launcher dies first, FAILED (the
source then aborts). If the migration goes away while the VM is not assigned here, the
incoming run is removed (launcher, QEMU, libvirt daemons, directory). No VM phase is ever
reported for an incoming run. After the switch the normal path adopts the launcher
(``DIR/arrived`` notes it; a restarted launcher knows by its own "started" marker that the
guest is there); if the source's report switched the VM first, the target sends the downtime
(only it knows) in a late SUCCEEDED report.

The proxy asks ``resolve`` which libvirt socket a connection may reach: only a run this node
receives now, and (with TLS) only from the node that is that migration's source."""
from __future__ import annotations

import logging
import os
import re
import socket
import time
from dataclasses import dataclass

import grpc

from corral.v1 import handler_pb2, launcher_pb2, migration_pb2, vm_pb2
from handler import networks as node_networks
from handler.devices import node_paths
from handler.launchers import INCOMING_MARKER, Launcher, run_owner
from handler.migration_creds import MigrationCredentials, issue
from handler.migration_proxy import RunSocket
from handler.vm_files import open_in_vm_dir

log = logging.getLogger(__name__)
M = migration_pb2
DS = launcher_pb2

#: The handler's note that an incoming run became a normal one (the launcher's own is its
#: "started" marker; DIR/incoming stays: it names the run's cgroup, see Launcher.cgroup_name).
ARRIVED_MARKER = "arrived"
#: libvirt's session socket of a run (the launcher's XDG_RUNTIME_DIR is DIR/run).
LIBVIRT_SOCKET = "run/libvirt/libvirt-sock"
PREPARE_TIMEOUT_SECONDS = 60.0
#: The migration_uri a TLS target reports: QEMU's stream comes inside libvirt's connection
#: (VIR_MIGRATE_TUNNELLED), through the proxy; no port is opened for it.
TUNNELLED_STREAM = "tunnelled"
#: Before tcp://HOST:PORT in the migration_uri of a target that wants QEMU's own TLS
#: (migration_stream: tls): the source fetches its TLS files from the target's proxy first.
TLS_STREAM_PREFIX = "tls+"


def arrival_downtime_ms(status: launcher_pb2.DomainStatus) -> int:
    """libvirt's downtime, which only the target knows: the target launcher's status message
    on arrival says "migrated in, downtime N ms, ..." (launcher/migration.py)."""
    match = re.search(r"downtime (\d+) ms", status.message)
    return int(match.group(1)) if match else 0


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
    #: This migration's one-off TLS files for the two QEMUs (migration_stream: tls).
    credentials: MigrationCredentials | None = None


class TargetSide:
    """The target half of ``Migrations`` (a mixin: state lives in Migrations)."""

    def resolve(self, instance_uid: str, source_node: str | None) -> RunSocket | None:
        """The libvirt socket of a run this node receives now, else None. ``source_node``
        (the proxy's TLS client, None over plaintext) must be the node the VM runs on: the
        source of the migration the controller admitted. Another node, even one of the
        cluster, reaches no run's libvirt."""
        with self.agent.lock:
            vm = next((vm for vm in self.agent.desired.values() if vm.status.instance_uid == instance_uid), None)
        if vm is None or not self.is_target(vm):
            return None
        if source_node is not None and source_node != vm.status.node_name:
            log.warning("vm %s: migration proxy: node %s is not the source of migration %s (node %s): refused",
                        vm.metadata.name, source_node, vm.status.migration_target.migration_name,
                        vm.status.node_name)
            return None
        if self.tls is not None and source_node is None:
            return None  # never: a TLS proxy always names the client's node
        launcher = self.agent.launchers.get(instance_uid)
        if launcher is None or launcher.finished:
            return None
        # The path root computes, never the one the launcher (the run's user) answered; the
        # socket must be the run's own (see RunSocket).
        try:
            owner = run_owner(launcher.vm_dir)[0]
        except OSError:
            return None
        return RunSocket(str(launcher.vm_dir / LIBVIRT_SOCKET), owner=owner)

    def is_target(self, vm: vm_pb2.VirtualMachine) -> bool:
        node = self.agent.node_name
        return vm.status.node_name != node and vm.status.migration_target.node_name == node

    @staticmethod
    def is_incoming(launcher: Launcher) -> bool:
        """Started as a migration target and not (yet) adopted as this node's run."""
        return launcher.marked(INCOMING_MARKER) and not launcher.marked(ARRIVED_MARKER)

    def reconcile_target(self, vm: vm_pb2.VirtualMachine) -> None:
        agent = self.agent
        uid = vm.status.instance_uid
        target = vm.status.migration_target
        launcher = agent.launchers.get(uid)
        state = self.incoming.get(uid)
        if launcher is not None and not self.is_incoming(launcher):
            if self.removable(launcher):
                # This node was the source of the run's previous migration, and its guest left;
                # asked back before that launcher was cleared (the run is still "desired" here,
                # so the cleanup of runs no longer assigned never reaches it): clear it first,
                # the next pass prepares the target.
                agent._in_pool(uid, self.remove_incoming, launcher)
            return  # else a run of this VM this node ran before (finished): not ours to touch
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
        vm = node_paths(vm, agent.device_roots)  # the target checks paths against its own roots
        vm_dir = Launcher.create_dir(state_dir=agent.state_dir, vm=vm, isolation=agent.isolation)
        launcher = Launcher(vm_dir=vm_dir, on_change=agent.wake.set, isolation=agent.isolation)
        launcher.mark(INCOMING_MARKER)  # root's (cgroup name, is_incoming), before the launcher starts
        # ... and the launcher's own, in its directory: it waits for the guest instead of booting.
        os.close(open_in_vm_dir(vm_dir / INCOMING_MARKER, os.O_WRONLY | os.O_CREAT, 0o644))
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
            request = launcher_pb2.PrepareIncomingRequest()
            if self.native_tls:  # QEMU's own TLS: this migration's one-off files, the server half to it
                state.credentials = state.credentials or issue(state.migration_name)
                server = state.credentials.server
                request.tls.CopyFrom(launcher_pb2.MigrationTLSFiles(
                    ca_pem=server.ca_pem, cert_pem=server.cert_pem, key_pem=server.key_pem))
            while True:
                try:
                    response = launcher.stub.PrepareIncoming(request, timeout=30)
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
            report = self._request(vm, handler_pb2.MIGRATION_ROLE_TARGET, M.MIGRATION_PHASE_TARGET_READY)
            report.target_address = self.address
            report.target_domain_xml = response.domain_xml
            report.migration_uri = self.stream_uri()
            state.ready = report
            log.info("vm %s: target ready at %s (stream %s)", name, report.target_address, report.migration_uri)
            self._send(vm, report)
        finally:
            state.preparing = False

    @property
    def native_tls(self) -> bool:
        return self.tls is not None and self.tls.stream == "tls"

    def credentials_for(self, instance_uid: str, source_node: str) -> bytes | None:
        """(The proxy, mutual TLS.) The source's half of the run's one-off TLS files, only for
        the node the proxy would let reach the run's libvirt (``resolve``); else None."""
        if self.resolve(instance_uid, source_node) is None:
            return None
        state = self.incoming.get(instance_uid)
        return state.credentials.client.to_json() if state is not None and state.credentials else None

    def stream_uri(self) -> str:
        """How QEMU's stream reaches this node: through the TLS proxy (tunnelled), or, without
        TLS or with the operator's migration_stream plaintext, a free port of the advertised
        address (QEMU binds it when the migration starts)."""
        if self.tls is not None and self.tls.tunnels_stream:
            return TUNNELLED_STREAM
        host = self.advertise_host
        port = free_port(host)
        return f"{TLS_STREAM_PREFIX if self.native_tls else ''}tcp://{f'[{host}]' if ':' in host else host}:{port}"

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
            launcher.mark(ARRIVED_MARKER)
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
