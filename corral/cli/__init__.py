"""corral: the command line for Corral, in the manner of kubectl and virtctl.

    corral apply -f examples/           # create or update VMs, pools, instance types, preferences
    corral get vms -o wide
    corral wait vm demo --for phase=Running --timeout 120
    corral scale pool web --replicas 3
    corral edit vm demo
    corral delete vms -l app=demo

One module per job: base (the group, global options, errors), kinds (types, names, -l/--all),
get (get, describe), apply (create, apply), edit, delete, verbs (verbs, wait, scale), console, vnc,
hotplug (addvolume, removevolume, set-vcpus, set-memory), migrations (migrate, drain, cordon),
snapshots (snapshot, restore-snapshot), config (the client config file: contexts). ``main(argv)``
returns the exit code instead of exiting,
so tests can call it in-process.
"""

from __future__ import annotations

from collections.abc import Sequence

import click
import grpc

# Importing a command module adds its commands to the group.
from corral.cli import (apply, config, console, delete, edit, get, hotplug, migrations,  # noqa: F401
                        snapshots, verbs, vnc)
from corral.cli.base import CommandError, Duration, cli, client_of, rpc_message
from corral.cli.kinds import MIGRATION, NODE, POOL, VM, names_of

__all__ = ["MIGRATION", "NODE", "POOL", "VM", "CommandError", "Duration", "cli", "client_of", "main", "names_of"]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on ``argv`` (default sys.argv[1:]) and returns the exit code."""
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="corral",
                          standalone_mode=False)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    except grpc.RpcError as err:
        click.echo(f"error: {rpc_message(err)}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0
