"""Root dials a launcher only through a socket of the run's own user (handler/launchers.py):
a VM's user owns its directory and could otherwise point root at another VM's launcher."""
from __future__ import annotations

import os
from concurrent import futures
from pathlib import Path

import grpc

from corral.v1 import launcher_pb2, launcher_pb2_grpc, vm_pb2
from handler.launchers import SOCKET_FILE, Launcher

VM_UID = 200997


class Neighbour(launcher_pb2_grpc.LauncherServiceServicer):
    """Another VM's launcher: it must never hear from root on this VM's behalf."""

    def __init__(self) -> None:
        self.calls = 0

    def GetDomainStatus(self, request, context):
        self.calls += 1
        return launcher_pb2.GetDomainStatusResponse(status=launcher_pb2.DomainStatus(qemu_pid=4242))


def serve(path: Path) -> tuple[grpc.Server, Neighbour]:
    neighbour = Neighbour()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    launcher_pb2_grpc.add_LauncherServiceServicer_to_server(neighbour, server)
    server.add_insecure_port(f"unix:{path}")
    server.start()
    return server, neighbour


def run_dir(state_dir: Path, owner: int) -> Launcher:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = "pet"
    vm.status.instance_uid = "5b0c6d3e-1111-4a8e-9c1e-2f7a1d3b9e01"
    vm_dir = Launcher.create_dir(state_dir=state_dir, vm=vm)
    os.chown(vm_dir, owner, owner)
    return Launcher(vm_dir=vm_dir, on_change=lambda: None)


def test_a_symlink_to_another_vms_socket_is_never_dialed(root_state_dir):
    elsewhere = root_state_dir / "other.sock"
    server, neighbour = serve(elsewhere)
    launcher = run_dir(root_state_dir, VM_UID)
    try:
        launcher.socket_path.symlink_to(elsewhere)  # planted by the VM's user
        assert not launcher.probe()
        assert neighbour.calls == 0
    finally:
        launcher.close()
        server.stop(None)


def test_a_socket_of_another_user_is_refused_and_the_runs_own_is_dialed(root_state_dir):
    launcher = run_dir(root_state_dir, VM_UID)
    server, neighbour = serve(launcher.socket_path)  # bound by root: not the run's user
    try:
        assert not launcher.probe() and neighbour.calls == 0
        server.stop(None)
        launcher.socket_path.unlink(missing_ok=True)  # (gRPC removes it on stop)
        server, neighbour = serve(launcher.socket_path)  # a new launcher: a new socket...
        os.chown(launcher.socket_path, VM_UID, VM_UID)  # ...of the run's user
        assert launcher.probe() and neighbour.calls == 1 and launcher.status.qemu_pid == 4242
    finally:
        launcher.close()
        server.stop(None)


def test_without_isolation_roots_own_socket_is_dialed(root_state_dir):
    launcher = run_dir(root_state_dir, 0)
    server, neighbour = serve(root_state_dir / "vms" / launcher.vm_dir.name / SOCKET_FILE)
    try:
        assert launcher.probe() and neighbour.calls == 1
    finally:
        launcher.close()
        server.stop(None)


def test_a_reused_descriptor_number_never_reaches_the_launcher_it_named_before(tmp_path):
    """The handler dials unix:/proc/self/fd/N. gRPC shares connections between channels of one
    target unless told not to, so once N names another launcher's socket, a new channel to
    /proc/self/fd/N could ride the old launcher's live connection: the wrong VM's console,
    stop or kill. Each launcher channel keeps its own connections (CHANNEL_OPTIONS)."""
    from handler.launchers import CHANNEL_OPTIONS

    servers, fds = [], []
    for name in (b"A", b"B"):
        server = grpc.server(futures.ThreadPoolExecutor(2))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Who", {
            "Am": grpc.unary_unary_rpc_method_handler(lambda _req, _ctx, name=name: name,
                                                      lambda b: b, lambda b: b)}),))
        path = tmp_path / f"{name.decode()}.sock"
        server.add_insecure_port(f"unix:{path}")
        server.start()
        servers.append(server)
        fds.append(os.open(path, os.O_PATH | os.O_CLOEXEC))
    target = f"unix:/proc/self/fd/{fds[0]}"
    first = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    try:
        assert first.unary_unary("/t.Who/Am")(b"", timeout=10) == b"A"
        os.dup2(fds[1], fds[0])  # the number now names B's socket; A's connection is still up
        second = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        assert second.unary_unary("/t.Who/Am")(b"", timeout=10) == b"B"
        second.close()
    finally:
        first.close()
        for fd in fds:
            os.close(fd)
        for server in servers:
            server.stop(0)
