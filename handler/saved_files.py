"""Save folders and saved files (SAVE_DIR/VM_UID/RUN_UID.save) as root handles them.

A run being saved owns its folder (its launcher writes the file as the run's user), so whatever
stands there afterwards may be what that user planted: a symlink to another VM's saved memory,
say. Root therefore never resolves or follows anything in a save folder: it takes the folder
back (root-owned, contents too) as soon as the save is written, and when a later run restores
the file it opens the folder and the file with O_NOFOLLOW, checks they are a directory and a
single-linked regular file at the expected names, and hands over exactly those descriptors.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

#: hand_over(fd, path, mode): give an open file or folder to the run's user (handler/uids.py).
HandOver = Callable[[int, str, int], None]

SAVE_SUFFIX = ".save"


def _open_dir(name: str | Path, dir_fd: int | None = None) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def prepare_save_folder(save_dir: Path, vm_uid: str, hand_over: HandOver) -> Path:
    """SAVE_DIR/VM_UID, made if missing and given to the run's user (0700) for its launcher to
    write the saved file in."""
    if not vm_uid or "/" in vm_uid or vm_uid in (".", ".."):
        raise OSError(f"no save folder for a VM uid {vm_uid!r}")
    folder = save_dir / vm_uid
    folder.mkdir(parents=True, exist_ok=True)
    fd = _open_folder(save_dir, vm_uid)
    try:
        hand_over(fd, str(folder), 0o700)
    finally:
        os.close(fd)
    return folder


def _open_folder(save_dir: Path, name: str) -> int:
    """SAVE_DIR/NAME, without following a link at NAME. SAVE_DIR itself is the node's
    configuration (root's): it may be a link to shared storage."""
    base_fd = os.open(os.path.realpath(save_dir), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _open_dir(name, base_fd)
    finally:
        os.close(base_fd)


def prepare_restore(save_dir: Path, vm_uid: str, path: Path, hand_over: HandOver) -> None:
    """Let a new run's user read the saved file `path`, which must be
    SAVE_DIR/VM_UID/NAME.save: the folder and the file are opened without following links
    and must be a directory and a regular file with one link; both are handed over."""
    folder_name, file_name = path.parent.name, path.name
    if (os.path.realpath(path.parent.parent) != os.path.realpath(save_dir) or folder_name != vm_uid
            or not file_name.endswith(SAVE_SUFFIX) or file_name in (".", "..")):
        raise OSError(f"saved state {path} is not this VM's file under this node's save directory {save_dir}")
    folder_fd = _open_folder(save_dir, folder_name)
    try:
        file_fd = os.open(file_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder_fd)
        try:
            st = os.fstat(file_fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise OSError(f"saved state {path} is not a regular file with a single link")
            hand_over(folder_fd, str(path.parent), 0o700)
            hand_over(file_fd, str(path), 0o600)
        finally:
            os.close(file_fd)
    finally:
        os.close(folder_fd)
