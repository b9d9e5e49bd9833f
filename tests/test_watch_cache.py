"""The controller's watch cache (controller/watch_cache.py) on a real etcd: it mirrors VMs,
node records and leases at a revision; a node's subscription hears its own VMs only (also
when a VM moves away or is deleted); a compaction past its revision makes it relist and end
the subscriptions, so that their streams resync."""
from __future__ import annotations

import threading
import uuid

import pytest
from pyetcd import transactions as T
from pyetcd import etcdrpc

from controller.watch_cache import WatchCache
from corral.resources import NODE_LEASES_FOLDER, NODES, VMS
from corral import scheduling
from corral.store import Compacted, Store, Unavailable
from corral.v1 import node_pb2, vm_pb2
from tests.cluster import wait_for


def open_store(etcd) -> Store:
    store = Store(endpoints=[etcd.endpoint], prefix=f"/wc-{uuid.uuid4().hex[:8]}/")
    wait_for(lambda: store.revision() > 0, timeout=20, what="etcd to answer")
    return store


def make_vm(name: str, node: str = "") -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.status.node_name = node
    return vm


def test_cache_mirrors_the_store_and_fans_out_by_node(etcd):
    store = open_store(etcd)
    stop = threading.Event()
    try:
        store.create(VMS, make_vm("before", "n1"))
        node = node_pb2.Node()
        node.metadata.name = "n1"
        store.put(NODES, node)
        cache = WatchCache(store)
        threading.Thread(target=cache.run, args=(stop,), daemon=True).start()
        assert cache.wait_synced(timeout=10)
        mine, revision, n1 = cache.subscribe("n1")
        _, _, n2 = cache.subscribe("n2")
        assert [vm.metadata.name for vm in mine] == ["before"] and revision >= 1

        lease = store.grant_lease(30)
        store.txn([], [T.Put(store.raw_key(NODE_LEASES_FOLDER + "n1"), b"n1", lease=lease)])
        other = store.create(VMS, make_vm("elsewhere", "n2"))
        moved = store.get(VMS, "before")
        moved.status.node_name = "n2"
        moved = store.update(VMS, moved)
        store.delete(VMS, "elsewhere", resource_version=other.metadata.resource_version)
        wait_for(lambda: cache.revision >= store.last_write_revision, timeout=10, what="the cache to catch up")

        heard_n1 = []
        for change in n1.changes(timeout=0.3):
            if change is None:
                break
            heard_n1.append(change)
        heard_n2 = []
        for change in n2.changes(timeout=0.3):
            if change is None:
                break
            heard_n2.append(change)
        assert [(c.name, c.vm is None) for c in heard_n1] == [("before", True)], "n1 hears the VM leave it"
        assert [(c.name, c.vm is None) for c in heard_n2] == [("elsewhere", False), ("before", False),
                                                             ("elsewhere", True)]
        assert all(a.revision < b.revision for a, b in zip(heard_n2, heard_n2[1:]))
        nodes, ready, vms, at = cache.snapshot()
        assert [n.metadata.name for n in nodes] == ["n1"] and ready == {"n1"}
        assert [(vm.metadata.name, vm.status.node_name) for vm in vms] == [("before", "n2")]
        assert at >= moved.metadata.resource_version
        assert cache.wait_newer(at, timeout=0.2) == at  # nothing new: times out at the same revision
    finally:
        stop.set()
        store.close()


def test_node_views_follow_events_and_stay_unchanged_by_deciders(etcd):
    """The cache rebuilds a node's scheduling view only when the node, its readiness or its VMs
    changed: after every kind of change its views equal ones computed from scratch, and a
    decider counting a VM in its copy (scheduling.add_to) leaves the cache's views alone."""
    store = open_store(etcd)
    stop = threading.Event()

    def node(name: str, vcpus: int) -> node_pb2.Node:
        record = node_pb2.Node()
        record.metadata.name = name
        record.status.capacity.vcpus, record.status.capacity.memory_mib = vcpus, 4096
        return record

    def running(name: str, node_name: str, vcpus: int) -> vm_pb2.VirtualMachine:
        vm = make_vm(name, node_name)
        vm.spec.vcpus, vm.spec.memory_mib = vcpus, 256
        vm.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
        return vm

    def agrees() -> bool:
        nodes, ready, vms, _ = cache.snapshot()
        return cache.node_views()[1] == scheduling.build_views(nodes, ready, vms)

    try:
        cache = WatchCache(store)
        threading.Thread(target=cache.run, args=(stop,), daemon=True).start()
        assert cache.wait_synced(timeout=10)
        store.put(NODES, node("n1", 4))
        store.put(NODES, node("n2", 8))
        lease = store.grant_lease(30)
        store.txn([], [T.Put(store.raw_key(NODE_LEASES_FOLDER + "n1"), b"n1", lease=lease)])
        a = store.create(VMS, running("a", "n1", 2))
        store.create(VMS, running("b", "n2", 1))
        wait_for(lambda: cache.revision >= store.last_write_revision, timeout=10, what="the cache to catch up")
        views = cache.node_views()[1]
        assert (views["n1"].ready, views["n1"].allocated_vcpus, views["n2"].allocated_vcpus) == (True, 2, 1)
        assert agrees()

        scheduling.add_to(views, "n2", running("c", "n2", 3).spec)  # a decider's own copy
        assert views["n2"].allocated_vcpus == 4 and cache.node_views()[1]["n2"].allocated_vcpus == 1

        a.status.node_name = "n2"  # moved, grown record, readiness gone, a node deleted
        store.update(VMS, a)
        store.put(NODES, node("n1", 16))
        store.revoke_lease(lease)
        store.put(NODES, node("n3", 2))
        store.delete(NODES, "n3")
        wait_for(lambda: cache.revision >= store.last_write_revision, timeout=10, what="the cache to catch up")
        views = cache.node_views()[1]
        assert sorted(views) == ["n1", "n2"]
        assert (views["n1"].ready, views["n1"].capacity_vcpus, views["n1"].allocated_vcpus) == (False, 16, 0)
        assert views["n2"].allocated_vcpus == 3
        assert agrees()
    finally:
        stop.set()
        store.close()


def test_a_full_scheduling_view_holds_every_vm_that_may_need_a_decision_and_no_settled_one(etcd):
    """A full scheduler pass reads the VMs that are not settled (pending, ended, being deleted,
    halted) and every VM on a node that is not Ready or has no record, from the cache's index
    (not by looking at every VM), both after the initial list and event by event."""
    store = open_store(etcd)
    stop = threading.Event()

    def vm(name: str, node: str, phase: int, **change) -> vm_pb2.VirtualMachine:
        made = make_vm(name, node)
        made.status.phase = phase
        if change.get("halted"):
            made.spec.run_strategy = vm_pb2.RUN_STRATEGY_HALTED
        if change.get("deleting"):
            made.metadata.delete_time.GetCurrentTime()
        return made

    running, pending = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING
    node = node_pb2.Node()
    for name in ("ready", "not-ready"):
        node.metadata.name = name
        store.put(NODES, node)
    lease = store.grant_lease(30)
    store.txn([], [T.Put(store.raw_key(NODE_LEASES_FOLDER + "ready"), b"ready", lease=lease)])
    store.create(VMS, vm("settled", "ready", running))
    store.create(VMS, vm("pending", "", pending))
    store.create(VMS, vm("on-not-ready", "not-ready", running))
    store.create(VMS, vm("on-no-record", "gone", running))
    cache = WatchCache(store)
    try:
        threading.Thread(target=cache.run, args=(stop,), daemon=True).start()
        assert cache.wait_synced(timeout=10)

        def full_names() -> set[str]:
            return {v.metadata.name for v in cache.scheduling_view(True).vms}

        assert full_names() == {"pending", "on-not-ready", "on-no-record"}
        store.create(VMS, vm("halted", "ready", running, halted=True))
        store.create(VMS, vm("deleting", "ready", running, deleting=True))
        store.create(VMS, vm("settled-too", "ready", running))
        ended = store.create(VMS, vm("ended", "ready", running))
        ended.status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED
        store.update(VMS, ended)
        placed = store.get(VMS, "pending")
        placed.status.node_name, placed.status.phase = "ready", vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED
        store.update(VMS, placed)
        wait_for(lambda: cache.revision >= store.last_write_revision, timeout=10, what="the cache to catch up")
        assert full_names() == {"on-not-ready", "on-no-record", "halted", "deleting", "ended"}
        store.revoke_lease(lease)  # every VM on "ready" may now need a decision
        wait_for(lambda: "ready" not in cache.ready, timeout=10, what="the lease to go")
        assert full_names() == {"on-not-ready", "on-no-record", "halted", "deleting", "ended",
                                "settled", "settled-too", "pending"}
    finally:
        stop.set()
        store.close()


def test_a_compaction_makes_the_cache_relist_and_subscriptions_resync(etcd):
    store = open_store(etcd)
    try:
        cache = WatchCache(store)
        listed = cache._relist()
        _, _, sub = cache.subscribe("n1")
        late = store.create(VMS, make_vm("late", "n1"))
        later = store.create(VMS, make_vm("later", "n2"))
        store._call(etcdrpc.KVStub, "Compact", etcdrpc.CompactionRequest(revision=later.metadata.resource_version))
        with pytest.raises(Compacted):
            cache._follow(listed, threading.Event())  # its revision is gone from etcd's history
        cache._relist()  # what run() does next
        assert list(sub.changes(timeout=1)) == [], "the subscription ends: its stream must resync"
        vms, revision, _ = cache.subscribe("n1")
        assert [vm.metadata.name for vm in vms] == ["late"] and revision >= late.metadata.resource_version
    finally:
        store.close()


def test_a_broken_watch_resumes_without_losing_events_or_ending_streams(etcd):
    store = open_store(etcd)
    stop = threading.Event()
    try:
        cache = WatchCache(store)
        follows = []
        real_follow = cache._follow

        def flaky_follow(revision, stop_event):
            follows.append(revision)
            if len(follows) == 1:
                raise Unavailable("etcd watch broke")  # as when the member in use dies
            real_follow(revision, stop_event)

        cache._follow = flaky_follow
        threading.Thread(target=cache.run, args=(stop,), daemon=True).start()
        assert cache.wait_synced(timeout=10)
        _, _, sub = cache.subscribe("n1")
        wait_for(lambda: len(follows) >= 2, timeout=10, what="the watch to resume")
        made = store.create(VMS, make_vm("after-the-break", "n1"))
        change = next(c for c in sub.changes(timeout=5) if c is not None)
        assert change.name == "after-the-break" and change.revision == made.metadata.resource_version
        assert follows[0] == follows[1], "it resumed from where it was, without listing again"
    finally:
        stop.set()
        store.close()


def test_a_stream_that_cannot_keep_up_is_ended_not_buffered_without_bound(monkeypatch):
    """A subscriber read from an event loop that leaves more than MAX_PENDING changes unread
    is ended (its client starts over from a list) instead of growing the replica's memory."""
    import asyncio

    from controller import subscriptions

    monkeypatch.setattr(subscriptions, "MAX_PENDING", 5)

    async def scenario() -> list:
        sub = subscriptions.Subscription(None, "n1", asyncio.get_running_loop())
        for index in range(3):
            sub._put_all([subscriptions.Change(f"vm{index}", None, index + 1)])
        sub._put_all([subscriptions.Change(f"more{index}", None, 10 + index) for index in range(3)])  # 6 > 5
        sub._put_all([subscriptions.Change("after", None, 20)])  # ignored: the stream has ended
        return [change async for change in sub.async_changes()]

    assert asyncio.run(scenario()) == []


def test_a_stream_ended_for_falling_behind_ends_at_a_revision_s_end(monkeypatch):
    """Changes written in one transaction share a revision, and a client resumes after the last
    revision it saw whole: a stream cut while its reader is in the middle of one revision
    still delivers the rest of that revision, and nothing after it."""
    import asyncio

    from controller import subscriptions

    monkeypatch.setattr(subscriptions, "MAX_PENDING", 5)

    async def scenario() -> list:
        sub = subscriptions.Subscription(None, "n1", asyncio.get_running_loop())
        sub._put_all([subscriptions.Change(f"a{index}", None, 7) for index in range(3)])  # one transaction
        changes = sub.async_changes()
        first = await changes.__anext__()  # the reader takes one of revision 7 ...
        sub._put_all([subscriptions.Change(f"b{index}", None, 8) for index in range(4)])  # ... and falls behind
        return [first.name] + [change.name async for change in changes]

    assert asyncio.run(scenario()) == ["a0", "a1", "a2"]


def test_a_pool_whose_vms_alone_changed_is_looked_at_again_only_after_a_while(etcd, monkeypatch):
    """In a storm a pool's VMs change hundreds of times a second and each look at the pool costs
    its size: the pool reconciler gets such a pool again only after POOL_VMS_PASS_SECONDS; a
    change of the pool itself comes in the next pass, and a full pass has every pool (at most
    every POOL_RESYNC_SECONDS)."""
    from controller import watch_cache
    from corral.resources import POOLS
    monkeypatch.setattr(watch_cache, "POOL_VMS_PASS_SECONDS", 3600.0)  # "not yet" whatever the load
    monkeypatch.setattr(watch_cache, "POOL_RESYNC_SECONDS", 3600.0)
    from corral.v1 import pool_pb2
    store = open_store(etcd)
    stop = threading.Event()
    try:
        pool = pool_pb2.VirtualMachinePool()
        pool.metadata.name = "web"
        pool = store.create(POOLS, pool)
        member = make_vm("web-0")
        member.metadata.owner.kind, member.metadata.owner.name = "VirtualMachinePool", "web"
        member = store.create(VMS, member)
        cache = WatchCache(store)
        threading.Thread(target=cache.run, args=(stop,), daemon=True).start()
        assert cache.wait_synced(timeout=10)
        first = cache.pool_work(False)  # the relist marks every pool
        assert [(name, [vm.metadata.name for vm in vms]) for name, _, vms in first] == [("web", ["web-0"])]

        def caught_up() -> bool:
            return cache.revision >= store.last_write_revision
        member.status.node_name = "n1"
        member = store.update(VMS, member)
        wait_for(caught_up, timeout=10, what="the cache to catch up")
        assert cache.pool_work(False) == [], "looked at again at once"
        assert [name for name, _, _ in cache.pool_work(True)] == ["web"], "a full pass has every pool"
        assert cache.pool_work(True) == [], "every pool again at once"
        member.status.node_name = "n2"
        member = store.update(VMS, member)
        wait_for(caught_up, timeout=10, what="the cache to catch up")
        assert cache.pool_work(False) == []
        monkeypatch.setattr(watch_cache, "POOL_VMS_PASS_SECONDS", 0.2)
        wait_for(lambda: [name for name, _, _ in cache.pool_work(False)] == ["web"],
                 timeout=5, interval=0.05, what="the pool again, its VMs having changed")
        monkeypatch.setattr(watch_cache, "POOL_VMS_PASS_SECONDS", 3600.0)
        cache.every_pool_next()  # a new term: every pool, though the last full look was just now
        assert [name for name, _, _ in cache.pool_work(True)] == ["web"]
        cache.look_again(["web"])  # a pass that failed midway
        assert [name for name, _, _ in cache.pool_work(False)] == ["web"]
        pool.spec.replicas = 3
        pool = store.update(POOLS, pool)
        wait_for(caught_up, timeout=10, what="the cache to catch up")
        assert [name for name, _, _ in cache.pool_work(False)] == ["web"], "a change of the pool waits for nothing"
        pool.status.replicas = 1  # what the reconciler writes after a look: no look for it
        store.update(POOLS, pool)
        wait_for(caught_up, timeout=10, what="the cache to catch up")
        assert cache.pool_work(False) == []
    finally:
        stop.set()
        store.close()
