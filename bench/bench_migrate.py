#!/usr/bin/env python3
"""Benchmark: live migration time and downtime through Corral against libvirt's own migration
of the same domain, run directly. A benchmark, not a test: it prints figures.

    .venv/bin/python bench/bench_migrate.py [--rounds N] [--guest-dir DIR] [--memory-mib M]
                                            [--auto-converge auto|on|off] [--tls] [--keep]

Two nodes are network namespaces on one bridge (tests/netnodes.py, as tests/test_migration.py).
A guest of 256 MiB (TCG, kernel+initrd from scripts/build-guest.sh), N rounds of A->B then
B->A, two cases: idle, and with a memory-dirtying loop started in the guest through the
serial console (64 MiB of 'x' from ``dd | tr`` into the guest's RAM-backed /tmp, again and again:
not zeros, which QEMU does not resend; the guest's rootfs is a tmpfs capped at half its RAM).

1. Corral: etcd, a controller, two handlers in session mode; the VM created through the API
   on na; each move is CreateMigration, then GetMigration every 50 ms until SUCCEEDED. Time =
   from the CreateMigration call to the first Get that says SUCCEEDED; downtime = the
   Migration's (libvirt's, read on the target); the split from its phase_transitions.
2. libvirt alone: the same domain XML (launcher.domain_xml with the options a session-mode
   launcher uses) under two session daemons (one per namespace, each as its own unprivileged
   uid, started with launcher/session.py as a launcher does, capabilities cache seeded from
   the Corral node's), defined and started on A, migrated with ``migrateToURI3`` peer to peer
   straight to the target daemon's socket: the flags and parameters Corral's launcher uses
   (launcher.migration.Plan: LIVE|PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE, tcp:// on the
   target's address, LISTEN_ADDRESS, DEST_XML and PERSIST_XML with the target's paths).
   Time = the migrateToURI3 call; downtime = the target's completed job stats. The daemons
   stay up across rounds (Corral starts fresh ones on every target: part of its overhead).
   For the direct connection each VM directory and socket is opened to the other uid, and
   each daemon's nss_wrapper passwd names the other uid.
Between two moves (untimed) Corral waits until the VM is Running on the target with one QEMU
left, then 1 s; libvirt alone waits 1 s.

No cgroup limits on either side: the handlers run under ``ip netns exec``, which mounts a
fresh /sys, so they find no cgroup tree and run their VMs without limits (they say so in
their logs), like the libvirt-alone QEMU.

Post-copy (``--cases postcopy``, not in the default): a faster dirtying loop (FAST_DIRTY_LOAD,
a memcpy of 32 MiB over the same pages again and again) against a link limited to
POSTCOPY_MIB_PER_S, so pre-copy cannot converge; both sides switch to post-copy after
POSTCOPY_SWITCH_S (Corral through its policy: allow_post_copy and a completion timeout; libvirt
alone with migrateStartPostCopy). Downtime there is QEMU's, read on the source from libvirt's
JOB_COMPLETED event on both sides (the target's stats have none after post-copy). Needs
vm.unprivileged_userfaultfd=1 (scripts/install.sh).

Auto-converge: ``auto`` (default) tries the dirty case without it; if a Corral migration
fails to converge, the dirty case is redone with auto-converge in both runs (said in the output).
"""
from __future__ import annotations

import argparse
import json
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VM_NAME = "bench-mig"
CMDLINE = "console=ttyS0 quiet"
READY_LINE = b"CORRAL-GUEST-READY"
#: Non-zero bytes: QEMU sends a page of zeros as a flag only (zero-page detection), so a loop of
#: ``dd if=/dev/zero`` dirties pages that cost nothing to resend (measured: less memory sent than idle).
DIRTY_LOAD = b"(while :; do dd if=/dev/zero bs=1M count=64 2>/dev/null | tr '\\0' x > /tmp/dirty; done) &"
#: The guest has no ps (and busybox grep stops at a cmdline's first NUL): count dd processes by
#: their stat line's comm.
DIRTY_CHECK = b"echo DD=$(grep -ls '(dd)' /proc/[0-9]*/stat | grep -c .)"
#: Baseline VM users: above Corral's default range (200000 + 65536), unused by anything else.
BASE_UIDS = (265600, 265601)
#: The part of Corral's time that holds libvirt's own migration (the rest is the control plane).
SOURCE_JOB = "Target_Ready -> Succeeded (source's job)"
MIGRATION_TIMEOUT = 120.0  # s, for either side (Corral's own completion timeout is shorter)
#: Post-copy case: a loop that rewrites the same 32 MiB of the guest's RAM with a kernel memcpy
#: (dd of a file of 'x' over another, conv=notrunc), far faster than POSTCOPY_MIB_PER_S, so
#: pre-copy cannot converge; after POSTCOPY_SWITCH_S of pre-copy the job switches to post-copy
#: (Corral: the policy's allow_post_copy and its completion timeout, as KubeVirt; libvirt
#: alone: migrateStartPostCopy at the same moment). The limit holds after the switch too.
FAST_DIRTY_LOAD = (b"dd if=/dev/zero bs=1M count=32 2>/dev/null | tr '\\0' x > /tmp/src; cp /tmp/src /tmp/fast; "
                   b"(while :; do dd if=/tmp/src of=/tmp/fast bs=1M conv=notrunc 2>/dev/null; done) &")
POSTCOPY_MIB_PER_S = 8
POSTCOPY_SWITCH_S = 5.0


def make_vm(name: str, guest_dir: Path, memory_mib: int, uid: str = ""):
    from corral.v1 import vm_pb2
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = name
    if uid:
        vm.metadata.uid = uid
        vm.status.instance_uid = uid
    vm.spec.vcpus = 1
    vm.spec.memory_mib = memory_mib
    vm.spec.boot.kernel.kernel_path = str(guest_dir / "vmlinuz")
    vm.spec.boot.kernel.initrd_path = str(guest_dir / "initrd.gz")
    vm.spec.boot.kernel.cmdline = CMDLINE
    vm.spec.eviction_strategy = vm_pb2.EVICTION_STRATEGY_LIVE_MIGRATE
    return vm


def session_xml(vm, vm_dir: str) -> str:
    """The domain XML a session-mode launcher in vm_dir builds (launcher/main.py's options)."""
    from launcher import domain_xml
    from launcher.main import AGENT_SOCKET, SERIAL_LOG
    return domain_xml.build_domain_xml(vm, domain_xml.DomainOptions(
        emulation=True, serial_log_path=os.path.join(vm_dir, SERIAL_LOG),
        agent_socket_path=os.path.join(vm_dir, AGENT_SOCKET), run_dir=vm_dir))


# ---------------------------------------------------------------------------------------
# Baseline agent: runs in a node's namespace as its VM user, owns that node's session daemons.
# One JSON request per stdin line, one JSON answer per stdout line.
# ---------------------------------------------------------------------------------------
def agent(args: argparse.Namespace) -> int:
    import libvirt

    from launcher import privileges, session
    vm_dir = args.agent
    privileges.drop_to_owner(vm_dir)
    session.prepare(vm_dir)
    with open(os.path.join(vm_dir, session.PASSWD_FILE), "a") as f:  # the peer daemon's user
        for uid in args.peer_uid:
            f.write(f"vm{uid}:x:{uid}:{uid}:corral:/nonexistent:/bin/false\n")
    with open(os.path.join(vm_dir, session.GROUP_FILE), "a") as f:
        for uid in args.peer_uid:
            f.write(f"vm{uid}:x:{uid}:\n")
    session.seed_capabilities(vm_dir, args.capcache)
    session.start_daemons(vm_dir)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    libvirt.virEventRegisterDefaultImpl()  # JOB_COMPLETED events (the post-copy downtime)

    def run_events() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()
    threading.Thread(target=run_events, daemon=True).start()
    conn = libvirt.open(session.uri(vm_dir))

    def reply(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True})
    try:
        for line in sys.stdin:
            req = json.loads(line)
            op = req["op"]
            try:
                if op == "start":
                    dom = conn.defineXML(req["xml"])
                    dom.create()
                    reply({"ok": True})
                elif op == "migrate":
                    reply(_agent_migrate(conn, req))
                elif op == "completed":
                    stats = conn.lookupByName(req["name"]).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
                    reply({"ok": True, "stats": {k: v for k, v in stats.items() if isinstance(v, (int, float))}})
                elif op == "console":
                    reply(_agent_console(conn, req))
                elif op == "destroy":
                    for dom in conn.listAllDomains():
                        try:
                            dom.destroy()
                        except libvirt.libvirtError:
                            pass
                        try:
                            dom.undefine()
                        except libvirt.libvirtError:
                            pass
                    reply({"ok": True})
                elif op == "exit":
                    break
            except libvirt.libvirtError as e:
                reply({"ok": False, "error": e.get_error_message() or str(e)})
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
        session.stop_daemons(vm_dir)
    return 0


def _agent_migrate(conn, req: dict) -> dict:
    import libvirt

    from corral.v1 import launcher_pb2
    from launcher.migration import Plan
    post_copy = req.get("post_copy", False)
    request = launcher_pb2.MigrateDomainRequest(
        destination_uri=req["dconnuri"], migration_uri=req["uri"], destination_xml=req["dest_xml"],
        listen_address=req["listen"], allow_auto_converge=req["auto_converge"],
        bandwidth_mib_per_second=req.get("bandwidth", 0), allow_post_copy=post_copy)
    plan = Plan.from_request(request, post_copy=post_copy)
    dom = conn.lookupByName(req["name"])
    done = threading.Event()
    aborted = []
    completed: dict = {}
    got_completed = threading.Event()

    def on_completed(_conn, _dom, params, _opaque) -> None:  # the source's stats (post-copy downtime)
        completed.update(params)
        got_completed.set()
    callback = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_completed, None)
    switched = []

    def watchdog() -> None:  # libvirt itself never gives up on a migration that does not converge
        if post_copy and not done.wait(req["switch_after"]):
            try:
                dom.migrateStartPostCopy()
                switched.append(True)
            except libvirt.libvirtError:
                pass
        if not done.wait(req["timeout"]):
            aborted.append(True)
            try:
                dom.abortJob()
            except libvirt.libvirtError:
                pass

    threading.Thread(target=watchdog, daemon=True).start()
    t0 = time.monotonic()
    try:
        dom.migrateToURI3(plan.destination_uri, plan.params, plan.flags)
        wall = time.monotonic() - t0
        got_completed.wait(2.0)
        return {"ok": True, "wall": wall, "flags": plan.flags, "post_copy": bool(switched),
                "source_downtime_ms": int(completed.get("downtime", 0))}
    except libvirt.libvirtError as e:
        return {"ok": False, "wall": time.monotonic() - t0,
                "error": ("aborted after timeout: " if aborted else "") + (e.get_error_message() or str(e))}
    finally:
        done.set()
        try:
            conn.domainEventDeregisterAny(callback)
        except libvirt.libvirtError:
            pass


def _agent_console(conn, req: dict) -> dict:
    """Type req['send'] at the serial shell's prompt and wait for req['expect'] after it."""
    import libvirt
    dom = conn.lookupByName(req["name"])
    stream = conn.newStream(0)
    dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
    buf = bytearray()
    lock = threading.Lock()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                data = stream.recv(4096)
            except libvirt.libvirtError:
                return
            if isinstance(data, int) or not data:
                if data == -2:
                    time.sleep(0.05)
                    continue
                return
            with lock:
                buf.extend(data)

    threading.Thread(target=reader, daemon=True).start()

    def expect(pattern: bytes, since: int, timeout: float, poke: bool = False):
        deadline, next_poke = time.monotonic() + timeout, 0.0
        while time.monotonic() < deadline:
            with lock:
                m = re.search(pattern, bytes(buf[since:]))
            if m:
                return m
            if poke and time.monotonic() >= next_poke:
                stream.send(b"\n")
                next_poke = time.monotonic() + 1.0
            time.sleep(0.05)
        return None

    try:
        if expect(rb"# ", 0, req.get("timeout", 60), poke=True) is None:
            return {"ok": False, "error": f"no prompt: {bytes(buf[-300:])!r}"}
        with lock:
            since = len(buf)
        stream.send(req["send"].encode() + b"\n")
        m = expect(req["expect"].encode(), since, req.get("timeout", 60))
        if m is None:
            return {"ok": False, "error": f"no {req['expect']!r}: {bytes(buf[-300:])!r}"}
        return {"ok": True, "match": m.group(0).decode(errors="replace"),
                "groups": [g.decode(errors="replace") for g in m.groups()]}
    finally:
        stop.set()
        try:
            stream.abort()
        except libvirt.libvirtError:
            pass


class Agent:
    """The parent's handle on one baseline agent (ip netns exec NS python THIS --agent DIR)."""

    def __init__(self, netns: str, vm_dir: Path, capcache: Path, peer_uid: int, log: Path) -> None:
        self.vm_dir = vm_dir
        self.log = open(log, "ab")
        cmd = ["ip", "netns", "exec", netns, sys.executable, str(Path(__file__).resolve()),
               "--agent", str(vm_dir), "--capcache", str(capcache), "--peer-uid", str(peer_uid)]
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, start_new_session=True,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
        self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"baseline agent for {self.vm_dir} exited ({self.process.wait()}); "
                               f"see {self.log.name}")
        return json.loads(line)

    def call(self, **req) -> dict:
        self.process.stdin.write(json.dumps(req) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def kill_uid(uid: int) -> None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def uid_in_use(uid: int) -> bool:
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                return True
        except OSError:
            continue
    return False


def wait_file_has(path: Path, text: bytes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in path.read_bytes():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no {text!r} in {path} after {timeout:.0f} s")


def stats_line(values: list[float], unit: str, fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    return (f"{fmt.format(statistics.median(values))} {unit} "
            f"({fmt.format(min(values))}-{fmt.format(max(values))})")


# ---------------------------------------------------------------------------------------
# main run
# ---------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.guest_dir = Path(args.guest_dir).resolve()
        self.work = Path(tempfile.mkdtemp(prefix="cbm-", dir="/tmp"))  # short: socket paths
        os.chmod(self.work, 0o755)
        self.net = None
        self.agents: dict[str, Agent] = {}
        self.capcache = self.work / "capcache"
        self.auto_converge = args.auto_converge == "on"
        self.ac_note = ""
        # results[(side, case)] = list of per-migration dicts
        self.results: dict[tuple[str, str], list[dict]] = {}

    def build_guest(self) -> None:
        if (self.guest_dir / "vmlinuz").exists() and (self.guest_dir / "initrd.gz").exists():
            return
        print(f"building the guest in {self.guest_dir} ...", flush=True)
        subprocess.run([str(REPO / "scripts" / "build-guest.sh"), str(self.guest_dir)], check=True)

    # -- Corral -----------------------------------------------------------------------------
    def start_cluster(self) -> None:
        from tests.netnodes import TLSNodes, TwoNodes
        kind = TLSNodes if self.args.tls else TwoNodes  # TLS: the proxy tunnels QEMU's stream
        self.net = kind(self.work, self.guest_dir, prefix=f"/bench-mig-{os.getpid()}/")
        if self.args.tls and self.args.stream:  # else the handlers' default: tunnelled
            self.net.stream = self.args.stream
        self.net.open()
        for node in ("na", "nb"):
            self.net.start_handler(node, memory_mib=2048)

    def corral_console(self, command: bytes, answer: bytes) -> re.Match:
        from handler.isolation import remove_stale_console_locks

        from tests.test_console import Console
        remove_stale_console_locks()
        console = Console(self.net.cluster.vms, VM_NAME)
        try:
            return console.run(command, answer, timeout=60)
        finally:
            console.close()

    def corral_migrate(self, target: str, case: str = "") -> dict:
        from corral.v1 import migration_pb2 as M
        from corral.v1 import vm_pb2
        client = self.net.client
        policy = {"allow_auto_converge": True} if self.auto_converge else {}
        if case == "postcopy":  # switch after POSTCOPY_SWITCH_S of pre-copy
            policy.update(allow_post_copy=True, bandwidth_mib_per_second=POSTCOPY_MIB_PER_S,
                          completion_timeout_per_gib_seconds=max(1, int(POSTCOPY_SWITCH_S * 1024
                                                                        / self.args.memory_mib)))
        before = self.net.cluster.get(VM_NAME)
        t0 = time.monotonic()
        migration = client.create_migration(VM_NAME, target, **policy)
        name = migration.metadata.name
        while True:
            migration = client.get_migration(name)
            if migration.status.phase in (M.MIGRATION_PHASE_SUCCEEDED, M.MIGRATION_PHASE_FAILED):
                break
            if time.monotonic() - t0 > MIGRATION_TIMEOUT:
                client.cancel_migration(name)
                raise RuntimeError(f"migration {name} not done after {MIGRATION_TIMEOUT:.0f} s")
            time.sleep(0.05)
        total = time.monotonic() - t0
        status = migration.status
        row = {"ok": status.phase == M.MIGRATION_PHASE_SUCCEEDED, "total": total,
               "downtime_ms": status.downtime_ms, "processed": status.data_processed_bytes,
               "reason": status.reason, "message": status.message,
               "post_copy": status.mode == M.MIGRATION_MODE_POST_COPY,
               "transitions": [(t.phase, t.time.ToNanoseconds() / 1e9) for t in status.phase_transitions]}
        # Untimed: let the source's run end (its QEMU and daemons go) before the next move.
        uid = before.status.instance_uid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            vm = self.net.cluster.get(VM_NAME)
            want = target if row["ok"] else before.status.node_name
            if (vm.status.node_name == want and vm.status.phase == vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
                    and not vm.status.migration_target.migration_name and len(qemu_pids(uid)) == 1):
                break
            time.sleep(0.1)
        time.sleep(1.0)
        # The downtime comes with the target's report, which may land after the first
        # SUCCEEDED (the source's); the bytes with the last progress report.
        deadline = time.monotonic() + 10
        while row["ok"] and not row["downtime_ms"] and time.monotonic() < deadline:
            status = client.get_migration(name).status
            row.update(downtime_ms=status.downtime_ms, processed=status.data_processed_bytes)
            time.sleep(0.2)
        return row

    def run_corral(self) -> None:
        from corral.v1 import vm_pb2
        print("corral: two namespace nodes, etcd, a controller, handlers in session mode ...", flush=True)
        self.start_cluster()
        vm = make_vm(VM_NAME, self.guest_dir, self.args.memory_mib)
        vm.spec.node_selector.clear()
        self.net.cluster.create(vm)
        vm = self.net.cluster.wait_phase(VM_NAME, vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING, timeout=120)
        if vm.status.node_name != "na":  # put it on na first (untimed)
            self.corral_migrate("na")
        wait_file_has(Path(self.net.cluster.get(VM_NAME).status.serial_log_path), READY_LINE, 120)
        print(f"corral: {VM_NAME} ({self.args.memory_mib} MiB) running on na", flush=True)
        for case in self.cases():
            if case == "dirty":
                self.corral_start_load()
            if case == "postcopy":
                self.corral_console(FAST_DIRTY_LOAD, rb"\[\d+\] \d+|# ")
                time.sleep(2)
            while True:
                rows = self.corral_rounds(case)
                if case == "dirty" and not all(r["ok"] for r in rows) and not self.auto_converge \
                        and self.args.auto_converge == "auto":
                    failed = next(r for r in rows if not r["ok"])
                    self.auto_converge = True
                    self.ac_note = (f"the dirty case did not converge without auto-converge (Corral: "
                                    f"{failed['reason']}: {failed['message'][:120]}); redone with "
                                    f"auto-converge in both runs")
                    print(f"  {self.ac_note}", flush=True)
                    continue
                break
            self.results[("corral", case)] = rows
        self.net.cluster.vms.DeleteVirtualMachine(vm_pb2.DeleteVirtualMachineRequest(name=VM_NAME), timeout=10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.net.cluster.vms.ListVirtualMachines(
                vm_pb2.ListVirtualMachinesRequest(), timeout=10).virtual_machines:
            time.sleep(0.2)
        print("corral done\n", flush=True)

    def corral_start_load(self) -> None:
        self.corral_console(DIRTY_LOAD, rb"\[\d+\] \d+|# ")
        for _ in range(3):
            m = self.corral_console(DIRTY_CHECK, rb"DD=(\d+)")
            if int(m.group(1)) >= 1:
                break
        else:
            raise RuntimeError("the dirtying loop does not run in the Corral guest")
        print(f"corral: dirtying loop running in the guest (dd processes seen: {m.group(1).decode()})", flush=True)
        time.sleep(2)

    def corral_rounds(self, case: str) -> list[dict]:
        rows = []
        node = self.net.cluster.get(VM_NAME).status.node_name
        for i in range(self.args.rounds):
            for _ in range(2):
                target = self.net.other(node)
                row = self.corral_migrate(target, case)
                row.update(case=case, direction=f"{node}->{target}", auto_converge=self.auto_converge)
                rows.append(row)
                print(f"  corral {case:5} round {i + 1} {node}->{target}: "
                      + (f"{row['total']:.2f} s, downtime {row['downtime_ms']} ms" if row["ok"]
                         else f"FAILED {row['reason']}: {row['message'][:160]}"), flush=True)
                if not row["ok"]:
                    if case == "dirty" and not self.auto_converge and self.args.auto_converge == "auto":
                        return rows
                    continue
                node = target
        return rows

    def cases(self) -> list[str]:
        return [c for c in ("idle", "dirty", "postcopy") if c in self.args.cases.split(",")]

    # -- baseline ---------------------------------------------------------------------------
    def run_baseline(self) -> None:
        print("libvirt alone: two session daemons (one per namespace node, own uids), "
              "migrateToURI3 peer to peer, direct ...", flush=True)
        for uid in BASE_UIDS:
            if uid_in_use(uid):
                raise RuntimeError(f"uid {uid} is in use: cannot run the baseline as it")
        # the Corral node's warm session-mode capabilities cache (copied before it went)
        self.capcache.chmod(0o755)
        for path in self.capcache.iterdir():
            path.chmod(0o644)
        nodes = {"na": self.work / "a", "nb": self.work / "b"}
        for (node, d), uid in zip(nodes.items(), BASE_UIDS):
            d.mkdir()
            os.chown(d, uid, uid)
            d.chmod(0o700)
        self.base_dirs = nodes
        for (node, d), peer in zip(nodes.items(), reversed(BASE_UIDS)):
            self.agents[node] = Agent(self.net.netns[node], d, self.capcache, peer, self.work / f"agent-{node}.log")
        for d in nodes.values():  # the peer daemon reaches this one's socket directly
            for sub in (d, d / "run", d / "run" / "libvirt"):
                sub.chmod(0o711)
            (d / "run" / "libvirt" / "libvirt-sock").chmod(0o777)
        import uuid as uuidlib
        self.base_vm = make_vm(VM_NAME, self.guest_dir, self.args.memory_mib, str(uuidlib.uuid4()))
        got = self.agents["na"].call(op="start", xml=session_xml(self.base_vm, str(nodes["na"])))
        if not got.get("ok"):
            raise RuntimeError(f"baseline start: {got}")
        wait_file_has(nodes["na"] / "serial.log", READY_LINE, 120)
        print(f"libvirt: {VM_NAME} ({self.args.memory_mib} MiB) running on na", flush=True)
        self.base_node = "na"
        self.port = 49300
        for case in self.cases():
            if case == "dirty":
                self.base_start_load()
            if case == "postcopy":
                self.base_console(FAST_DIRTY_LOAD, r"\[\d+\] \d+|# ")
                time.sleep(2)
            self.results[("libvirt", case)] = self.base_rounds(case)
        self.agents[self.base_node].call(op="destroy")
        print("libvirt done\n", flush=True)

    def base_console(self, command: bytes, answer: bytes) -> dict:
        from handler.isolation import remove_stale_console_locks
        remove_stale_console_locks()
        got = self.agents[self.base_node].call(op="console", name=VM_NAME, send=command.decode(),
                                               expect=answer, timeout=60)
        if not got.get("ok"):
            raise RuntimeError(f"baseline console: {got}")
        return got

    def base_start_load(self) -> None:
        self.base_console(DIRTY_LOAD, r"\[\d+\] \d+|# ")
        for _ in range(3):
            got = self.base_console(DIRTY_CHECK, r"DD=(\d+)")
            if int(got["groups"][0]) >= 1:
                break
        else:
            raise RuntimeError("the dirtying loop does not run in the baseline guest")
        print(f"libvirt: dirtying loop running in the guest (dd processes seen: {got['groups'][0]})", flush=True)
        time.sleep(2)

    def base_migrate(self, target: str, case: str = "") -> dict:
        source = self.base_node
        self.port += 1
        dest = self.base_dirs[target]
        address = self.net.addresses[target]
        got = self.agents[source].call(
            op="migrate", name=VM_NAME, dconnuri=f"qemu+unix:///session?socket={dest}/run/libvirt/libvirt-sock",
            uri=f"tcp://{address}:{self.port}", listen=address, dest_xml=session_xml(self.base_vm, str(dest)),
            auto_converge=self.auto_converge, timeout=MIGRATION_TIMEOUT, post_copy=case == "postcopy",
            bandwidth=POSTCOPY_MIB_PER_S if case == "postcopy" else 0, switch_after=POSTCOPY_SWITCH_S)
        row = {"ok": got["ok"], "total": got["wall"], "error": got.get("error", ""),
               "post_copy": got.get("post_copy", False)}
        if got["ok"]:
            self.base_node = target
            stats = self.agents[target].call(op="completed", name=VM_NAME).get("stats", {})
            row.update(downtime_ms=int(stats.get("downtime", 0)), processed=int(stats.get("memory_processed", 0)),
                       elapsed_ms=int(stats.get("time_elapsed", 0)))
            if case == "postcopy":  # the target's stats have no downtime after post-copy: the source's
                row["downtime_ms"] = got.get("source_downtime_ms", 0)
        time.sleep(1.0)  # as on the Corral side: the source's QEMU goes
        return row

    def base_rounds(self, case: str) -> list[dict]:
        rows = []
        for i in range(self.args.rounds):
            for _ in range(2):
                node = self.base_node
                target = "nb" if node == "na" else "na"
                row = self.base_migrate(target, case)
                row.update(case=case, direction=f"{node}->{target}", auto_converge=self.auto_converge)
                rows.append(row)
                print(f"  libvirt {case:5} round {i + 1} {node}->{target}: "
                      + (f"{row['total']:.2f} s, downtime {row['downtime_ms']} ms, "
                         f"{row['processed'] / 2**20:.0f} MiB sent" if row["ok"] else f"FAILED {row['error'][:200]}"),
                      flush=True)
        return rows

    # -- report -----------------------------------------------------------------------------
    def report(self) -> None:
        from corral.v1 import migration_pb2 as M
        a = self.args
        print(f"== live migration, {a.memory_mib} MiB TCG guest (1 vCPU), two namespace nodes on one "
              f"bridge, {a.rounds} rounds of na->nb->na per case ==")
        print("corral's nodes: " + (f"mutual TLS, QEMU's stream: migration_stream {a.stream}" if a.tls and a.stream
                                    else "mutual TLS, QEMU's stream tunnelled through the proxy (VIR_MIGRATE_TUNNELLED)"
                                    if a.tls else "plaintext (--insecure), QEMU's stream direct (tcp://)"))
        if self.ac_note:
            print(f"note: {self.ac_note}")
        print("corral = CreateMigration call to GetMigration saying Succeeded (polled every 50 ms); "
              "libvirt = the migrateToURI3 call.\ndowntime: libvirt's (the target's completed job stats) "
              "on both sides. Figures: median (min-max).\n")
        for case in self.cases():
            c = [r for r in self.results.get(("corral", case), []) if r["ok"]]
            b = [r for r in self.results.get(("libvirt", case), []) if r["ok"]]
            nc = len(self.results.get(("corral", case), []))
            nb = len(self.results.get(("libvirt", case), []))
            ac = any(r.get("auto_converge") for r in self.results.get(("corral", case), []) + 
                     self.results.get(("libvirt", case), []))
            print(f"-- {case}{' (dirtying loop in the guest)' if case == 'dirty' else ''}"
                  f"{', auto-converge on' if ac else ''} --")
            print(f"{'':26} {'corral':>26} {'libvirt alone':>26} {'ratio':>7}")
            ct, bt = [r["total"] for r in c], [r["total"] for r in b]
            cd, bd = [r["downtime_ms"] for r in c], [r["downtime_ms"] for r in b]
            bp = [r["processed"] / 2**20 for r in b]

            def ratio(x, y):
                return f"{statistics.median(x) / statistics.median(y):6.2f}x" if x and y and statistics.median(y) else "     -"
            print(f"{'total time':26} {stats_line(ct, 's'):>26} {stats_line(bt, 's'):>26} {ratio(ct, bt):>7}")
            print(f"{'downtime':26} {stats_line(cd, 'ms', '{:.0f}'):>26} {stats_line(bd, 'ms', '{:.0f}'):>26} "
                  f"{ratio(cd, bd):>7}")
            print(f"{'memory sent':26} {'(not in the Migration)':>26} {stats_line(bp, 'MiB', '{:.0f}'):>26}")
            if ct and bt:
                print(f"{'corral - libvirt (median)':26} {statistics.median(ct) - statistics.median(bt):>22.2f} s")
            print(f"{'succeeded':26} {f'{len(c)}/{nc}':>26} {f'{len(b)}/{nb}':>26}")
            if case == "postcopy":
                pc = sum(1 for r in c if r.get("post_copy"))
                pb = sum(1 for r in b if r.get("post_copy"))
                print(f"{'switched to post-copy':26} {f'{pc}/{len(c)}':>26} {f'{pb}/{len(b)}':>26}")
                print(f"(link {POSTCOPY_MIB_PER_S} MiB/s, switch after {POSTCOPY_SWITCH_S:.0f} s of pre-copy; "
                      "downtime: QEMU's at the switch, read on the source from libvirt's JOB_COMPLETED event)")
            # Corral's split from the Migration's phase transitions (server clock)
            segments: dict[str, list[float]] = {}
            order: list[str] = []
            for r in c:
                trs = r["transitions"]
                for (p1, t1), (p2, t2) in zip(trs, trs[1:]):
                    key = f"{M.MigrationPhase.Name(p1)[16:].title()} -> {M.MigrationPhase.Name(p2)[16:].title()}"
                    if key not in segments:
                        order.append(key)
                    segments.setdefault(key, []).append(t2 - t1)
                if trs:
                    segments.setdefault("(client) call -> first phase + after last", []).append(
                        r["total"] - (trs[-1][1] - trs[0][1]))
                at = dict(reversed(trs))  # the first time of each phase
                if M.MIGRATION_PHASE_TARGET_READY in at and M.MIGRATION_PHASE_SUCCEEDED in at:
                    segments.setdefault(SOURCE_JOB, []).append(
                        at[M.MIGRATION_PHASE_SUCCEEDED] - at[M.MIGRATION_PHASE_TARGET_READY])
            if order:
                print("corral's split (phase_transitions, server clock; median (min-max)); Running is reported "
                      "with the source's first progress sample, 0.5 s into libvirt's job:")
                for key in order + ["(client) call -> first phase + after last", SOURCE_JOB]:
                    if key in segments:
                        print(f"  {key:44} {stats_line(segments[key], 's')}")
            print()

    # -- cleanup ----------------------------------------------------------------------------
    def copy_capcache(self) -> None:
        src = self.net.cluster.state_dir("na") / "cache" / "qemu-capabilities"
        self.capcache.mkdir(exist_ok=True)
        for path in src.glob("*.xml"):
            shutil.copy2(path, self.capcache)

    def cleanup(self) -> None:
        for ag in self.agents.values():
            try:
                ag.close()
            except Exception:  # noqa: BLE001
                pass
        for uid in BASE_UIDS:
            kill_uid(uid)
        if self.net is not None:
            try:
                self.net.close()
            except Exception as exc:  # noqa: BLE001
                print(f"cleanup: {exc!r}", file=sys.stderr)
        from tests.netnodes import kill_processes_with_env
        kill_processes_with_env(str(self.work))
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            print(f"kept {self.work}")


def qemu_pids(uid: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if uid.encode() not in f.read():
                    continue
            if "qemu" in os.path.basename(os.readlink(f"/proc/{entry}/exe")):
                found.append(int(entry))
        except OSError:
            continue
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of na->nb->na per case (default 3)")
    parser.add_argument("--guest-dir", default="/var/tmp/corral-guest", help="kernel + initrd (built if missing)")
    parser.add_argument("--memory-mib", type=int, default=256, help="guest memory (default 256)")
    parser.add_argument("--cases", default="idle,dirty", help="idle,dirty,postcopy (default idle,dirty)")
    parser.add_argument("--auto-converge", choices=("auto", "on", "off"), default="auto",
                        help="auto: only if the dirty case does not converge without it (default)")
    parser.add_argument("--tls", action="store_true", help="Corral's nodes with mutual TLS: the migration proxy "
                        "speaks TLS and QEMU's stream is tunnelled through it (default: plaintext, stream direct)")
    parser.add_argument("--stream", choices=("tunnelled", "tls", "plaintext"),
                        help="with --tls: the handlers' migration_stream (default tunnelled; post-copy needs tls "
                             "or plaintext)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    parser.add_argument("--agent", help=argparse.SUPPRESS)
    parser.add_argument("--capcache", help=argparse.SUPPRESS)
    parser.add_argument("--peer-uid", type=int, action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent:
        return agent(args)
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, per-VM users)")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    bench = Bench(args)
    loads: list[float] = []
    sampling = threading.Event()

    def sample_load() -> None:
        while not sampling.wait(2.0):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample_load, daemon=True).start()
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; load average {os.getloadavg()[0]:.2f}", flush=True)
    try:
        bench.build_guest()
        bench.run_corral()
        bench.copy_capcache()
        for node in ("na", "nb"):  # the cluster's handlers are idle now; keep them out of the way
            bench.net.cluster.kill_handler(node)
        bench.run_baseline()
        bench.report()
        print(f"ended {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; 1-min load average during the run: "
              f"median {statistics.median(loads or [0]):.2f}, max {max(loads or [0]):.2f} "
              f"({os.cpu_count()} CPUs; the dirty guest alone keeps one busy)")
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
