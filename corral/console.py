"""`corral console NAME`: the guest's serial console in this terminal, like `virsh console`.

On a terminal, stdin goes into raw mode (every key goes to the guest, Ctrl-C included) and is
restored on exit; Ctrl-] detaches. With stdin a pipe or a file the input is sent as it comes;
at its end the console stays open until the guest has been quiet for ``linger`` seconds, so
``echo uname | corral console vm`` prints the answer. Each invocation is one independent stream:
run one per VM, as many at once as wanted.
"""

from __future__ import annotations

import os
import queue
import sys
import termios
import threading
import time
import tty
from typing import BinaryIO, TextIO

import grpc

from corral.client import Client

#: Ctrl-], as in telnet and virsh.
ESCAPE = b"\x1d"
HINT = "Escape character is ^]"
_EOF = object()


class ConsoleSession:
    """Pumps stdin to the VM's console and its output to stdout until detached or closed."""

    def __init__(self, client: Client, name: str, *, stdin: BinaryIO | None = None,
                 stdout: BinaryIO | None = None, stderr: TextIO | None = None, linger: float = 1.0) -> None:
        self.client = client
        self.name = name
        self.stdin_fd = (stdin or sys.stdin).fileno()
        self.stdout = stdout or sys.stdout.buffer
        self.stderr = stderr or sys.stderr
        self.linger = linger
        self.keys: queue.Queue[object] = queue.Queue()
        self.detached = threading.Event()
        self.input_ended = threading.Event()
        self.last_output = time.monotonic()
        self.call = None

    def _read_input(self) -> None:
        while not self.detached.is_set():
            try:
                data = os.read(self.stdin_fd, 4096)
            except OSError:
                data = b""
            if not data:
                self.keys.put(_EOF)
                return
            if ESCAPE in data:
                before = data.split(ESCAPE, 1)[0]
                if before:
                    self.keys.put(before)
                self.detach()
                return
            self.keys.put(data)

    def _keystrokes(self):
        while not self.detached.is_set():
            item = self.keys.get()
            if item is _EOF:
                self.last_output = time.monotonic()
                self.input_ended.set()
                return  # half-close: output keeps coming until we cancel
            yield item

    def detach(self) -> None:
        self.detached.set()
        self.keys.put(_EOF)
        if self.call is not None:
            self.call.cancel()

    def _watch(self) -> None:
        """After the input ended (a pipe), detach once the guest has been quiet for a while."""
        while not self.detached.wait(0.1):
            if self.input_ended.is_set() and time.monotonic() - self.last_output > self.linger:
                self.detach()

    def run(self) -> int:
        """0 when detached or when the console ended; raises grpc.RpcError on other errors."""
        print(f"{HINT} (console of virtualmachine/{self.name})", file=self.stderr, flush=True)
        is_tty = os.isatty(self.stdin_fd)
        saved = termios.tcgetattr(self.stdin_fd) if is_tty else None
        try:
            if is_tty:
                tty.setraw(self.stdin_fd)
            self.call = self.client.open_console(self.name, self._keystrokes())
            if self.detached.is_set():
                self.call.cancel()
            threading.Thread(target=self._read_input, name="console-stdin", daemon=True).start()
            threading.Thread(target=self._watch, name="console-linger", daemon=True).start()
            try:
                for response in self.call:
                    self.last_output = time.monotonic()
                    self.stdout.write(response.data)
                    self.stdout.flush()
            except grpc.RpcError as err:
                if not (self.detached.is_set() and err.code() == grpc.StatusCode.CANCELLED):
                    raise
            else:
                if not self.detached.is_set():
                    self._note("the console closed (the run ended, or another session took the console)")
        finally:
            self.detached.set()
            if saved is not None:
                termios.tcsetattr(self.stdin_fd, termios.TCSADRAIN, saved)
        return 0

    def _note(self, text: str) -> None:
        print(f"\r\n{text}", file=self.stderr, flush=True)
