"""Post-copy live migration end to end on real parts: two network-namespace nodes
(tests/netnodes.py), three ways: plaintext nodes (--insecure); mutual TLS with QEMU's own TLS
stream and one-off credentials per migration (migration_stream: tls; libvirt cannot tunnel
post-copy through the TLS proxy, see docs/migration-security.md), where a capture of the
nodes' links must find none of the guest's memory in the clear; and mutual TLS with the
operator's opt-in to a plaintext QEMU stream (migration_stream: plaintext). In each, a real
TCG guest rewrites 16 MiB of its RAM again and again, far faster than the migration's
bandwidth limit, so pre-copy cannot converge. With the policy's allow_post_copy the launcher
switches to post-copy when the completion timeout passes (KubeVirt's allowPostCopy); the
migration completes, the Migration says post-copy, and the same guest runs on the target.

Post-copy needs userfaultfd for the target's unprivileged QEMU: the module turns on
``vm.unprivileged_userfaultfd`` (scripts/test.sh does too) before the handlers start, and
checks that the nodes report it."""
from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path

import pytest

from corral.v1 import migration_pb2, vm_pb2
from handler.userfaultfd import SYSCTL
from tests.cluster import wait_for
from tests.netnodes import TLSNodes, TwoNodes
from tests.test_migration import qemu_pids
from tests.test_migration_tls import SECRET_BYTES, Capture, console_run, uptime

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
M = migration_pb2
#: The link: well below what the guest's loop dirties (measured in the test).
BANDWIDTH_MIB_PER_SECOND = 4
#: 128 MiB guest: 40 s per GiB = 5 s of pre-copy before the switch.
COMPLETION_PER_GIB_SECONDS = 40
#: The guest's working set: 16 MiB of 'x' (not zeros: QEMU does not resend those) in its
#: RAM-backed /tmp, copied over the same pages of /tmp/dirty again and again (a kernel memcpy:
#: `tr` alone dirties only ~5 MiB/s under TCG on a busy machine). The 128 MiB guest's tmpfs is
#: capped at half its RAM; a 64 MiB file once crashed it (out of memory), so two of 16.
DIRTY_MIB = 16
MAKE_SOURCE = (b"dd if=/dev/zero bs=1M count=%d 2>/dev/null | tr '\\0' x > /tmp/src; cp /tmp/src /tmp/dirty; "
               % DIRTY_MIB)
ONE_PASS = b"dd if=/tmp/src of=/tmp/dirty bs=1M conv=notrunc 2>/dev/null"
DIRTY_LOOP = b"(while :; do " + ONE_PASS + b"; done) &"


def enable_userfaultfd() -> None:
    """What an operator does once per node (scripts/install.sh writes /etc/sysctl.d/ too)."""
    Path(SYSCTL).write_text("1\n")


class StreamNodes(TLSNodes):
    """Mutual TLS everywhere, QEMU's stream in QEMU's own TLS (migration_stream)."""

    stream = "tls"


class PlaintextStreamNodes(StreamNodes):
    stream = "plaintext"


@pytest.fixture(scope="module", params=["plaintext", "mtls-qemu-tls", "mtls-plaintext-stream"])
def nodes(request, tmp_path_factory, guest_dir):
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("needs root and iproute2 for network namespaces")
    if shutil.which("etcd") is None or shutil.which("libvirtd") is None:
        pytest.skip("needs etcd and libvirtd")
    enable_userfaultfd()
    kind = {"plaintext": TwoNodes, "mtls-qemu-tls": StreamNodes,
            "mtls-plaintext-stream": PlaintextStreamNodes}[request.param]
    with kind(tmp_path_factory.mktemp(f"postcopy-{request.param}"), guest_dir,
              prefix=f"/postcopy-{request.param}-{uuid.uuid4().hex[:6]}/") as net:
        for node in ("na", "nb"):
            net.start_handler(node)
        yield net


def dirty_rate_mib_per_second(net: TwoNodes, name: str) -> float:
    """How fast the loop rewrites memory in this guest (10 passes, timed with the guest's clock)."""
    out = console_run(net, name,
                      MAKE_SOURCE + b"a=$(cut -d' ' -f1 /proc/uptime); for i in 1 2 3 4 5 6 7 8 9 10; do " + ONE_PASS
                      + b"; done; echo RATE $a $(cut -d' ' -f1 /proc/uptime) END",
                      rb"RATE (\d+\.\d+) (\d+\.\d+) END")
    start, end = map(float, re.search(rb"RATE (\d+\.\d+) (\d+\.\d+) END", out).groups())
    return 10 * DIRTY_MIB / max(end - start, 0.01)


def test_nodes_report_that_post_copy_can_run(nodes):
    for node in ("na", "nb"):
        record = nodes.client.get_node(node)
        assert record.status.post_copy_ready, record.status.post_copy_message
        assert "userfaultfd" in record.status.post_copy_message


def test_post_copy_moves_a_guest_that_dirties_memory_faster_than_the_link(nodes):
    vm = nodes.cluster.guest_vm("busy")
    vm.spec.eviction_strategy = vm_pb2.EVICTION_STRATEGY_LIVE_MIGRATE
    nodes.cluster.create(vm)
    before = nodes.cluster.wait_phase("busy", RUNNING, timeout=90)
    source, uid = before.status.node_name, before.status.instance_uid
    target = nodes.other(source)
    rate = dirty_rate_mib_per_second(nodes, "busy")
    assert rate > 2 * BANDWIDTH_MIB_PER_SECOND, f"the guest dirties only {rate:.1f} MiB/s"
    console_run(nodes, "busy", DIRTY_LOOP + b" echo LOOP-$((2+2))", rb"LOOP-4")
    console_run(nodes, "busy", b"yes CORRAL-SECRET-$((6*7))-PAGE | head -c %d > /tmp/secret; echo WROTE-$((1+1))"
                % SECRET_BYTES, rb"WROTE-2")
    up_before = uptime(nodes, "busy")
    capture = Capture((nodes.addresses["na"], nodes.addresses["nb"]))

    started = time.monotonic()
    migration = nodes.client.create_migration(
        "busy", target, bandwidth_mib_per_second=BANDWIDTH_MIB_PER_SECOND,
        completion_timeout_per_gib_seconds=COMPLETION_PER_GIB_SECONDS, allow_post_copy=True)
    seen_post_copy_running = []

    def ended():
        current = nodes.client.get_migration(migration.metadata.name)
        if (current.status.phase == M.MIGRATION_PHASE_RUNNING
                and current.status.mode == M.MIGRATION_MODE_POST_COPY):
            seen_post_copy_running.append(current.status.data_remaining_bytes)
        return current if current.status.phase in (M.MIGRATION_PHASE_SUCCEEDED, M.MIGRATION_PHASE_FAILED) else None

    try:
        done = wait_for(ended, timeout=240, interval=0.2, what="the post-copy migration to end")
        took = time.monotonic() - started
        time.sleep(0.5)
    finally:
        capture.stop()
    assert done.status.phase == M.MIGRATION_PHASE_SUCCEEDED, done.status
    assert done.status.mode == M.MIGRATION_MODE_POST_COPY, done.status
    assert not done.status.post_copy_message, done.status.post_copy_message
    # It did not converge on pre-copy: the switch came after the completion timeout (5 s of
    # pre-copy at 4 MiB/s cannot move a 128 MiB guest that rewrites 16 MiB again and again).
    assert took > 128 * COMPLETION_PER_GIB_SECONDS / 1024, took
    after = nodes.cluster.get("busy")
    assert (after.status.node_name, after.status.instance_uid, after.status.phase) == (target, uid, RUNNING)
    up_after = uptime(nodes, "busy")
    assert up_after > up_before, (up_before, up_after)  # the same guest, not rebooted
    # Still dirtying on the target: the loop came along (/tmp/dirty written since the check began).
    assert b"LOOP-ALIVE" in console_run(
        nodes, "busy", b"a=$(date +%s); sleep 3; [ $(stat -c %Y /tmp/dirty) -ge $a ] && echo LOOP-ALIVE",
        rb"LOOP-ALIVE")
    wait_for(lambda: len(qemu_pids(uid)) == 1, timeout=20, what="exactly one QEMU of the run")
    downtime = wait_for(lambda: nodes.client.get_migration(migration.metadata.name).status.downtime_ms,
                        timeout=15, what="the downtime (post-copy: the source sends it)")
    # (RUNNING reports come once a second: a short post-copy phase may end before one says so,
    # so their count is printed, not asserted; the final mode above is the source's word.)
    target_log = (nodes.base / f"handler-{target}.log").read_text()
    assert "post-copy migration available" in target_log  # the handler's check at start
    if isinstance(nodes, TLSNodes):  # libvirt's connection still went through the mTLS proxy
        assert f"from node {source} (mutual TLS)" in target_log
    assert capture.between > SECRET_BYTES, capture.between  # the guest's memory did cross
    if isinstance(nodes, StreamNodes) and nodes.stream == "tls":
        assert "QEMU's own TLS with one-off credentials" in target_log
        assert f"its migration's TLS files sent to node {source}" in target_log
        assert capture.with_secret == 0, f"{capture.with_secret} frames carried guest memory in the clear"
    else:  # the control: an unencrypted stream shows the guest's memory on the wire
        assert capture.with_secret > 0, capture.between
    print(f"post-copy migration {source} -> {target}: {took:.1f}s, downtime {downtime} ms, guest dirtying "
          f"{rate:.0f} MiB/s against a {BANDWIDTH_MIB_PER_SECOND} MiB/s link; {len(seen_post_copy_running)} "
          f"RUNNING polls said post-copy; {capture.between / 2**20:.1f} MiB between the nodes, "
          f"{capture.with_secret} frames with guest memory in the clear")
