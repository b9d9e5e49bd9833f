"""The store's hot calls as coroutines, for a server on an event loop (the controller's
grpc.aio server): a create, a status report or a get then neither hops to a thread nor holds
one while etcd answers, and the etcd call itself costs about half of a blocking one (measured
here: ~150 against ~320 µs of CPU per call).

It talks to the same endpoints as the Store it serves, with the same TLS credentials, auth
token and failover (the Store's pyetcd client picks the member; an UNAVAILABLE answer marks
it failed for both). What is rare and may block (logging in to etcd, granting an expiry
lease, reading why a write failed) runs on a thread, never on the loop. Its channels belong
to the event loop that first used it.

Writes are committed in groups: those asked for while an earlier group is on its way to etcd
go together in one transaction (each still guarded by its own comparisons), as databases
commit their logs. A storm of creates or status reports then costs etcd fewer revisions and
every watcher fewer responses, and a lone write waits for nothing."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from pyetcd import etcdrpc, exceptions as etcd_exceptions, utils as etcd_utils

from corral import tls
from corral.store import (CHANNEL_OPTIONS, Fence, Kind, LeaseNeeded, M, Store, StoreError, Unavailable, decode,
                          not_found)


#: At most this many writes, operations and bytes of values in one group's transaction (etcd
#: takes 128 operations and 128 comparisons per transaction by default, a write compares 1-3
#: keys, and a request of at most 1.5 MiB). A write alone is never refused here.
GROUP_WRITES = 32
GROUP_OPERATIONS = 120
GROUP_BYTES = 1024 * 1024


@dataclass
class _Write:
    key: bytes  # the object's own key: a transaction may not put one key twice
    compare: list
    puts: list
    done: asyncio.Future  # the revision written, or None when a comparison failed

    @property
    def size(self) -> int:
        return sum(len(put.value) for put in self.puts)


def _settle(done: asyncio.Future, result: int | None = None, error: BaseException | None = None) -> None:
    if done.done():  # its caller went away (a cancelled call): the write stands all the same
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


class AsyncStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._stubs: dict[str, etcdrpc.KVStub] = {}  # endpoint (host:port) -> stub on an aio channel
        self._channels: list[grpc.aio.Channel] = []
        self._waiting: list[_Write] = []  # writes for the next group
        self._committer: asyncio.Task | None = None  # sends groups while writes wait

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels, self._stubs = [], {}

    def _stub(self) -> tuple[etcdrpc.KVStub, object]:
        """A stub on the member pyetcd picks, and that member (the one a failure is blamed on)."""
        client = self.store.client
        try:
            client.channel  # noqa: B018 - pyetcd picks a member that has not failed lately
        except etcd_exceptions.NoServerAvailableError as exc:
            raise Unavailable(f"etcd is unreachable: no endpoint answered recently ({exc})") from exc
        endpoint = client.endpoint_in_use
        stub = self._stubs.get(endpoint.netloc)
        if stub is None:
            channel = (grpc.aio.secure_channel(endpoint.netloc, endpoint.credentials, options=CHANNEL_OPTIONS)
                       if endpoint.secure else grpc.aio.insecure_channel(endpoint.netloc, options=CHANNEL_OPTIONS))
            self._channels.append(channel)
            stub = self._stubs[endpoint.netloc] = etcdrpc.KVStub(channel)
        return stub, endpoint

    async def _call(self, method: str, request):
        """One KV call; a token etcd refused is replaced and the call made once more."""
        auth, timeout = self.store.auth, self.store.timeout
        for attempt in (1, 2):
            token = None
            if auth is not None:
                token = auth.fresh_token() or await asyncio.to_thread(auth.token)
            stub, endpoint = self._stub()
            try:
                return await getattr(stub, method)(
                    request, timeout=timeout, metadata=(("token", token),) if token else None)
            except grpc.aio.AioRpcError as exc:
                if token is not None and attempt == 1 and tls.stale_token(exc.code(), exc.details()):
                    auth.invalidate(token)
                    continue
                raise self.store.translate(exc, timeout, endpoint) from exc
        raise AssertionError("unreachable")

    async def _ops(self, build: Callable[[], tuple[list, list, M]]) -> tuple[list, list, M]:
        """``build()`` (a Store *_ops call that must not block), granting an expiry lease off
        the loop when it needs one (once per window of a TTL: Store.expiry_lease)."""
        while True:
            try:
                return build()
            except LeaseNeeded as need:
                await asyncio.to_thread(self.store.expiry_lease, need.ttl)

    async def txn(self, compare: list, success: list) -> etcdrpc.TxnResponse:
        response = await self._call("Txn", self.store.txn_request(compare, success))
        return self.store.txn_done(response, success)

    async def commit(self, key: bytes, compare: list, puts: list) -> int | None:
        """Write ``puts`` (``key`` is the object's own) if every comparison holds, in a group
        with the writes waiting beside it: the revision written, or None when a comparison
        did not hold."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append(_Write(key, compare, puts, done))
        if self._committer is None:
            self._committer = asyncio.get_running_loop().create_task(self._commit_waiting())
        return await done

    async def _commit_waiting(self) -> None:
        try:
            while self._waiting:
                group, keys, operations, size, later = [], set(), 0, 0, []
                for write in self._waiting:
                    fits = not group or (len(group) < GROUP_WRITES and operations + len(write.puts) <= GROUP_OPERATIONS
                                         and size + write.size <= GROUP_BYTES)
                    if fits and write.key not in keys:
                        group.append(write)
                        keys.add(write.key)
                        operations += len(write.puts)
                        size += write.size
                    else:
                        later.append(write)
                self._waiting = later
                await self._commit_group(group)
        except BaseException:  # cancelled (the server stops): nobody would send what waits
            for write in self._waiting:
                _settle(write.done, error=Unavailable("the controller is stopping: the write was not sent"))
            self._waiting = []
            raise
        finally:
            self._committer = None

    async def _commit_group(self, group: list[_Write]) -> None:
        try:
            if len(group) > 1:
                try:
                    response = await self.txn([c for write in group for c in write.compare],
                                              [put for write in group for put in write.puts])
                except Unavailable:
                    raise  # the outcome is unknown: each caller hears it, as for a write alone
                except StoreError:
                    response = None  # refused as a whole (too large, say): each on its own below
                if response is not None and response.succeeded:
                    for write in group:
                        _settle(write.done, response.header.revision)
                    return
            # Alone, or one of the group met a change: each on its own, to learn which.
            answers = await asyncio.gather(*(self.txn(write.compare, write.puts) for write in group),
                                           return_exceptions=True)
            for write, answer in zip(group, answers):
                if isinstance(answer, BaseException):
                    _settle(write.done, error=answer)
                else:
                    _settle(write.done, answer.header.revision if answer.succeeded else None)
        except BaseException as exc:  # etcd's trouble (or a cancellation) is each waiting caller's
            for write in group:
                _settle(write.done, error=exc if isinstance(exc, Exception) else
                        Unavailable("the controller is stopping: the write's outcome is unknown"))
            if not isinstance(exc, Exception):
                raise

    async def create(self, kind: Kind[M], obj: M, *, fence: Fence | None = None) -> M:
        """Store.create on the loop (committed in a group)."""
        compare, puts, stored = await self._ops(lambda: self.store.create_ops(kind, obj, fence=fence, may_block=False))
        revision = await self.commit(self.store.key(kind, obj.metadata.name), compare, puts)
        if revision is None:
            await asyncio.to_thread(self.store.explain_failed_create, kind, obj.metadata.name, fence)
        stored.metadata.resource_version = revision
        return stored

    async def create_all(self, kind: Kind[M], objs: list[M]) -> list[M]:
        """Create every object or none, in one transaction of its own (not grouped with other
        writes: its size is the caller's). Raises AlreadyExists naming one that exists."""
        compare, puts, stored = await self._ops(lambda: self.store.create_all_ops(kind, objs, may_block=False))
        response = await self.txn(compare, puts)
        if not response.succeeded:
            await asyncio.to_thread(self.store.explain_failed_create_all, kind, [obj.metadata.name for obj in objs])
        for obj in stored:
            obj.metadata.resource_version = response.header.revision
        return stored

    async def update(self, kind: Kind[M], obj: M, *, fence: Fence | None = None, absent: bytes | None = None) -> M:
        """Store.update on the loop (committed in a group)."""
        compare, puts, stored = await self._ops(
            lambda: self.store.update_ops(kind, obj, fence=fence, absent=absent, may_block=False))
        revision = await self.commit(self.store.key(kind, obj.metadata.name), compare, puts)
        if revision is None:
            await asyncio.to_thread(self.store.explain_failed_update, kind, obj.metadata.name, fence, absent)
        stored.metadata.resource_version = revision
        return stored

    async def get_with(self, kind: Kind[M], name: str, folder: bytes) -> tuple[M, list]:
        """The object and the keys under ``folder`` (what its kind keeps beside it), read in
        one call at one revision. Raises NotFound."""
        request = etcdrpc.TxnRequest(success=[
            etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=self.store.key(kind, name))),
            etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=folder,
                                                                 range_end=etcd_utils.prefix_range_end(folder))),
        ])
        response = await self._call("Txn", request)
        own, beside = (op.response_range for op in response.responses)
        if not own.kvs:
            raise not_found(kind, name)
        return decode(kind.message_class, own.kvs[0].value, own.kvs[0].mod_revision), list(beside.kvs)
