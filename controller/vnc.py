"""VncService: a VM's VNC display through the control plane, and the tokens of the web console.

The stream goes controller -> the handler of the VM's node (NodeVncService.AttachInstanceVnc)
-> the run's launcher (LauncherVncService.AttachVnc) -> QEMU's VNC unix socket in the run's
directory; no TCP port is ever opened for a guest's display. Any replica serves it.

Browsers cannot present the client certificate, so the web console (controller/web_console.py)
takes a token instead, the way OpenStack's noVNC proxy does: CreateVncToken (an admin call,
checked like every other) writes the token's hash to etcd under a lease, bound to the VM (its
uid: a VM deleted and made again under the same name is another VM) and naming the caller; the
first connection that presents it deletes it in the same transaction that reads it, so it
opens one stream at most, on whichever replica the browser reaches."""
from __future__ import annotations

import datetime
import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterator

import grpc
from google.protobuf import timestamp_pb2
from pyetcd import transactions as T

from controller import node_agents
from controller.errors import RequestError, call_ended, grpc_errors
from controller.limits import ThreadBoundStreams
from corral.identity import identity_of
from corral.logs import log_vm
from corral.resources import VMS
from corral.store import Store
from corral.v1 import vnc_pb2, vnc_pb2_grpc
from corral.validation import ValidationError, name_problem

log = logging.getLogger(__name__)

#: Tokens live below this key (of the store's prefix), by the SHA-256 of the token.
TOKEN_FOLDER = "vnc-tokens/"
DEFAULT_TOKEN_TTL_SECONDS = 60
MAX_TOKEN_TTL_SECONDS = 600
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{20,100}")


def _check_name(name: str) -> None:
    if not name:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "name: the VM's name is required")
    problem = name_problem(name, "name")
    if problem:
        raise ValidationError([problem])


def open_display(store: Store, agents: node_agents.NodeAgents, name: str, first: bytes,
                 inputs: Iterator[bytes], ended: threading.Event) -> Iterator[bytes]:
    """The VM's display: yields what QEMU sends while ``inputs`` (the viewer's bytes, read on
    gRPC's thread) go to it. Ends when the guest's side closes, or once ``ended`` is set (the
    caller left). RequestError for a VM with no run, or the node's error."""
    _check_name(name)
    vm = store.get(VMS, name)
    if vm.spec.headless:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"vm {name!r} has no display (spec.headless)")
    _, name, instance_uid = agents.live_run(vm)
    node = vm.status.node_name
    stub = vnc_pb2_grpc.NodeVncServiceStub(agents.channel(agents.address(node), node))

    def requests() -> Iterator[vnc_pb2.AttachInstanceVncRequest]:
        yield vnc_pb2.AttachInstanceVncRequest(name=name, instance_uid=instance_uid, data=first)
        try:
            for data in inputs:
                yield vnc_pb2.AttachInstanceVncRequest(data=data)
        except grpc.RpcError:
            return  # the viewer's call ended (cancelled): the relay below ends too

    call = stub.AttachInstanceVnc(requests())
    watcher = threading.Thread(target=lambda: ended.wait() and call.cancel(), name="vnc-ended", daemon=True)
    watcher.start()
    log_vm(log, vm, "vnc of vm %s opened (node %s)", name, node)
    try:
        for response in call:
            yield response.data
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.CANCELLED and ended.is_set():
            return  # the viewer left
        raise node_agents.upstream_error(exc, node) from None
    finally:
        call.cancel()
        ended.set()
        log_vm(log, vm, "vnc of vm %s closed", name)


def _token_key(store: Store, token: str) -> bytes:
    return store.raw_key(TOKEN_FOLDER + hashlib.sha256(token.encode()).hexdigest())


def create_token(store: Store, name: str, created_by: str, ttl_seconds: int) -> tuple[str, vnc_pb2.VncTokenRecord]:
    """A new single-use token for VM ``name`` (it must exist now), valid ``ttl_seconds``."""
    _check_name(name)
    if ttl_seconds < 0 or ttl_seconds > MAX_TOKEN_TTL_SECONDS:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"ttl_seconds: must be between 1 and {MAX_TOKEN_TTL_SECONDS} (0: "
                           f"{DEFAULT_TOKEN_TTL_SECONDS}), not {ttl_seconds}")
    ttl = ttl_seconds or DEFAULT_TOKEN_TTL_SECONDS
    vm = store.get(VMS, name)
    expire = timestamp_pb2.Timestamp()
    expire.FromDatetime(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=ttl))
    record = vnc_pb2.VncTokenRecord(vm_name=name, vm_uid=vm.metadata.uid, created_by=created_by,
                                    expire_time=expire)
    token = secrets.token_urlsafe(32)
    # etcd ends the key with its lease (a little later than ttl: the record's time decides).
    store.txn([], [T.Put(_token_key(store, token), record.SerializeToString(), lease=store.grant_lease(ttl + 1))])
    log.info("vnc token for vm %s made by %s (%d s)", name, created_by, ttl)
    return token, record


def use_token(store: Store, token: str) -> vnc_pb2.VncTokenRecord:
    """The token's record, deleting it in the same transaction (single use). PERMISSION_DENIED
    for a token that is unknown, used, expired, or whose VM was deleted since."""
    if not _TOKEN_SHAPE.fullmatch(token or ""):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "token: not a console token")
    key = _token_key(store, token)
    response = store.txn([T.Version(key) > 0], [T.Delete(key, prev_kv=True)])
    kvs = response.responses[0].response_delete_range.prev_kvs if response.succeeded else []
    if not kvs:
        raise RequestError(grpc.StatusCode.PERMISSION_DENIED, "token: unknown, expired or already used")
    record = vnc_pb2.VncTokenRecord.FromString(kvs[0].value)
    if record.expire_time.ToDatetime(datetime.timezone.utc) < datetime.datetime.now(datetime.timezone.utc):
        raise RequestError(grpc.StatusCode.PERMISSION_DENIED, "token: expired")
    vm = store.get(VMS, record.vm_name)
    if vm.metadata.uid != record.vm_uid:
        raise RequestError(grpc.StatusCode.PERMISSION_DENIED,
                           f"token: vm {record.vm_name!r} was deleted since the token was made")
    return record


def caller_of(context: grpc.ServicerContext) -> str:
    identity = identity_of(context.auth_context())
    return str(identity) if identity is not None else "a plaintext (loopback) client"


class VncService(vnc_pb2_grpc.VncServiceServicer):
    """``web_url()``: the base URL of this replica's web console ("" when it serves none)."""

    def __init__(self, *, store: Store, agents: node_agents.NodeAgents,
                 web_url: Callable[[], str] = lambda: "", interactive: ThreadBoundStreams | None = None) -> None:
        self.store = store
        self.agents = agents
        self.web_url = web_url
        # A display holds a unary thread for as long as it is open: bounded with the consoles.
        self.interactive = interactive or ThreadBoundStreams(total=16, per_identity=4)

    @grpc_errors
    def OpenVnc(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or not first.name:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "name: the first request must name the VM")
        ended = call_ended(context)

        def inputs() -> Iterator[bytes]:
            for request in request_iterator:
                yield request.data

        with self.interactive.hold(context, "a VNC display"):
            for data in open_display(self.store, self.agents, first.name, first.data, inputs(), ended):
                yield vnc_pb2.OpenVncResponse(data=data)

    @grpc_errors
    def CreateVncToken(self, request, context):
        token, record = create_token(self.store, request.name, caller_of(context), request.ttl_seconds)
        base = self.web_url()
        url = f"{base}/vnc.html#token={token}" if base else ""
        return vnc_pb2.CreateVncTokenResponse(token=token, expire_time=record.expire_time, url=url)
