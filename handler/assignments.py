"""Follows the node's assignments on a gRPC server stream from any controller, reconnecting
with jittered exponential backoff (tenacity) and rotating through the controller addresses.

It prefers a replica that does not lead (the leader's CPU is for its reconcilers): while it
has addresses it has not tried since its last stream, it asks with avoid_leader, and a
leading replica turns it away at once (it moves on without backing off). Once every other
address failed it asks without, and the leader serves it."""
from __future__ import annotations

import logging
import random
import threading
import zlib

import grpc
from tenacity import Retrying, retry_if_exception_type, wait_exponential_jitter

from corral.resources import LEADER_TURNED_AWAY
from corral.v1 import handler_pb2, vm_pb2
from handler.agent import NodeAgent
from handler.control import ControllerStubs

log = logging.getLogger(__name__)


class StreamEnded(Exception):
    pass


class Tries:
    """The controller addresses (by index) a node's stream tried since its last stream synced:
    it asks to avoid the leader while another untried address is left, and after a failure it
    moves to an address it has not tried while one is left (moving by spread() alone could land
    on a dead replica and then give up on a standby it never tried)."""

    def __init__(self, servers: int) -> None:
        self.servers = servers
        self.tried: set[int] = set()

    def avoid_leader(self, index: int) -> bool:
        return len(self.tried | {index % self.servers}) < self.servers

    def synced(self) -> None:
        self.tried.clear()

    def failed(self, index: int, steps: int = 1) -> int:
        """A stream from the address at ``index`` failed (or was turned away): how many steps
        to move in the list (``steps``, or further to skip addresses already tried)."""
        self.tried.add(index % self.servers)
        moved = steps
        if len(self.tried) < self.servers:
            while (index + moved) % self.servers in self.tried:
                moved += 1
        return moved


def spread(node_name: str, servers: int) -> int:
    """How far a node turned away by the leader moves in its address list: 1 to servers-1, by
    its name, so that the leader's nodes spread over the other replicas (all moving one step
    would put them all on the next one)."""
    return 1 + zlib.crc32(node_name.encode()) % max(servers - 1, 1)


def turned_away_by_leader(exc: grpc.RpcError) -> bool:
    """The replica leads and sent the stream elsewhere (WatchAssignmentsRequest.avoid_leader)."""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    return exc.code() == grpc.StatusCode.UNAVAILABLE and LEADER_TURNED_AWAY in tuple(trailing or ())


class AssignmentFollower:
    def __init__(self, *, agent: NodeAgent, stubs: ControllerStubs, node_name: str) -> None:
        self.agent = agent
        self.stubs = stubs
        self.node_name = node_name
        self.stream = None
        self.stopped = threading.Event()
        self.tries = Tries(len(stubs.servers))  # addresses tried since the last stream synced

    def stop(self) -> None:
        self.stopped.set()
        if self.stream is not None:
            self.stream.cancel()

    def follow_once(self) -> None:
        """One stream: a snapshot that replaces what the agent knows, then changes. Returns
        (rather than raises) when a stream that had synced breaks, so backoff starts afresh."""
        snapshot: dict[str, vm_pb2.VirtualMachine] = {}
        synced = False
        self.stream = self.stubs.handler.WatchAssignments(handler_pb2.WatchAssignmentsRequest(
            node_name=self.node_name, avoid_leader=self.tries.avoid_leader(self.stubs.index)))
        try:
            for event in self.stream:
                vm = event.virtual_machine
                if event.type == handler_pb2.ASSIGNMENT_EVENT_TYPE_SYNCED:
                    synced = True
                    self.tries.synced()
                    self.agent.set_assignments(snapshot)
                    log.info("following %d assignments from controller %s", len(snapshot), self.stubs.address)
                elif event.type == handler_pb2.ASSIGNMENT_EVENT_TYPE_UPSERT:
                    if synced:
                        self.agent.upsert(vm)
                    else:
                        snapshot[vm.metadata.name] = vm
                elif event.type == handler_pb2.ASSIGNMENT_EVENT_TYPE_REMOVE:
                    if synced:
                        self.agent.remove(vm.metadata.name)
                    else:
                        snapshot.pop(vm.metadata.name, None)
        except grpc.RpcError as exc:
            if turned_away_by_leader(exc):  # when asked, or when it became leader (a stream it moves)
                log.info("controller %s leads: following another replica", self.stubs.address)
                self.stubs.rotate(self.tries.failed(self.stubs.index, spread(self.node_name, len(self.stubs.servers))))
                return
            if not synced or self.stopped.is_set():
                raise
            log.warning("assignment stream from %s broke: %s", self.stubs.address, exc.details())
            self.stubs.rotate(self.tries.failed(self.stubs.index))
            self.stopped.wait(0.5 + random.random())  # many handlers must not all reconnect at once
            return
        if not synced:
            raise StreamEnded("the controller closed the assignment stream before it synced")

    def run(self) -> None:
        def before_sleep(state) -> None:
            exc = state.outcome.exception()
            detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
            log.warning("assignment stream from %s: %s; reconnecting", self.stubs.address, detail)
            self.stubs.rotate(self.tries.failed(self.stubs.index))

        while not self.stopped.is_set():
            for attempt in Retrying(
                retry=retry_if_exception_type((grpc.RpcError, StreamEnded)),
                wait=wait_exponential_jitter(initial=0.2, max=5.0),
                before_sleep=before_sleep,
                sleep=self.stopped.wait,
            ):
                with attempt:
                    if self.stopped.is_set():
                        return
                    self.follow_once()
