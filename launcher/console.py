"""The guest's serial console, through libvirt (what ``virsh console --force`` does).

A session opens the domain's console (its ``<serial type='pty'>``) into a non-blocking
libvirt stream whose READABLE events come on the embedded driver's event loop (host.py runs
it); output is queued for the gRPC thread; input, the opening and the closing are done on the
loop's thread too (event_loop.py says why).
QEMU keeps appending the output to the serial log file whether a console is attached or not.

Opening with VIR_DOMAIN_CONSOLE_FORCE takes the console from a session that is still open
(say, one whose handler died before the launcher noticed): the old session then ends.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator

import libvirt

from launcher.host import DomainNotRunning, Host, LauncherError, classify

log = logging.getLogger(__name__)

#: Bytes read from the stream per recv call.
CHUNK = 64 * 1024
#: Give up on input the guest does not take (its pty buffer full) after this long.
SEND_TIMEOUT_SECONDS = 10.0
_CLOSED = object()


class ConsoleSession:
    """One attached console stream: ``read()`` output, ``write()`` input, ``close()``.

    Every libvirt call on the stream runs on the event loop's thread (host.loop; see
    event_loop.py: libvirt's streams are not safe against two threads at once)."""

    def __init__(self, host: Host, uuid: str) -> None:
        self._loop = host.loop
        self._output: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._watching = False
        self._stream: libvirt.virStream | None = None
        try:
            self._loop.call(lambda: self._open(host.conn, uuid))
        except TimeoutError:
            self.close(wait=False)  # an _open that still runs sees it is closed: it aborts its stream
            raise LauncherError("libvirt's event loop does not answer: no console") from None

    def _open(self, conn: libvirt.virConnect, uuid: str) -> None:
        try:
            domain = conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            raise DomainNotRunning("the domain is not defined: no console to attach to") from e
        try:
            if not domain.isActive():
                raise DomainNotRunning("the domain is not running: no console to attach to")
            stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            domain.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        except libvirt.libvirtError as e:
            raise classify(e) from e
        try:
            stream.eventAddCallback(
                libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
                | libvirt.VIR_STREAM_EVENT_HANGUP, self._on_event, None)
        except libvirt.libvirtError as e:
            self._abort_stream(stream)
            raise classify(e) from e
        self._stream, self._watching = stream, True
        if self._closed:  # the caller gave up waiting meanwhile (close(wait=False) ran first)
            self._abort()

    # Runs on libvirt's event loop thread: keep it short, never raise.
    def _on_event(self, stream: libvirt.virStream, events: int, _opaque: object) -> None:
        ended = bool(events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP))
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            while True:
                try:
                    data = stream.recv(CHUNK)
                except libvirt.libvirtError as e:
                    log.info("console stream ended: %s", e.get_error_message())
                    ended = True
                    break
                if data == -2:  # nothing more for now
                    break
                if not data:  # EOF: the console went away (domain stopped, or taken over)
                    ended = True
                    break
                self._output.put(bytes(data))
        if ended:
            self._stop_watching(stream)
            self._output.put(_CLOSED)

    def _stop_watching(self, stream: libvirt.virStream) -> None:
        """On the loop's thread."""
        with self._lock:
            if not self._watching:
                return
            self._watching = False
        try:
            stream.eventRemoveCallback()
        except libvirt.libvirtError:
            pass

    def read(self, timeout: float) -> bytes | None:
        """Output (b"" when none arrived within ``timeout``); None once the console ended."""
        try:
            item = self._output.get(timeout=timeout)
        except queue.Empty:
            return b""
        if item is _CLOSED:
            self._output.put(_CLOSED)  # every later read sees the end too
            return None
        return item  # type: ignore[return-value]

    def _send(self, data: bytes) -> int:
        """On the loop's thread: bytes taken, or -2 when the pty is full."""
        if self._closed or self._stream is None:
            raise LauncherError("the console is closed")
        try:
            return self._stream.send(data)
        except libvirt.libvirtError as e:
            raise classify(e) from e

    def write(self, data: bytes) -> None:
        """Send input to the guest's serial port; raises LauncherError if the console ended."""
        deadline = time.monotonic() + SEND_TIMEOUT_SECONDS
        view = memoryview(data)
        while view:
            chunk = bytes(view)
            try:
                sent = self._loop.call(lambda: self._send(chunk))
            except TimeoutError:
                raise LauncherError("libvirt's event loop does not answer") from None
            if sent == -2:  # the pty is full: the guest is not reading (paused, busy)
                if time.monotonic() > deadline:
                    raise LauncherError("the guest does not take console input")
                time.sleep(0.01)
                continue
            view = view[sent:]

    def _abort(self) -> None:
        """On the loop's thread: stop watching, then abort (no event of it can come after)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._stop_watching(stream)
        self._abort_stream(stream)

    @staticmethod
    def _abort_stream(stream: libvirt.virStream) -> None:
        """On the loop's thread. Also drops the callback libvirt-python keeps (stream.cb), so
        that freeing the stream later, on whatever thread, calls no more than virStreamFree."""
        try:
            stream.abort()
        except libvirt.libvirtError:
            pass
        try:
            del stream.cb  # its __del__ removes the callback (on its thread) while this is set
        except AttributeError:
            pass

    def close(self, *, wait: bool = True) -> None:
        """Abort the stream on the loop's thread; ``wait=False`` (gRPC's call-ended callback,
        which must not block the server) only asks for it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if wait:
            try:
                self._loop.call(self._abort)
            except TimeoutError:
                log.warning("console: libvirt's event loop did not answer; its stream is left open")
        else:
            self._loop.post(self._abort)
        self._output.put(_CLOSED)


def pump(session: ConsoleSession, inputs: Iterable[bytes], is_active, *, poll: float = 0.5) -> Iterator[bytes]:
    """Output chunks of ``session`` until the console ends or ``is_active()`` turns false;
    ``inputs`` (keystrokes) are written by a thread meanwhile. The caller ending the input
    (half-close) does not end the session: output flows until it cancels."""

    def feed() -> None:
        try:
            for data in inputs:
                if data:
                    session.write(data)
        except LauncherError as e:
            log.info("console input stopped: %s", e)
            session.close()
        except Exception as e:  # noqa: BLE001 - the call was cancelled or broke: end the session
            log.debug("console input ended: %r", e)
            session.close()

    writer = threading.Thread(target=feed, name="console-input", daemon=True)
    writer.start()
    try:
        while is_active():
            data = session.read(poll)
            if data is None:
                return
            if data:
                yield data
    finally:
        session.close()
