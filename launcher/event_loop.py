"""libvirt's default event loop on a thread of its own, and a way to run work on that thread.

Why run work there: libvirt's fd streams (the serial console) read their private data and
only then lock it, so two threads acting on one stream at once (an abort beside a recv, a
send, another abort, or the loop's own dispatch of the stream's events) can lock memory the
other just freed, and the launcher dies ("Object ... is not a virObjectLockable instance").
Opening a console with VIR_DOMAIN_CONSOLE_FORCE aborts the previous console's stream inside
the call. Every stream operation done on the loop's thread is serialized with the loop's own
dispatch, and no two of them overlap.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import libvirt

log = logging.getLogger(__name__)

T = TypeVar("T")
#: A call on the loop waits at most this long (the loop wedged: the launcher is in trouble).
CALL_TIMEOUT_SECONDS = 30.0


class EventLoop:
    def __init__(self) -> None:
        self._thread_id: int | None = None
        self._started = threading.Event()

    def start(self) -> None:
        """Register the default implementation (before any connection opens: the embedded
        QEMU driver runs its monitor I/O on it) and run it."""
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=self._run, name="libvirt-events", daemon=True).start()
        self._started.wait()

    def _run(self) -> None:
        self._thread_id = threading.get_ident()
        self._started.set()
        while True:
            if libvirt.virEventRunDefaultImpl() < 0:
                log.error("libvirt event loop iteration failed")

    def on_loop(self) -> bool:
        return threading.get_ident() == self._thread_id

    def call(self, work: Callable[[], T], timeout: float = CALL_TIMEOUT_SECONDS) -> T:
        """``work()`` run on the loop's thread (at once when already there): its result, or
        its exception; TimeoutError when the loop did not get to it in time (then it does not
        run later, unless it had just started: callers make late work harmless)."""
        if self._thread_id is None or self.on_loop():
            return work()
        future = self.post(work)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def post(self, work: Callable[[], T]) -> Future:
        """Run ``work()`` on the loop's thread soon, without waiting: its Future."""
        future: Future = Future()

        def fire(timer: int, _opaque: object) -> None:
            if timer >= 0:
                libvirt.virEventRemoveTimeout(timer)
            if not future.set_running_or_notify_cancel():
                return  # the caller gave up
            try:
                future.set_result(work())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

        if self._thread_id is None:  # no loop (yet): nothing else can run on one
            fire(-1, None)
            return future
        libvirt.virEventAddTimeout(0, fire, None)
        return future
