"""QEMU's own log of a domain, for what libvirt's error left out."""
from __future__ import annotations

import os

#: QEMU's last words added to a start error that lacks them (libvirt can lose the race with a
#: QEMU that exits at once and say only "failed to connect to monitor socket").
QEMU_LOG_LINES = 2


def with_qemu_log(message: str, paths: list[str]) -> str:
    """``message`` with the last lines QEMU wrote to its log, when they add something."""
    for path in paths:
        try:
            with open(path, "rb") as log_file:  # the launcher's own directory, as the VM's user
                log_file.seek(max(0, os.fstat(log_file.fileno()).st_size - 4096))
                lines = [line.strip() for line in log_file.read().decode(errors="replace").splitlines()]
        except OSError:
            continue
        said = [line[:300] for line in lines if line.startswith("qemu")][-QEMU_LOG_LINES:]
        if said and not all(line in message for line in said):
            return f"{message} (QEMU: {'; '.join(said)})"
    return message
