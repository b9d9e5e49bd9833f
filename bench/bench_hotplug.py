#!/usr/bin/env python3
"""Benchmark: hotplug latency through Corral against libvirt alone on a plain domain. A
benchmark, not a test: it prints figures.

    .venv/bin/python bench/bench_hotplug.py [--rounds N] [--guest-dir DIR] [--keep]

1. Baseline, in this process: ``qemu:///embed`` (qemu.conf as a launcher writes it), the same
   domain XML Corral builds (launcher.domain_xml; 1 vCPU and 256 MiB, room for one more vCPU
   and 128 MiB per round), booted until the guest's readiness line. Each round times:
   attachDeviceFlags of a raw disk on the SCSI bus; detachDeviceFlags until the disk left the
   live XML; setVcpusFlags one vCPU up until the guest agent counts it online; the virtio-mem
   request 128 MiB up until the device's <current> says the guest plugged it.
2. Corral: etcd, a controller, a handler (tests/cluster.py), the same guest as a VM; each round
   times AddVolume, RemoveVolume, ResizeVirtualMachine one vCPU up and 128 MiB up (each call
   returns once the guest took the change and the spec was written).

Prints median (min-max) per operation for both and the ratio. Root only (libvirt embed, the
handler's per-VM users). Everything is cleaned up on exit (--keep leaves the logs)."""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from corral.v1 import vm_pb2  # noqa: E402
from launcher import domain_xml, hotplug as live  # noqa: E402
from launcher.host import Host, prepare_embed_root  # noqa: E402
from tests.cluster import Cluster, Etcd, wait_for  # noqa: E402

CMDLINE = "console=ttyS0 quiet no_timer_check corral.hotplug"
OPS = ("attach disk", "detach disk", "vcpus +1", "memory +128 MiB")


def make_vm(name: str, guest_dir: Path, rounds: int) -> vm_pb2.VirtualMachine:
    """Grows by one vCPU and 128 MiB a round (unplugging is not measured: see the README)."""
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    vm.metadata.uid = str(uuid.uuid4())
    vm.spec.vcpus, vm.spec.max_vcpus = 1, 1 + rounds
    vm.spec.memory_mib, vm.spec.max_memory_mib = 256, 256 + 128 * rounds
    vm.spec.boot.kernel.kernel_path = str(guest_dir / "vmlinuz")
    vm.spec.boot.kernel.initrd_path = str(guest_dir / "initrd.gz")
    vm.spec.boot.kernel.cmdline = CMDLINE
    vm.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
    return vm


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def raw_image(path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(path), "16M"], check=True)
    os.chmod(path, 0o644)
    return path


def baseline(work: Path, guest_dir: Path, rounds: int) -> dict[str, list[float]]:
    root = work / "embed"
    prepare_embed_root(str(root))
    log = work / "baseline-serial.log"
    log.touch()
    vm = make_vm("bench-hotplug-base", guest_dir, rounds)
    xml = domain_xml.build_domain_xml(vm, domain_xml.DomainOptions(
        emulation=True, serial_log_path=str(log), agent_socket_path=str(work / "agent.sock")))
    host = Host(f"qemu:///embed?root={root}")
    host.open()
    guest = host.define(xml)
    guest.start()
    domain = guest.domain
    times: dict[str, list[float]] = {op: [] for op in OPS}
    try:
        wait_for(lambda: "CORRAL-GUEST-READY" in log.read_text(errors="replace"), timeout=180, what="the baseline guest")
        wait_for(lambda: live.online_vcpus(domain) == 1, timeout=60, what="the baseline guest agent")
        image = raw_image(work / "baseline.img")
        disk = vm_pb2.Disk(name="bench", persistent=vm_pb2.PersistentDisk(path=str(image), format=vm_pb2.DISK_FORMAT_RAW),
                           bus=vm_pb2.DISK_BUS_SCSI)
        disk_xml = domain_xml.persistent_disk_xml(disk, target="sda", block_device=False)
        for number in range(rounds):
            times["attach disk"].append(timed(lambda: domain.attachDeviceFlags(disk_xml, live.LIVE)))
            time.sleep(1)

            def detach() -> None:
                element = live.disk_by_serial(live._live_xml(domain), "bench")
                domain.detachDeviceFlags(live.ET.tostring(element, encoding="unicode"), live.LIVE)
                wait_for(lambda: live.disk_by_serial(live._live_xml(domain), "bench") is None, timeout=30,
                         interval=0.05, what="the detach")
            times["detach disk"].append(timed(detach))
            count = 2 + number

            def vcpus() -> None:
                domain.setVcpusFlags(count, live.LIVE)
                wait_for(lambda: live.online_vcpus(domain) == count, timeout=30, interval=0.05,
                         what=f"{count} vCPUs online")
            times["vcpus +1"].append(timed(vcpus))
            mib = 128 * (number + 1)

            def memory() -> None:
                live._request(domain, mib)
                wait_for(lambda: live.plugged_memory_mib(domain)[1] == mib, timeout=30, interval=0.05,
                         what=f"{mib} MiB plugged")
            times["memory +128 MiB"].append(timed(memory))
    finally:
        try:
            domain.destroy()
        except Exception:  # noqa: BLE001 - already gone
            pass
    return times


def corral(work: Path, guest_dir: Path, rounds: int) -> dict[str, list[float]]:
    etcd = Etcd(work)
    etcd.start()
    cluster = Cluster(etcd=etcd, base=work, prefix=f"/bench-{uuid.uuid4().hex[:8]}/", guest_dir=guest_dir)
    disks = cluster.node_root / "disks"
    disks.mkdir()
    times: dict[str, list[float]] = {op: [] for op in OPS}
    try:
        cluster.start_controller()
        cluster.start_handler("n1", vcpus=16, memory_mib=4096, extra=["--disk-roots", str(disks)])
        vm = make_vm("bench-hotplug", guest_dir, rounds)
        cluster.create(vm)
        wait_for(lambda: (v := cluster.get("bench-hotplug")).status.serial_log_path
                 and "CORRAL-GUEST-READY" in Path(v.status.serial_log_path).read_text(errors="replace"),
                 timeout=180, what="the Corral guest")
        time.sleep(5)  # the guest agent connects
        image = raw_image(disks / "bench.img")
        vms = cluster.vms
        disk = vm_pb2.Disk(name="bench", persistent=vm_pb2.PersistentDisk(path=str(image), format=vm_pb2.DISK_FORMAT_RAW))
        for number in range(rounds):
            times["attach disk"].append(timed(lambda: vms.AddVolume(
                vm_pb2.AddVolumeRequest(name="bench-hotplug", disk=disk), timeout=60)))
            time.sleep(1)
            times["detach disk"].append(timed(lambda: vms.RemoveVolume(
                vm_pb2.RemoveVolumeRequest(name="bench-hotplug", disk_name="bench"), timeout=60)))
            times["vcpus +1"].append(timed(lambda: vms.ResizeVirtualMachine(
                vm_pb2.ResizeVirtualMachineRequest(name="bench-hotplug", vcpus=2 + number), timeout=120)))
            times["memory +128 MiB"].append(timed(lambda: vms.ResizeVirtualMachine(
                vm_pb2.ResizeVirtualMachineRequest(name="bench-hotplug", memory_mib=256 + 128 * (number + 1)),
                timeout=120)))
    finally:
        cluster.close()
        etcd.stop()
    return times


def show(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f} ms ({min(values) * 1000:.1f}-{max(values) * 1000:.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--guest-dir", default=os.environ.get("CORRAL_GUEST_DIR", "/var/tmp/corral-guest"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    guest_dir = Path(args.guest_dir).resolve()
    subprocess.run([str(REPO / "scripts" / "build-guest.sh"), str(guest_dir)], check=True, stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="cbh-", dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        base = baseline(work, guest_dir, args.rounds)
        ours = corral(work, guest_dir, args.rounds)
    finally:
        if args.keep:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"hotplug latency, {args.rounds} rounds, median (min-max); TCG guest from 1 vCPU and 256 MiB")
    print(f"{'operation':18} {'libvirt alone':>32} {'Corral (API call)':>32} {'ratio':>7}")
    for op in OPS:
        ratio = statistics.median(ours[op]) / statistics.median(base[op])
        print(f"{op:18} {show(base[op]):>32} {show(ours[op]):>32} {ratio:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
