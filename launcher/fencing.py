"""The launcher's half of node self-fencing.

The handler writes, after every renewal of the node's lease, the CLOCK_MONOTONIC time by
which the guests must be stopped if no further renewal happens (a little before the lease
can expire in etcd). Each launcher watches that file and destroys its guest once the time
passes, whether the handler is alive, hung, partitioned or dead. So when the controller
starts the VM elsewhere (after the lease expired, plus a margin), this copy is gone.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.25


def read_deadline(path: str) -> float | None:
    """The deadline in the file, or None when there is none to enforce yet."""
    try:
        with open(path, encoding="ascii") as handle:
            return float(handle.read().strip())
    except (OSError, ValueError):
        return None


class FenceWatch:
    def __init__(self, *, path: str, fence: Callable[[str], None]) -> None:
        self.path = path
        self.fence = fence
        self.fired = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="fence-watch", daemon=True).start()

    def _run(self) -> None:
        while not self.fired.is_set():
            deadline = read_deadline(self.path)
            now = time.monotonic()
            if deadline is not None and now > deadline:
                late = now - deadline
                log.warning("node lease not renewed in time (%.1fs past the deadline): fencing the guest", late)
                self.fired.set()
                self.fence(f"the node could not renew its lease in time ({late:.1f}s past its deadline): "
                           "the guest was stopped so that it can safely run elsewhere")
                return
            time.sleep(CHECK_SECONDS)
