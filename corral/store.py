"""The etcd store: every Corral object is one key holding the object in protobuf's binary
encoding (what Kubernetes does for its own types: decoding it costs a microsecond, protobuf
JSON ~70; values written as JSON by earlier versions are still read).

Writes are transactions guarded by the key's mod_revision (optimistic concurrency: a
concurrent writer is never silently overwritten) and, for the leader's writes, by a fencing
token: the create revision of the leader key the writer holds (etcd leases alone do not give
mutual exclusion). Errors come out as the typed exceptions below, never as raw gRPC errors.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar
from urllib.parse import urlsplit

import grpc
import pyetcd
from google.protobuf import json_format
from google.protobuf.message import Message
from pyetcd import etcdrpc, exceptions as etcd_exceptions, utils as etcd_utils
from pyetcd import transactions as T

from corral import tls
from corral.store_errors import (  # noqa: F401 - re-exported: callers import them from here
    AlreadyExists, Compacted, Conflict, FencingLost, LeaseNeeded, NotFound, StoreError, Unavailable)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

DELETE_EVENT = 1  # mvccpb.Event.EventType.DELETE
#: Reconnect within a second of etcd coming back: gRPC's default back-off grows to minutes,
#: and a handler that reaches etcd late after an outage would fence its guests for nothing.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclasses.dataclass(frozen=True)
class Fence:
    """Proof of leadership: the leader key and the create revision it had when won."""

    key: bytes
    token: int


@dataclasses.dataclass(frozen=True)
class WatchEvent(Generic[M]):
    kind: str  # "put" or "delete"
    name: str
    obj: M  # for a delete: the object as it was before
    revision: int
    created: bool  # a put that created the key


class Kind(Generic[M]):
    """One kind of object: its key folder and protobuf class; optionally, what of an object is
    kept in keys of its own beside it (``beside``: takes those parts out of the object and
    returns them as (key suffix, value, TTL seconds); ``beside_folder``: the folder of a
    name's, deleted with the object)."""

    def __init__(self, folder: str, message_class: type[M], *,
                 beside: Callable[[M], list[tuple[str, bytes, int]]] | None = None,
                 beside_folder: Callable[[str], str] | None = None) -> None:
        self.folder = folder
        self.message_class = message_class
        self.beside = beside
        self.beside_folder = beside_folder


def decode(message_class: type[M], value: bytes, mod_revision: int) -> M:
    if value[:1] == b"{":  # protobuf JSON, as earlier versions wrote (0x7b would be a group: none here)
        obj = message_class()
        json_format.Parse(value, obj, ignore_unknown_fields=True)
    else:
        obj = message_class.FromString(value)
    if hasattr(obj, "metadata"):
        obj.metadata.resource_version = mod_revision
    return obj


def not_found(kind: Kind, name: str) -> NotFound:
    return NotFound(f"{kind.message_class.DESCRIPTOR.name} {name!r} not found")


def parse_endpoint(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.hostname or "127.0.0.1", parts.port or 2379, parts.scheme == "https"


class Store:
    """Typed access to Corral's keys in etcd."""

    def __init__(self, *, endpoints: list[str], prefix: str = "/corral/", timeout: float = 5.0,
                 ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                 username: str | None = None, password: str | None = None,
                 check_tls: bool = True) -> None:
        """https endpoints use TLS (trusting ca_file, else the system's roots; presenting
        cert_file/key_file when given); username/password log in to etcd's auth. With
        check_tls, each reachable https endpoint is probed once: certificate trouble raises
        StoreError now, naming the endpoint."""
        self.prefix = prefix.encode()
        self.timeout = timeout
        self.last_write_revision = 0
        self._expiry_leases: dict[int, tuple[int, float]] = {}  # TTL -> (lease, reuse until)
        self._leases_lock = threading.Lock()
        self._revision_lock = threading.Lock()
        self._stubs: dict[type, tuple[object, object]] = {}  # stub class -> (channel, stub)
        self.auth: tls.EtcdTokenAuth | None = None  # etcd's auth token, when logging in with a user
        if bool(username) != (password is not None):
            raise StoreError("etcd authentication needs both a user name and a password")
        parsed = [parse_endpoint(url) for url in endpoints]
        credentials = None
        if any(secure for _, _, secure in parsed):
            try:
                credentials = tls.channel_credentials(ca_file, cert_file, key_file)
                context = tls.ssl_context(ca_file, cert_file, key_file) if check_tls else None
                for host, port, secure in parsed:
                    if secure and context is not None:
                        tls.probe(host, port, context, what="etcd endpoint")
            except tls.TLSConfigError as exc:
                raise StoreError(f"etcd TLS: {exc}") from exc
        elif cert_file or ca_file:
            raise StoreError("etcd TLS files are set but no etcd endpoint is https://")
        etcd_endpoints = [
            pyetcd.Endpoint(host, port, secure=secure, creds=credentials if secure else None, time_retry=2.0,
                            opts=CHANNEL_OPTIONS)
            for host, port, secure in parsed]
        self.client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=etcd_endpoints, timeout=timeout, failover=True
        )
        if username:
            self.auth = auth = tls.EtcdTokenAuth(username, password or "", self._authenticate)
            for endpoint in etcd_endpoints:
                endpoint.channel = grpc.intercept_channel(endpoint.channel, auth)
            try:
                auth.token()  # a wrong password stops the daemon now; unreachable etcd does not
            except Unavailable as exc:
                log.warning("cannot authenticate to etcd yet (will retry on first use): %s", exc)

    @classmethod
    def from_settings(cls, settings) -> "Store":
        """A Store from a daemon's CommonSettings (endpoints, prefix, TLS files, auth)."""
        return cls(endpoints=settings.etcd_endpoints, prefix=settings.etcd_prefix,
                   timeout=settings.etcd_timeout_seconds, ca_file=settings.etcd_ca_file,
                   cert_file=settings.etcd_cert_file, key_file=settings.etcd_key_file,
                   username=settings.etcd_username or None, password=settings.etcd_password_value())

    def _authenticate(self, user: str, password: str) -> str:
        """etcd's token for user, asking the members in pyetcd's failover order."""
        last = "no endpoint tried"
        for _ in range(len(self.client.endpoints)):
            try:
                stub = etcdrpc.AuthStub(self.client.channel)
                return stub.Authenticate(etcdrpc.AuthenticateRequest(name=user, password=password),
                                         self.timeout).token
            except etcd_exceptions.NoServerAvailableError as exc:
                raise Unavailable(f"etcd is unreachable: no endpoint answered recently ({exc})") from exc
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise StoreError(f"etcd refused to authenticate user {user!r}: {exc.details()}") from exc
                last = exc.details()
                if len(self.client.endpoints) > 1:
                    self.client.endpoint_in_use.fail()
        raise Unavailable(f"etcd is unreachable, cannot authenticate: {last}")

    def close(self) -> None:
        for endpoint in self.client.endpoints.values():
            endpoint.close()

    # -- keys -------------------------------------------------------------------------------
    def key(self, kind: Kind, name: str) -> bytes:
        return self.prefix + kind.folder.encode() + b"/" + name.encode()

    def folder(self, kind: Kind) -> bytes:
        return self.prefix + kind.folder.encode() + b"/"

    def raw_key(self, suffix: str) -> bytes:
        return self.prefix + suffix.encode()

    # -- low level --------------------------------------------------------------------------
    def _stub(self, stub_class):
        """A stub on the current endpoint's channel, and that endpoint (the member a failure is
        blamed on). When an endpoint is marked failed, the next call goes to another one
        (pyetcd's cached stubs would not). Kept while the channel is the same (making one per
        call cost ~15% of a call's CPU)."""
        channel = self.client.channel
        endpoint = self.client.endpoint_in_use  # the member whose channel that is
        cached = self._stubs.get(stub_class)
        if cached is None or cached[0] is not channel:
            cached = self._stubs[stub_class] = (channel, stub_class(channel))
        return cached[1], endpoint

    def _call(self, stub_class, method_name: str, request: Message, timeout: float | None = None):
        client = self.client
        endpoint = None
        try:
            stub, endpoint = self._stub(stub_class)
            method = getattr(stub, method_name)
            if method_name == "LeaseKeepAlive":
                return next(iter(method(iter([request]), timeout or self.timeout,
                                        credentials=client.call_credentials, metadata=client.metadata)))
            return method(request, timeout or self.timeout, credentials=client.call_credentials,
                          metadata=client.metadata)
        except grpc.RpcError as exc:
            raise self.translate(exc, timeout or self.timeout, endpoint) from exc
        except etcd_exceptions.NoServerAvailableError as exc:
            raise Unavailable(f"etcd is unreachable: no endpoint answered recently ({exc})") from exc

    def translate(self, exc: grpc.RpcError, timeout: float, endpoint: object = None) -> StoreError:
        """A gRPC error from etcd as a StoreError. UNAVAILABLE also marks the member the call
        went to (``endpoint``; default: the one in use now) failed: calls move to another. With
        many calls in flight, the one in use may already be another member, which answers."""
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            if len(self.client.endpoints) > 1:
                (endpoint or self.client.endpoint_in_use).fail()  # try another member next time
            return Unavailable(f"etcd is unreachable: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Unavailable(f"etcd did not answer within {timeout:g}s (the outcome of a write is unknown): {details}")
        if code == grpc.StatusCode.OUT_OF_RANGE:
            return Compacted(0)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return Unavailable(f"etcd is out of space or overloaded: {details}")
        return StoreError(f"etcd refused the request ({code.name if code else code}): {details}")

    def _writes(self, kind: Kind[M], obj: M, lease: int | None = None, *, may_block: bool = True,
                ) -> tuple[list, M]:
        """The puts that store ``obj`` (its own key, and what its kind keeps beside it), and
        the object as its own key holds it (resource_version still to set). Without
        may_block, raises LeaseNeeded instead of granting an expiry lease."""
        stored = type(obj)()
        stored.CopyFrom(obj)
        beside = kind.beside(stored) if kind.beside is not None else []
        stored.metadata.resource_version = 0
        puts = [T.Put(self.key(kind, obj.metadata.name), stored.SerializeToString(deterministic=True), lease=lease)]
        puts += [T.Put(self.raw_key(suffix), value, lease=self.expiry_lease(ttl, may_block=may_block))
                 for suffix, value, ttl in beside]
        return puts, stored

    def expiry_lease(self, ttl: int, *, may_block: bool = True) -> int:
        """A lease for keys that should expire after about ``ttl`` seconds, shared by every such
        key written within a window (as Kubernetes' apiserver does for events): a grant per
        window, not per key."""
        lease, until = self._expiry_leases.get(ttl, (0, 0.0))
        if time.monotonic() < until:
            return lease
        if not may_block:  # (nor wait for a thread that is granting one)
            raise LeaseNeeded(ttl)
        window = min(600, max(1, ttl // 10))
        with self._leases_lock:
            lease, until = self._expiry_leases.get(ttl, (0, 0.0))
            if time.monotonic() < until:
                return lease
            lease = self.grant_lease(ttl + window)
            self._expiry_leases[ttl] = (lease, time.monotonic() + window)
            return lease

    def grant_lease(self, ttl: int) -> int:
        return self._call(etcdrpc.LeaseStub, "LeaseGrant", etcdrpc.LeaseGrantRequest(TTL=ttl)).ID

    def refresh_lease(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew a lease; its remaining TTL, 0 if it expired."""
        return self._call(etcdrpc.LeaseStub, "LeaseKeepAlive", etcdrpc.LeaseKeepAliveRequest(ID=lease_id),
                          timeout=timeout).TTL

    def revoke_lease(self, lease_id: int, *, timeout: float | None = None) -> None:
        self._call(etcdrpc.LeaseStub, "LeaseRevoke", etcdrpc.LeaseRevokeRequest(ID=lease_id), timeout=timeout)

    def txn(self, compare: list, success: list, failure: list | None = None) -> etcdrpc.TxnResponse:
        return self.txn_done(self._call(etcdrpc.KVStub, "Txn", self.txn_request(compare, success, failure)), success)

    def txn_request(self, compare: list, success: list, failure: list | None = None) -> etcdrpc.TxnRequest:
        return etcdrpc.TxnRequest(compare=[c.build_message() for c in compare],
                                  success=self.client._ops_to_requests(success),
                                  failure=self.client._ops_to_requests(failure or []))

    def txn_done(self, response: etcdrpc.TxnResponse, success: list) -> etcdrpc.TxnResponse:
        if response.succeeded and success:
            # Readers of a watch cache wait until it has seen this process's own writes (a lock:
            # the event loop and the scheduler's thread both write).
            with self._revision_lock:
                self.last_write_revision = max(self.last_write_revision, response.header.revision)
        return response

    def range(self, start: bytes, end: bytes | None = None, *, limit: int = 0,
              revision: int = 0, timeout: float | None = None, keys_only: bool = False) -> etcdrpc.RangeResponse:
        request = etcdrpc.RangeRequest(key=start, range_end=end or b"", limit=limit, revision=revision,
                                       keys_only=keys_only)
        return self._call(etcdrpc.KVStub, "Range", request, timeout=timeout)

    def revision(self) -> int:
        return self.range(self.prefix, limit=1).header.revision

    # -- objects ----------------------------------------------------------------------------
    def get(self, kind: Kind[M], name: str) -> M:
        response = self.range(self.key(kind, name))
        if not response.kvs:
            raise not_found(kind, name)
        kv = response.kvs[0]
        return decode(kind.message_class, kv.value, kv.mod_revision)

    def list(self, kind: Kind[M], *, start_after: str = "", limit: int = 0,
             revision: int = 0) -> tuple[list[M], int, bool]:
        """Objects in key order after start_after, read at revision (0: now).

        Returns (objects, the revision read at, whether more follow)."""
        folder = self.folder(kind)
        start = folder + start_after.encode() + b"\0" if start_after else folder
        response = self.range(start, etcd_utils.prefix_range_end(folder), limit=limit, revision=revision)
        objects = [decode(kind.message_class, kv.value, kv.mod_revision) for kv in response.kvs]
        return objects, response.header.revision, response.more

    def list_all(self, kind: Kind[M]) -> tuple[list[M], int]:
        objects, revision, _ = self.list(kind)
        return objects, revision

    def create(self, kind: Kind[M], obj: M, *, fence: Fence | None = None, lease: int | None = None) -> M:
        compare, puts, stored = self.create_ops(kind, obj, fence=fence, lease=lease)
        response = self.txn(compare, puts)
        if not response.succeeded:
            self.explain_failed_create(kind, obj.metadata.name, fence)
        stored.metadata.resource_version = response.header.revision
        return stored

    def create_ops(self, kind: Kind[M], obj: M, *, fence: Fence | None = None, lease: int | None = None,
                   may_block: bool = True) -> tuple[list, list, M]:
        """What create() sends: (compare, puts, the object as stored)."""
        compare, puts, (stored,) = self.create_all_ops(kind, [obj], fence=fence, lease=lease, may_block=may_block)
        return compare, puts, stored

    def create_all_ops(self, kind: Kind[M], objs: list[M], *, fence: Fence | None = None, lease: int | None = None,
                       may_block: bool = True) -> tuple[list, list, list[M]]:
        """What creating every obj in one transaction sends: (compare: each key's absence and
        the fence once, puts, the objects as stored)."""
        compare: list = [T.Create(self.key(kind, obj.metadata.name)) == 0 for obj in objs]
        if fence:
            compare.append(T.Create(fence.key) == fence.token)
        puts: list = []
        stored: list[M] = []
        for obj in objs:
            obj_puts, obj_stored = self._writes(kind, obj, lease, may_block=may_block)
            puts += obj_puts
            stored.append(obj_stored)
        return compare, puts, stored

    def create_all(self, kind: Kind[M], objs: list[M], *, fence: Fence | None = None) -> list[M] | None:
        """Create every obj in one transaction: the objects as stored, or None, writing nothing,
        when one exists (or the fence is not the leader's): the caller then creates them one
        by one to learn which."""
        compare, puts, stored = self.create_all_ops(kind, objs, fence=fence)
        response = self.txn(compare, puts)
        if not response.succeeded:
            return None
        for obj in stored:
            obj.metadata.resource_version = response.header.revision
        return stored

    def put(self, kind: Kind[M], obj: M, *, lease: int | None = None) -> M:
        """Unconditional write: only for objects a single owner writes (a node's own record)."""
        puts, stored = self._writes(kind, obj, lease)
        response = self.txn([], puts)
        stored.metadata.resource_version = response.header.revision
        return stored

    def update(self, kind: Kind[M], obj: M, *, fence: Fence | None = None, absent: bytes | None = None) -> M:
        """Write obj if its key still has obj.metadata.resource_version as mod_revision (and,
        when given, the key `absent` does not exist: raises Conflict otherwise)."""
        compare, puts, stored = self.update_ops(kind, obj, fence=fence, absent=absent)
        response = self.txn(compare, puts)
        if not response.succeeded:
            self.explain_failed_update(kind, obj.metadata.name, fence, absent)
        stored.metadata.resource_version = response.header.revision
        return stored

    def update_ops(self, kind: Kind[M], obj: M, *, fence: Fence | None = None, absent: bytes | None = None,
                   may_block: bool = True) -> tuple[list, list, M]:
        """What update() sends: (compare, puts, the object as stored)."""
        compare = [T.Mod(self.key(kind, obj.metadata.name)) == obj.metadata.resource_version]
        if fence:
            compare.append(T.Create(fence.key) == fence.token)
        if absent is not None:
            compare.append(T.Version(absent) == 0)
        puts, stored = self._writes(kind, obj, may_block=may_block)
        return compare, puts, stored

    def explain_failed_update(self, kind: Kind, name: str, fence: Fence | None, absent: bytes | None) -> None:
        """Raise what made an update's transaction fail (reads etcd)."""
        if absent is not None and self.range(absent).kvs:
            raise Conflict(f"{absent.decode()} exists")
        self._explain_failure(kind, name, fence)

    def update_all(self, kind: Kind[M], objs: list[M], *, fence: Fence | None = None,
                   create: list[tuple[bytes, bytes, int]] = (), absent: list[bytes] = ()) -> bool:
        """Write every obj in one transaction if none changed since it was read (each compared
        by mod_revision, and the fence), creating the raw keys ``create`` (key, value, lease)
        that must not exist yet, while none of the keys ``absent`` exists; False, writing
        nothing, if anything differed: the caller then writes the objects one by one to learn
        which."""
        compare = [T.Mod(self.key(kind, obj.metadata.name)) == obj.metadata.resource_version for obj in objs]
        compare += [T.Version(key) == 0 for key, _, _ in create]
        compare += [T.Version(key) == 0 for key in absent]
        if fence:
            compare.append(T.Create(fence.key) == fence.token)
        puts = [put for obj in objs for put in self._writes(kind, obj)[0]]
        puts += [T.Put(key, value, lease=lease) for key, value, lease in create]
        return self.txn(compare, puts).succeeded

    def update_together(self, items: list[tuple[Kind, Message]]) -> bool:
        """Write objects of any kinds in one transaction if none changed since it was read;
        False, writing nothing, otherwise (read them again and retry)."""
        compare = [T.Mod(self.key(kind, obj.metadata.name)) == obj.metadata.resource_version for kind, obj in items]
        puts = [put for kind, obj in items for put in self._writes(kind, obj)[0]]
        return self.txn(compare, puts).succeeded

    def delete(self, kind: Kind, name: str, *, resource_version: int = 0, fence: Fence | None = None) -> int:
        """Delete, guarded by resource_version when given; returns the revision of the delete."""
        key = self.key(kind, name)
        compare = [T.Version(key) > 0]
        if resource_version:
            compare.append(T.Mod(key) == resource_version)
        if fence:
            compare.append(T.Create(fence.key) == fence.token)
        deletes = [T.Delete(key)]
        if kind.beside_folder is not None:
            beside = self.raw_key(kind.beside_folder(name))
            deletes.append(T.Delete(beside, range_end=etcd_utils.prefix_range_end(beside)))
        response = self.txn(compare, deletes)
        if not response.succeeded:
            self._explain_failure(kind, name, fence)
        return response.header.revision

    def explain_failed_create(self, kind: Kind, name: str, fence: Fence | None) -> None:
        """Raise what made a create's transaction fail (reads etcd)."""
        self._explain_failure(kind, name, fence, exists_is_error=True)

    def explain_failed_create_all(self, kind: Kind, names: list[str]) -> None:
        """Raise what made a batch create's transaction fail: AlreadyExists for the first name
        taken (reads etcd, a key at a time: only on this path)."""
        noun = kind.message_class.DESCRIPTOR.name
        for name in names:
            if self.range(self.key(kind, name), keys_only=True).kvs:
                raise AlreadyExists(f"{noun} {name!r} already exists", name)
        raise Conflict(f"one of the {noun}s was created and deleted meanwhile: retry")

    def _explain_failure(self, kind: Kind, name: str, fence: Fence | None, *, exists_is_error: bool = False) -> None:
        if fence is not None:
            leader = self.range(fence.key)
            if not leader.kvs or leader.kvs[0].create_revision != fence.token:
                raise FencingLost(f"fencing token {fence.token} is no longer the leader's")
        current = self.range(self.key(kind, name))
        noun = kind.message_class.DESCRIPTOR.name
        if exists_is_error:
            if current.kvs:
                raise AlreadyExists(f"{noun} {name!r} already exists", name)
            raise Conflict(f"{noun} {name!r} changed concurrently")
        if not current.kvs:
            raise NotFound(f"{noun} {name!r} not found")
        raise Conflict(
            f"{noun} {name!r} was modified (now at resource_version {current.kvs[0].mod_revision}); "
            "read it again and retry"
        )

    # -- watches ----------------------------------------------------------------------------
    # (corral/watches.py builds on this module, hence the imports in place)
    def watch(self, kind: Kind[M], *, start_revision: int) -> "Watch[M]":
        """Events of kind from start_revision on; iterate the returned Watch, close() it."""
        from corral.watches import Watch  # noqa: PLC0415
        return Watch(self, kind, start_revision)

    def watch_key(self, key: bytes, *, start_revision: int) -> "RawWatch":
        from corral.watches import RawWatch  # noqa: PLC0415
        return RawWatch(self, key, None, start_revision)

    def watch_everything(self, *, start_revision: int) -> "RawWatch":
        """Every change under the prefix: one stream for a watch cache (which keeps the previous
        values itself, and reads the stream on its own thread: see RawWatch)."""
        from corral.watches import RawWatch  # noqa: PLC0415
        return RawWatch(self, self.prefix, etcd_utils.prefix_range_end(self.prefix), start_revision,
                        prev_kv=False, threaded=False)
