"""`corral vnc NAME`: a VM's VNC display on a local port (virtctl vnc's shape), or a link to
the controller's web console (`--web`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import click
import grpc

from corral.cli.base import CommandError, Duration, cli, client_of, rpc_message
from corral.cli.kinds import VM, names_of
from corral.client import Client
from corral.v1 import vm_pb2

#: Viewers tried in this order without --proxy-only: (program, how it names ADDRESS:PORT).
VIEWERS = (("remote-viewer", "vnc://{host}:{port}"), ("vncviewer", "{host}::{port}"),
           ("xtightvncviewer", "{host}::{port}"))
LIVE = (vm_pb2.VIRTUAL_MACHINE_PHASE_SCHEDULED, vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING)


@cli.command("vnc")
@click.argument("name")
@click.option("--proxy-only", is_flag=True,
              help="Only serve the local port and print its address (HOST:PORT); start no viewer.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Local address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Local port (default: any free one).")
@click.option("--web", is_flag=True,
              help="Print a link to the controller's web console instead (single use, short-lived).")
@click.option("--ttl", type=Duration(), default=60.0, show_default=True, help="With --web: how long the link works.")
@click.pass_context
def vnc_cmd(ctx: click.Context, name: str, proxy_only: bool, address: str, port: int, web: bool, ttl: float) -> int:
    """Open a virtual machine's VNC display through the control plane.

    Listens on a local port (loopback by default) and relays each VNC client that connects
    to the guest's screen; starts remote-viewer or vncviewer when one is installed.
    `--proxy-only` prints the address for any viewer and serves until interrupted.
    """
    [name] = names_of(VM, [name])
    client = client_of(ctx)
    if web:
        if ttl < 1:
            raise click.BadParameter("must be at least 1s", param_hint="--ttl")
        response = client.create_vnc_token(name, int(ttl))
        if not response.url:
            raise CommandError("this controller serves no web console (its web_console_listen is not set)")
        click.echo(response.url)
        return 0
    vm = client.get_vm(name)
    if vm.status.phase not in LIVE:
        phase = vm_pb2.VirtualMachinePhase.Name(vm.status.phase).removeprefix("VIRTUAL_MACHINE_PHASE_")
        raise CommandError(f"vm {name!r} has no run on a node (phase {phase})")
    try:
        listener = socket.create_server((address, port))
    except OSError as exc:
        raise CommandError(f"cannot listen on {address}:{port}: {exc.strerror}") from None
    host, bound = listener.getsockname()[:2]
    threading.Thread(target=_accept, args=(listener, client, name), daemon=True).start()
    viewer = None if proxy_only else _viewer(host, bound)
    if viewer is None:
        click.echo(f"{host}:{bound}")
        sys.stdout.flush()
        if not proxy_only:
            click.echo("no VNC viewer found (remote-viewer, vncviewer): connect one to the address above; "
                       "Ctrl-C ends", err=True)
        threading.Event().wait()  # until interrupted
    return subprocess.call(viewer)


def _viewer(host: str, port: int) -> list[str] | None:
    for program, target in VIEWERS:
        path = shutil.which(program)
        if path:
            return [path, target.format(host=host, port=port)]
    return None


def _accept(listener: socket.socket, client: Client, name: str) -> None:
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_relay, args=(connection, client, name), daemon=True).start()


def _relay(connection: socket.socket, client: Client, name: str) -> None:
    """One viewer's connection <-> one OpenVnc stream, until either side ends."""

    def viewer_bytes() -> Iterator[bytes]:
        while True:
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            yield data

    call = client.open_vnc(name, viewer_bytes())
    try:
        for response in call:
            connection.sendall(response.data)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.CANCELLED:
            click.echo(f"error: {rpc_message(err)}", err=True)
    except OSError:
        pass  # the viewer went away
    finally:
        call.cancel()
        connection.close()
