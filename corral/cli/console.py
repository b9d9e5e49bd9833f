"""`corral console NAME`: a VM's serial console."""

from __future__ import annotations

import click

from corral.cli.base import Duration, cli, client_of
from corral.cli.kinds import VM, names_of


@cli.command("console")
@click.argument("name")
@click.option("--linger", type=Duration(), default=1.0, show_default=True,
              help="With stdin not a terminal: once it ends, detach after the guest was quiet this long.")
@click.pass_context
def console_cmd(ctx: click.Context, name: str, linger: float) -> int:
    """Attach to a virtual machine's serial console; Ctrl-] detaches.

    On a terminal every key goes to the guest (raw mode); stdin can also be a pipe:
    echo 'uname -a' | corral console demo
    """
    from corral.console import ConsoleSession  # noqa: PLC0415 - termios only when needed
    [name] = names_of(VM, [name])
    return ConsoleSession(client_of(ctx), name, linger=linger).run()
