"""The replica's watch cache: one etcd watch feeds an in-memory, revision-stamped copy of every
VM, node record and node lease (what Kubernetes' apiserver calls its watch cache, and
client-go its informers). Readers take snapshots and subscriptions from it instead of
listing and watching etcd themselves, so a change costs one decode however many handler
streams and reconcilers follow it.

- VMs are indexed by the nodes they are assigned to (their node, and a live migration's
  target): a node's subscription hears only about its own VMs.
- Every snapshot and event carries the etcd revision it reflects; the cache's revision only
  moves forward, after the whole etcd response is applied.
- What each node's VMs take (scheduling.Allocation) is kept event by event, with each node's
  scheduling view, the names of VMs changed since the scheduler last asked, and those that are
  not settled (lifecycle.settled): a scheduler pass costs the changes, a full one the VMs
  that need a decision and those on nodes that are not Ready, never every VM.
- A broken etcd watch resumes from the cache's revision. A compacted one (events were missed)
  makes the cache relist; subscribers are then told to start over (their stream ends, and
  handlers reconnect and resync).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyetcd import utils as etcd_utils

from controller import lifecycle
from controller.subscriptions import Change, Subscription
from corral import scheduling
from corral.resources import INSTANCE_LOCKS_FOLDER, MIGRATIONS, NODE_LEASES_FOLDER, NODES, POOLS, VMS
from corral.store import Compacted, Store, StoreError, decode
from corral.watches import RawWatch
from corral.v1 import migration_pb2, node_pb2, pool_pb2, vm_pb2

log = logging.getLogger(__name__)

DELETE_EVENT = 1  # mvccpb.Event.DELETE
#: Subscribers of every VM (API watches) rather than of one node's.
EVERY_VM = "*"
#: VM changes kept to resume watches from a recent revision (older ones are read from etcd).
HISTORY = 20_000
#: How often at most a pool is looked at again because its VMs changed (a change of the pool
#: itself is looked at in the next pass), and how often every pool is (a scheduler's full pass
#: asks for them all, at most this often): a look costs the pool's size, and in a storm its
#: VMs change hundreds of times a second.
POOL_VMS_PASS_SECONDS = 1.0
POOL_RESYNC_SECONDS = 5.0


def owning_pool(vm: vm_pb2.VirtualMachine | None) -> str | None:
    """The name of the pool a VM names as its owner."""
    if vm is None or vm.metadata.owner.kind != "VirtualMachinePool":
        return None
    return vm.metadata.owner.name


def status_only(before: pool_pb2.VirtualMachinePool | None, after: pool_pb2.VirtualMachinePool | None) -> bool:
    """Whether a pool's change touches its status alone (what the pool reconciler writes after
    each look: another look for it would only write the next status, and so on)."""
    if before is None or after is None:
        return False
    return (before.spec == after.spec and before.metadata.uid == after.metadata.uid
            and before.metadata.delete_time == after.metadata.delete_time
            and before.metadata.labels == after.metadata.labels
            and before.metadata.annotations == after.metadata.annotations)


def assigned_nodes(vm: vm_pb2.VirtualMachine | None) -> set[str]:
    """The nodes a VM is assigned to: its node, and a live migration's target."""
    if vm is None:
        return set()
    return {name for name in (vm.status.node_name, vm.status.migration_target.node_name) if name}


@dataclass(frozen=True)
class SchedulingView:
    """What one scheduler pass reads, at one revision. ``vms`` is every VM that may need a
    decision (a full pass: those not settled and those on nodes not Ready) or those changed
    since the previous pass; objects are shared with the cache (copy to change)."""

    nodes: dict[str, node_pb2.Node]
    ready: set[str]
    views: dict[str, scheduling.NodeView]  # fresh: the scheduler adds what it decides
    vms: list[vm_pb2.VirtualMachine]
    full: bool
    migrations: list[migration_pb2.Migration]
    revision: int
    nodes_generation: int


class WatchCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.vms: dict[str, vm_pb2.VirtualMachine] = {}
        self.by_node: dict[str, set[str]] = {}
        self.nodes: dict[str, node_pb2.Node] = {}
        self.ready: set[str] = set()
        self.node_leases: dict[str, int] = {}  # node -> the etcd lease its heartbeat key is bound to
        self.locked: set[str] = set()  # VMs whose instance lock exists
        self.migrations: dict[str, migration_pb2.Migration] = {}
        self.pools: dict[str, pool_pb2.VirtualMachinePool] = {}
        self.pool_members: dict[str, set[str]] = {}  # pool name -> VMs naming it as owner
        self.changed_pools: set[str] = set()  # pools changed since the reconciler looked
        self.pools_with_changed_vms: set[str] = set()  # pools some of whose VMs changed since then
        self._pool_looked_at: dict[str, float] = {}  # pool -> when the reconciler last had it (monotonic)
        self._pools_resynced = float("-inf")  # when the reconciler last had every pool
        self.allocated: dict[str, scheduling.Allocation] = {}  # node -> what its VMs take
        self.changed: set[str] = set()  # VMs changed since the scheduler's last pass
        self.unsettled: set[str] = set()  # VMs not lifecycle.settled: a full pass looks at them
        self.nodes_generation = 0  # moves when a node record or a node's readiness changes
        # Each node's scheduling view, rebuilt only when its record, readiness or what its VMs
        # take changed (stale_views): a pass costs the nodes that changed, not every node.
        # Shared with every reader: deciders replace a view to change it (scheduling.add_to).
        self._views: dict[str, scheduling.NodeView] = {}
        self._stale_views: set[str] = set()
        self.revision = 0
        self._resume_from = 0  # the last revision whose events are all applied
        self.cond = threading.Condition()
        self.subscribers: dict[str, set[Subscription]] = {}  # node (or EVERY_VM) -> subscriptions
        self.history: collections.deque[Change] = collections.deque(maxlen=HISTORY)
        self.history_from = 0  # every VM change after this revision is in history
        self.synced = threading.Event()
        self._watch: RawWatch | None = None  # the etcd watch being followed
        self._folders = {
            "vms": store.folder(VMS),
            "nodes": store.folder(NODES),
            "leases": store.raw_key(NODE_LEASES_FOLDER),
            "locks": store.raw_key(INSTANCE_LOCKS_FOLDER),
            "migrations": store.folder(MIGRATIONS),
            "pools": store.folder(POOLS),
        }

    # -- feeding ----------------------------------------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self.run, name="watch-cache", daemon=True).start()

    def run(self, stop: threading.Event | None = None) -> None:
        """List, then follow; a broken watch resumes from the cache's revision (nothing was
        missed, the streams go on), a compacted one lists again (the streams resync)."""
        listed = False
        if stop is not None:  # the watch is read on this thread: closing it ends the wait
            threading.Thread(target=self._close_when, args=(stop,), name="watch-cache-stop", daemon=True).start()
        while stop is None or not stop.is_set():
            try:
                if not listed:
                    self._relist()
                    listed = True
                self._follow(self._resume_from, stop)
            except Compacted as exc:
                log.warning("watch cache: revision compacted (%s): listing again", exc)
                listed = False
            except StoreError as exc:
                log.warning("watch cache: %s: watching again after revision %d", exc, self._resume_from)
                (stop or threading.Event()).wait(0.5)

    def _relist(self) -> int:
        vms, revision = self.store.list_all(VMS)
        nodes, _, _ = self.store.list(NODES, revision=revision)
        folder = self._folders["leases"]
        leases = self.store.range(folder, etcd_utils.prefix_range_end(folder), revision=revision)
        locks_folder = self._folders["locks"]
        locks = self.store.range(locks_folder, etcd_utils.prefix_range_end(locks_folder), revision=revision,
                                 keys_only=True)
        migrations, _, _ = self.store.list(MIGRATIONS, revision=revision)
        pools, _, _ = self.store.list(POOLS, revision=revision)
        with self.cond:
            self.vms = {vm.metadata.name: vm for vm in vms}
            self.allocated = scheduling.allocations(vms)
            self.changed = set(self.vms)
            self.unsettled = {vm.metadata.name for vm in vms if not lifecycle.settled(vm)}
            self.nodes_generation += 1
            self.migrations = {m.metadata.name: m for m in migrations}
            self.pools = {pool.metadata.name: pool for pool in pools}
            self.pool_members = {}
            for vm in vms:
                if owning_pool(vm):
                    self.pool_members.setdefault(owning_pool(vm), set()).add(vm.metadata.name)
            self.changed_pools = set(self.pools) | set(self.pool_members)
            self.by_node = {}
            for vm in vms:
                for node in assigned_nodes(vm):
                    self.by_node.setdefault(node, set()).add(vm.metadata.name)
            self.nodes = {node.metadata.name: node for node in nodes}
            self._views, self._stale_views = {}, set(self.nodes)
            self.ready = {kv.key[len(folder):].decode() for kv in leases.kvs}
            self.node_leases = {kv.key[len(folder):].decode(): kv.lease for kv in leases.kvs}
            self.locked = {kv.key[len(locks_folder):].decode() for kv in locks.kvs}
            self.revision = self._resume_from = revision
            self.history.clear()
            self.history_from = revision
            stale = [sub for subs in self.subscribers.values() for sub in subs]
            self.subscribers = {}
            self.cond.notify_all()
        for sub in stale:  # they may have missed events: their streams start over
            sub.end()
        self.synced.set()
        log.info("watch cache: %d VMs, %d nodes at revision %d", len(vms), len(nodes), revision)
        return revision

    def _close_when(self, stop: threading.Event) -> None:
        stop.wait()
        if self._watch is not None:
            self._watch.close()

    def _follow(self, revision: int, stop: threading.Event | None) -> None:
        raw = self._watch = self.store.watch_everything(start_revision=revision + 1)  # everything: one stream
        try:
            if stop is not None and stop.is_set():
                return
            for response in raw.responses():
                self._apply(response.events, response.header.revision)
        finally:
            raw.close()

    def _apply(self, events, revision: int) -> None:
        vms, nodes, leases, locks, migrations, pools = (self._folders[name] for name in
                                                        ("vms", "nodes", "leases", "locks", "migrations", "pools"))
        fanout: list[tuple[Subscription, Change]] = []
        with self.cond:
            for event in events:
                key = event.kv.key
                deleted = event.type == DELETE_EVENT
                if key.startswith(vms):
                    name = key[len(vms):].decode()
                    vm = None if deleted else decode(vm_pb2.VirtualMachine, event.kv.value, event.kv.mod_revision)
                    fanout.extend(self._put_vm(name, vm, event.kv.mod_revision))
                elif key.startswith(nodes):
                    name = key[len(nodes):].decode()
                    self.nodes_generation += 1
                    self._stale_views.add(name)
                    if deleted:
                        self.nodes.pop(name, None)
                    else:
                        self.nodes[name] = decode(node_pb2.Node, event.kv.value, event.kv.mod_revision)
                elif key.startswith(leases):
                    name = key[len(leases):].decode()
                    self.nodes_generation += 1
                    self._stale_views.add(name)
                    if deleted:
                        self.ready.discard(name)
                        self.node_leases.pop(name, None)
                    else:
                        self.ready.add(name)
                        self.node_leases[name] = event.kv.lease
                elif key.startswith(locks):
                    (self.locked.discard if deleted else self.locked.add)(key[len(locks):].decode())
                elif key.startswith(migrations):
                    name = key[len(migrations):].decode()
                    if deleted:
                        self.migrations.pop(name, None)
                    else:
                        self.migrations[name] = decode(migration_pb2.Migration, event.kv.value, event.kv.mod_revision)
                elif key.startswith(pools):
                    name = key[len(pools):].decode()
                    pool = None if deleted else decode(pool_pb2.VirtualMachinePool, event.kv.value,
                                                       event.kv.mod_revision)
                    if not status_only(self.pools.get(name), pool):
                        self.changed_pools.add(name)  # (the reconciler's own status write: no new look)
                    if pool is None:
                        self.pools.pop(name, None)
                    else:
                        self.pools[name] = pool
            self.revision = max(self.revision, revision)
            if events:
                self._resume_from = max(self._resume_from, max(event.kv.mod_revision for event in events))
            self.cond.notify_all()
        batches: dict[Subscription, list[Change]] = {}
        for sub, change in fanout:
            batches.setdefault(sub, []).append(change)
        for sub, changes in batches.items():
            sub.deliver(changes)

    def _put_vm(self, name: str, vm: vm_pb2.VirtualMachine | None,
                revision: int) -> list[tuple["Subscription", Change]]:
        previous = self.vms.get(name)
        before = assigned_nodes(previous)
        after = assigned_nodes(vm)
        for node in scheduling.allocated_on(previous):
            self.allocated[node].change(previous.spec, -1)
            self._stale_views.add(node)
        for node in scheduling.allocated_on(vm):
            self.allocated.setdefault(node, scheduling.Allocation()).change(vm.spec, +1)
            self._stale_views.add(node)
        self.changed.add(name)
        if vm is None or lifecycle.settled(vm):
            self.unsettled.discard(name)
        else:
            self.unsettled.add(name)
        for pool in {owning_pool(previous), owning_pool(vm)} - {None}:
            self.pools_with_changed_vms.add(pool)
            members = self.pool_members.setdefault(pool, set())
            (members.add if owning_pool(vm) == pool else members.discard)(name)
            if not members:
                del self.pool_members[pool]
        if vm is None:
            self.vms.pop(name, None)
        else:
            self.vms[name] = vm
        for node in before - after:
            names = self.by_node.get(node)
            if names is not None:
                names.discard(name)
                if not names:
                    del self.by_node[node]
        for node in after:
            self.by_node.setdefault(node, set()).add(name)
        fanout = []
        for node in before | after:
            change = Change(name, vm if node in after else None, revision)
            fanout.extend((sub, change) for sub in self.subscribers.get(node, ()))
        change = Change(name, vm, revision, previous)
        if len(self.history) == self.history.maxlen:
            self.history_from = self.history[0].revision
        self.history.append(change)
        fanout.extend((sub, change) for sub in self.subscribers.get(EVERY_VM, ()))
        return fanout

    # -- reading ----------------------------------------------------------------------------
    def wait_synced(self, timeout: float | None = None) -> bool:
        return self.synced.wait(timeout)

    def subscribe(self, node: str, loop: asyncio.AbstractEventLoop | None = None,
                  ) -> tuple[list[vm_pb2.VirtualMachine], int, Subscription]:
        """The node's VMs now, the revision they reflect, and a subscription to every later change."""
        sub = Subscription(self, node, loop)
        with self.cond:
            current = [self.vms[name] for name in sorted(self.by_node.get(node, ()))]
            self.subscribers.setdefault(node, set()).add(sub)
            return current, self.revision, sub

    def node_views(self) -> tuple[list[node_pb2.Node], dict[str, scheduling.NodeView]]:
        """Node records and what their VMs take, at one revision (records shared: copy to change)."""
        with self.cond:
            nodes = [self.nodes[name] for name in sorted(self.nodes)]
            return nodes, self._current_views()

    def _current_views(self) -> dict[str, scheduling.NodeView]:
        """Every node's view (a new dict of shared views; caller holds cond). Only the views of
        nodes whose record, readiness or VMs changed are rebuilt; a deleted node's goes."""
        for name in self._stale_views:
            node = self.nodes.get(name)
            if node is None:
                self._views.pop(name, None)
            else:
                self._views[name] = scheduling.view_of(node, name in self.ready, self.allocated.get(name))
        self._stale_views = set()
        return dict(self._views)

    def fresh(self, timeout: float = 2.0) -> bool:
        """Wait until the cache has every write etcd had when asked (Kubernetes' consistent
        reads from its watch cache): what a client wrote before it listed is in the list."""
        if not self.synced.is_set():
            return False
        wanted = self.store.revision()
        with self.cond:
            return self.cond.wait_for(lambda: self.revision >= wanted, timeout)

    def list_vms(self, at: int, after: str, size: int, keep: Callable[[vm_pb2.VirtualMachine], bool],
                 ) -> tuple[list[vm_pb2.VirtualMachine], str, int] | None:
        """One page of VMs by name after ``after``: (VMs, last name when more follow, revision);
        None when the cache is no longer at revision ``at`` (0: any) and etcd must answer."""
        with self.cond:
            if at and at != self.revision:
                return None
            items = []
            for name in sorted(name for name in self.vms if name > after):
                vm = self.vms[name]
                if keep(vm):
                    if len(items) == size:
                        return items, items[-1].metadata.name, self.revision
                    items.append(vm)
            return items, "", self.revision

    def watch_vms(self, after: int, loop: asyncio.AbstractEventLoop,
                  ) -> tuple[list[vm_pb2.VirtualMachine] | None, list[Change] | None, int, Subscription | None]:
        """For an API watch: (every VM now, None, revision, subscription) when ``after`` is 0;
        (None, the VM changes after ``after``, revision, subscription) when the history still
        has them; (None, None, revision, None) when it does not (read etcd's history)."""
        with self.cond:
            if after and after < self.history_from:
                return None, None, self.revision, None
            sub = Subscription(self, EVERY_VM, loop)
            self.subscribers.setdefault(EVERY_VM, set()).add(sub)
            if not after:
                return list(self.vms.values()), None, self.revision, sub
            return None, [change for change in self.history if change.revision > after], self.revision, sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self.cond:
            subs = self.subscribers.get(sub.node)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.subscribers[sub.node]

    def snapshot(self) -> tuple[list[node_pb2.Node], set[str], list[vm_pb2.VirtualMachine], int]:
        """Nodes, Ready node names and VMs at one revision (what controller.nodes.snapshot reads
        from etcd). The objects are shared: callers copy before changing one."""
        with self.cond:
            return list(self.nodes.values()), set(self.ready), list(self.vms.values()), self.revision

    def scheduling_view(self, full: bool) -> SchedulingView:
        """Nodes, what their VMs take, and the VMs that may need a decision (full: those not
        settled and every VM on a node that is not Ready or has no record) or the VMs changed
        since the last call; the changed set starts afresh either way (one scheduler consumes it)."""
        with self.cond:
            changed, self.changed = self.changed, set()
            if full:
                names = set(self.unsettled)
                for node, on_node in self.by_node.items():
                    if node not in self.ready or node not in self.nodes:
                        names |= on_node
            else:
                names = changed
            vms = [self.vms[name] for name in names if name in self.vms]
            return SchedulingView(dict(self.nodes), set(self.ready), self._current_views(), vms, full,
                                  list(self.migrations.values()), self.revision, self.nodes_generation)

    def pool_work(self, full: bool) -> list[tuple[str, pool_pb2.VirtualMachinePool | None,
                                                  list[vm_pb2.VirtualMachine]]]:
        """For the pool reconciler: (name, pool or None if gone, VMs naming it as owner) of every
        pool (full, at most every POOL_RESYNC_SECONDS), or of those changed since the last call,
        a pool whose VMs alone changed at most every POOL_VMS_PASS_SECONDS. Shared objects:
        copy to change."""
        now = time.monotonic()
        with self.cond:
            if full and now - self._pools_resynced >= POOL_RESYNC_SECONDS:
                self._pools_resynced = now
                names = set(self.pools) | set(self.pool_members)
                self.changed_pools, self.pools_with_changed_vms = set(), set()
            else:
                due = {name for name in self.pools_with_changed_vms
                       if now - self._pool_looked_at.get(name, 0.0) >= POOL_VMS_PASS_SECONDS}
                names = self.changed_pools | due
                self.changed_pools = set()
                self.pools_with_changed_vms -= names
            work = [(name, self.pools.get(name), [self.vms[vm] for vm in sorted(self.pool_members.get(name, ()))])
                    for name in sorted(names) if name in self.pools or name in self.pool_members]
            self._pool_looked_at = {name: when for name, when in self._pool_looked_at.items()
                                    if name in self.pools or name in self.pool_members}
            self._pool_looked_at.update((name, now) for name, _, _ in work)
            return work

    def every_pool_next(self) -> None:
        """The next pool_work(full=True) has every pool, however recent the last (a new term)."""
        with self.cond:
            self._pools_resynced = float("-inf")

    def look_again(self, names: list[str]) -> None:
        """Pools handed out by pool_work that the reconciler may not have reached (its pass
        failed): in the next pool_work again."""
        with self.cond:
            self.changed_pools.update(names)

    def wait_newer(self, revision: int, timeout: float, stop: Callable[[], bool] = lambda: False) -> int:
        """Block until the cache is past ``revision`` (or timeout); its revision then."""
        with self.cond:
            self.cond.wait_for(lambda: self.revision > revision or stop(), timeout)
            return self.revision
