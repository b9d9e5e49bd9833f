#!/usr/bin/env python3
"""Benchmark: the time to take a snapshot of a 1 GiB disk through Corral, against the same
snapshot taken directly. A benchmark, not a test: it prints figures.

    .venv/bin/python bench/bench_snapshot.py [--rounds N] [--size-mib M] [--guest-dir DIR] [--keep]

The disk is a qcow2 image of M MiB (default 1024) filled with random data (every cluster
allocated: an internal snapshot's cost grows with the allocated clusters, whose refcounts it
raises). Two cases, N rounds each (default 5); each snapshot is deleted (untimed) before the next:

1. stopped VM. Corral: CreateVirtualMachineSnapshot, then GetVirtualMachineSnapshot every
   20 ms until Succeeded (the leader marks the VM, calls the node, the handler opens the file
   without following links, checks it with qemu-img info and runs qemu-img snapshot -c as its
   owner). Baseline: ``qemu-img snapshot -c`` on the same file.
2. running VM (TCG guest with the disk, guest agent answering). Corral: the same calls (the
   launcher freezes the guest's file systems through the agent, runs QEMU's
   blockdev-snapshot-internal-sync in a transaction, thaws). Baseline: a QEMU started here
   on a copy of the disk, paused, no guest, the same QMP command on its monitor socket
   (the raw cost of the snapshot inside QEMU, without freeze/thaw).

Root, etcd, QEMU and libvirt needed (see /work/shared/FACTS.md), as the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from corral.v1 import snapshot_pb2 as S, snapshot_pb2_grpc, vm_pb2  # noqa: E402
from tests.cluster import Cluster, Etcd, wait_for  # noqa: E402

USER_DATA = "#!/bin/sh\nwhile true; do date > /mnt/data/now; sync; sleep 1; done\n"


def filled_disk(path: Path, size_mib: int) -> None:
    raw = path.with_suffix(".raw")
    with open(raw, "wb") as f:  # random data everywhere, then a file system over it (no discard)
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(raw)], check=True)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()


SEEN_INDICATIONS: set[str] = set()


def corral_round(stub, vm: str) -> float:
    name = f"b-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    stub.CreateVirtualMachineSnapshot(S.CreateVirtualMachineSnapshotRequest(snapshot=S.VirtualMachineSnapshot(
        metadata={"name": name}, spec=S.VirtualMachineSnapshotSpec(vm_name=vm))), timeout=30)
    while True:
        snap = stub.GetVirtualMachineSnapshot(S.GetVirtualMachineSnapshotRequest(name=name), timeout=30).snapshot
        if snap.status.phase == S.SNAPSHOT_PHASE_SUCCEEDED:
            elapsed = time.monotonic() - t0
            SEEN_INDICATIONS.add(",".join(snap.status.indications) or "offline")
            break
        if snap.status.phase == S.SNAPSHOT_PHASE_FAILED:
            raise SystemExit(f"snapshot failed: {list(snap.status.conditions)}")
        time.sleep(0.02)
    stub.DeleteVirtualMachineSnapshot(S.DeleteVirtualMachineSnapshotRequest(name=name), timeout=30)

    def gone() -> bool:
        try:
            stub.GetVirtualMachineSnapshot(S.GetVirtualMachineSnapshotRequest(name=name), timeout=30)
            return False
        except Exception:  # noqa: BLE001 - NOT_FOUND
            return True
    wait_for(gone, timeout=120, what="the snapshot to be deleted")
    return elapsed


def qemu_img_round(disk: Path) -> float:
    t0 = time.monotonic()
    subprocess.run(["qemu-img", "snapshot", "-c", "bench", str(disk)], check=True)
    elapsed = time.monotonic() - t0
    subprocess.run(["qemu-img", "snapshot", "-d", "bench", str(disk)], check=True)
    return elapsed


class RawQemu:
    """A paused QEMU with the disk and a QMP socket: the baseline for a running VM."""

    def __init__(self, disk: Path, work: Path) -> None:
        self.sock_path = work / "qmp.sock"
        self.process = subprocess.Popen(
            ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-accel", "tcg", "-S", "-m", "128",
             "-blockdev", f"driver=file,filename={disk},node-name=f0",
             "-blockdev", "driver=qcow2,file=f0,node-name=d0", "-device", "virtio-blk-pci,drive=d0",
             "-qmp", f"unix:{self.sock_path},server=on,wait=off"])
        wait_for(self.sock_path.exists, timeout=30, what="QEMU's monitor socket")
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(self.sock_path))
        self.file = self.sock.makefile("rw")
        self.file.readline()  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, execute: str, **arguments) -> dict:
        self.file.write(json.dumps({"execute": execute, "arguments": arguments}) + "\n")
        self.file.flush()
        while True:
            answer = json.loads(self.file.readline())
            if "return" in answer or "error" in answer:
                if "error" in answer:
                    raise SystemExit(f"QMP {execute}: {answer['error']}")
                return answer

    def round(self) -> float:
        t0 = time.monotonic()
        self.cmd("transaction", actions=[{"type": "blockdev-snapshot-internal-sync",
                                          "data": {"device": "d0", "name": "bench"}}])
        elapsed = time.monotonic() - t0
        self.cmd("blockdev-snapshot-delete-internal-sync", device="d0", name="bench")
        return elapsed

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def summary(label: str, corral: list[float], base: list[float], base_label: str) -> None:
    c, b = statistics.median(corral), statistics.median(base)
    print(f"{label}: Corral {c:.3f} s (min {min(corral):.3f}, max {max(corral):.3f}); {base_label} {b:.3f} s "
          f"(min {min(base):.3f}, max {max(base):.3f}); ratio {c / b:.1f}x, difference {c - b:.3f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--guest-dir", default=os.environ.get("CORRAL_GUEST_DIR", "/var/tmp/corral-guest"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    guest_dir = Path(args.guest_dir)
    if not (guest_dir / "vmlinuz").exists():
        subprocess.run([str(REPO / "scripts" / "build-guest.sh"), str(guest_dir)], check=True)
    work = Path(tempfile.mkdtemp(prefix="cbs-", dir="/tmp"))
    etcd = Etcd(work)
    etcd.start()
    cluster = Cluster(etcd=etcd, base=work, prefix=f"/b-{uuid.uuid4().hex[:8]}/", guest_dir=guest_dir)
    raw_qemu = None
    try:
        disks = cluster.node_root / "disks"
        disks.mkdir()
        disk = disks / "data.qcow2"
        print(f"filling a {args.size_mib} MiB qcow2 disk with random data ...", flush=True)
        filled_disk(disk, args.size_mib)
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)], capture_output=True,
                                         check=True).stdout)
        print(f"disk: virtual {info['virtual-size'] >> 20} MiB, allocated {info['actual-size'] >> 20} MiB")
        cluster.start_controller()
        cluster.start_handler("n1", extra=["--disk-roots", str(disks)])
        stub = snapshot_pb2_grpc.VirtualMachineSnapshotServiceStub(cluster.channel())
        vm = cluster.guest_vm("bench-snap")
        vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_HALTED
        vm.spec.disks.append(vm_pb2.Disk(name="data", persistent=vm_pb2.PersistentDisk(
            path=str(disk), format=vm_pb2.DISK_FORMAT_QCOW2)))
        vm.spec.cloud_init.user_data = USER_DATA
        cluster.create(vm)
        base = [qemu_img_round(disk) for _ in range(args.rounds)]
        stopped = [corral_round(stub, "bench-snap") for _ in range(args.rounds)]
        summary("stopped VM", stopped, base, "qemu-img snapshot -c")
        copy = work / "copy.qcow2"
        shutil.copyfile(disk, copy)
        raw_qemu = RawQemu(copy, work)
        base = [raw_qemu.round() for _ in range(args.rounds)]
        raw_qemu.close()
        raw_qemu = None
        copy.unlink()
        cluster.vms.StartVirtualMachine(vm_pb2.StartVirtualMachineRequest(name="bench-snap"), timeout=10)
        wait_for(lambda: cluster.get("bench-snap").status.guest.agent_connected, timeout=180,
                 what="the guest agent to answer")
        SEEN_INDICATIONS.clear()
        running = [corral_round(stub, "bench-snap") for _ in range(args.rounds)]
        summary(f"running VM [indications seen: {' / '.join(sorted(SEEN_INDICATIONS))}]", running, base, "QMP blockdev-snapshot-internal-sync (paused QEMU)")
    finally:
        if raw_qemu is not None:
            raw_qemu.close()
        cluster.close()
        etcd.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
