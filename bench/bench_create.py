#!/usr/bin/env python3
"""Benchmark: time from CreateVirtualMachine to RUNNING against libvirt's own define+start,
and the memory Corral adds per VM. A benchmark, not a test: it prints figures.

    .venv/bin/python bench/bench_create.py [--count N] [--guest-dir DIR]

1. Baseline: for each of N domains a fresh process opens its own
   ``qemu:///embed?root=DIR/libvirt`` (capabilities cache seeded, qemu.conf written, as a
   launcher does), builds the same XML with launcher.domain_xml and times open, define and
   start. libvirt allows one embedded root per process, so each baseline domain gets its own
   small child process (this script re-run with --baseline-child); the times are measured
   inside it around the libvirt calls only. All N keep running until the last one started.
2. Corral: etcd, one controller, one handler (capacity for N VMs); N VMs created one after
   another, each awaited until RUNNING (watch stream plus a poll every second as a net).
3. Memory (PSS from /proc/PID/smaps_rollup) of the launchers with all N running.
4. A breakdown of each create from the controller, handler and launcher logs.
"""
from __future__ import annotations

import argparse
import calendar
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET_OVERHEAD_P50 = 0.25   # s above libvirt's own define+start
TARGET_QEMU_P95 = 0.5        # s from CreateVirtualMachine until the QEMU process exists (issue #14)
TARGET_MIB_PER_VM = 40.0
KUBEVIRT_P50, KUBEVIRT_P95 = 45.0, 60.0
KUBEVIRT_MIB_PER_VM = 240
CMDLINE = "console=ttyS0 quiet"
MEMORY_MIB = 128


def make_vm(name: str, guest_dir: Path, uid: str | None = None):
    from corral.v1 import vm_pb2
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    if uid:
        vm.metadata.uid = uid
    vm.spec.vcpus = 1
    vm.spec.memory_mib = MEMORY_MIB
    vm.spec.boot.kernel.kernel_path = str(guest_dir / "vmlinuz")
    vm.spec.boot.kernel.initrd_path = str(guest_dir / "initrd.gz")
    vm.spec.boot.kernel.cmdline = CMDLINE
    return vm


# ---------------------------------------------------------------------------------------
# Baseline child: one embedded libvirt driver, one domain, timed; destroys it on request.
# ---------------------------------------------------------------------------------------
def baseline_child(args: argparse.Namespace) -> int:
    import libvirt

    from launcher import domain_xml
    from launcher.host import (capabilities_files, embed_capabilities_dir, prepare_embed_root,
                               save_capabilities_cache, seed_capabilities_cache)

    vm_dir = args.baseline_child
    os.makedirs(vm_dir, exist_ok=True)
    os.chmod(vm_dir, 0o711)
    root = os.path.join(vm_dir, "libvirt")
    prepare_embed_root(root)
    seed_capabilities_cache(root, args.capcache)
    vm = make_vm(args.name, Path(args.guest_dir), str(uuid.uuid4()))
    xml = domain_xml.build_domain_xml(vm, domain_xml.DomainOptions(
        emulation=True, serial_log_path=os.path.join(vm_dir, "serial.log")))

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    libvirt.virEventRegisterDefaultImpl()

    def loop() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=loop, daemon=True).start()
    result: dict = {}
    dom = None
    try:
        t0 = time.monotonic()
        conn = libvirt.open(f"qemu:///embed?root={root}")
        t1 = time.monotonic()
        cached = capabilities_files(embed_capabilities_dir(root))
        dom = conn.defineXML(xml)
        t2 = time.monotonic()
        probed = capabilities_files(embed_capabilities_dir(root)) != cached
        dom.create()
        t3 = time.monotonic()
        result = {"open": t1 - t0, "define": t2 - t1, "start": t3 - t2, "pid": os.getpid(), "probed": probed}
        if args.save_cache:
            save_capabilities_cache(root, args.capcache)
    except libvirt.libvirtError as e:
        result = {"error": str(e)}
    print(json.dumps(result), flush=True)
    sys.stdin.readline()  # "destroy", or EOF when the parent is gone: clean up either way
    if dom is not None:
        try:
            dom.destroy()
        except libvirt.libvirtError:
            pass
        try:
            dom.undefine()
        except libvirt.libvirtError:
            pass
    print(json.dumps({"destroyed": True}), flush=True)
    os._exit(0)


class BaselineDomain:
    def __init__(self, vm_dir: Path, name: str, guest_dir: Path, capcache: Path, save_cache: bool = False):
        self.vm_dir = vm_dir
        cmd = [sys.executable, str(Path(__file__).resolve()), "--baseline-child", str(vm_dir),
               "--name", name, "--guest-dir", str(guest_dir), "--capcache", str(capcache)]
        if save_cache:
            cmd.append("--save-cache")
        self.spawned = time.monotonic()
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        start_new_session=True)
        line = self.process.stdout.readline()
        self.wall = time.monotonic() - self.spawned  # process start + imports + open + define + start
        if not line:
            raise RuntimeError(f"baseline child for {name} exited ({self.process.wait()})")
        self.result = json.loads(line)
        if "error" in self.result:
            raise RuntimeError(f"baseline {name}: {self.result['error']}")

    def destroy(self) -> None:
        if self.process.poll() is not None:
            return
        try:
            self.process.stdin.write("destroy\n")
            self.process.stdin.flush()
            self.process.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def smaps(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return out


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def pids_mentioning(text: str) -> list[int]:
    me = os.getpid()
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me and text.encode() in cmdline(int(e))]


def kill_mentioning(text: str) -> None:
    for pid in pids_mentioning(text):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


READY_LINE = b"CORRAL-GUEST-READY"


def wait_guest_ready(serial_log: Path, timeout: float = 60) -> None:
    """Until the guest printed its readiness line (its boot no longer competes for CPU)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if READY_LINE in serial_log.read_bytes():
                return
        except OSError:
            pass
        time.sleep(0.05)
    print(f"warning: no readiness line in {serial_log} after {timeout} s", file=sys.stderr)


def mib(kb: float) -> float:
    return kb / 1024


def parse_time(text: str) -> float | None:
    """A log timestamp as epoch seconds: JSON logs are UTC ('...Z'), launcher logs local."""
    try:
        if text.endswith("Z"):
            dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
            return calendar.timegm(dt.timetuple()) + dt.microsecond / 1e6
        dt = datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f")
        return time.mktime(dt.timetuple()) + dt.microsecond / 1e6
    except ValueError:
        return None


def json_log(path: Path) -> list[tuple[float, str]]:
    entries = []
    try:
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            t = parse_time(entry.get("time", ""))
            if t is not None:
                entries.append((t, entry.get("message", "")))
    except OSError:
        pass
    return entries


LAUNCHER_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+\[\d+\]: (.*)$")


def launcher_log(path: Path) -> list[tuple[float, str]]:
    entries = []
    try:
        for line in path.read_text(errors="replace").splitlines():
            m = LAUNCHER_LINE.match(line)
            if m and (t := parse_time(m.group(1))) is not None:
                entries.append((t, m.group(2)))
    except OSError:
        pass
    return entries


def first(entries: list[tuple[float, str]], pattern: str) -> float | None:
    rx = re.compile(pattern)
    for t, message in entries:
        if rx.search(message):
            return t
    return None


# ---------------------------------------------------------------------------------------
# main run
# ---------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n = args.count
        self.guest_dir = Path(args.guest_dir).resolve()
        self.work = Path(tempfile.mkdtemp(prefix="cb-", dir="/tmp"))  # short: QEMU socket paths
        os.chmod(self.work, 0o755)
        self.capcache = self.work / "capcache"
        self.capcache.mkdir()
        self.baseline: list[BaselineDomain] = []
        self.etcd = None
        self.cluster = None
        self.watch_stop = threading.Event()
        self.watch_call = None
        self.seen_running: dict[str, float] = {}
        self.seen_cond = threading.Condition()
        self.launcher_logs: dict[str, list[tuple[float, str]]] = {}

    # -- setup ------------------------------------------------------------------------------
    def build_guest(self) -> None:
        if (self.guest_dir / "vmlinuz").exists() and (self.guest_dir / "initrd.gz").exists():
            return
        print(f"building the guest in {self.guest_dir} ...", flush=True)
        subprocess.run([str(REPO / "scripts" / "build-guest.sh"), str(self.guest_dir)], check=True)

    def warm_cache(self) -> None:
        """One cold domain start fills the shared capabilities cache (as a node's first VM does)."""
        t = time.monotonic()
        warm = BaselineDomain(self.work / "w", "bench-warm", self.guest_dir, self.capcache, save_cache=True)
        warm.destroy()
        files = list(self.capcache.glob("*.xml"))
        print(f"capabilities cache warmed by one cold start in {time.monotonic() - t:.2f} s "
              f"(open {warm.result['open']:.2f}, define {warm.result['define']:.2f}, "
              f"start {warm.result['start']:.2f}); {len(files)} file(s) shared by both runs\n", flush=True)

    # -- baseline ---------------------------------------------------------------------------
    def run_baseline(self) -> None:
        print(f"baseline: {self.n} embedded-libvirt domains, one after another ...", flush=True)
        base = self.work / "b"
        base.mkdir()
        os.chmod(base, 0o755)
        for i in range(self.n):
            if self.args.settle and self.baseline:
                wait_guest_ready(self.baseline[-1].vm_dir / "serial.log")
            self.baseline.append(BaselineDomain(base / f"{i:02d}", f"bench-b{i:02d}", self.guest_dir, self.capcache))
        # all N running: memory of a bare embedded-libvirt process, for context
        self.baseline_child_pss = [smaps(d.process.pid).get("Pss", 0) for d in self.baseline]
        for d in self.baseline:
            d.destroy()
        kill_mentioning(str(base))
        print("baseline done\n", flush=True)

    # -- corral -----------------------------------------------------------------------------
    def start_cluster(self) -> None:
        from tests.cluster import Cluster, Etcd
        self.etcd = Etcd(self.work)
        self.etcd.start()
        self.cluster = Cluster(etcd=self.etcd, base=self.work, prefix=f"/bench-{uuid.uuid4().hex[:8]}/",
                               guest_dir=self.guest_dir)
        # the node's capabilities cache, warm as after its first VM (same files as the baseline)
        cache = self.cluster.state_dir("n1") / "cache" / "qemu-capabilities"
        cache.mkdir(parents=True)
        for path in self.capcache.glob("*.xml"):
            shutil.copy2(path, cache)
        self.cluster.start_controller()
        self.cluster.start_handler("n1", vcpus=self.n, memory_mib=self.n * 256)
        # An idle node: its start-up work (the capabilities warm-up) is over before the first create.
        handler_log = self.work / "handler-n1.log"
        deadline = time.monotonic() + 60
        while "capabilities cache warm" not in handler_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.stub = self.cluster.vms
        threading.Thread(target=self._watch, name="watch", daemon=True).start()

    def _watch(self) -> None:
        import grpc

        from corral.v1 import vm_pb2
        while not self.watch_stop.is_set():
            try:
                self.watch_call = self.stub.WatchVirtualMachines(vm_pb2.WatchVirtualMachinesRequest())
                for event in self.watch_call:
                    vm = event.virtual_machine
                    if vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING:
                        self._saw_running(vm.metadata.name)
            except grpc.RpcError:
                if self.watch_stop.wait(0.1):
                    return

    def _saw_running(self, name: str) -> None:
        now = time.monotonic()
        with self.seen_cond:
            if name not in self.seen_running:
                self.seen_running[name] = now
                self.seen_cond.notify_all()

    def _first_qemu(self, name: str, since: float, found: dict, stop: threading.Event) -> None:
        """When the VM's QEMU process first exists (its command line names the guest)."""
        needle = f"guest={name},"
        while not stop.is_set() and time.monotonic() - since < self.args.timeout:
            if any(exe(pid).startswith("/usr/bin/qemu-system") for pid in pids_mentioning(needle)):
                found[name] = time.monotonic()
                return
            time.sleep(0.002)

    def run_corral(self) -> None:
        from corral.v1 import vm_pb2
        print(f"corral: {self.n} VMs created one after another on one node ...", flush=True)
        self.start_cluster()
        time.sleep(0.5)  # let the watch stream settle
        self.corral_rows = []
        for i in range(self.n):
            name = f"bench-{i:02d}"
            vm = make_vm(name, self.guest_dir)
            if self.args.settle and i:
                prev = self.stub.GetVirtualMachine(vm_pb2.GetVirtualMachineRequest(name=f"bench-{i - 1:02d}"),
                                                   timeout=5).virtual_machine
                wait_guest_ready(Path(prev.status.serial_log_path))
            wall0 = time.time()
            t0 = time.monotonic()
            qemu_seen: dict[str, float] = {}
            stop_sampler = threading.Event()
            sampler = threading.Thread(target=self._first_qemu, args=(name, t0, qemu_seen, stop_sampler), daemon=True)
            sampler.start()
            self.stub.CreateVirtualMachine(vm_pb2.CreateVirtualMachineRequest(virtual_machine=vm), timeout=10)
            deadline = t0 + self.args.timeout
            last_poll = t0
            with self.seen_cond:
                while name not in self.seen_running:
                    now = time.monotonic()
                    if now > deadline:
                        raise RuntimeError(f"{name} not RUNNING after {self.args.timeout} s")
                    if now - last_poll > 1.0:  # a net under the watch
                        last_poll = now
                        got = self.stub.GetVirtualMachine(vm_pb2.GetVirtualMachineRequest(name=name), timeout=5)
                        phase = got.virtual_machine.status.phase
                        if phase == vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING:
                            self.seen_running[name] = time.monotonic()
                            break
                        if phase == vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED:
                            raise RuntimeError(f"{name} failed: {got.virtual_machine.status}")
                    self.seen_cond.wait(0.01)
                t1 = self.seen_running[name]
            sampler.join(timeout=5)
            stop_sampler.set()
            self.corral_rows.append({"name": name, "client": t1 - t0, "wall0": wall0,
                                     "qemu": qemu_seen[name] - t0 if name in qemu_seen else float("nan")})
        for row in self.corral_rows:
            got = self.stub.GetVirtualMachine(vm_pb2.GetVirtualMachineRequest(name=row["name"]), timeout=5)
            times = {}
            for tr in got.virtual_machine.status.phase_transitions:
                times.setdefault(tr.phase, tr.time.ToNanoseconds() / 1e9)
            row["server"] = times[vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING] - times[vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING]
            row["uid"] = got.virtual_machine.status.instance_uid  # the run directory is named by the run
        print("corral done\n", flush=True)

    # -- memory -----------------------------------------------------------------------------
    def measure_memory(self) -> None:
        root = str(self.cluster.node_root)
        launchers, qemus, others = [], [], []
        for pid in pids_mentioning(root):
            cmd = cmdline(pid)
            if "qemu-system" in exe(pid):
                qemus.append(pid)
            elif b"launcher.main" in cmd:
                launchers.append(pid)
            elif b"handler.main" in cmd:
                continue
            else:
                others.append(pid)  # any other per-VM process (a per-VM daemon)
        self.mem = {
            "launchers": [smaps(p) for p in launchers],
            "qemus": [smaps(p) for p in qemus],
            "others": [(cmdline(p).split(b"\0")[0].decode(errors="replace"), smaps(p)) for p in others],
            "handler": smaps(self.cluster.handlers["n1"].pid),
            "controller": smaps(next(iter(self.cluster.controllers.values()))[0].pid),
        }
        probe = subprocess.Popen([sys.executable, "-c", "import grpc, libvirt, sys; sys.stdout.write('ok\\n');"
                                  "sys.stdout.flush(); sys.stdin.readline()"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        probe.stdout.readline()
        self.mem["import_only"] = smaps(probe.pid)
        probe.stdin.close()
        probe.wait()

    # -- breakdown from logs ----------------------------------------------------------------
    def collect_logs(self) -> None:
        from handler.launchers import vm_dir_for
        state_dir = self.cluster.state_dir("n1")
        keep = self.work / "launcher-logs"
        keep.mkdir(exist_ok=True)
        for row in self.corral_rows:
            path = vm_dir_for(state_dir, row["uid"]) / "launcher.log"
            self.launcher_logs[row["name"]] = launcher_log(path)
            try:
                shutil.copy(path, keep / f"{row['name']}.log")
            except OSError:
                pass

    def breakdown(self) -> list[dict]:
        controller = json_log(self.work / "controller-c1.log")
        handler = json_log(self.work / "handler-n1.log")
        rows = []
        for row in self.corral_rows:
            name = re.escape(row["name"])
            ll = self.launcher_logs.get(row["name"], [])
            points = [
                ("client create", row["wall0"]),
                ("api stored", first(controller, rf"^created vm {name} ")),
                ("scheduled", first(controller, rf"^scheduled vm {name} ")),
                ("launcher spawned", first(handler, rf"^vm {name}: launcher pid")),
                ("launcher first log", ll[0][0] if ll else None),
                ("libvirt opened", first(ll, r"^opened ")),
                ("grpc serving", first(ll, r"^serving on ")),
                ("domain started", first(ll, r"^domain .* started: define")),
                ("status RUNNING", first(ll, r"^status: DOMAIN_STATE_RUNNING")),
                ("controller Running", first(controller, rf"^vm {name} on \S+ is Running")),
                ("client saw", row["wall0"] + row["client"]),
            ]
            rows.append(dict(points))
        return rows

    def corral_probes(self) -> int:
        """Launches whose define probed QEMU (the launcher log says so, launcher/supervisor.py)."""
        return sum(1 for ll in self.launcher_logs.values() if any("capabilities PROBED" in msg for _, msg in ll))

    def launcher_split(self, name: str) -> tuple[float, float] | None:
        for _, msg in self.launcher_logs.get(name, []):
            mm = re.search(r"define ([\d.]+)s, start ([\d.]+)s", msg)
            if mm:
                return float(mm.group(1)), float(mm.group(2))
        return None

    # -- report -----------------------------------------------------------------------------
    def report(self) -> None:
        n = self.n
        base = [d.result["define"] + d.result["start"] for d in self.baseline]
        opens = [d.result["open"] for d in self.baseline]
        walls = [d.wall for d in self.baseline]
        client = [r["client"] for r in self.corral_rows]
        server = [r["server"] for r in self.corral_rows]
        diff = [c - b for c, b in zip(client, base)]
        print(f"== create -> RUNNING, {n} VMs{' (settled: previous guest booted before the next start)' if self.args.settle else ''} (TCG, {MEMORY_MIB} MiB, 1 vCPU, kernel+initrd), one node ==")
        print(f"{'vm':>4} {'corral client':>14} {'corral server':>14} {'libvirt def+start':>18} "
              f"{'libvirt open':>13} {'corral - libvirt':>17}   define/start: libvirt | in launcher")
        for i in range(n):
            inl = self.launcher_split(self.corral_rows[i]["name"])
            print(f"{i:>4} {client[i]:>12.3f} s {server[i]:>12.3f} s {base[i]:>16.3f} s "
                  f"{opens[i]:>11.3f} s {diff[i]:>15.3f} s   "
                  f"{self.baseline[i].result['define']:.2f}/{self.baseline[i].result['start']:.2f} | "
                  f"{inl[0]:.2f}/{inl[1]:.2f}" if inl else "")
        print()
        print(f"{'':28} {'p50':>9} {'p95':>9}   target")
        def line(label: str, values: list[float], target: str = "") -> None:
            print(f"{label:28} {statistics.median(values):>7.3f} s {pct(values, 95):>7.3f} s   {target}")
        line("corral create->RUNNING", client, f"(KubeVirt CI accepts p50 {KUBEVIRT_P50:.0f} s / p95 {KUBEVIRT_P95:.0f} s)")
        line("corral server-side", server, "(PENDING -> RUNNING transition times)")
        line("libvirt define+start", base)
        line("libvirt connection open", opens)
        line("libvirt child spawn->started", walls, "(process start + imports + open + define + start)")
        p50d = statistics.median(diff)
        line("corral - libvirt", diff, f"(target p50 < {TARGET_OVERHEAD_P50} s: "
             f"{'MET' if p50d < TARGET_OVERHEAD_P50 else 'NOT MET'})")
        qemu = [r["qemu"] for r in self.corral_rows if not math.isnan(r["qemu"])]
        if qemu:
            line("corral create->QEMU exists", qemu, f"(target p95 <= {TARGET_QEMU_P95} s: "
                 f"{'MET' if pct(qemu, 95) <= TARGET_QEMU_P95 and not self.corral_probes() else 'NOT MET'})")
        r50 = statistics.median(client) / statistics.median(base)
        r95 = pct(client, 95) / pct(base, 95)
        print(f"{'ratio corral / libvirt':28} {r50:>8.2f}x {r95:>8.2f}x")
        print(f"(p95 is nearest-rank: with {n} VMs it is the {math.ceil(0.95 * n)}th smallest)")
        corral_probes = self.corral_probes()
        baseline_probes = sum(1 for d in self.baseline if d.result.get("probed"))
        print(f"QEMU capability probes during define: corral {corral_probes}/{n}, libvirt baseline "
              f"{baseline_probes}/{n}")
        if corral_probes:
            print("WARNING: Corral's launchers probed QEMU instead of using the node's capabilities cache: "
                  "those creates paid seconds a warm node does not (the targets above count as NOT MET)")
        if baseline_probes:
            print("WARNING: the libvirt baseline probed QEMU: its times are inflated, and the ratio and "
                  "difference flatter Corral")
        print()

        m = self.mem
        lp = [x.get("Pss", 0) for x in m["launchers"]]
        lr = [x.get("Rss", 0) for x in m["launchers"]]
        qp = [x.get("Pss", 0) for x in m["qemus"]]
        qr = [x.get("Rss", 0) for x in m["qemus"]]
        op = sum(x.get("Pss", 0) for _, x in m["others"])
        print(f"== memory with all {n} running (PSS from smaps_rollup; MiB) ==")
        print(f"launchers found: {len(lp)}, QEMU processes: {len(qp)}, other per-VM processes: "
              f"{len(m['others'])} {sorted({c for c, _ in m['others']}) or ''}")
        if lp:
            per_vm = (sum(lp) + op) / max(1, len(lp))
            print(f"launcher PSS   mean {mib(statistics.mean(lp)):6.1f}  max {mib(max(lp)):6.1f}   "
                  f"RSS mean {mib(statistics.mean(lr)):6.1f}  max {mib(max(lr)):6.1f}")
            print(f"Corral per VM (launcher + per-VM daemons, PSS): {mib(per_vm):.1f} MiB   "
                  f"target < {TARGET_MIB_PER_VM:.0f} MiB: {'MET' if mib(per_vm) < TARGET_MIB_PER_VM else 'NOT MET'}   "
                  f"(KubeVirt reserves {KUBEVIRT_MIB_PER_VM} MiB)")
        if qp:
            print(f"QEMU (excluded) PSS mean {mib(statistics.mean(qp)):6.1f}  max {mib(max(qp)):6.1f}   "
                  f"RSS mean {mib(statistics.mean(qr)):6.1f}")
        hp, cp = m["handler"].get("Pss", 0), m["controller"].get("Pss", 0)
        print(f"per node, for information: handler PSS {mib(hp):.1f} ({mib(hp) / n:.1f} per VM at {n}), "
              f"controller PSS {mib(cp):.1f}")
        bp = self.baseline_child_pss
        print(f"context: python importing grpc+libvirt only: PSS {mib(m['import_only'].get('Pss', 0)):.1f} "
              f"RSS {mib(m['import_only'].get('Rss', 0)):.1f}; baseline child (python+libvirt embed, "
              f"no grpc, {n} running) PSS mean {mib(statistics.mean(bp)):.1f}")
        print()

        rows = self.breakdown()
        names = list(rows[0].keys())
        print("== where corral's time goes (from logs, ms resolution; p50 / p95 per step, s) ==")
        total50 = 0.0
        for a, b in zip(names, names[1:]):
            steps = [r[b] - r[a] for r in rows if r[a] is not None and r[b] is not None]
            if not steps:
                print(f"  {a:>18} -> {b:<18}   (not in logs)")
                continue
            total50 += statistics.median(steps)
            print(f"  {a:>18} -> {b:<18} {statistics.median(steps):7.3f} {pct(steps, 95):7.3f}")
        print(f"  (sum of step medians {total50:.3f} s; libvirt's define+start in the launcher log: ", end="")
        dl = []
        for ll in self.launcher_logs.values():
            for _, msg in ll:
                mm = re.search(r"define ([\d.]+)s, start ([\d.]+)s", msg)
                if mm:
                    dl.append(float(mm.group(1)) + float(mm.group(2)))
        print(f"p50 {statistics.median(dl):.3f} s)" if dl else "n/a)")

    # -- cleanup ----------------------------------------------------------------------------
    def cleanup(self) -> None:
        if self.watch_call is not None:
            self.watch_stop.set()
            self.watch_call.cancel()
        if self.cluster is not None:
            try:
                self.delete_all()
            except Exception as exc:  # noqa: BLE001 - the kills below still run
                print(f"cleanup: deleting through the API failed: {exc!r}", file=sys.stderr)
            self.cluster.close()  # kills handler, controller, launchers and QEMU of its node root
        for d in self.baseline:
            try:
                d.destroy()
            except Exception:  # noqa: BLE001
                pass
        if self.etcd is not None:
            self.etcd.stop()
        kill_mentioning(str(self.work))
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            print(f"kept {self.work}")

    def delete_all(self) -> None:
        from corral.v1 import vm_pb2
        stub = getattr(self, "stub", None)
        if stub is None or not self.cluster.handlers:
            return
        names = [vm.metadata.name for vm in stub.ListVirtualMachines(
            vm_pb2.ListVirtualMachinesRequest(page_size=1000), timeout=10).virtual_machines]
        for name in names:
            stub.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name=name), timeout=10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not stub.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(page_size=1000),
                                            timeout=10).virtual_machines:
                return
            time.sleep(0.2)
        print("cleanup: VMs still present after 60 s; killing", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20, help="VMs (default 20)")
    parser.add_argument("--guest-dir", default="/var/tmp/corral-guest", help="kernel + initrd (built if missing)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per VM to reach RUNNING")
    parser.add_argument("--settle", action="store_true",
                        help="in both runs, wait (untimed) for the previous guest's readiness line on its "
                             "serial console before starting the next: N-1 idle guests instead of booting ones")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    parser.add_argument("--baseline-child", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--capcache", help=argparse.SUPPRESS)
    parser.add_argument("--save-cache", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_child:
        return baseline_child(args)
    if os.geteuid() != 0:
        print("note: not root; the embedded QEMU driver may still work, the figures assume root", file=sys.stderr)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args)
    try:
        bench.build_guest()
        bench.warm_cache()
        bench.run_baseline()
        bench.run_corral()
        bench.measure_memory()
        bench.collect_logs()
        bench.report()
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
