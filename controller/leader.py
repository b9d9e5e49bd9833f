"""Leader election through etcd (as Patroni does it): a key bound to a lease, created in a
transaction only if absent. Its create revision is the fencing token the leader puts in
every write's compare, so a deposed leader's late writes are refused by etcd itself."""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from pyetcd import transactions as T

from corral.resources import LEADER_KEY
from corral.store import DELETE_EVENT, Fence, Store, StoreError

log = logging.getLogger(__name__)


class LeaderElector:
    """Campaigns forever; calls lead(fence, stop) in a thread while this replica leads."""

    def __init__(self, *, store: Store, identity: str, lease_seconds: int,
                 lead: Callable[[Fence, threading.Event], None]) -> None:
        self.store = store
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.lead = lead
        self.key = store.raw_key(LEADER_KEY)
        self.fence: Fence | None = None

    @property
    def is_leader(self) -> bool:
        return self.fence is not None

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                lease_id = self._campaign(stop)
                if lease_id is not None:
                    self._hold(lease_id, stop)
                    continue
            except StoreError as exc:
                log.warning("leader election: %s", exc)
            except Exception:  # keep campaigning whatever happens
                log.exception("leader election failed")
            self.fence = None
            stop.wait(self.lease_seconds / 4 * (1 + random.random() / 2))

    def _campaign(self, stop: threading.Event) -> int | None:
        """Try to take the key once; the lease id if this replica now leads."""
        current = self.store.range(self.key)
        if current.kvs:
            self._wait_for_vacancy(current.header.revision, stop)
            return None
        lease_id = self.store.grant_lease(self.lease_seconds)
        response = self.store.txn(
            [T.Create(self.key) == 0],
            [T.Put(self.key, self.identity.encode(), lease=lease_id)],
        )
        if not response.succeeded:
            self.store.revoke_lease(lease_id)
            return None
        token = response.header.revision
        self.fence = Fence(self.key, token)
        log.info("leading with fencing token %d", token)
        return lease_id

    def _wait_for_vacancy(self, revision: int, stop: threading.Event) -> None:
        """Block until the leader key is deleted (its lease expired or was revoked), for at
        most one lease period: a standby then campaigns at once instead of polling."""
        watch = self.store.watch_key(self.key, start_revision=revision + 1)
        deadline = time.monotonic() + self.lease_seconds
        try:
            for response in watch.responses(timeout=0.25):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                if response is not None and any(e.type == DELETE_EVENT for e in response.events):
                    return
        finally:
            watch.close()

    def _hold(self, lease_id: int, stop: threading.Event) -> None:
        """Keep the lease alive and run the leader's work until the lease cannot be kept."""
        assert self.fence is not None
        work_stop = threading.Event()
        worker = threading.Thread(target=self.lead, args=(self.fence, work_stop), name="leader-work", daemon=True)
        worker.start()
        renewed = time.monotonic()
        try:
            while not stop.is_set():
                stop.wait(self.lease_seconds / 4)
                # Never wait on etcd past the moment the lease could have expired.
                budget = self.lease_seconds * 0.75 - (time.monotonic() - renewed)
                if budget <= 0:
                    log.warning("could not renew the leader lease in time: stepping down")
                    return
                sent = time.monotonic()
                try:
                    ttl = self.store.refresh_lease(lease_id, timeout=budget)
                except StoreError as exc:
                    log.warning("cannot renew the leader lease: %s", exc)
                    continue
                if ttl <= 0:
                    log.warning("leader lease expired: stepping down")
                    return
                renewed = sent
                if not worker.is_alive():
                    log.error("leader work stopped unexpectedly: stepping down")
                    return
        finally:
            work_stop.set()
            self.fence = None
            try:
                self.store.revoke_lease(lease_id, timeout=1.0)  # hand over at once where etcd answers
            except StoreError:
                pass
            worker.join(timeout=5)
