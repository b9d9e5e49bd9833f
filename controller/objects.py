"""What the server sets on every object it creates, whatever its kind."""
from __future__ import annotations

import uuid

from corral import status as vm_status
from corral.v1 import meta_pb2


def new_metadata(target: meta_pb2.ObjectMeta, given: meta_pb2.ObjectMeta) -> None:
    """Name, labels and annotations as given; a fresh uid and the creation time (whatever else
    the caller sent, the server's to set, is dropped)."""
    target.name = given.name
    target.labels.update(given.labels)
    target.annotations.update(given.annotations)
    target.uid = str(uuid.uuid4())
    target.create_time.CopyFrom(vm_status.now())
