"""Post-copy readiness without guests: the handler's check at start (handler/userfaultfd.py)
against sysctl files the test writes, what the node record carries to the controller, and the
admission's choice (post-copy off, with the reason, when either node cannot run it)."""
from __future__ import annotations

from pathlib import Path

from controller import migrations
from controller.node_control import MAX_POST_COPY_MESSAGE, node_from
from corral import scheduling
from corral.v1 import handler_pb2, migration_pb2, node_pb2, vm_pb2
from handler import userfaultfd
from handler.node import node_record
from tests.test_migration_units import migration_of, running_vm


def sysctl(tmp_path: Path, value: str) -> str:
    path = tmp_path / "unprivileged_userfaultfd"
    path.write_text(value)
    return str(path)


def test_the_sysctl_at_1_makes_the_node_ready(tmp_path: Path) -> None:
    result = userfaultfd.check(sysctl(tmp_path, "1\n"))
    assert result.ready and "vm.unprivileged_userfaultfd=1" in result.message


def test_the_sysctl_at_0_says_why_and_how_to_enable(tmp_path: Path) -> None:
    result = userfaultfd.check(sysctl(tmp_path, "0\n"))
    assert not result.ready
    assert "vm.unprivileged_userfaultfd is 0" in result.message
    assert "sysctl -w vm.unprivileged_userfaultfd=1" in result.message and "/etc/sysctl.d/" in result.message


def test_a_missing_sysctl_is_not_ready(tmp_path: Path) -> None:
    result = userfaultfd.check(str(tmp_path / "absent"))
    assert not result.ready and "cannot read" in result.message and "sysctl -w" in result.message


def test_a_tunnelling_node_is_not_ready_even_with_userfaultfd(tmp_path: Path) -> None:
    result = userfaultfd.check(sysctl(tmp_path, "1"), tunnelled=True)
    assert not result.ready and "tunnelled" in result.message


def test_the_node_record_carries_the_check_to_the_controller() -> None:
    record = node_record(name="n1", labels={}, vcpus=2, memory_mib=1024, hypervisor="qemu",
                         post_copy_ready=False, post_copy_message="nope " * 200)
    request = handler_pb2.RegisterNodeRequest(
        node_name="n1", capacity=record.status.capacity, cpu_allocation_ratio=1, hypervisor="qemu",
        post_copy_ready=record.status.post_copy_ready, post_copy_message=record.status.post_copy_message)
    stored = node_from(request, None)
    assert not stored.status.post_copy_ready
    assert stored.status.post_copy_message == ("nope " * 200)[:MAX_POST_COPY_MESSAGE]  # bounded
    request.post_copy_ready, request.post_copy_message = True, "ok"
    assert node_from(request, stored).status.post_copy_ready


def node(name: str, *, ready: bool, message: str = "") -> node_pb2.Node:
    made = node_pb2.Node()
    made.metadata.name = name
    made.status.capacity.vcpus, made.status.capacity.memory_mib = 4, 4096
    made.status.post_copy_ready, made.status.post_copy_message = ready, message
    return made


def target_of(views, *, allow: bool, to: str = "n2") -> vm_pb2.MigrationTarget:
    migration = migration_of()
    migration.spec.policy.allow_post_copy = allow
    return migrations.resolve_target(running_vm(), migration, to, migrations.MigrationSettings())


def test_admission_turns_post_copy_off_when_a_node_cannot_run_it() -> None:
    views = scheduling.build_views(
        [node("n1", ready=True), node("n2", ready=False, message="vm.unprivileged_userfaultfd is 0"),
         node("n3", ready=True), node("old", ready=False)], {"n1", "n2", "n3", "old"}, [])
    assert migrations.post_copy_refusal(target_of(views, allow=True, to="n3"), "n1", views) == ""
    assert migrations.post_copy_refusal(target_of(views, allow=False), "n1", views) == ""  # not asked
    why = migrations.post_copy_refusal(target_of(views, allow=True), "n1", views)
    assert why == "post-copy off, pre-copy only: target node n2: vm.unprivileged_userfaultfd is 0"
    why = migrations.post_copy_refusal(target_of(views, allow=True, to="n1"), "n2", views)
    assert "source node n2" in why  # e.g. a tunnelling (TLS) source
    why = migrations.post_copy_refusal(target_of(views, allow=True, to="old"), "n1", views)
    assert "did not report post-copy support" in why


class FakeStore:
    def __init__(self) -> None:
        self.written: list = []

    def update(self, _kind, obj, *, fence) -> None:
        self.written.append(type(obj).FromString(obj.SerializeToString()))


def test_an_admitted_migration_says_why_it_runs_pre_copy_only() -> None:
    views = scheduling.build_views([node("n1", ready=True), node("n2", ready=False, message="no uffd")],
                                   {"n1", "n2"}, [])
    vm = running_vm()
    migration = migration_of(phase=migration_pb2.MIGRATION_PHASE_PENDING, target="n2")
    migration.spec.policy.allow_post_copy = True
    store = FakeStore()
    reconciler = migrations.MigrationReconciler(store=store, settings=migrations.MigrationSettings())
    reconciler._admit(migration, vm, None, views, [])
    written_vm = next(o for o in store.written if isinstance(o, vm_pb2.VirtualMachine))
    written = next(o for o in store.written if isinstance(o, migration_pb2.Migration))
    assert written_vm.status.migration_target.node_name == "n2"
    assert not written_vm.status.migration_target.allow_post_copy
    assert written.status.post_copy_message == "post-copy off, pre-copy only: target node n2: no uffd"
    assert any(e.reason == "PostCopyUnavailable" for e in written_vm.status.events)


def test_the_stream_setting_decides_what_a_tls_target_offers() -> None:
    """With TLS files the target reports a tunnelled stream unless its operator chose QEMU's own
    TLS (tls+tcp://: the source fetches its files first) or a plaintext one (a port of its own
    address, as without TLS)."""
    from types import SimpleNamespace

    from handler.migration_proxy import MigrationTLS
    from handler.migration_target import TUNNELLED_STREAM, TargetSide
    tls = MigrationTLS(server=None, client=None)  # the contexts play no part here
    assert tls.tunnels_stream

    def offer(tls):
        return TargetSide.stream_uri(SimpleNamespace(tls=tls, advertise_host="127.0.0.1",
                                                     native_tls=tls is not None and tls.stream == "tls"))
    assert offer(tls) == TUNNELLED_STREAM
    opted = MigrationTLS(server=None, client=None, stream="plaintext")
    assert not opted.tunnels_stream and offer(opted).startswith("tcp://127.0.0.1:")
    assert offer(None).startswith("tcp://127.0.0.1:")
    assert offer(MigrationTLS(server=None, client=None, stream="tls")).startswith("tls+tcp://127.0.0.1:")


def test_the_stream_is_a_handler_setting(monkeypatch) -> None:
    import pytest

    from handler.main import parse_settings
    assert parse_settings(["--node-name", "n1"]).migration_stream == "tunnelled"
    assert parse_settings(["--node-name", "n1", "--migration-stream", "plaintext"]).migration_stream == "plaintext"
    monkeypatch.setenv("CORRAL_MIGRATION_STREAM", "tls")
    assert parse_settings(["--node-name", "n1"]).migration_stream == "tls"
    monkeypatch.setenv("CORRAL_MIGRATION_STREAM", "ssh")
    with pytest.raises((ValueError, SystemExit)):
        parse_settings(["--node-name", "n1"])


def test_after_post_copy_only_the_sources_downtime_counts() -> None:
    """The target's libvirt figure after a post-copy switch is not a downtime (the guest ran
    there meanwhile): the leader keeps the source's, or none, in either order of the reports."""
    from controller.handler_api import apply_migration_report
    from tests.test_migration_units import migrating_pair, report
    M = migration_pb2
    for source_first in (True, False):
        vm, migration = migrating_pair()
        apply_migration_report(vm, migration, report(M.MIGRATION_PHASE_RUNNING, mode=M.MIGRATION_MODE_POST_COPY,
                                                     data_total_bytes=1 << 30))
        by_source = report(M.MIGRATION_PHASE_SUCCEEDED, mode=M.MIGRATION_MODE_POST_COPY, downtime_ms=12)
        by_target = report(M.MIGRATION_PHASE_SUCCEEDED, handler_pb2.MIGRATION_ROLE_TARGET, downtime_ms=25016)
        for one in ((by_source, by_target) if source_first else (by_target, by_source)):
            apply_migration_report(vm, migration, one)
        assert migration.status.phase == M.MIGRATION_PHASE_SUCCEEDED
        assert migration.status.downtime_ms == 12, source_first
    # Pre-copy: the target's figure is libvirt's own and counts, as before.
    vm, migration = migrating_pair()
    apply_migration_report(vm, migration, report(M.MIGRATION_PHASE_SUCCEEDED, handler_pb2.MIGRATION_ROLE_TARGET,
                                                 downtime_ms=80))
    assert migration.status.downtime_ms == 80
