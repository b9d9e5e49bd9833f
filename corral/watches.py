"""etcd watches for the store (corral/store.py): a raw one on its own gRPC stream, and a
typed one over one kind's folder."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic

import grpc
from pyetcd import etcdrpc, exceptions as etcd_exceptions, utils as etcd_utils

from corral.store import (DELETE_EVENT, Compacted, Kind, M, Store, StoreError, Unavailable, WatchEvent,
                          decode)


class RawWatch:
    """One etcd watch on its own gRPC stream, as an iterator of responses that fails with
    typed errors. Owning the stream (rather than sharing pyetcd's watcher) means closing one
    watch can never cancel another, and a broken stream is always reported.

    ``threaded`` (the default) reads the stream on a thread of its own, so that responses()
    can wake its reader every ``timeout`` seconds of silence; a reader that needs no such
    wake-up (a watch cache: close() from another thread ends it) reads the stream itself and
    saves a hand-over between threads per response. ``prev_kv`` asks etcd for each key's
    previous value (work for etcd, bytes for both sides): only for readers that use it."""

    _END = object()

    def __init__(self, store: Store, key: bytes, range_end: bytes | None, start_revision: int, *,
                 prev_kv: bool = True, threaded: bool = True) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._requests: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._threaded = threaded
        create = etcdrpc.WatchCreateRequest(key=key, range_end=range_end or b"",
                                            start_revision=start_revision, prev_kv=prev_kv)
        self._requests.put(etcdrpc.WatchRequest(create_request=create))
        client = store.client
        self._client = client
        try:
            stub = etcdrpc.WatchStub(client.channel)
            self._endpoint = client.endpoint_in_use  # the member this stream goes to
        except etcd_exceptions.NoServerAvailableError as exc:
            raise Unavailable(f"etcd is unreachable: {exc}") from exc
        self._call = stub.Watch(self._request_stream(), credentials=client.call_credentials,
                                metadata=client.metadata)
        if threaded:
            threading.Thread(target=self._pump, name="etcd-watch", daemon=True).start()

    def _request_stream(self) -> Iterator[etcdrpc.WatchRequest]:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _stream(self) -> Iterator:
        """The stream's responses; ends quietly once closed, raises Unavailable when it broke."""
        try:
            yield from self._call
            error: StoreError = Unavailable("etcd ended the watch stream")
        except grpc.RpcError as exc:
            error = Unavailable(f"etcd watch broke: {exc.details() if hasattr(exc, 'details') else exc}")
            if (not self._closed.is_set() and exc.code() == grpc.StatusCode.UNAVAILABLE
                    and len(self._client.endpoints) > 1):
                self._endpoint.fail()  # reopen on another member (not the one in use now, if it changed)
        if not self._closed.is_set():
            raise error

    def _pump(self) -> None:
        try:
            for response in self._stream():
                self._queue.put(response)
        except StoreError as exc:
            self._queue.put(exc)

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._requests.put(None)
            self._call.cancel()
            self._queue.put(self._END)

    def responses(self, timeout: float | None = None) -> Iterator:
        """Watch responses with events; a threaded watch yields None every `timeout` seconds
        of silence."""
        if not self._threaded:
            for response in self._stream():
                if self._closed.is_set():
                    return
                if self._has_events(response):
                    yield response
            return
        while not self._closed.is_set():
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                yield None
                continue
            if item is self._END:
                return
            if isinstance(item, StoreError):
                raise item
            if self._has_events(item):
                yield item

    @staticmethod
    def _has_events(response) -> bool:
        if response.compact_revision:
            raise Compacted(response.compact_revision)
        if response.canceled:
            raise Unavailable(f"etcd cancelled the watch: {response.cancel_reason or 'no reason given'}")
        return bool(response.events)


class Watch(Generic[M]):
    """Typed watch over one kind's folder."""

    def __init__(self, store: Store, kind: Kind[M], start_revision: int) -> None:
        folder = store.folder(kind)
        self._kind = kind
        self._folder_len = len(folder)
        self._raw = RawWatch(store, folder, etcd_utils.prefix_range_end(folder), start_revision)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "Watch[M]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def events(self, timeout: float | None = None) -> Iterator[WatchEvent[M] | None]:
        """Typed events; None after `timeout` seconds of silence."""
        for response in self._raw.responses(timeout):
            if response is None:
                yield None
                continue
            for event in response.events:
                name = event.kv.key[self._folder_len:].decode()
                if event.type == DELETE_EVENT:
                    prev = event.prev_kv
                    obj = (decode(self._kind.message_class, prev.value, prev.mod_revision) if prev.value
                           else self._kind.message_class())
                    obj.metadata.name = name  # even when etcd no longer had the previous value
                    yield WatchEvent("delete", name, obj, event.kv.mod_revision, False)
                else:
                    obj = decode(self._kind.message_class, event.kv.value, event.kv.mod_revision)
                    yield WatchEvent("put", name, obj, event.kv.mod_revision, event.kv.version == 1)
