"""Warm spare launchers: a launcher process started ahead of need, its imports done, waiting on
stdin for the VM directory it will serve, so that a VM's start skips the interpreter's start."""
from __future__ import annotations

import logging
import subprocess
import threading
from pathlib import Path

from handler import spawn
from handler.isolation import Cgroups

log = logging.getLogger(__name__)


class Spare:
    """A launcher process that has started and imported everything, waiting on stdin."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process

    def join(self, procs_files: list[str]) -> bool:
        """Move the idle spare into the VM's cgroup before it learns its VM."""
        try:
            Cgroups.join(procs_files, self.process.pid)
            return True
        except OSError as exc:
            log.warning("cannot move spare launcher %d into its VM's cgroup: %s", self.process.pid, exc)
            self.process.stdin.close()  # EOF: it exits; the caller starts a launcher itself
            return False

    def assign(self, vm_dir: Path) -> bool:
        try:
            self.process.stdin.write(f"{vm_dir}\n".encode())
            self.process.stdin.close()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False


class SparePool:
    """Keeps one warm spare launcher; taking it starts the next one."""

    def __init__(self, *, command: list[str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        self.spare: Spare | None = None
        self.lock = threading.Lock()

    def _start(self) -> Spare:
        with open(self.log_path, "ab") as log_file:
            process = subprocess.Popen(
                [*spawn.launcher_prefix("spare"), *self.command, "--spare"], stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, cwd="/")
        return Spare(process)

    def fill(self) -> None:
        with self.lock:
            if self.spare is None or self.spare.process.poll() is not None:
                self.spare = self._start()

    def take(self) -> Spare | None:
        with self.lock:
            spare, self.spare = self.spare, None
        threading.Thread(target=self.fill, name="spare-launcher", daemon=True).start()
        if spare is None or spare.process.poll() is not None:
            return None
        return spare

    def close(self) -> None:
        with self.lock:
            if self.spare is not None:
                try:
                    self.spare.process.stdin.close()  # EOF: the spare exits quietly
                except OSError:
                    pass
                self.spare = None
