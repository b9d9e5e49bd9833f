"""`corral delete`: VMs, pools, instance types and preferences, by name, -l SELECTOR or --all."""

from __future__ import annotations

import click
import grpc

from corral.cli.base import Duration, cli, client_of, rpc_message
from corral.cli.kinds import POOL, VM, resource_groups, selected_names
from corral.client import WaitTimeout


@cli.command()
@click.argument("resource", metavar="TYPE[/NAME]", required=False)
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("-l", "--selector", default="", metavar="SELECTOR", help="Delete every object matching it.")
@click.option("--all", "every", is_flag=True, help="Delete every object of the type.")
@click.option("--cascade", type=click.Choice(("background", "orphan")), default="background", show_default=True,
              help="Pools: orphan leaves the pool's VMs (they lose their owner) instead of deleting them.")
@click.option("--orphan", is_flag=True, help="Same as --cascade=orphan.")
@click.option("--wait/--no-wait", default=False, help="VMs: wait until each is gone.")
@click.option("--timeout", type=Duration(), default=120.0, show_default=True,
              help="With --wait: how long to wait, in seconds (or 90s, 2m).")
@click.pass_context
def delete(ctx: click.Context, resource: str | None, names: tuple[str, ...], selector: str, every: bool,
           cascade: str, orphan: bool, wait: bool, timeout: float) -> int:
    """Delete objects: VMs (their guests are stopped, then they are removed), pools (and their
    VMs, unless --cascade=orphan), instance types and preferences."""
    if resource is None:
        raise click.UsageError("a type is required: corral delete TYPE NAME... | -l SELECTOR | --all"
                               if every or selector else "a type and a name are required: corral delete vm NAME")
    groups = resource_groups(resource, names)
    if len(groups) > 1 and (selector or every):
        raise click.UsageError("-l/--selector and --all take one type: corral delete TYPE -l SELECTOR")
    orphan = orphan or cascade == "orphan"
    for kind, _ in groups:
        if not kind.deletable:
            raise click.UsageError(f"{kind.plural} cannot be deleted")
        if orphan and kind.key != POOL:
            raise click.UsageError("--cascade=orphan applies to pools only")
        if wait and kind.key != VM:
            raise click.UsageError("--wait applies to virtual machines only")
    client = client_of(ctx)
    targets = [(kind, name) for kind, name_list in groups
               for name in selected_names(client, kind, name_list, selector, every, command="delete")]
    if not targets:
        click.echo("No resources found.", err=True)
        return 0
    fields = {"orphan": True} if orphan else {}
    failed = 0
    pending: list[tuple[str, str]] = []
    for kind, name in targets:
        try:
            deleted = client.delete_object(kind.kind, name, **fields)
        except grpc.RpcError as err:
            click.echo(f"error: {rpc_message(err)}", err=True)
            failed += 1
            continue
        if wait and deleted is not None:
            pending.append((name, deleted.metadata.uid))
        else:
            click.echo(f"{kind.key}/{name} deleted" + (" (its VMs orphaned)" if orphan else ""))
    for name, uid in pending:
        try:
            client.wait_for_deletion(name, timeout, uid=uid)
        except WaitTimeout as err:
            click.echo(f"error: {err}", err=True)
            failed += 1
            continue
        click.echo(f"{VM}/{name} deleted")
    return 1 if failed else 0
