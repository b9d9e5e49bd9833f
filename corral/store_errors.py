"""What the store raises: each maps to one gRPC status in the API (controller/errors.py)."""
from __future__ import annotations


class StoreError(Exception):
    """Base of everything the store raises."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name  # the object's (a batch's caller says which of its entries)


class Conflict(StoreError):
    """The object changed since it was read (stale resource_version)."""


class FencingLost(StoreError):
    """The writer's fencing token is no longer the current leader's."""


class Unavailable(StoreError):
    """etcd cannot be reached or did not answer in time."""


class LeaseNeeded(StoreError):
    """A write needs an expiry lease granted first (asked not to block: see AsyncStore)."""

    def __init__(self, ttl: int) -> None:
        super().__init__(f"an expiry lease of {ttl}s must be granted first")
        self.ttl = ttl


class Compacted(StoreError):
    """A watch asked for a revision that etcd has compacted away: re-list."""

    def __init__(self, compacted_revision: int) -> None:
        super().__init__(f"revision compacted up to {compacted_revision}")
        self.compacted_revision = compacted_revision
