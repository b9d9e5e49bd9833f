"""Files root handles inside VM-owned directories, and root's own records of the runs.

With per-VM isolation a VM's user owns its directory: anything there may be a symlink, a FIFO
or a socket it planted, so root opens nothing there without O_NOFOLLOW and a type (and for
sockets, owner) check, and keeps what it must trust in its own directory (STATE_DIR/runs).
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


#: Root's records of the runs (state_dir/runs/NAME.binpb), outside the VM-owned directories:
#: what the handler trusts when it adopts a run after a restart. The copy in a VM's directory is
#: the launcher's, and the VM's user may rewrite it (to name another VM's uid, for one).
RUNS_DIR = "runs"


def run_record_path(vm_dir: Path) -> Path:
    return vm_dir.parent.parent / RUNS_DIR / f"{vm_dir.name}.binpb"


def write_in_vm_dir(path: Path, data: bytes) -> None:
    """Replace a VM directory's file as root without trusting the directory: whatever its user
    left at the temporary name (a symlink to /etc/shadow, say) is unlinked, never followed, and
    the new file is created exclusively, then renamed over the old name (a rename replaces a
    planted symlink itself)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def open_in_vm_dir(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open a file of a VM directory as root without trusting it: with isolation the VM's
    user owns the directory and could plant a symlink (to /etc/shadow) or a FIFO there."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_in_vm_dir(path: Path, limit: int = 1 << 20) -> bytes:
    """At most the last `limit` bytes of a VM directory's file (see open_in_vm_dir)."""
    with os.fdopen(open_in_vm_dir(path, os.O_RDONLY), "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            handle.seek(size - limit)
        return handle.read()


def path_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what stands at ``path`` (not following a symlink), None if nothing."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def open_launcher_socket(path: Path, *, owner: int) -> tuple[int, int]:
    """(an O_PATH descriptor to dial, one of what stands at ``path``). The first is the socket
    itself if it is a socket (not a symlink) owned by ``owner``, else /dev/null, which no
    connect() accepts. The second pins what was checked (-1: nothing there), so that its
    inode cannot be reused by a new socket that would then look unchanged."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return os.open(os.devnull, os.O_PATH | os.O_CLOEXEC), -1  # not there (yet)
    st = os.fstat(fd)
    if stat.S_ISSOCK(st.st_mode) and st.st_uid == owner:
        return fd, os.dup(fd)
    log.warning("%s is not a socket of uid %d (mode %o, uid %d): not dialed", path, owner, st.st_mode, st.st_uid)
    return os.open(os.devnull, os.O_PATH | os.O_CLOEXEC), fd
