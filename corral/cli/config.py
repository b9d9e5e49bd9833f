"""corral config: read and edit the client config file (kubectl config's verbs), so the
server and certificate flags live in one place instead of on every command.

    corral config set-cluster prod --server 10.0.0.5:7100 --ca-file /etc/corral/pki/ca.pem
    corral config set-credentials alice --cert-file alice.pem --key-file alice-key.pem
    corral config set-context prod --cluster prod --user alice
    corral config use-context prod
    corral config get-contexts; corral config current-context; corral config view

Paths given to set-cluster and set-credentials are stored absolute, so the file works from
any directory. Nothing here dials a controller.
"""
from __future__ import annotations

from pathlib import Path

import click

from corral.cli.base import CommandError, cli
from corral.client_config import (ClientConfig, ClientConfigError, Cluster, Context, NamedCluster, NamedContext,
                                  NamedUser, User, config_path, dump, load, save)


def _path(ctx: click.Context) -> Path:
    return config_path(ctx.find_root().obj.get("client_config"))


def _load(ctx: click.Context) -> tuple[ClientConfig, Path]:
    path = _path(ctx)
    try:
        return load(path), path
    except ClientConfigError as err:
        raise CommandError(str(err)) from None


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().absolute()) if path else None


@cli.group(name="config")
def config_group() -> None:
    """Show or change the client config (--client-config, $CORRAL_CLIENT_CONFIG, or
    ~/.config/corral/config)."""


@config_group.command()
@click.pass_context
def view(ctx: click.Context) -> None:
    """Print the client config as YAML."""
    config, _ = _load(ctx)
    click.echo(dump(config), nl=False)


@config_group.command(name="get-contexts")
@click.pass_context
def get_contexts(ctx: click.Context) -> None:
    """List the contexts; the current one is marked with *."""
    config, _ = _load(ctx)
    rows = [("CURRENT", "NAME", "CLUSTER", "USER")]
    rows += [("*" if entry.name == config.current_context else "", entry.name, entry.context.cluster,
              entry.context.user or "") for entry in config.contexts]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@config_group.command(name="current-context")
@click.pass_context
def current_context(ctx: click.Context) -> None:
    """Print the current context's name."""
    config, path = _load(ctx)
    if not config.current_context:
        raise CommandError(f"no current context in {path}")
    click.echo(config.current_context)


@config_group.command(name="use-context")
@click.argument("name")
@click.pass_context
def use_context(ctx: click.Context, name: str) -> None:
    """Make NAME the current context."""
    config, path = _load(ctx)
    if config.find(config.contexts, name) is None:
        known = ", ".join(entry.name for entry in config.contexts) or "none"
        raise CommandError(f"no context {name!r} in {path} (contexts: {known})")
    config.current_context = name
    save(config, path)
    click.echo(f'Switched to context "{name}".')


@config_group.command(name="set-cluster")
@click.argument("name")
@click.option("--server", metavar="HOST:PORT[,HOST:PORT]", help="The cluster's controller address(es).")
@click.option("--ca-file", "--certificate-authority", "ca_file", metavar="PEM",
              help="CA that signed the controllers' certificates.")
@click.pass_context
def set_cluster(ctx: click.Context, name: str, server: str | None, ca_file: str | None) -> None:
    """Add cluster NAME, or change the values given of an existing one."""
    config, path = _load(ctx)
    existing = config.find(config.clusters, name)
    values = existing.cluster.model_copy() if existing else None
    if values is None and not server:
        raise CommandError(f"a new cluster needs --server (cluster {name!r} is not in {path})")
    values = values or Cluster(server=server or "")
    if server:
        values.server = server
    if ca_file:
        values.certificate_authority = _absolute(ca_file)
    config.put(config.clusters, NamedCluster(name=name, cluster=values))
    save(config, path)
    click.echo(f'Cluster "{name}" set.')


@config_group.command(name="set-credentials")
@click.argument("name")
@click.option("--cert-file", "--client-certificate", "cert_file", metavar="PEM", help="The user's certificate.")
@click.option("--key-file", "--client-key", "key_file", metavar="PEM", help="Its key.")
@click.pass_context
def set_credentials(ctx: click.Context, name: str, cert_file: str | None, key_file: str | None) -> None:
    """Add user NAME, or change the values given of an existing one."""
    config, path = _load(ctx)
    existing = config.find(config.users, name)
    values = existing.user.model_copy() if existing else User()
    if cert_file:
        values.client_certificate = _absolute(cert_file)
    if key_file:
        values.client_key = _absolute(key_file)
    config.put(config.users, NamedUser(name=name, user=values))
    save(config, path)
    click.echo(f'User "{name}" set.')


@config_group.command(name="set-context")
@click.argument("name")
@click.option("--cluster", help="The context's cluster (a name set by set-cluster).")
@click.option("--user", help="The context's user (a name set by set-credentials).")
@click.pass_context
def set_context(ctx: click.Context, name: str, cluster: str | None, user: str | None) -> None:
    """Add context NAME (a cluster and a user), or change the values given of an existing one."""
    config, path = _load(ctx)
    existing = config.find(config.contexts, name)
    if existing is None and not cluster:
        raise CommandError(f"a new context needs --cluster (context {name!r} is not in {path})")
    values = existing.context.model_copy() if existing else Context(cluster=cluster or "")
    if cluster:
        values.cluster = cluster
    if user:
        values.user = user
    config.put(config.contexts, NamedContext(name=name, context=values))
    save(config, path)
    click.echo(f'Context "{name}" set.')


@config_group.command(name="delete-context")
@click.argument("name")
@click.pass_context
def delete_context(ctx: click.Context, name: str) -> None:
    """Remove context NAME (its cluster and user stay)."""
    config, path = _load(ctx)
    if config.find(config.contexts, name) is None:
        raise CommandError(f"no context {name!r} in {path}")
    config.contexts = [entry for entry in config.contexts if entry.name != name]
    if config.current_context == name:
        config.current_context = ""
    save(config, path)
    click.echo(f'Deleted context "{name}".')
