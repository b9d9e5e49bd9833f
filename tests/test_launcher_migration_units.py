"""launcher/migration.py without guests: the job's policy (timeouts, abort, post-copy fallback)
against a scripted stand-in for a libvirt domain."""
from __future__ import annotations

import threading
import time

import libvirt
import pytest

from corral.v1 import launcher_pb2, migration_pb2
from launcher import migration

pb = launcher_pb2
GIB = 1 << 30


class FakeDomain:
    """migrateToURI3 blocks until finish() or abortJob(); jobStats() returns ``remaining``."""

    def __init__(self, *, remaining: list[int], refuse_post_copy: bool = False) -> None:
        self.samples = list(remaining)
        self.refuse_post_copy = refuse_post_copy
        self.calls: list[tuple[str, int]] = []
        self.aborted = threading.Event()
        self.finished = threading.Event()
        self.post_copy = False
        self.events: dict[int, tuple] = {}  # callback id -> (event id, callback)

    def connect(self) -> "FakeDomain":  # the connection's event calls, on the same stand-in
        return self

    def domainEventRegisterAny(self, dom, event_id: int, callback, opaque) -> int:
        self.events[len(self.events) + 1] = (event_id, callback)
        return len(self.events)

    def domainEventDeregisterAny(self, callback_id: int) -> None:
        self.events.pop(callback_id)

    def complete_job(self, stats: dict) -> None:
        """libvirt's JOB_COMPLETED event, as the event loop delivers it."""
        for event_id, callback in list(self.events.values()):
            if event_id == libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED:
                callback(self, self, stats, None)

    def migrateToURI3(self, uri: str, params: dict, flags: int) -> None:
        self.calls.append((uri, flags))
        if self.refuse_post_copy and flags & libvirt.VIR_MIGRATE_POSTCOPY:
            raise libvirt.libvirtError("internal error: unable to execute QEMU command "
                                       "'migrate-set-capabilities': Postcopy is not supported")
        while not (self.aborted.is_set() or self.finished.is_set()):
            time.sleep(0.01)
        if self.aborted.is_set():
            raise libvirt.libvirtError("operation aborted: job 'migration out' canceled by client")

    def jobStats(self, flags: int = 0) -> dict:
        if flags:
            raise libvirt.libvirtError("Domain not found")
        remaining = self.samples.pop(0) if len(self.samples) > 1 else self.samples[0]
        return {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "data_total": GIB,
                "data_processed": GIB - remaining, "data_remaining": remaining}

    def abortJob(self) -> None:
        self.aborted.set()

    def migrateStartPostCopy(self) -> None:
        self.post_copy = True


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migration, "POLL_SECONDS", 0.02)


def run(domain: FakeDomain, request: pb.MigrateDomainRequest, *, post_copy: bool = False,
        finish_after: float | None = None) -> tuple[list, Exception | None, list]:
    succeeded: list[int] = []
    job = migration.MigrationJob(domain, migration.Plan.from_request(request, post_copy=post_copy),
                                 on_success=succeeded.append, on_failure=lambda: None)
    job.start()
    if finish_after is not None:
        threading.Timer(finish_after, domain.finished.set).start()
    seen, messages = 0, []
    while True:
        fresh, ended, error = job.board.wait(seen, timeout=5)
        seen += len(fresh)
        messages += fresh
        if ended:
            return messages, error, succeeded


def request(**fields) -> pb.MigrateDomainRequest:
    return pb.MigrateDomainRequest(destination_uri="qemu+unix:///session?socket=/x/mig.sock",
                                   migration_uri="tcp://10.0.0.2:49152", destination_xml="<domain/>", **fields)


def test_plan_params_and_flags() -> None:
    plan = migration.Plan.from_request(request(listen_address="10.0.0.2", bandwidth_mib_per_second=64,
                                               allow_auto_converge=True), post_copy=True)
    assert plan.params == {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.0.0.2:49152",
                           libvirt.VIR_MIGRATE_PARAM_DEST_XML: "<domain/>",
                           libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: "<domain/>",
                           libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: "10.0.0.2",
                           libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 64,
                           # the link's limit holds after the switch too (QEMU's default: none)
                           libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY: 64}  # MiB/s, as BANDWIDTH
    assert libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY not in plan.without_post_copy().params
    for flag in (libvirt.VIR_MIGRATE_LIVE, libvirt.VIR_MIGRATE_PEER2PEER, libvirt.VIR_MIGRATE_PERSIST_DEST,
                 libvirt.VIR_MIGRATE_UNDEFINE_SOURCE, libvirt.VIR_MIGRATE_AUTO_CONVERGE, libvirt.VIR_MIGRATE_POSTCOPY):
        assert plan.flags & flag
    bare = migration.Plan.from_request(request(), post_copy=False)
    assert libvirt.VIR_MIGRATE_PARAM_BANDWIDTH not in bare.params
    assert not bare.flags & (libvirt.VIR_MIGRATE_AUTO_CONVERGE | libvirt.VIR_MIGRATE_POSTCOPY)



def test_a_tunnelled_plan_sends_no_uri_and_no_post_copy() -> None:
    """Through the handlers' mutual-TLS proxy: VIR_MIGRATE_TUNNELLED, no URI nor listen
    address (libvirt refuses them with a tunnel), post-copy dropped (libvirt cannot tunnel it),
    auto-converge and the bandwidth kept."""
    tunnelled = request(listen_address="10.0.0.2", tunnelled=True, bandwidth_mib_per_second=64,
                        allow_auto_converge=True, allow_post_copy=True)
    tunnelled.migration_uri = ""
    plan = migration.Plan.from_request(tunnelled, post_copy=True)
    assert plan.params == {libvirt.VIR_MIGRATE_PARAM_DEST_XML: "<domain/>",
                           libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: "<domain/>",
                           libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: 64}
    assert plan.flags & libvirt.VIR_MIGRATE_TUNNELLED and plan.flags & libvirt.VIR_MIGRATE_AUTO_CONVERGE
    assert not plan.flags & libvirt.VIR_MIGRATE_POSTCOPY and not plan.post_copy_switch
    assert not migration.Plan.from_request(request(), post_copy=False).flags & libvirt.VIR_MIGRATE_TUNNELLED

def test_success_ends_with_done() -> None:
    domain = FakeDomain(remaining=[GIB, GIB // 2, GIB // 4])
    messages, error, succeeded = run(domain, request(), finish_after=0.3)
    assert error is None and succeeded == [0]
    assert messages[-1].done and not any(m.done for m in messages[:-1])
    assert messages[0].data_total_bytes == GIB


def test_no_progress_aborts() -> None:
    domain = FakeDomain(remaining=[GIB // 2])  # never shrinks
    messages, error, succeeded = run(domain, request(progress_timeout_seconds=1))
    assert isinstance(error, migration.MigrationAborted) and "no progress for 1s" in str(error)
    assert not succeeded and domain.aborted.is_set()


def test_completion_timeout_aborts_without_post_copy() -> None:
    domain = FakeDomain(remaining=list(range(GIB, 0, -1024)))  # progress, slowly
    _, error, _ = run(domain, request(completion_timeout_seconds=1))
    assert isinstance(error, migration.MigrationAborted) and "did not complete within 1s" in str(error)


def test_completion_timeout_switches_to_post_copy_when_allowed() -> None:
    domain = FakeDomain(remaining=list(range(GIB, 0, -1024)))
    threading.Timer(2.0, domain.finished.set).start()
    messages, error, succeeded = run(domain, request(completion_timeout_seconds=1, allow_post_copy=True),
                                     post_copy=True)
    assert error is None and succeeded and domain.post_copy and not domain.aborted.is_set()
    assert messages[-1].mode == migration_pb2.MIGRATION_MODE_POST_COPY


def test_a_post_copy_job_reports_the_downtime_of_libvirts_job_completed_event() -> None:
    """After a post-copy switch only the source knows the downtime (QEMU measures it there),
    and UNDEFINE_SOURCE leaves no domain to ask: the JOB_COMPLETED event carries it, sometimes
    a moment after migrateToURI3 returned."""
    domain = FakeDomain(remaining=list(range(GIB, 0, -1024)))
    threading.Timer(1.5, domain.finished.set).start()
    threading.Timer(1.7, domain.complete_job, ({"downtime": 321, "operation": 3},)).start()
    messages, error, succeeded = run(domain, request(completion_timeout_seconds=1, allow_post_copy=True),
                                     post_copy=True)
    assert error is None and succeeded == [321] and messages[-1].downtime_ms == 321
    assert not domain.events  # deregistered
    # A figure longer than the job itself is no downtime of it: unknown (0), not wrong.
    domain = FakeDomain(remaining=list(range(GIB, 0, -1024)))
    threading.Timer(1.5, domain.finished.set).start()
    threading.Timer(1.6, domain.complete_job, ({"downtime": 25016, "time_elapsed": 9000},)).start()
    _, error, succeeded = run(domain, request(completion_timeout_seconds=1, allow_post_copy=True), post_copy=True)
    assert error is None and succeeded == [0]
    # Pre-copy: the target's figure counts (libvirt measures it there), the source sends none.
    domain = FakeDomain(remaining=[GIB, 0])
    threading.Timer(0.3, domain.complete_job, ({"downtime": 99},)).start()
    _, error, succeeded = run(domain, request(), finish_after=0.4)
    assert error is None and succeeded == [0] and not domain.events


def test_post_copy_refused_by_the_target_falls_back_to_pre_copy() -> None:
    domain = FakeDomain(remaining=[GIB, 0], refuse_post_copy=True)
    _, error, succeeded = run(domain, request(allow_post_copy=True), post_copy=True, finish_after=0.3)
    assert error is None and succeeded
    assert [bool(flags & libvirt.VIR_MIGRATE_POSTCOPY) for _, flags in domain.calls] == [True, False]


def test_abort_is_cancelled() -> None:
    domain = FakeDomain(remaining=[GIB, GIB // 2])
    job = migration.MigrationJob(domain, migration.Plan.from_request(request(), post_copy=False),
                                 on_success=lambda _d: None, on_failure=lambda: None)
    job.start()
    time.sleep(0.1)
    job.abort("cancelled")
    _, ended, error = job.board.wait(0, timeout=5)
    while not ended:
        _, ended, error = job.board.wait(0, timeout=5)
    assert isinstance(error, migration.MigrationAborted) and str(error) == "cancelled"
