"""The controller's shared lease keep-alive stream (controller/lease_renewer.py) on a real
etcd: concurrent renewals of many leases each get their lease's TTL back, an expired or
unknown lease answers 0 or less, a stream that ends is replaced by the next renewal, and an
unreachable etcd is an Unavailable error, not a hang."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from controller.lease_renewer import LeaseRenewer
from corral.store import Store, Unavailable
from tests.cluster import wait_for


def open_store(etcd) -> Store:
    store = Store(endpoints=[etcd.endpoint], prefix=f"/lr-{uuid.uuid4().hex[:8]}/")
    wait_for(lambda: store.revision() > 0, timeout=20, what="etcd to answer")
    return store


def test_many_concurrent_renewals_share_one_stream(etcd):
    store = open_store(etcd)
    renewer = LeaseRenewer(store)
    try:
        leases = [store.grant_lease(30) for _ in range(50)]
        time.sleep(1.2)  # so a renewal visibly raises the TTL again

        async def renew_all() -> list[int]:
            # every lease twice at once: the second shares the first's answer
            return await asyncio.gather(*(renewer.renew(lease) for lease in leases + leases))

        ttls = asyncio.run(renew_all())
        assert all(ttl >= 29 for ttl in ttls), ttls
        assert all(store.refresh_lease(lease) >= 29 for lease in leases)

        gone = store.grant_lease(30)
        store.revoke_lease(gone)
        assert asyncio.run(renewer.renew(gone)) <= 0
    finally:
        renewer.close()
        store.close()


def test_a_broken_stream_is_replaced_by_the_next_renewal(etcd):
    store = open_store(etcd)
    renewer = LeaseRenewer(store)
    try:
        lease = store.grant_lease(30)
        assert asyncio.run(renewer.renew(lease)) > 0
        renewer.reset("test")  # the stream ends as if etcd had closed it
        wait_for(lambda: renewer._requests is None, timeout=5, what="the old stream to be dropped")
        assert asyncio.run(renewer.renew(lease)) > 0
    finally:
        renewer.close()
        store.close()


def test_unreachable_etcd_is_unavailable_within_the_timeout():
    store = Store(endpoints=["http://127.0.0.1:9"], prefix="/lr-none/", check_tls=False)
    renewer = LeaseRenewer(store, timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            asyncio.run(renewer.renew(12345))
        assert time.monotonic() - started < 5
    finally:
        renewer.close()
        store.close()
