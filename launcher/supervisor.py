"""The launcher's one VM: adopt or start its domain, track status, stop it on request.

Kept apart from gRPC (service.py) and libvirt details (host.py) so each is small.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

import libvirt

from corral.v1 import launcher_pb2, vm_pb2

from launcher import domain_xml, migration, reaper, session
from launcher.guest_agent import GuestAgentPoller
from launcher.qemu_log import with_qemu_log
from launcher.host import (DomainNotFound, DomainNotRunning, Guest, Host, LauncherError,
                           LifecycleEvent, capabilities_files, embed_capabilities_dir,
                           save_capabilities_cache, translate_state)

log = logging.getLogger(__name__)
pb = launcher_pb2

STARTED_MARKER = "started"
# Events can be lost (e.g. QEMU dying while libvirt reconnects at startup): poll as well.
_POLL_SECONDS = 2.0


class StatusBoard:
    """The latest DomainStatus plus a condition, so watchers see every change in order."""

    def __init__(self, initial: launcher_pb2.DomainStatus) -> None:
        self._cond = threading.Condition()
        self._history: list[launcher_pb2.DomainStatus] = [initial]
        self._closed = False

    def current(self) -> launcher_pb2.DomainStatus:
        with self._cond:
            return self._history[-1]

    def publish(self, status: launcher_pb2.DomainStatus) -> bool:
        """Record ``status`` if it differs from the current one; False if closed or equal."""
        with self._cond:
            if self._closed or status == self._history[-1]:
                return False
            self._history.append(status)
            self._cond.notify_all()
            log.info("status: %s %s %s", pb.DomainState.Name(status.state), status.reason,
                     status.message)
            return True

    def close(self) -> None:
        """No more changes: watchers drain what they have not seen and end."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> tuple[list[launcher_pb2.DomainStatus], bool]:
        """Statuses after the first ``seen`` ones (waiting up to ``timeout``), and closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or len(self._history) > seen, timeout)
            return list(self._history[seen:]), self._closed


class Supervisor:
    """Owns the VM's domain for this launcher's lifetime."""

    def __init__(self, vm: vm_pb2.VirtualMachine, vm_dir: str, host: Host,
                 options: domain_xml.DomainOptions, capabilities_cache: str | None) -> None:
        self.vm = vm
        self.vm_dir = vm_dir
        self.host = host
        self.options = options
        self.capabilities_cache = capabilities_cache
        self.capabilities_dir = (embed_capabilities_dir(host.root) if host.root
                                 else session.capabilities_dir(vm_dir))
        self.exit_requested = threading.Event()
        self._op_lock = threading.Lock()  # startup, shutdown and kill never overlap
        self._guest: Guest | None = None
        self._start_error: str | None = None
        self._fenced: str | None = None
        self._shutting_down = False
        self._destroying = False  # kill() is destroying a running guest
        self._hurry = threading.Event()  # a kill arrived while shutdown waits for the guest
        self._saved_path = ""
        self._final: launcher_pb2.DomainStatus | None = None
        self._events: queue.Queue[LifecycleEvent | None] = queue.Queue()
        # A migration target until the guest arrives (launcher/migration.py): never boots it.
        self.incoming = migration.is_incoming(vm_dir) and not os.path.exists(self.marker_path)
        self._arrival_note = ""
        self._migration: migration.MigrationJob | None = None
        # Polls qemu-ga in its own thread; a change wakes the refresh loop (None event).
        self.agent = GuestAgentPoller(lambda: self._guest.domain if self._guest else None,
                                      on_change=lambda: self._events.put(None))
        self.board = StatusBoard(self._status(pb.DOMAIN_STATE_STARTING,
                                              "incoming" if self.incoming else "starting"))
        host.on_lifecycle(self._events.put)

    @property
    def finished(self) -> bool:
        """The run ended here (stop RPC, save, migrated away): not just the launcher exiting."""
        return self._final is not None

    @property
    def marker_path(self) -> str:
        return os.path.join(self.vm_dir, STARTED_MARKER)

    def _status(self, state: int, reason: str, message: str = "",
                qemu_pid: int = 0) -> launcher_pb2.DomainStatus:
        return pb.DomainStatus(state=state, reason=reason, message=message,
                               vm_uid=domain_xml.domain_uuid(self.vm), qemu_pid=qemu_pid,
                               launcher_pid=os.getpid(),
                               serial_log_path=self.options.serial_log_path,
                               guest=self.agent.current() if state == pb.DOMAIN_STATE_RUNNING else None)

    # --- startup -------------------------------------------------------------------------

    def start(self) -> None:
        """Adopt a running domain, report a finished one, or define and start a new one."""
        with self._op_lock:
            try:
                self._start_locked()
            except LauncherError as e:
                log.error("cannot start domain: %s", e)
                self._start_error = with_qemu_log(str(e) or type(e).__name__, self._qemu_log_paths())
            self.refresh()
        threading.Thread(target=self._refresh_loop, name="status-refresh", daemon=True).start()
        self.agent.start()

    def _qemu_log_paths(self) -> list[str]:
        """Where QEMU's own log of this domain is (embedded driver, or the run's session daemon)."""
        name = f"{self.vm.metadata.name}.log"
        if self.host.root:
            return [os.path.join(self.host.root, "log", "qemu", name)]
        return [os.path.join(self.vm_dir, ".cache", "libvirt", "qemu", "log", name)]

    def _start_locked(self) -> None:
        if self._fenced:
            raise LauncherError(self._fenced)
        uid = domain_xml.domain_uuid(self.vm)
        try:
            guest: Guest | None = self.host.lookup(uid)
        except DomainNotFound:
            guest = None
        marker = os.path.exists(self.marker_path)
        if self.incoming:
            # Only a finished migration creates the guest here: never define or boot it.
            if guest is not None:
                self._adopt_arrival(guest)
            return
        if guest is not None and guest.is_active():
            log.info("adopting running domain %s (qemu pid %d)", guest.name, guest.qemu_pid())
            self._guest = guest
            return
        if marker:
            # The guest already ran and stopped (or was undefined): never boot it twice.
            log.info("domain already ran (marker %s exists); not starting it", self.marker_path)
            self._guest = guest
            return
        try:
            xml = domain_xml.build_domain_xml(self.vm, self.options)
        except ValueError as e:
            raise _InvalidSpec(f"invalid VM spec: {e}") from e
        cached = capabilities_files(self.capabilities_dir)
        t0 = time.monotonic()
        self._guest = guest = self.host.define(xml)
        t1 = time.monotonic()
        probed = capabilities_files(self.capabilities_dir) != cached
        restore_from = self.vm.status.restore_from.path
        if restore_from:
            log.info("resuming the guest saved in %s", restore_from)
            self.host.restore(restore_from, xml)
        else:
            guest.start()
        t2 = time.monotonic()
        with open(self.marker_path, "w") as f:
            f.write(f"{time.time():.3f}\n")
        log.info("domain %s started: define %.2fs, start %.2fs, %s", guest.name, t1 - t0, t2 - t1,
                 "QEMU capabilities PROBED (no usable cache)" if probed else "capabilities cache used")
        # A VM user may read the node's cache but not write it (the handler warms it).
        if self.capabilities_cache and self.host.root and os.access(self.capabilities_cache, os.W_OK):
            try:
                save_capabilities_cache(self.host.root, self.capabilities_cache)
            except OSError as e:
                log.warning("cannot update capabilities cache %s: %s", self.capabilities_cache, e)

    # --- status --------------------------------------------------------------------------

    def _refresh_loop(self) -> None:
        while True:
            try:
                self._events.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                pass
            try:
                self.refresh()
            except Exception:
                log.exception("status refresh failed")

    def refresh(self) -> None:
        """Recompute the status from libvirt and publish it if it changed."""
        if self._final is not None:
            return
        guest = self._guest
        if guest is None and self.incoming and self._start_error is None:
            try:
                self._adopt_arrival(self.host.lookup(domain_xml.domain_uuid(self.vm)))
            except DomainNotFound:
                pass
            guest = self._guest
            if guest is None:
                self.board.publish(self._status(pb.DOMAIN_STATE_STARTING, "incoming",
                                                "waiting for the guest to arrive by live migration"))
                return
        if guest is None:
            if self._start_error is not None:
                self.board.publish(self._status(pb.DOMAIN_STATE_CRASHED, "failed", self._start_error))
            elif os.path.exists(self.marker_path) and os.path.exists(self._outgoing_marker):
                self.board.publish(self._left_status())
            elif os.path.exists(self.marker_path):
                self.board.publish(self._status(pb.DOMAIN_STATE_SHUTOFF, "undefined",
                                                "the domain already ran and was removed"))
            return
        try:
            raw_state, raw_reason = guest.state()
            pid = guest.qemu_pid()
        except DomainNotFound:
            if self._migration is None and os.path.exists(self._outgoing_marker):
                self.board.publish(self._left_status())  # an earlier launcher's migration finished
            return  # undefined during shutdown; the final status is published there
        state, reason = translate_state(raw_state, raw_reason)
        message = ""
        if state in (pb.DOMAIN_STATE_SHUTOFF, pb.DOMAIN_STATE_CRASHED) and self._fenced:
            state, reason, message = pb.DOMAIN_STATE_CRASHED, "fenced", self._fenced
        elif state in (pb.DOMAIN_STATE_SHUTOFF, pb.DOMAIN_STATE_CRASHED) and self._start_error:
            state, reason, message = pb.DOMAIN_STATE_CRASHED, "failed", self._start_error
        elif state in (pb.DOMAIN_STATE_SHUTOFF, pb.DOMAIN_STATE_CRASHED) and self._destroying:
            state, reason = pb.DOMAIN_STATE_SHUTOFF, "destroyed"
        elif state == pb.DOMAIN_STATE_CRASHED:
            message = "QEMU exited unexpectedly"
        elif state == pb.DOMAIN_STATE_RUNNING and self._shutting_down:
            state, reason = pb.DOMAIN_STATE_SHUTTING_DOWN, "shutdown-requested"
        elif state == pb.DOMAIN_STATE_RUNNING and reason == "migrated":
            message = self._arrival_note
        reaper.guest_started(pid)
        self.board.publish(self._status(state, reason, message, pid))

    # --- pause, resume, reboot, reset ----------------------------------------------------
    # Idempotent (pausing a paused domain changes nothing); DomainNotRunning (the service's
    # FAILED_PRECONDITION) when the domain is not running. Each returns the status after it.

    def _live_guest_locked(self, action: str) -> tuple[Guest, int]:
        """The running (or paused) guest and libvirt's raw state, or DomainNotRunning."""
        guest = self._guest
        if self._final is not None or guest is None or self._fenced:
            raise DomainNotRunning(f"cannot {action}: the domain is not running")
        if self._shutting_down:
            raise DomainNotRunning(f"cannot {action}: the domain is shutting down")
        state, _reason = guest.state()
        if state not in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED):
            raise DomainNotRunning(f"cannot {action}: the domain is not running")
        return guest, state

    def _after_locked(self) -> launcher_pb2.DomainStatus:
        self.refresh()
        return self.board.current()

    def pause(self) -> launcher_pb2.DomainStatus:
        with self._op_lock:
            guest, state = self._live_guest_locked("pause")
            if state != libvirt.VIR_DOMAIN_PAUSED:
                guest.suspend()
            return self._after_locked()

    def resume(self) -> launcher_pb2.DomainStatus:
        with self._op_lock:
            guest, state = self._live_guest_locked("resume")
            if state == libvirt.VIR_DOMAIN_PAUSED:
                guest.resume()
            return self._after_locked()

    def reboot(self) -> launcher_pb2.DomainStatus:
        """ACPI reboot request; the guest decides (one without ACPI support ignores it)."""
        with self._op_lock:
            guest, state = self._live_guest_locked("reboot")
            if state == libvirt.VIR_DOMAIN_PAUSED:
                raise DomainNotRunning("cannot reboot: the domain is paused (unpause it first)")
            guest.reboot()
            return self._after_locked()

    def reset(self) -> launcher_pb2.DomainStatus:
        """Hardware reset (a paused guest stays paused, reset)."""
        with self._op_lock:
            guest, _state = self._live_guest_locked("reset")
            guest.reset()
            return self._after_locked()

    # --- stopping ------------------------------------------------------------------------

    def shutdown(self, grace_period_seconds: float) -> launcher_pb2.DomainStatus:
        """ACPI power-off, destroy after the grace period, undefine; then the launcher exits."""
        with self._op_lock:
            if self._final is not None:
                return self._final
            guest = self._guest
            if guest is not None and guest.is_active():
                self._shutting_down = True
                self.refresh()
                try:
                    guest.shutdown()
                except DomainNotRunning:
                    pass
                deadline = time.monotonic() + max(0.0, grace_period_seconds)
                while guest.is_active() and time.monotonic() < deadline and not self._hurry.is_set():
                    time.sleep(0.1)
                if guest.is_active():
                    log.info("guest did not power off within %ss; destroying", grace_period_seconds)
                    guest.destroy()
            return self._finish_locked()

    def save(self, path: str) -> launcher_pb2.DomainStatus:
        """Write the guest's memory to path (through path.partial, so a file at path is always
        complete), undefine; then the launcher exits."""
        with self._op_lock:
            if self._final is not None:
                if self._final.saved_state_path == path:
                    return self._final
                raise DomainNotRunning("cannot save: the domain already stopped")
            guest, _state = self._live_guest_locked("save")
            partial = path + ".partial"
            guest.save(partial)
            os.replace(partial, path)
            self._saved_path = path
            log.info("guest saved to %s", path)
            return self._finish_locked()

    def fence(self, message: str) -> None:
        """Destroy the guest because the node may no longer run it; keep serving the status
        (and never boot it again: the started marker stays)."""
        with self._op_lock:
            self._fenced = message
            if self._guest is None:
                self._start_error = message  # never start it
                if self.incoming:
                    self._drop_incoming()  # nor let a migration bring it here
            elif self._final is None:
                try:
                    self._guest.destroy()
                except LauncherError as e:
                    log.error("fencing: destroy failed: %s", e)
        self.refresh()

    def kill(self) -> launcher_pb2.DomainStatus:
        """Destroy at once, undefine; then the launcher exits. Hurries a graceful shutdown
        that is waiting for the guest."""
        self._hurry.set()
        with self._op_lock:
            if self._final is not None:
                return self._final
            if self._guest is not None:
                # A running guest stopped from here on was destroyed on request, whatever
                # libvirt's event says while it waits for QEMU to go (not a crash).
                self._destroying = _active(self._guest)
                self._guest.destroy()
            return self._finish_locked()

    def _finish_locked(self) -> launcher_pb2.DomainStatus:
        self._shutting_down = False
        if self._guest is None and self.incoming:
            self._drop_incoming()
        self.refresh()  # the stopped state, read before undefine makes it unreadable
        final = self.board.current()
        if final.state in (pb.DOMAIN_STATE_RUNNING, pb.DOMAIN_STATE_PAUSED,
                           pb.DOMAIN_STATE_SHUTTING_DOWN, pb.DOMAIN_STATE_STARTING):
            final = self._status(pb.DOMAIN_STATE_SHUTOFF, "destroyed")  # stop event not seen yet
        final = self._status(final.state, final.reason, final.message, 0)
        if self._saved_path:
            final = self._status(pb.DOMAIN_STATE_SHUTOFF, "saved", f"memory saved to {self._saved_path}", 0)
            final.saved_state_path = self._saved_path
        if self._guest is not None:
            self._guest.undefine()
        self.board.publish(final)
        self._final = final
        self.board.close()
        self.exit_requested.set()
        return final


    # --- live migration (launcher/migration.py) ----------------------------------------

    def _adopt_arrival(self, guest: Guest) -> None:
        """Make the migrated-in domain this run's guest once the migration finished."""
        if not migration.arrived(guest.domain):
            return
        self._arrival_note = migration.arrival_note(guest.domain)
        with open(self.marker_path, "w") as f:
            f.write(f"{time.time():.3f}\n")
        self._guest = guest
        self.incoming = False
        log.info("guest arrived by live migration (%s); adopting domain %s (qemu pid %d)",
                 self._arrival_note, guest.name, guest.qemu_pid())

    def _drop_incoming(self) -> None:
        """The run ends before the guest arrived: stop a migration that is still coming in
        (its QEMU would otherwise outlive the session daemon)."""
        try:
            guest = self.host.lookup(domain_xml.domain_uuid(self.vm))
        except LauncherError:
            return
        log.info("destroying the half-arrived incoming domain %s", guest.name)
        try:
            guest.destroy()
            guest.undefine()
        except LauncherError as e:
            log.warning("cannot destroy the incoming domain: %s", e)

    def prepare_incoming(self) -> str:
        """The domain XML for this node's paths (the source sends it as DEST_XML)."""
        if not self.incoming:
            raise DomainNotRunning("not a migration target (no incoming marker, or the guest already arrived)")
        try:
            return domain_xml.build_domain_xml(self.vm, self.options)
        except ValueError as e:
            raise _InvalidSpec(f"invalid VM spec: {e}") from e

    def migrate(self, request: launcher_pb2.MigrateDomainRequest) -> migration.MigrationJob:
        """Start the outgoing migration, or return the job already running (re-attach)."""
        with self._op_lock:
            job = self._migration
            if job is not None and not job.board.ended:
                log.info("MigrateDomain: re-attaching to the running migration")
                return job
            guest = self._guest
            if (job is None and os.path.exists(self._outgoing_marker) and self._final is None
                    and (guest is None or not _active(guest) or migration.outgoing_job_running(guest.domain))):
                # An earlier launcher of this run started a job that still runs or moved the
                # guest already: follow it to its end rather than start another.
                attach = True
            else:
                guest, _state = self._live_guest_locked("migrate")
                attach = migration.outgoing_job_running(guest.domain)
            allow_post_copy = request.allow_post_copy and migration.post_copy_usable()
            if request.allow_post_copy and not allow_post_copy:
                log.warning("post-copy allowed but unusable (%s is not 1): pre-copy only", migration.UFFD_SYSCTL)
            if attach:
                log.info("MigrateDomain: following the migration an earlier launcher started")
            with open(self._outgoing_marker, "w") as f:
                f.write(f"{request.destination_uri}\n")
            plan = migration.Plan.from_request(request, post_copy=allow_post_copy)
            job = migration.MigrationJob(guest.domain if guest else None, plan, on_success=self._migrated,
                                         on_failure=self._migration_failed, attach=attach)
            self._migration = job
            job.start()
            return job

    @property
    def _outgoing_marker(self) -> str:
        return os.path.join(self.vm_dir, migration.OUTGOING_MARKER)

    def _migration_failed(self) -> None:
        """The guest stayed here: forget the job's marker, refresh the status."""
        try:
            os.unlink(self._outgoing_marker)
        except FileNotFoundError:
            pass
        self._events.put(None)

    def _left_status(self) -> launcher_pb2.DomainStatus:
        return self._status(pb.DOMAIN_STATE_SHUTOFF, "migrated",
                            "the guest left by live migration (before this launcher started)")

    def abort_migration(self) -> None:
        job = self._migration
        if job is not None:
            job.abort("cancelled")

    def _migrated(self, downtime_ms: int) -> None:
        """The guest runs on the target and the source domain is gone: the run ends here."""
        with self._op_lock:
            if self._final is not None:
                return
            note = f"migrated out, downtime {downtime_ms} ms" if downtime_ms else "migrated out"
            final = self._status(pb.DOMAIN_STATE_SHUTOFF, "migrated", note, 0)
            self.board.publish(final)
            self._final = final
            self.board.close()
            self.exit_requested.set()


def _active(guest: Guest) -> bool:
    try:
        return guest.is_active()
    except LauncherError:
        return False


class _InvalidSpec(LauncherError):
    """The VM spec cannot be turned into a domain."""
