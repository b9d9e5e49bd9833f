"""Controller failover: several replicas, one leader through etcd, fencing of a deposed one."""
from __future__ import annotations

import signal
import time

import pytest

from corral.resources import LEADER_KEY, VMS
from corral.store import Fence, FencingLost, Store
from corral.v1 import vm_pb2
from tests.cluster import leader_of, qemu_pid_for, wait_for

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING


def test_a_stale_fencing_token_is_refused_by_etcd(cluster):
    cluster.start_controller()
    cluster.create(cluster.guest_vm("fenced", memory_mib=10**6))
    _, token = wait_for(lambda: leader_of(cluster), timeout=10, what="a leader")
    store = Store(endpoints=[cluster.etcd.endpoint], prefix=cluster.prefix)
    try:
        vm = wait_for(lambda: (v := store.get(VMS, "fenced")).status.conditions and v, timeout=10,
                      what="the scheduler to see the VM")
        vm.metadata.labels["written"] = "by-a-deposed-leader"
        with pytest.raises(FencingLost):
            store.update(VMS, vm, fence=Fence(store.raw_key(LEADER_KEY), token - 1))
        assert "written" not in store.get(VMS, "fenced").metadata.labels
        store.update(VMS, vm, fence=Fence(store.raw_key(LEADER_KEY), token))  # the real token works
    finally:
        store.close()


def test_killing_the_leader_hands_over_within_five_seconds(cluster):
    for name in ("c1", "c2", "c3"):
        cluster.start_controller(name, lease_seconds=3)
    cluster.start_handler("n1")
    cluster.create(cluster.guest_vm("steady"))
    vm = cluster.wait_phase("steady", RUNNING)
    qemu = wait_for(lambda: qemu_pid_for(vm.status.instance_uid), timeout=10, what="QEMU")
    leader, token = wait_for(lambda: leader_of(cluster), timeout=10, what="a leader")
    process, _ = cluster.controllers.pop(leader)
    killed_at = time.monotonic()
    process.send_signal(signal.SIGKILL)
    process.wait()
    new_leader, new_token = wait_for(lambda: (l := leader_of(cluster)) and l[0] != leader and l,
                                     timeout=10, interval=0.05, what="a new leader")
    takeover = time.monotonic() - killed_at
    print(f"leader {leader} killed; {new_leader} leads after {takeover:.2f}s")
    assert takeover < 5.0
    assert new_token > token
    # The new leader schedules, and nothing happened to the running guest.
    cluster.create(cluster.guest_vm("after-failover"))
    cluster.wait_phase("after-failover", RUNNING)
    assert qemu_pid_for(vm.status.instance_uid) == qemu
    assert cluster.get("steady").status.phase == RUNNING


def test_a_paused_leader_is_deposed_and_its_writes_refused(cluster):
    for name in ("c1", "c2"):
        cluster.start_controller(name, lease_seconds=2)
    leader, token = wait_for(lambda: leader_of(cluster), timeout=10, what="a leader")
    process, _ = cluster.controllers[leader]
    cluster.preferred = "c2" if leader == "c1" else "c1"
    process.send_signal(signal.SIGSTOP)
    try:
        new_leader, new_token = wait_for(lambda: (l := leader_of(cluster)) and l[0] != leader and l,
                                         timeout=10, interval=0.05, what="a standby to take over")
        # While the old leader sleeps, work arrives that only a leader does.
        cluster.create(cluster.guest_vm("while-paused", memory_mib=10**6))
        wait_for(lambda: cluster.get("while-paused").status.conditions, timeout=10, what="the new leader")
    finally:
        process.send_signal(signal.SIGCONT)
    time.sleep(3)  # the old leader wakes, finds its lease gone, and stops leading
    assert leader_of(cluster) == (new_leader, new_token)
    log = (cluster.base / f"controller-{leader}.log").read_text()
    assert "stepping down" in log or "lease expired" in log or "no longer leading" in log
