"""`corral snapshot VM` and `corral restore-snapshot SNAPSHOT` (virtctl's vmsnapshot habits;
`corral restore` stays the save/restore verb). Listing, describing and deleting go through
the generic `get snapshots`, `describe snapshot`, `delete snapshot`."""
from __future__ import annotations

import time

import click

from corral.cli.base import Duration, cli, client_of
from corral.cli.kinds import SNAPSHOT, VM, names_of
from corral.printing_snapshots import restore_phase, snapshot_phase
from corral.v1 import snapshot_pb2, snapshot_pb2_grpc

S = snapshot_pb2


def _wait(client, name: str, done, timeout: float) -> S.VirtualMachineSnapshot:
    deadline = time.monotonic() + timeout
    while True:
        snapshot = client.get_object("VirtualMachineSnapshot", name)
        if done(snapshot):
            return snapshot
        if time.monotonic() > deadline:
            raise click.ClickException(f"{SNAPSHOT}/{name}: not done after {timeout:.0f}s")
        time.sleep(0.5)


def _failure(snapshot: S.VirtualMachineSnapshot) -> str:
    for condition in snapshot.status.conditions:
        if condition.type == "Failure" and condition.status:
            return f"{condition.reason}: {condition.message}"
    return ""


@cli.command()
@click.argument("vm", metavar="VM")
@click.option("--name", "snapshot_name", default="", metavar="SNAPSHOT",
              help="The snapshot's name (default: VM-snapshot-RANDOM).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until it succeeded or failed.")
@click.option("--timeout", type=Duration(), default=300.0, show_default=True, help="With --wait.")
@click.pass_context
def snapshot(ctx: click.Context, vm: str, snapshot_name: str, wait: bool, timeout: float) -> int:
    """Snapshot a VM's persistent disks, running (file systems frozen by the guest agent when it
    answers) or stopped (virtctl vmsnapshot create)."""
    [vm] = names_of(VM, [vm])
    client = client_of(ctx)
    request = S.VirtualMachineSnapshot(metadata={"name": snapshot_name}, spec=S.VirtualMachineSnapshotSpec(vm_name=vm))
    created = client.create_object(request)
    name = created.metadata.name
    click.echo(f"{SNAPSHOT}/{name} created for {VM}/{vm}")
    if not wait:
        return 0
    done = _wait(client, name, lambda s: s.status.phase in (S.SNAPSHOT_PHASE_SUCCEEDED, S.SNAPSHOT_PHASE_FAILED), timeout)
    if done.status.phase == S.SNAPSHOT_PHASE_FAILED:
        raise click.ClickException(f"{SNAPSHOT}/{name} failed: {_failure(done)}")
    ready = next((c.message for c in done.status.conditions if c.type == "Ready"), "")
    click.echo(f"{SNAPSHOT}/{name} {snapshot_phase(done.status.phase)} "
               f"[{', '.join(done.status.indications) or 'offline'}]: {ready}")
    return 0


@cli.command("restore-snapshot")
@click.argument("name", metavar="SNAPSHOT")
@click.option("--start", is_flag=True, help="Start a run once the disks are back (else the run strategy decides).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the disks are back.")
@click.option("--timeout", type=Duration(), default=300.0, show_default=True, help="With --wait.")
@click.pass_context
def restore_snapshot(ctx: click.Context, name: str, start: bool, wait: bool, timeout: float) -> int:
    """Put a stopped VM's disks back as they were in a snapshot (virtctl vmrestore)."""
    [name] = names_of(SNAPSHOT, [name])
    client = client_of(ctx)
    answer = client._unary(snapshot_pb2_grpc.VirtualMachineSnapshotServiceStub, "RestoreVirtualMachineSnapshot",
                           S.RestoreVirtualMachineSnapshotRequest(name=name, start=start))
    click.echo(f"{SNAPSHOT}/{name}: restore of {VM}/{answer.snapshot.spec.vm_name} requested")
    if not wait:
        return 0
    done = _wait(client, name, lambda s: s.status.restore.phase != S.RESTORE_PHASE_IN_PROGRESS, timeout)
    restore = done.status.restore
    click.echo(f"{SNAPSHOT}/{name}: restore {restore_phase(restore.phase)}"
               f"{': ' + restore.message if restore.message else ''}")
    return 0 if restore.phase == S.RESTORE_PHASE_SUCCEEDED else 1
