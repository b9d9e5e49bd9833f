"""The serial console and the node agent, end to end on real parts: `OpenConsole` through a
controller, the node's handler (NodeAgentService) and the run's launcher into a real guest's
serial shell (TCG); the `corral console` CLI on a pipe; pause, unpause, soft reboot and reset
through NodeAgentService. One cluster (controller + handler n1) for the whole module."""
from __future__ import annotations

import os
import queue
import pty
import re
import select
import subprocess
import sys
import termios
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from corral.v1 import launcher_pb2, node_agent_pb2, node_agent_pb2_grpc, node_pb2, vm_pb2
from tests.cluster import REPO, Cluster, wait_for

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
DS = launcher_pb2


# -- pure parts -----------------------------------------------------------------------------------

def test_advertised_address():
    from handler.server import advertised_address
    assert advertised_address("127.0.0.1:0", "", 4242) == "127.0.0.1:4242"
    assert advertised_address("0.0.0.0:7101", "node-1.example:7101", 7101) == "node-1.example:7101"
    host, _, port = advertised_address("0.0.0.0:7101", "", 7101).rpartition(":")
    assert port == "7101" and host not in ("0.0.0.0", "")
    assert advertised_address("[::1]:0", "", 5) == "[::1]:5"


def test_handler_listen_settings():
    from corral.settings import HandlerSettings
    assert HandlerSettings().listen == "0.0.0.0:7101"
    assert HandlerSettings(listen="127.0.0.1:0", advertise_address="10.0.0.7:7101").advertise_address == "10.0.0.7:7101"
    for bad in ({"listen": "7101"}, {"listen": ""}, {"listen": "h:70000"}, {"advertise_address": "h:0"}):
        with pytest.raises(ValueError):
            HandlerSettings(**bad)


class _Error(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def test_node_agent_errors_become_api_errors():
    from controller.node_agents import upstream_error
    gone = upstream_error(_Error(grpc.StatusCode.NOT_FOUND, "run x is not hosted"), "n1")
    assert gone.code == grpc.StatusCode.FAILED_PRECONDITION and "not hosted" in str(gone)
    down = upstream_error(_Error(grpc.StatusCode.UNAVAILABLE, "connection refused"), "n1")
    assert down.code == grpc.StatusCode.UNAVAILABLE and "node 'n1'" in str(down)
    busy = upstream_error(_Error(grpc.StatusCode.FAILED_PRECONDITION, "paused"), "n1")
    assert busy.code == grpc.StatusCode.FAILED_PRECONDITION


# -- a real cluster -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def console_cluster(etcd, guest_dir, tmp_path_factory):
    made = Cluster(etcd=etcd, base=tmp_path_factory.mktemp("console"), prefix=f"/t-{uuid.uuid4().hex[:8]}/",
                   guest_dir=guest_dir)
    try:
        made.start_controller()
        made.start_handler("n1", vcpus=4, memory_mib=2048)
        for name in ("alpha", "beta"):
            vm = made.guest_vm(name)
            vm.spec.boot.kernel.cmdline += f" corral_marker=m-{name}"
            made.create(vm)
        for name in ("alpha", "beta"):
            made.wait_phase(name, RUNNING, timeout=60)
            wait_for(lambda: serial_count(made, name) >= 1, timeout=60, what=f"{name}'s readiness line")
        yield made
    finally:
        made.close()


def serial_count(cluster: Cluster, name: str, text: bytes = b"CORRAL-GUEST-READY") -> int:
    path = Path(cluster.get(name).status.serial_log_path)
    return path.read_bytes().count(text) if path.exists() else 0


class Console:
    """One OpenConsole stream: send() keystrokes, expect() output (a regex), close()."""

    def __init__(self, stub, name: str) -> None:
        self.keys: queue.Queue[bytes | None] = queue.Queue()
        self.output = b""
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self.lock = threading.Lock()

        def requests():
            yield vm_pb2.OpenConsoleRequest(name=name)
            while (data := self.keys.get()) is not None:
                yield vm_pb2.OpenConsoleRequest(data=data)

        self.call = stub.OpenConsole(requests())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self.call:
                with self.lock:
                    self.output += response.data
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def send(self, data: bytes) -> None:
        self.keys.put(data)

    def expect(self, pattern: bytes, *, timeout: float = 30, poke: bool = False, since: int | None = None) -> re.Match:
        """Wait until the output from offset ``since`` (default: from now) matches; ``poke``:
        press Enter every second meanwhile (a shell still starting drops what was typed)."""
        deadline = time.monotonic() + timeout
        start = len(self.output) if since is None else since
        next_poke = 0.0
        while time.monotonic() < deadline:
            with self.lock:
                match = re.search(pattern, self.output[start:])
            if match:
                return match
            if self.ended.is_set():
                raise AssertionError(f"console ended ({self.error!r}) before {pattern!r}: {self.output[-500:]!r}")
            if poke and time.monotonic() >= next_poke:
                self.send(b"\n")
                next_poke = time.monotonic() + 1.0
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} after {timeout}s; output: {self.output[-500:]!r}")

    def run(self, command: bytes, answer: bytes, *, timeout: float = 60) -> re.Match:
        """Type ``command`` at the shell's prompt and wait for ``answer`` (a regex) after it."""
        self.expect(rb"# ", timeout=timeout, poke=True)
        since = len(self.output)
        self.send(command + b"\n")
        return self.expect(answer, timeout=timeout, since=since)

    def close(self) -> None:
        self.call.cancel()
        self.keys.put(None)
        self.ended.wait(5)


def node_agent(cluster: Cluster, node: str = "n1") -> node_agent_pb2_grpc.NodeAgentServiceStub:
    address = cluster.nodes.GetNode(node_pb2.GetNodeRequest(name=node), timeout=5).node.status.address
    channel = grpc.insecure_channel(address)
    cluster._channels.append(channel)
    return node_agent_pb2_grpc.NodeAgentServiceStub(channel)


def test_node_records_the_handler_address(console_cluster):
    address = console_cluster.nodes.GetNode(node_pb2.GetNodeRequest(name="n1"), timeout=5).node.status.address
    host, _, port = address.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0


def test_console_through_the_api_answers(console_cluster):
    console = Console(console_cluster.vms, "alpha")
    try:
        console.run(b"echo $((6*7))", rb"\n42\r?\n")
    finally:
        console.close()
    assert console.error is None or console.error.code() == grpc.StatusCode.CANCELLED
    # The serial log keeps recording while a console is attached.
    assert serial_count(console_cluster, "alpha", b"42\r\n") >= 1


def test_two_consoles_at_once_each_reach_their_own_guest(console_cluster):
    consoles = {name: Console(console_cluster.vms, name) for name in ("alpha", "beta")}
    try:
        for console in consoles.values():
            console.expect(rb"# ", timeout=60, poke=True)
        marks = {name: len(console.output) for name, console in consoles.items()}
        for console in consoles.values():
            console.send(b"cat /proc/cmdline\n")
        for name, console in consoles.items():
            other = "beta" if name == "alpha" else "alpha"
            console.expect(rb"corral_marker=m-" + name.encode(), timeout=30, since=marks[name])
            assert b"m-" + other.encode() not in console.output
    finally:
        for console in consoles.values():
            console.close()


def launcher_pid(cluster: Cluster, name: str) -> int:
    run = node_agent_pb2.UnpauseInstanceRequest(name=name, instance_uid=cluster.get(name).status.instance_uid)
    return node_agent(cluster).UnpauseInstance(run, timeout=30).status.launcher_pid


def test_consoles_taking_over_each_other_leave_the_launcher_alive(console_cluster):
    """A new console takes the serial port from the one before (as `virsh console --force`):
    the old stream ends. Opening one while the previous closes at that very moment used to race
    inside libvirt's stream code and kill the launcher (CI); all stream work is now on one thread."""
    pid = launcher_pid(console_cluster, "alpha")
    older = Console(console_cluster.vms, "alpha")
    older.expect(rb"# ", timeout=60, poke=True)
    for round_ in range(24):
        if round_ % 2:  # the older one closes while the newer one opens
            closing = threading.Thread(target=older.close)
            closing.start()
            newer = Console(console_cluster.vms, "alpha")
            closing.join()
        else:  # the newer one takes the port over: the older one ends by itself
            newer = Console(console_cluster.vms, "alpha")
            newer.expect(rb"# ", timeout=30, poke=True)
            assert older.ended.wait(30), "the console taken over did not end"
            older.close()
        # Attached (the shell answers through it) before the next one comes: two opens in
        # flight at once may reach the launcher in either order.
        newer.expect(rb"# ", timeout=30, poke=True)
        older = newer
    try:
        older.run(b"echo still-$((3*3))", rb"\nstill-9\r?\n")
    finally:
        older.close()
    assert launcher_pid(console_cluster, "alpha") == pid, "alpha's launcher was replaced"


def corral_cli(cluster: Cluster, *args: str, **kwargs) -> subprocess.Popen:
    env = {**cluster.env(), "CORRAL_SERVER": cluster.controllers["c1"][1]}
    return subprocess.Popen([sys.executable, "-m", "corral.cli", *args], cwd=REPO, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_cli_console_on_a_pipe_and_the_escape_key(console_cluster):
    process = corral_cli(console_cluster, "console", "alpha")
    output = bytearray()
    reader = threading.Thread(target=lambda: [output.extend(chunk) for chunk in iter(
        lambda: os.read(process.stdout.fileno(), 4096), b"")], daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while b"# " not in output and time.monotonic() < deadline:
            process.stdin.write(b"\n")
            process.stdin.flush()
            time.sleep(1)
        process.stdin.write(b"echo $((6*7))\n")
        process.stdin.flush()
        wait_for(lambda: re.search(rb"\n42\r?\n", bytes(output)), timeout=30, what="42 from the guest")
        process.stdin.write(b"\x1d")  # Ctrl-]: detach
        process.stdin.flush()
        assert process.wait(timeout=10) == 0
        assert "Escape character is ^]" in process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_console_on_a_terminal_is_raw_and_restores_it(console_cluster):
    master, terminal = pty.openpty()
    before = termios.tcgetattr(terminal)
    env = {**console_cluster.env(), "CORRAL_SERVER": console_cluster.controllers["c1"][1]}
    process = subprocess.Popen([sys.executable, "-m", "corral.cli", "console", "alpha"], cwd=REPO, env=env,
                               stdin=terminal, stdout=terminal, stderr=subprocess.PIPE)
    output = bytearray()

    def read_some() -> None:
        while select.select([master], [], [], 0.1)[0]:
            output.extend(os.read(master, 4096))

    try:
        deadline = time.monotonic() + 60
        while b"# " not in output and time.monotonic() < deadline:
            os.write(master, b"\r")  # raw mode: Enter is a carriage return, passed as is
            time.sleep(1)
            read_some()
        mark = len(output)
        os.write(master, b"echo tty-$((5*5))\r")
        wait_for(lambda: read_some() or re.search(rb"\ntty-25\r?\n", bytes(output[mark:])), timeout=30,
                 what="the answer through the terminal")
        os.write(master, b"\x1d")
        assert process.wait(timeout=10) == 0
        assert termios.tcgetattr(terminal) == before, "the terminal was left in raw mode"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
        os.close(terminal)


def test_cli_console_with_piped_input_that_ends(console_cluster):
    # Press Enter first so the shell is surely reading, then the command; the CLI detaches once
    # stdin ended and the guest went quiet.
    process = corral_cli(console_cluster, "console", "beta", "--linger", "3")
    out, err = process.communicate(b"\necho $((7*6))-$((1+1))\n", timeout=60)
    assert process.returncode == 0, err
    assert re.search(rb"\n42-2\r?\n", out), out


def test_console_errors(console_cluster):
    console_cluster.create(console_cluster.guest_vm("nowhere", memory_mib=10**6))  # fits no node: no run
    wait_for(lambda: console_cluster.get("nowhere").status.conditions, timeout=20, what="the scheduler")
    cases = {"nowhere": grpc.StatusCode.FAILED_PRECONDITION, "no-such-vm": grpc.StatusCode.NOT_FOUND,
             "": grpc.StatusCode.INVALID_ARGUMENT}
    for name, code in cases.items():
        call = console_cluster.vms.OpenConsole(iter([vm_pb2.OpenConsoleRequest(name=name)]), timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
        assert caught.value.code() == code, (name, caught.value.details())
        if name == "nowhere":
            assert "Pending" in caught.value.details()
    process = corral_cli(console_cluster, "console", "no-such-vm")
    out, err = process.communicate(b"", timeout=30)
    assert process.returncode == 1 and b"NOT_FOUND" in err, err


def test_node_agent_pause_unpause_soft_reboot_reset(console_cluster):
    agent = node_agent(console_cluster)
    vm = console_cluster.get("beta")
    run = {"name": "beta", "instance_uid": vm.status.instance_uid}
    state = lambda response: response.status.state  # noqa: E731
    assert state(agent.PauseInstance(node_agent_pb2.PauseInstanceRequest(**run), timeout=30)) == DS.DOMAIN_STATE_PAUSED
    assert state(agent.PauseInstance(node_agent_pb2.PauseInstanceRequest(**run), timeout=30)) == DS.DOMAIN_STATE_PAUSED
    with pytest.raises(grpc.RpcError) as caught:  # ACPI needs a running guest
        agent.SoftRebootInstance(node_agent_pb2.SoftRebootInstanceRequest(**run), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert state(agent.UnpauseInstance(node_agent_pb2.UnpauseInstanceRequest(**run), timeout=30)) == DS.DOMAIN_STATE_RUNNING
    assert state(agent.UnpauseInstance(node_agent_pb2.UnpauseInstanceRequest(**run), timeout=30)) == DS.DOMAIN_STATE_RUNNING
    assert state(agent.SoftRebootInstance(node_agent_pb2.SoftRebootInstanceRequest(**run), timeout=30)) \
        == DS.DOMAIN_STATE_RUNNING  # the busybox guest has no ACPI daemon: it ignores the request
    before = serial_count(console_cluster, "beta")
    assert state(agent.ResetInstance(node_agent_pb2.ResetInstanceRequest(**run), timeout=30)) == DS.DOMAIN_STATE_RUNNING
    try:
        wait_for(lambda: serial_count(console_cluster, "beta") > before, timeout=120,
                 what="the guest to boot again after the reset")
    except AssertionError as exc:
        tail = Path(console_cluster.get("beta").status.serial_log_path).read_bytes()[-1500:]
        raise AssertionError(f"{exc}; serial log ends with {tail!r}") from None
    with pytest.raises(grpc.RpcError) as caught:
        agent.PauseInstance(node_agent_pb2.PauseInstanceRequest(name="beta", instance_uid=str(uuid.uuid4())), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        agent.ResetInstance(node_agent_pb2.ResetInstanceRequest(name="beta"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_console_works_again_after_a_handler_restart(console_cluster):
    console = Console(console_cluster.vms, "alpha")
    console.run(b"echo before-$((2*3))", rb"\nbefore-6\r?\n")
    old_address = console_cluster.nodes.GetNode(node_pb2.GetNodeRequest(name="n1")).node.status.address
    console_cluster.kill_handler("n1")
    assert console.ended.wait(20), "the console outlived its handler"
    assert console.error is not None and console.error.code() == grpc.StatusCode.UNAVAILABLE, console.error
    console_cluster.start_handler("n1")
    # Port 0: the new handler listens elsewhere, and its node record says where.
    wait_for(lambda: console_cluster.nodes.GetNode(node_pb2.GetNodeRequest(name="n1")).node.status.address
             != old_address, timeout=20, what="the new handler to register its address")

    def attach() -> Console:  # what a user does: run `corral console` again
        console = Console(console_cluster.vms, "alpha")
        if console.ended.wait(1.0):
            raise AssertionError(f"console refused: {console.error!r}")
        return console

    console = wait_for(attach, timeout=30, interval=0.5, what="a console through the new handler")
    try:
        console.run(b"echo after-$((3*3))", rb"\nafter-9\r?\n")
    finally:
        console.close()

