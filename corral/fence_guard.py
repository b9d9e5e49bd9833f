"""The fence guard, as the handler and the launcher both know it.

The guard (``launcher/fence_guard.c``, built into a shared library by ``scripts/install.sh``)
is preloaded into every QEMU a launcher starts. A thread inside QEMU reads the node's fencing
deadline and ends QEMU once it passes, so a guest cannot outlive its node's lease even when
the handler and every launcher of the node are killed or frozen (README: "Never two copies").
The handler checks the library at start and hands its path to launchers; the launcher puts it
in the domain's environment.
"""
from __future__ import annotations

import os
import stat

#: Where scripts/install.sh (and the Containerfile) put the library.
DEFAULT_PATH = "/usr/local/lib/corral/fence-guard.so"
#: The setting's value that turns the guard off (never the default).
OFF = "off"
#: The environment QEMU gets: the library to preload and the deadline file it obeys.
PRELOAD_ENV = "LD_PRELOAD"
FENCE_FILE_ENV = "CORRAL_FENCE_FILE"


def problem(path: str) -> str | None:
    """Why ``path`` must not be preloaded into guests' QEMU, or None when it may.

    Every QEMU of the node loads it: it must be a regular file that only root can change
    (owned by root, not writable by group or others, and so is every directory above it),
    or one VM's user could put code into the other VMs' QEMU."""
    if not os.path.isabs(path):
        return f"fence guard {path!r} is not an absolute path"
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        return (f"fence guard {path} is missing ({exc.strerror}): build it with scripts/install.sh "
                f"(gcc -shared -fPIC launcher/fence_guard.c), or set fence_guard: {OFF} to run guests "
                "that can outlive a dead handler")
    if not stat.S_ISREG(info.st_mode):
        return f"fence guard {path} is not a regular file"
    current = path
    while True:
        info = os.stat(current, follow_symlinks=False)
        if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            sticky_root = stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and info.st_mode & stat.S_ISVTX
            if not sticky_root:
                return (f"fence guard {path}: {current} must be owned by root and writable by root only "
                        "(every guest's QEMU loads the guard)")
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
