"""Live migration, the launcher's half: the source's job (MigrateDomain) and the target's wait.

Source: one ``MigrationJob`` per attempt runs libvirt's peer-to-peer migration
(``migrateToURI3``: this run's libvirtd talks to the target's through the handlers' tunnel;
QEMU's memory goes inside that connection when ``tunnelled`` (the handlers' proxy speaks
mutual TLS), else straight to the target node) in a thread, while a second thread polls
``jobStats()`` every POLL_SECONDS to report progress and enforce the policy's timeouts:
libvirt has no progress/completion timeout of its own (KubeVirt's virt-launcher does the same
polling). Progress goes to a ``ProgressBoard`` that any number of MigrateDomain streams follow,
so a handler that restarts mid-migration re-attaches instead of starting a second job.

Timeouts count from the first sample with data processed: before it the target is still
starting QEMU (1-4 s, longer on a cold capabilities cache) and nothing is sent.

Target: a launcher whose directory holds ``incoming`` never defines or boots the domain; it
waits for libvirt to create it through the migration (see ``arrived``) and then adopts it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from corral.v1 import launcher_pb2, migration_pb2

from launcher import migration_tls
from launcher.host import DomainOperationFailed, LauncherError

log = logging.getLogger(__name__)

#: The handler writes this file into the VM directory before starting a migration target.
INCOMING_MARKER = "incoming"
#: The source launcher's note that a job was started (removed when it fails): a launcher that
#: restarts and finds the domain gone knows the guest left rather than being removed.
OUTGOING_MARKER = "migrating-out"
POLL_SECONDS = 0.5
#: unprivileged QEMU needs this sysctl = 1 for post-copy (userfaultfd) on QEMU < 8.1.
UFFD_SYSCTL = "/proc/sys/vm/unprivileged_userfaultfd"
_POSTCOPY_UNSUPPORTED = "Postcopy is not supported"


class MigrationAborted(LauncherError):
    """The job was aborted: cancelled, no progress, or not complete in time (gRPC ABORTED)."""


class MigrationFailed(DomainOperationFailed):
    """libvirt or QEMU failed the migration (target gone, refused...); the guest stays here."""


def post_copy_usable() -> bool:
    """Whether an unprivileged QEMU can use userfaultfd on this node (the sysctl is a node
    setting: nodes are assumed alike; if the target differs the job falls back to pre-copy)."""
    try:
        with open(UFFD_SYSCTL) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


@dataclass(frozen=True)
class Plan:
    """What MigrateDomain asked for, as libvirt wants it."""

    destination_uri: str
    params: dict
    flags: int
    progress_timeout: float  # 0: none
    completion_timeout: float  # 0: none
    post_copy_switch: bool  # on completion timeout switch to post-copy instead of aborting

    @classmethod
    def from_request(cls, request: launcher_pb2.MigrateDomainRequest, *, post_copy: bool) -> "Plan":
        params: dict = {}
        if not request.tunnelled:  # libvirt refuses a URI and a listen address with a tunnel
            params[libvirt.VIR_MIGRATE_PARAM_URI] = request.migration_uri
            if request.listen_address:
                params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = request.listen_address
        elif post_copy:
            log.warning("post-copy allowed but the stream is tunnelled (libvirt cannot tunnel post-copy): "
                        "pre-copy only")
            post_copy = False
        if request.destination_xml:
            # The target's own paths (serial log, sockets): both for the running domain and
            # for the definition PERSIST_DEST writes there.
            params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = request.destination_xml
            params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = request.destination_xml
        if request.bandwidth_mib_per_second > 0:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(request.bandwidth_mib_per_second)
            if post_copy:  # the limit is the link's: QEMU's post-copy phase is unlimited unless told (MiB/s)
                params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = int(request.bandwidth_mib_per_second)
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                 | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        if request.tunnelled:  # QEMU's stream inside libvirt's connection: the handlers' mTLS proxy
            flags |= libvirt.VIR_MIGRATE_TUNNELLED
        if request.HasField("tls") and not request.tunnelled:  # QEMU's own TLS, this migration's files
            flags |= libvirt.VIR_MIGRATE_TLS
            params[libvirt.VIR_MIGRATE_PARAM_TLS_DESTINATION] = migration_tls.TLS_NAME
        if request.allow_auto_converge:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        if post_copy:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
        return cls(destination_uri=request.destination_uri, params=params, flags=flags,
                   progress_timeout=max(0, request.progress_timeout_seconds),
                   completion_timeout=max(0, request.completion_timeout_seconds),
                   post_copy_switch=post_copy)

    def without_post_copy(self) -> "Plan":
        params = {k: v for k, v in self.params.items() if k != libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY}
        return Plan(self.destination_uri, params, self.flags & ~libvirt.VIR_MIGRATE_POSTCOPY,
                    self.progress_timeout, self.completion_timeout, False)


class ProgressBoard:
    """Progress messages in order plus the outcome; streams wait on it (like StatusBoard)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._history: list[launcher_pb2.MigrateDomainResponse] = []
        self._error: LauncherError | None = None
        self._ended = False

    def publish(self, message: launcher_pb2.MigrateDomainResponse) -> None:
        with self._cond:
            if not self._ended and (not self._history or self._history[-1] != message):
                self._history.append(message)
                self._cond.notify_all()

    def end(self, error: LauncherError | None) -> None:
        with self._cond:
            if not self._ended:
                self._ended, self._error = True, error
                self._cond.notify_all()

    def latest(self) -> int:
        """Where a new follower starts: the latest message (a re-attached stream needs no replay)."""
        with self._cond:
            return max(len(self._history) - 1, 0)

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended

    def wait(self, seen: int, timeout: float
             ) -> tuple[list[launcher_pb2.MigrateDomainResponse], bool, LauncherError | None]:
        """Messages after the first ``seen`` (waiting up to ``timeout``), ended, and the error."""
        with self._cond:
            self._cond.wait_for(lambda: self._ended or len(self._history) > seen, timeout)
            return list(self._history[seen:]), self._ended, self._error


class MigrationJob:
    """One outgoing migration of ``domain``; ``on_success(downtime_ms)`` runs once the guest
    runs on the target (the source domain is then gone: UNDEFINE_SOURCE)."""

    def __init__(self, domain: libvirt.virDomain | None, plan: Plan,
                 on_success: Callable[[int], None], on_failure: Callable[[], None],
                 *, attach: bool = False) -> None:
        self.domain = domain
        self.plan = plan
        # attach: libvirt's job was started by an earlier launcher of this run (which died);
        # libvirtd drives a peer-to-peer migration on its own, so only follow it.
        self.attach = attach
        self.board = ProgressBoard()
        self._on_success = on_success
        self._on_failure = on_failure
        self._abort_reason: str | None = None
        self._abort_sent = False  # abortJob went through (early in the job libvirt may refuse it)
        self._post_copy = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        # libvirt's completed-job statistics as its JOB_COMPLETED event carries them: after
        # UNDEFINE_SOURCE they cannot be asked for, and for post-copy the target's own lack
        # the downtime (QEMU measures it on the source, at the switch).
        self._completed: dict = {}
        self._completed_seen = threading.Event()
        self._callback_id: int | None = None

    def start(self) -> None:
        if self.domain is not None and not self.attach:
            try:
                self._callback_id = self.domain.connect().domainEventRegisterAny(
                    self.domain, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_job_completed, None)
            except libvirt.libvirtError as e:
                log.warning("migration: no JOB_COMPLETED events (downtime then from the target only): %s", e)
        threading.Thread(target=self._run, name="migrate", daemon=True).start()
        threading.Thread(target=self._watch, name="migrate-progress", daemon=True).start()

    # -- the libvirt call --------------------------------------------------------------------
    def _migrate(self, plan: Plan) -> None:
        self.domain.migrateToURI3(plan.destination_uri, plan.params, plan.flags)

    def _follow_existing(self) -> None:
        """Wait for the earlier launcher's job to end; raise MigrationFailed if the guest stayed."""
        idle = 0  # polls without a job: one more look after the first, the end races the state
        while idle < 2:
            try:
                state, reason = self.domain.state() if self.domain is not None else (0, 0)
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return  # undefined by the migration (UNDEFINE_SOURCE): the guest left
                raise
            if self.domain is None or (state == libvirt.VIR_DOMAIN_SHUTOFF
                                       and reason == libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED):
                return
            if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
                raise MigrationFailed("migration failed: the guest stopped")
            try:
                idle = idle + 1 if self.domain.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE else 0
            except libvirt.libvirtError:
                pass  # stopping right now: the next state() says how
            time.sleep(POLL_SECONDS)
        raise MigrationFailed("migration failed: the job ended and the guest is still here")

    def _run(self) -> None:
        t0 = time.monotonic()
        error: LauncherError | None = None
        try:
            try:
                if self.attach:
                    self._follow_existing()
                else:
                    self._migrate(self.plan)
            except libvirt.libvirtError as e:
                if not (self.plan.flags & libvirt.VIR_MIGRATE_POSTCOPY
                        and _POSTCOPY_UNSUPPORTED in (e.get_error_message() or str(e))):
                    raise
                # The target's QEMU cannot do post-copy (userfaultfd): the guest never left.
                log.warning("migration: the target refuses post-copy (%s); migrating pre-copy only",
                            e.get_error_message() or e)
                self.plan = self.plan.without_post_copy()
                self._migrate(self.plan)
        except libvirt.libvirtError as e:
            message = e.get_error_message() or str(e)
            error = (MigrationAborted(self._abort_reason) if self._abort_reason
                     else MigrationFailed(f"migration failed: {message}"))
        except MigrationFailed as e:
            error = MigrationAborted(self._abort_reason) if self._abort_reason else e
        self._done.set()
        if error is not None:
            log.warning("migration ended after %.1fs: %s", time.monotonic() - t0, error)
            self._deregister()
            self.board.end(error)
            self._on_failure()
            return
        downtime = self._downtime()
        log.info("migration done in %.1fs%s", time.monotonic() - t0,
                 f", downtime {downtime} ms" if downtime else " (downtime: ask the target)")
        self.board.publish(launcher_pb2.MigrateDomainResponse(
            mode=self._mode(), done=True, downtime_ms=downtime))
        self._on_success(downtime)
        self.board.end(None)

    def _on_job_completed(self, _conn: libvirt.virConnect, _dom: libvirt.virDomain, params: dict,
                          _opaque: object) -> None:
        self._completed = dict(params)
        self._completed_seen.set()

    def _deregister(self) -> None:
        if self._callback_id is not None:
            try:
                self.domain.connect().domainEventDeregisterAny(self._callback_id)
            except libvirt.libvirtError:
                pass
            self._callback_id = None

    def _downtime(self) -> int:
        """Post-copy: the downtime QEMU measured here at the switch, from libvirt's JOB_COMPLETED
        event (waited for briefly: it may come just after migrateToURI3 returns); the target's
        completed stats have none. Pre-copy: 0 as a rule (after UNDEFINE_SOURCE the completed
        stats live on the target, which reports libvirt's figure measured there)."""
        stats = self._completed
        if not self._post_copy:
            stats = {}
        elif not stats and self._callback_id is not None:
            self._completed_seen.wait(5.0)
            stats = self._completed
        self._deregister()
        if not stats:
            try:
                stats = self.domain.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            except (libvirt.libvirtError, AttributeError):
                return 0
        downtime, elapsed = int(stats.get("downtime", 0)), int(stats.get("time_elapsed", 0))
        if elapsed and downtime > elapsed:  # not a downtime of this job: unknown rather than wrong
            log.warning("migration: libvirt's downtime %d ms exceeds the job's %d ms: not reported", downtime, elapsed)
            return 0
        return downtime

    def _mode(self) -> int:
        return migration_pb2.MIGRATION_MODE_POST_COPY if self._post_copy else migration_pb2.MIGRATION_MODE_PRE_COPY

    # -- progress and timeouts ---------------------------------------------------------------
    def _watch(self) -> None:
        first: float | None = None  # first sample with data sent
        best_remaining: int | None = None
        best_at = 0.0
        while not self._done.wait(POLL_SECONDS):
            try:
                stats = self.domain.jobStats()
            except (libvirt.libvirtError, AttributeError):
                continue  # the domain is going away at the end of a successful migration
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
                continue
            if self._abort_reason and not self._abort_sent:
                self._send_abort()  # refused earlier (say, the target was still preparing): again
            total = int(stats.get("data_total", stats.get("memory_total", 0)))
            processed = int(stats.get("data_processed", stats.get("memory_processed", 0)))
            remaining = int(stats.get("data_remaining", stats.get("memory_remaining", 0)))
            self.board.publish(launcher_pb2.MigrateDomainResponse(
                mode=self._mode(), data_total_bytes=total, data_processed_bytes=processed,
                data_remaining_bytes=remaining))
            now = time.monotonic()
            if first is None:
                if processed <= 0:
                    continue
                first, best_remaining, best_at = now, remaining, now
            if best_remaining is None or remaining < best_remaining:
                best_remaining, best_at = remaining, now
            if self._post_copy or self._abort_reason:
                continue  # post-copy cannot be aborted (the guest runs on the target already)
            plan = self.plan
            if plan.progress_timeout and now - best_at > plan.progress_timeout:
                self.abort(f"no progress for {plan.progress_timeout:.0f}s (remaining {remaining} bytes)")
            elif plan.completion_timeout and now - first > plan.completion_timeout:
                if plan.post_copy_switch and self._start_post_copy():
                    continue
                self.abort(f"did not complete within {plan.completion_timeout:.0f}s")

    def _start_post_copy(self) -> bool:
        try:
            self.domain.migrateStartPostCopy()
        except libvirt.libvirtError as e:
            log.warning("migration: cannot switch to post-copy: %s", e.get_error_message())
            return False
        self._post_copy = True
        log.info("migration: completion timeout reached, switched to post-copy")
        return True

    def abort(self, reason: str) -> None:
        """Abort the job (the guest keeps running here); the stream ends ABORTED ``reason``.
        No-op once the job ended or switched to post-copy."""
        with self._lock:
            if self._done.is_set() or self._abort_reason:
                return
            if self._post_copy:
                log.warning("migration: not aborting (%s): post-copy already runs the guest on the target", reason)
                return
            self._abort_reason = reason
        log.info("migration: aborting: %s", reason)
        self._send_abort()

    def _send_abort(self) -> None:
        try:
            self.domain.abortJob()
            self._abort_sent = True
        except (libvirt.libvirtError, AttributeError) as e:
            log.warning("migration: abortJob failed (retrying while the job runs): %s", e)


def outgoing_job_running(domain: libvirt.virDomain) -> bool:
    """Whether libvirt runs an outgoing migration of domain (say, one an earlier launcher began)."""
    try:
        stats = domain.jobStats()
    except libvirt.libvirtError:
        return False
    return (stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE
            and stats.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT)


# -- target side ------------------------------------------------------------------------------
def is_incoming(vm_dir: str) -> bool:
    return os.path.exists(os.path.join(vm_dir, INCOMING_MARKER))


def arrived(domain: libvirt.virDomain) -> bool:
    """Whether an incoming migration finished: the domain is active, has no job, and is
    persistent (the source's PERSIST_DEST defines it only in the migration's last phase; a
    failed incoming migration leaves no domain at all)."""
    try:
        if not domain.isActive() or not domain.isPersistent():
            return False
        return domain.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE
    except libvirt.libvirtError:
        return False


def arrival_note(domain: libvirt.virDomain) -> str:
    """"migrated in, downtime N ms" from the completed job's stats (only readable here)."""
    try:
        stats = domain.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        stats = {}
    if "downtime" in stats:
        return (f"migrated in, downtime {int(stats['downtime'])} ms, total "
                f"{int(stats.get('time_elapsed', 0))} ms")
    return "migrated in"
