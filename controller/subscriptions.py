"""What a reader of the watch cache (controller/watch_cache.py) hears: changes to one node's
VMs (or to every VM), in revision order, on its own queue; a reader on an event loop waits
without a thread. A reader that falls too far behind is ended (its client starts over) rather
than buffered without bound."""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.v1 import vm_pb2

if TYPE_CHECKING:
    from controller.watch_cache import WatchCache

log = logging.getLogger(__name__)

#: Changes a stream may leave unread before the cache ends it (its client then starts over from
#: a list, as Kubernetes ends a watcher that cannot keep up): a slow reader costs bounded memory.
MAX_PENDING = 10_000


@dataclass(frozen=True)
class Change:
    """What a subscription hears: the VM now (None: deleted, or no longer assigned to the
    subscribed node) and, for every-VM subscribers, the VM before (None: just created)."""

    name: str
    vm: vm_pb2.VirtualMachine | None
    revision: int
    previous: vm_pb2.VirtualMachine | None = None


class Subscription:
    """Changes to one node's VMs (or to every VM), in revision order; ended when the cache had
    to start over. Given an event loop, it is read from that loop (``async_changes``: a
    stream waits without a thread); otherwise from a thread (``changes``)."""

    RESYNC = object()

    def __init__(self, cache: "WatchCache", node: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.cache = cache
        self.node = node
        self.loop = loop
        self.queue: queue.SimpleQueue | asyncio.Queue = queue.SimpleQueue() if loop is None else asyncio.Queue()
        self.ended = False
        self.taken = 0  # the revision of the last change its reader took
        self.moved = False  # ended to send its reader to another replica (move())

    def deliver(self, items: list) -> None:
        """From the cache's thread: one wake-up per etcd response, however many changes."""
        if self.loop is None:
            for item in items:
                self.queue.put(item)
            return
        try:
            self.loop.call_soon_threadsafe(self._put_all, items)
        except RuntimeError:
            pass  # the loop is closed: the server is stopping

    def _put_all(self, items: list) -> None:
        if self.ended:
            return
        if self.queue.qsize() + len(items) > MAX_PENDING and items != [self.RESYNC]:
            log.warning("a stream of %s left %d changes unread: ending it (its client starts over)",
                        self.node, self.queue.qsize())
            # At a revision's end: the rest of the revision its reader is in the middle of stays
            # (changes written together share one; a client resumes after the last it saw whole).
            unread = []
            while not self.queue.empty():
                unread.append(self.queue.get_nowait())
            items = [item for item in itertools.takewhile(
                lambda item: item is not self.RESYNC and item.revision == self.taken, unread)] + [self.RESYNC]
        for item in items:
            self.queue.put_nowait(item)
        self.ended = items[-1] is self.RESYNC

    def changes(self, timeout: float) -> Iterator[Change | None]:
        """Changes as they come; None after ``timeout`` seconds of silence; ends on a resync."""
        while True:
            try:
                item = self.queue.get(timeout=timeout)
            except queue.Empty:
                yield None
                continue
            if item is self.RESYNC:
                return
            self.taken = item.revision
            yield item

    async def async_changes(self) -> AsyncIterator[Change]:
        """Changes as they come, on the subscription's event loop; ends on a resync. (No
        timeout: a coroutine's stream ends by cancellation when its client leaves.)"""
        while True:
            item = await self.queue.get()
            if item is self.RESYNC:
                return
            self.taken = item.revision
            yield item

    def end(self) -> None:
        """Make changes() return (the stream is over). Any thread, or the subscription's loop."""
        if self.loop is None:
            self.queue.put(self.RESYNC)
        else:
            self.deliver([self.RESYNC])

    def move(self) -> None:
        """End the stream so that its reader follows another replica (any thread)."""
        self.moved = True
        self.end()

    def close(self) -> None:
        self.cache._unsubscribe(self)
