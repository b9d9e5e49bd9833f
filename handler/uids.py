"""Root's ledger of the VM uids it handed out, so that no uid is given to a new VM while
anything on the node still belongs to it.

A VM's user gets more than its run directory: persistent disks (and a boot disk) are chowned
to it, and so are its save folder and a save file being restored. Those outlive the directory.
Were the uid handed to another VM while they still belonged to it, that VM's user could read
and write the first VM's disks and saved memory. So each uid in use has a record,
STATE_DIR/uids/UID.json (root's directory, 0700), naming what was handed to it and who owned
each thing before (root when it was another VM user's). A uid is free only once its record is
gone, and the record goes only after everything in it was given back (release()). Handing back
never follows a link: each item is opened with O_NOFOLLOW and must be the same inode, still
owned by the uid; a folder's contents are chowned to root without following anything.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import threading
from pathlib import Path

log = logging.getLogger(__name__)

#: Below STATE_DIR: root's records of the uids handed out.
UIDS_DIR = "uids"


def _open_nofollow(path: str) -> int:
    """A descriptor on what stands at path, never a symlink's target (file, folder or device)."""
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)


def _chown_tree_to_root(fd: int, uid: int) -> None:
    """Give everything below the folder `fd` that `uid` owns to root (links themselves, never
    their targets). The folder is root's already, so the VM's user cannot change it meanwhile."""
    for root, dirs, files, root_fd in os.fwalk(dir_fd=fd, follow_symlinks=False):
        for name in dirs + files:
            try:
                st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
                if st.st_uid == uid:
                    os.chown(name, 0, 0, dir_fd=root_fd, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        os.chmod(name, stat.S_IMODE(st.st_mode) & 0o700, dir_fd=root_fd)
            except FileNotFoundError:
                continue


class UidLedger:
    """The records of one node's handed-out VM uids (STATE_DIR/uids)."""

    def __init__(self, directory: Path, *, uid_range: range) -> None:
        self.directory = directory
        self.uid_range = uid_range
        self._lock = threading.Lock()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)

    def _path(self, uid: int) -> Path:
        return self.directory / f"{int(uid)}.json"

    def _read(self, uid: int) -> dict:
        try:
            return json.loads(self._path(uid).read_text())
        except FileNotFoundError:
            return {"handed": []}

    def _write(self, uid: int, record: dict) -> None:
        path = self._path(uid)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def in_use(self) -> set[int]:
        """uids that have a record: not to be handed out."""
        used = set()
        for entry in os.listdir(self.directory):
            if entry.endswith(".json") and entry[:-5].isdigit():
                used.add(int(entry[:-5]))
        return used

    def claim(self, uid: int, run: str) -> None:
        with self._lock:
            record = self._read(uid)
            record["run"] = run
            self._write(uid, record)

    def hand_over(self, fd: int, path: str, uid: int, gid: int, mode: int | None = None) -> None:
        """chown the open `fd` (at path) to the VM user, recording first who owned it (root when
        another VM user did: never give something back to a uid that may be freed)."""
        st = os.fstat(fd)
        with self._lock:
            record = self._read(uid)
            item = {"path": path, "dev": st.st_dev, "ino": st.st_ino,
                    "uid": 0 if st.st_uid in self.uid_range else st.st_uid,
                    "gid": 0 if st.st_gid in self.uid_range else st.st_gid,
                    "mode": stat.S_IMODE(st.st_mode) if st.st_uid not in self.uid_range else
                    stat.S_IMODE(st.st_mode) & 0o700,
                    "tree": stat.S_ISDIR(st.st_mode)}
            if st.st_uid in self.uid_range and st.st_uid != uid:
                # Still another run's (a VM's next run starts before the last one is removed):
                # what that run recorded is the true previous owner.
                for earlier in self._read(st.st_uid)["handed"]:
                    if (earlier["dev"], earlier["ino"]) == (st.st_dev, st.st_ino):
                        item.update(uid=earlier["uid"], gid=earlier["gid"], mode=earlier["mode"])
            if not any(h["dev"] == item["dev"] and h["ino"] == item["ino"] for h in record["handed"]):
                record["handed"].append(item)
                self._write(uid, record)
        os.fchown(fd, uid, gid)
        if mode is not None:
            os.fchmod(fd, mode)

    def _give_back_items(self, uid: int, items: list[dict]) -> list[str]:
        """Give back items handed to uid (what is gone or changed is skipped); returns what
        could not be, which keeps the record (and the uid) for a later try."""
        failed: list[str] = []
        for item in items:
            try:
                fd = _open_nofollow(item["path"])
            except FileNotFoundError:
                continue
            except OSError as exc:  # a symlink there now (ELOOP): not what was handed over
                log.info("uid %d: %s not given back: %s", uid, item["path"], exc)
                continue
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (item["dev"], item["ino"]) or st.st_uid != uid:
                    continue  # replaced, or handed on to another run already
                os.fchown(fd, item["uid"], item["gid"])
                os.fchmod(fd, item["mode"])
                if item.get("tree"):
                    _chown_tree_to_root(fd, uid)
            except OSError as exc:
                failed.append(f"{item['path']}: {exc}")
            finally:
                os.close(fd)
        return failed

    def give_back_path(self, uid: int, path: str) -> None:
        """Give back one item now (a save folder once the save is written) and forget it."""
        with self._lock:
            record = self._read(uid)
            mine = [item for item in record["handed"] if item["path"] == path]
            if not mine:
                return
            record["handed"] = [item for item in record["handed"] if item["path"] != path]
            failed = self._give_back_items(uid, mine)
            if failed:
                raise OSError("; ".join(failed))
            self._write(uid, record)

    def release(self, uid: int) -> bool:
        """Give back everything handed to uid and free it; False (uid kept) when something
        could not be given back."""
        with self._lock:
            failed = self._give_back_items(uid, self._read(uid)["handed"])
            if failed:
                log.warning("uid %d stays reserved: %s", uid, "; ".join(failed))
                return False
            self._path(uid).unlink(missing_ok=True)
            return True
