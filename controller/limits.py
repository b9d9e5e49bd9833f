"""Bounds on what one caller may hold on a replica: open streams per certificate identity.
A stream costs the replica a subscription and memory for what it has not read yet; without a
bound, one certificate opening hundreds of watches could stall the replica for everyone.
(Plaintext servers are for local use and have no identities: no per-identity bound there.)
What a stream may leave unread is bounded in the watch cache (subscriptions.MAX_PENDING)."""
from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator

import grpc

from controller.errors import RequestError
from corral.identity import Identity, identity_of


class StreamLimits:
    def __init__(self, *, per_node: int, per_user: int) -> None:
        self.per_node = per_node
        self.per_user = per_user
        self.open: Counter[Identity] = Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, context, what: str) -> Iterator[None]:
        """One open stream of the caller's for the block; RESOURCE_EXHAUSTED past its limit."""
        identity = identity_of(context.auth_context())
        if identity is None:
            yield
            return
        limit = self.per_node if identity.kind == "node" else self.per_user
        with self._lock:
            if self.open[identity] >= limit:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"{identity} already holds {self.open[identity]} streams on this replica "
                                   f"(limit {limit}): close one before opening {what}")
            self.open[identity] += 1
        try:
            yield
        finally:
            with self._lock:
                self.open[identity] -= 1
                if self.open[identity] <= 0:
                    del self.open[identity]


class ThreadBoundStreams:
    """Streams still served by a thread of the replica's unary pool (plain generators: the pool
    and migration watches): at most ``total`` at once, so unary calls (a node's lease renewal
    among them) always find a thread, and at most ``per_identity`` for any one certificate."""

    def __init__(self, *, total: int, per_identity: int) -> None:
        self.total = total
        self.identities = StreamLimits(per_node=per_identity, per_user=per_identity)
        self.open = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, context, what: str) -> Iterator[None]:
        with self._lock:
            if self.open >= self.total:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"this replica already serves {self.open} such streams (limit {self.total}): "
                                   f"retry {what} later or on another replica")
            self.open += 1
        try:
            with self.identities.hold(context, what):
                yield
        finally:
            with self._lock:
                self.open -= 1
