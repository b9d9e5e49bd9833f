"""`corral migrate`, `corral drain`, `corral cordon` and `corral uncordon`."""
from __future__ import annotations

import time

import click
import grpc

from corral import printing
from corral.cli.base import Duration, cli, client_of, rpc_message
from corral.cli.kinds import NODE, VM, names_of
from corral.drain import Drainer
from corral.v1 import migration_pb2

FINAL = (migration_pb2.MIGRATION_PHASE_SUCCEEDED, migration_pb2.MIGRATION_PHASE_FAILED)


@cli.command()
@click.argument("name", metavar="VM")
@click.option("--to", "target", default="", metavar="NODE", help="Target node (default: the scheduler picks).")
@click.option("--bandwidth", type=click.IntRange(min=0), default=None, metavar="MIB_PER_S",
              help="Bandwidth limit (0: unlimited; default: the cluster's).")
@click.option("--post-copy/--no-post-copy", default=None, help="Allow switching to post-copy.")
@click.option("--cancel", is_flag=True, help="Cancel the VM's migration in progress instead.")
@click.option("--wait/--no-wait", default=False, help="Wait until the migration ends, printing progress.")
@click.option("--timeout", type=Duration(), default=600.0, show_default=True, help="With --wait.")
@click.pass_context
def migrate(ctx: click.Context, name: str, target: str, bandwidth: int | None, post_copy: bool | None,
            cancel: bool, wait: bool, timeout: float) -> int:
    """Live-migrate a running VM to another node (virtctl migrate)."""
    [name] = names_of(VM, [name])
    client = client_of(ctx)
    if cancel:
        running = [m for m in client.list_migrations(vm_name=name) if m.status.phase not in FINAL]
        if not running:
            raise click.ClickException(f"vm/{name} has no migration in progress")
        for migration in running:
            client.cancel_migration(migration.metadata.name)
            click.echo(f"migration/{migration.metadata.name} cancel requested")
        return 0
    policy = {}
    if bandwidth is not None:
        policy["bandwidth_mib_per_second"] = bandwidth
    if post_copy is not None:
        policy["allow_post_copy"] = post_copy
    migration = client.create_migration(name, target, **policy)
    click.echo(f"migration/{migration.metadata.name} created for {VM}/{name}")
    if not wait:
        return 0
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        migration = client.get_migration(migration.metadata.name)
        line = printing.migration_phase(migration.status.phase) + (
            f": {migration.status.message}" if migration.status.message else "")
        if line != last:
            click.echo(line)
            last = line
        if migration.status.phase in FINAL:
            return 0 if migration.status.phase == migration_pb2.MIGRATION_PHASE_SUCCEEDED else 1
        time.sleep(0.5)
    click.echo(f"error: migration/{migration.metadata.name} did not end within {timeout:.0f}s", err=True)
    return 1


@cli.command()
@click.argument("node")
@click.option("--timeout", type=Duration(), default=1800.0, show_default=True,
              help="How long to wait for the node to empty.")
@click.pass_context
def drain(ctx: click.Context, node: str, timeout: float) -> int:
    """Cordon a node and move its VMs away by their eviction strategy (LiveMigrate,
    LiveMigrateIfPossible (the default), None = stop, External = wait)."""
    [node] = names_of(NODE, [node])
    return Drainer(client_of(ctx), node, echo=click.echo).run(timeout)


def _cordon(ctx: click.Context, nodes: tuple[str, ...], value: bool) -> int:
    client = client_of(ctx)
    failed = 0
    for node in names_of(NODE, nodes):
        try:
            client.cordon_node(node, cordon=value)
        except grpc.RpcError as err:
            click.echo(f"error: {rpc_message(err)}", err=True)
            failed += 1
            continue
        click.echo(f"node/{node} {'cordoned' if value else 'uncordoned'}")
    return 1 if failed else 0


@cli.command()
@click.argument("nodes", nargs=-1, required=True, metavar="NODE...")
@click.pass_context
def cordon(ctx: click.Context, nodes: tuple[str, ...]) -> int:
    """Mark nodes unschedulable: no new VMs and no incoming migrations."""
    return _cordon(ctx, nodes, True)


@cli.command()
@click.argument("nodes", nargs=-1, required=True, metavar="NODE...")
@click.pass_context
def uncordon(ctx: click.Context, nodes: tuple[str, ...]) -> int:
    """Make nodes schedulable again."""
    return _cordon(ctx, nodes, False)
