"""The store's coroutines (corral/async_store.py) on a real etcd: they write and read what the
blocking Store does, fail the same way (ALREADY_EXISTS, a stale revision, a missing object),
never block the event loop for an expiry lease, and move to another member when the one in
use stops answering."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from corral import history, status as vm_status
from corral.async_store import AsyncStore
from corral.resources import VMS
from corral.store import AlreadyExists, Conflict, NotFound, Store, Unavailable
from corral.v1 import vm_pb2
from tests.cluster import wait_for

T = TypeVar("T")


def open_store(endpoints: list[str]) -> Store:
    store = Store(endpoints=endpoints, prefix=f"/as-{uuid.uuid4().hex[:8]}/", timeout=3)
    wait_for(lambda: store.revision() > 0, timeout=20, what="etcd to answer")
    return store


def run(store: Store, scenario: Callable[[AsyncStore], Awaitable[T]]) -> T:
    """``scenario`` on a fresh event loop with an AsyncStore of ``store`` (closed after)."""
    async def main() -> T:
        async_store = AsyncStore(store)
        try:
            return await scenario(async_store)
        finally:
            await async_store.close()
    return asyncio.run(main())


def make_vm(name: str) -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.spec.vcpus, vm.spec.memory_mib = 1, 64
    return vm


def test_writes_and_reads_agree_with_the_blocking_store_and_fail_the_same_way(etcd):
    store = open_store([etcd.endpoint])

    async def scenario(async_store: AsyncStore) -> None:
        made = make_vm("a")
        vm_status.record_event(made, "Created", "made by the test")
        stored = await async_store.create(VMS, made)
        assert stored.metadata.resource_version == store.last_write_revision > 0
        assert store.get(VMS, "a").metadata.resource_version == stored.metadata.resource_version
        with pytest.raises(AlreadyExists, match="'a' already exists"):
            await async_store.create(VMS, make_vm("a"))

        stored.spec.vcpus = 2
        updated = await async_store.update(VMS, stored)
        assert store.get(VMS, "a").spec.vcpus == 2
        with pytest.raises(Conflict, match="read it again"):
            await async_store.update(VMS, stored)  # the revision it was read at is gone
        got, beside = await async_store.get_with(VMS, "a", store.raw_key(history.folder("a")))
        assert got.metadata.resource_version == updated.metadata.resource_version and got.spec.vcpus == 2
        assert [kv.key.startswith(store.raw_key(history.folder("a") + "e/")) for kv in beside] == [True]  # its event
        with pytest.raises(NotFound, match="'b' not found"):
            await async_store.get_with(VMS, "b", store.raw_key(history.folder("b")))

    try:
        run(store, scenario)
    finally:
        store.close()


def test_writes_asked_together_are_committed_together_each_still_guarded(etcd):
    """Creates asked while others are on their way go to etcd in one transaction (fewer
    revisions than writes); a name that exists fails alone with ALREADY_EXISTS and the rest
    of its group is written; two writes of one key never share a transaction (the second,
    from the same revision, is refused as stale)."""
    store = open_store([etcd.endpoint])
    store.create(VMS, make_vm("taken"))

    async def scenario(async_store: AsyncStore) -> tuple[int, list, list, list]:
        together = await asyncio.gather(*(async_store.create(VMS, make_vm(f"vm-{i:03d}")) for i in range(40)))
        revisions = len({vm.metadata.resource_version for vm in together})  # (etcd is shared by other tests)
        one_taken = await asyncio.gather(*(async_store.create(VMS, make_vm(name)) for name in
                                           ["new-1", "new-2", "taken", "new-3"]), return_exceptions=True)
        current = store.get(VMS, "vm-000")
        first, second = vm_pb2.VirtualMachine(), vm_pb2.VirtualMachine()
        first.CopyFrom(current)
        second.CopyFrom(current)
        first.spec.vcpus, second.spec.vcpus = 3, 4
        twice = await asyncio.gather(async_store.update(VMS, first), async_store.update(VMS, second),
                                     return_exceptions=True)
        return revisions, together, one_taken, twice

    try:
        revisions, together, one_taken, twice = run(store, scenario)
        # The first goes at once, the 39 asked meanwhile in groups of at most GROUP_WRITES.
        assert revisions <= 3, f"{revisions} etcd revisions for 40 creates asked at once"
        assert [type(answer).__name__ for answer in one_taken] == [
            "VirtualMachine", "VirtualMachine", "AlreadyExists", "VirtualMachine"]
        assert len(store.list_all(VMS)[0]) == 1 + 40 + 3
        assert isinstance(twice[0], vm_pb2.VirtualMachine) and isinstance(twice[1], Conflict), twice
        assert store.get(VMS, "vm-000").spec.vcpus == 3
    finally:
        store.close()


def test_create_all_writes_every_object_in_one_revision_or_none(etcd):
    """Store.create_all (the pool reconciler's, with the fence) and AsyncStore.create_all (the
    batch API's): all in one transaction; a name taken, or a fence that is not the leader's,
    writes nothing (the blocking one answers None, the async one names the object taken)."""
    from pyetcd import transactions as etcd_txn
    from corral.resources import LEADER_KEY
    from corral.store import Fence
    store = open_store([etcd.endpoint])
    try:
        leader = store.raw_key(LEADER_KEY)
        fence = Fence(leader, store.txn([], [etcd_txn.Put(leader, b"test")]).header.revision)
        made = [make_vm(f"fleet-{index}") for index in range(30)]
        for vm in made:
            vm_status.record_event(vm, "CreatedByPool", "by the test")  # a key of its own beside the VM
        stored = store.create_all(VMS, made, fence=fence)
        assert stored is not None and len({vm.metadata.resource_version for vm in stored}) == 1
        assert {vm.metadata.name for vm in store.list_all(VMS)[0]} == {f"fleet-{index}" for index in range(30)}
        assert store.create_all(VMS, [make_vm("new-a"), make_vm("fleet-3")], fence=fence) is None
        assert store.create_all(VMS, [make_vm("new-b")], fence=Fence(leader, fence.token - 1)) is None

        async def scenario(async_store: AsyncStore):
            created = await async_store.create_all(VMS, [make_vm("new-c"), make_vm("new-d")])
            with pytest.raises(AlreadyExists, match="'fleet-7' already exists") as taken:
                await async_store.create_all(VMS, [make_vm("new-e"), make_vm("fleet-7")])
            return created, taken.value.name
        created, taken_name = run(store, scenario)
        assert [vm.metadata.name for vm in created] == ["new-c", "new-d"] and taken_name == "fleet-7"
        names = {vm.metadata.name for vm in store.list_all(VMS)[0]}
        assert not names & {"new-a", "new-b", "new-e"}, "a refused batch wrote something"
        assert {"new-c", "new-d"} <= names
    finally:
        store.close()


def test_a_group_stays_under_etcd_s_request_size(etcd):
    """Five creates of 400 KiB asked at once: the first goes alone, the others in groups of at
    most GROUP_BYTES (two each), never one 1.6 MB request etcd would refuse (1.5 MiB)."""
    store = open_store([etcd.endpoint])

    def big(name: str) -> vm_pb2.VirtualMachine:
        vm = make_vm(name)
        vm.metadata.annotations["example.com/blob"] = "x" * (400 * 1024)
        return vm

    async def scenario(async_store: AsyncStore) -> int:
        created = await asyncio.gather(*(async_store.create(VMS, big(f"big-{index}")) for index in range(5)))
        return len({vm.metadata.resource_version for vm in created})  # etcd is shared: not revision deltas

    try:
        assert run(store, scenario) == 3
        assert len(store.list_all(VMS)[0]) == 5
    finally:
        store.close()


def test_an_expiry_lease_is_granted_off_the_loop(etcd):
    """A write of keys that expire (a VM's events) needs a lease granted once per window: the
    grant runs on a thread while the loop goes on (a ticker on it keeps ticking)."""
    store = open_store([etcd.endpoint])
    granting = threading.Event()
    grant = store.grant_lease

    def slow_grant(ttl: int) -> int:
        granting.set()
        time.sleep(0.5)
        return grant(ttl)

    store.grant_lease = slow_grant

    async def scenario(async_store: AsyncStore) -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1 if granting.is_set() else 0

        task = asyncio.create_task(ticker())
        vm = make_vm("with-events")
        vm_status.record_event(vm, "Created", "made by the test")
        try:
            stored = await async_store.create(VMS, vm)
        finally:
            task.cancel()
        beside = store.raw_key(history.folder("with-events"))
        kvs = store.range(beside, beside + b"\xff").kvs
        assert kvs and all(kv.lease for kv in kvs), "the events are bound to an expiry lease"
        assert stored.metadata.resource_version > 0
        return ticks

    try:
        ticks = run(store, scenario)
        assert granting.is_set() and ticks >= 10, f"the loop stood still while the lease was granted ({ticks} ticks)"
    finally:
        store.close()


def test_an_unreachable_etcd_is_unavailable_not_a_hang(tmp_path):
    store = Store(endpoints=["http://127.0.0.1:9"], prefix="/as/", timeout=1)

    async def scenario(async_store: AsyncStore) -> None:
        with pytest.raises(Unavailable):
            await asyncio.wait_for(async_store.create(VMS, make_vm("a")), timeout=10)

    try:
        run(store, scenario)
    finally:
        store.close()


def test_an_unavailable_answer_fails_the_member_the_call_went_to(etcd):
    """With calls in flight on two members, a late UNAVAILABLE from the member that died must
    not mark the one now in use failed too (both would be failed: no member left to try)."""
    import grpc

    class Down(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "connection refused"

    store = Store(endpoints=["http://127.0.0.1:9", etcd.endpoint], prefix=f"/as-{uuid.uuid4().hex[:8]}/", timeout=2)
    try:
        members = list(store.client.endpoints.values())
        dead = next(member for member in members if member.netloc.endswith(":9"))
        alive = next(member for member in members if member is not dead)
        error = store.translate(Down(), 2, dead)
        assert isinstance(error, Unavailable)
        assert dead.is_failed() and not alive.is_failed()
        wait_for(lambda: store.revision() > 0, timeout=20, what="the member that answers")
        assert store.client.endpoint_in_use is alive
        store.translate(Down(), 2, dead)  # late, from the dead member: the live one stays in use
        assert not alive.is_failed() and store.revision() > 0
    finally:
        store.close()
