"""Node lease renewals on one etcd LeaseKeepAlive stream per controller replica.

Nodes renew their heartbeat leases through the controllers (they hold no etcd credentials),
about one renewal per node every few seconds: 130 a second at 1,000 nodes. Opening an etcd
keep-alive stream per renewal, from a thread of the unary pool, costs a stream set-up and a
thread hand-off each time; here a renewal is a coroutine that queues the lease id on a
stream kept open, and a reader thread hands each answer back to the event loop. Renewals of
one lease that arrive while one is in flight share its answer (they asked within
milliseconds of each other)."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Iterator

import grpc
from pyetcd import etcdrpc

from corral.store import Store, StoreError, Unavailable

log = logging.getLogger(__name__)

Answer = Callable[[int | StoreError], None]


class LeaseRenewer:
    """Renews leases for many callers over one shared keep-alive stream."""

    def __init__(self, store: Store, *, timeout: float = 2.0) -> None:
        self._store = store
        self._timeout = timeout
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue | None = None
        self._call: grpc.Call | None = None
        self._waiting: dict[int, list[Answer]] = {}

    async def renew(self, lease_id: int) -> int:
        """The lease's remaining TTL after renewing it (0 or less: it no longer exists).
        Raises Unavailable when etcd does not answer within the timeout."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()

        def settle(result: int | StoreError) -> None:
            if not future.done():
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

        self._ask(lease_id, lambda result: loop.call_soon_threadsafe(settle, result))
        try:
            return await asyncio.wait_for(future, self._timeout)
        except asyncio.TimeoutError:
            self.reset("no answer in time")  # a stuck stream would hold every later renewal of this lease
            raise Unavailable(f"etcd did not renew lease {lease_id:x} within {self._timeout:g}s") from None

    def _ask(self, lease_id: int, answer: Answer) -> None:
        try:
            with self._lock:
                waiting = self._waiting.setdefault(lease_id, [])
                waiting.append(answer)
                if len(waiting) == 1:
                    self._stream().put(etcdrpc.LeaseKeepAliveRequest(ID=lease_id))
        except StoreError as exc:
            self._fail_all(exc)

    def _stream(self) -> queue.SimpleQueue:
        """The open stream's request queue, opening one if none is (under self._lock)."""
        if self._requests is not None:
            return self._requests
        requests: queue.SimpleQueue = queue.SimpleQueue()
        client = self._store.client
        try:
            stub = etcdrpc.LeaseStub(client.channel)
            endpoint = client.endpoint_in_use  # the member this stream goes to
            call = stub.LeaseKeepAlive(_drain(requests), credentials=client.call_credentials,
                                       metadata=client.metadata)
        except Exception as exc:  # noqa: BLE001 - no endpoint: every waiter is told
            raise Unavailable(f"etcd is unreachable: {exc}") from exc
        self._requests, self._call = requests, call
        threading.Thread(target=self._read, args=(call, requests, endpoint), name="lease-renewer", daemon=True).start()
        return requests

    def _read(self, call, requests: queue.SimpleQueue, endpoint: object) -> None:
        """Hand each answer to the renewals waiting for it; when the stream ends, fail the
        rest (the next renewal opens a new stream)."""
        error: StoreError = Unavailable("etcd ended the lease keep-alive stream")
        try:
            for response in call:
                with self._lock:
                    answers = self._waiting.pop(response.ID, [])
                for answer in answers:
                    answer(int(response.TTL))
        except grpc.RpcError as exc:
            error = self._store.translate(exc, self._timeout, endpoint)
        requests.put(None)
        with self._lock:
            if self._requests is not requests:
                return
            self._requests = self._call = None
        self._fail_all(error)

    def _fail_all(self, error: StoreError) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for answers in waiting.values():
            for answer in answers:
                answer(error)

    def reset(self, why: str) -> None:
        """End the current stream (its waiters fail; the next renewal opens another)."""
        with self._lock:
            call = self._call
        if call is not None:
            log.warning("restarting the lease keep-alive stream: %s", why)
            call.cancel()

    def close(self) -> None:
        with self._lock:
            call, self._call, self._requests = self._call, None, None
        if call is not None:
            call.cancel()


def _drain(requests: queue.SimpleQueue) -> Iterator[etcdrpc.LeaseKeepAliveRequest]:
    while (request := requests.get()) is not None:
        yield request
