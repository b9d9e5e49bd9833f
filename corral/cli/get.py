"""`corral get` and `corral describe`, for every kind."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click

from corral import printing
from corral.cli.base import OUTPUT_FORMATS, cli, client_of
from corral.cli.kinds import ResourceKind, fetch, resource_args


def print_resources(kind: ResourceKind, items: list[Any], output: str | None, *, single: bool) -> None:
    """A table (or wide), or json/yaml (one object when one was named, else a List), or names."""
    if output == "name":
        for item in items:
            click.echo(f"{kind.key}/{item.metadata.name}")
        return
    if output in ("json", "yaml"):
        obj = (printing.to_dict(items[0], kind.kind) if single and len(items) == 1
               else printing.list_dict(items, kind.kind))
        click.echo(printing.dump_json(obj) if output == "json" else printing.dump_yaml(obj))
        return
    if not items:
        click.echo("No resources found.", err=True)
        return
    click.echo(kind.table(items, wide=output == "wide", now=datetime.now(timezone.utc)))


@cli.command()
@click.argument("resource", metavar="TYPE[/NAME]")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("-l", "--selector", default="", metavar="SELECTOR",
              help="Label selector, e.g. app=web,tier!=db.")
@click.option("-o", "--output", type=click.Choice(OUTPUT_FORMATS), default=None,
              help="Output format (default: a table).")
@click.pass_context
def get(ctx: click.Context, resource: str, names: tuple[str, ...], selector: str,
        output: str | None) -> int:
    """List objects: vms, nodes, migrations, pools, instancetypes, preferences."""
    kind, name_list = resource_args(resource, names)
    if name_list and selector:
        raise click.UsageError("name(s) and --selector cannot be combined")
    items = fetch(client_of(ctx), kind, name_list, selector)
    print_resources(kind, items, output, single=bool(name_list))
    return 0


@cli.command()
@click.argument("resource", metavar="TYPE[/NAME]")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("-l", "--selector", default="", metavar="SELECTOR", help="Label selector.")
@click.pass_context
def describe(ctx: click.Context, resource: str, names: tuple[str, ...], selector: str) -> int:
    """Show objects in detail: spec, status, conditions, history."""
    kind, name_list = resource_args(resource, names)
    items = fetch(client_of(ctx), kind, name_list, selector)
    if not items:
        click.echo("No resources found.", err=True)
        return 0
    now = datetime.now(timezone.utc)
    click.echo("\n\n".join(kind.describe(item, now=now) for item in items))
    return 0
