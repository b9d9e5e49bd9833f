"""`corral edit TYPE NAME`: the object as YAML in $EDITOR, written back with the
resource_version that was read, so a change made meanwhile is reported, never overwritten."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import click
import grpc
import yaml

from corral import manifest, printing
from corral.cli.base import CommandError, cli, client_of, rpc_code, rpc_message
from corral.cli.kinds import ResourceKind, resource_args

ENV_EDITORS = ("CORRAL_EDITOR", "EDITOR")
DEFAULT_EDITOR = "vi"
_HEADER = """\
# Edit the object below; lines beginning with '#' are ignored. Saving an unchanged file
# cancels the edit. Status and server fields are not shown: the edit is written back with
# the resource version that was read ({resource_version}), and refused if the object changed since.
"""


def editor_command() -> list[str]:
    """$CORRAL_EDITOR or $EDITOR split as a shell would split words (no shell runs), or vi."""
    for name in ENV_EDITORS:
        value = os.environ.get(name, "").strip()
        if value:
            return shlex.split(value)
    return [DEFAULT_EDITOR]


def _run_editor(path: Path) -> None:
    command = [*editor_command(), str(path)]
    try:
        done = subprocess.run(command, check=False)
    except OSError as err:
        raise CommandError(f"cannot run the editor {command[0]!r}: {err.strerror or err} "
                           f"(set {ENV_EDITORS[1]}); nothing was changed") from None
    if done.returncode != 0:
        raise CommandError(f"the editor exited with status {done.returncode}: nothing was changed "
                           f"(your file: {path})")


def _edited_object(kind: ResourceKind, name: str, text: str, path: Path) -> Any:
    """The edited document as an object of the same kind and name; a CommandError naming the
    problem and the kept file otherwise."""
    try:
        docs = manifest.load_documents(text, str(path))
        if len(docs) != 1:
            raise manifest.ManifestError(str(path), f"expected one document, found {len(docs)}")
        obj = manifest.parse_object(docs[0], str(path), kinds=(kind.kind,))
    except manifest.ManifestError as err:
        raise CommandError(f"{err}\nNothing was changed; your edit is kept in {path}") from None
    if obj.metadata.name != name:
        raise CommandError(f"{path}: metadata.name: the name cannot change ({name!r} became "
                           f"{obj.metadata.name!r}); nothing was changed; your edit is kept in {path}")
    return obj


@cli.command()
@click.argument("resource", metavar="TYPE[/NAME]")
@click.argument("names", nargs=-1, metavar="[NAME]")
@click.pass_context
def edit(ctx: click.Context, resource: str, names: tuple[str, ...]) -> int:
    """Edit an object (vm, pool, instancetype, preference) in $EDITOR and write it back.

    The write carries the resource version that was read: if the object changed meanwhile it
    is refused, nothing is overwritten, and your edit is kept in a file to retry from.
    """
    kind, name_list = resource_args(resource, names)
    if len(name_list) != 1:
        raise click.UsageError(f"edit takes one name: corral edit {kind.key} NAME")
    if not kind.editable:
        raise click.UsageError(f"{kind.plural} cannot be edited")
    [name] = name_list
    client = client_of(ctx)
    live = client.get_object(kind.kind, name)
    original = manifest.to_manifest(live)
    resource_version = live.metadata.resource_version
    with tempfile.NamedTemporaryFile("w", prefix=f"corral-edit-{kind.key}-{name}-", suffix=".yaml",
                                     delete=False) as handle:
        handle.write(_HEADER.format(resource_version=resource_version) + printing.dump_yaml(original) + "\n")
        path = Path(handle.name)
    _run_editor(path)
    text = path.read_text()
    try:
        unchanged = yaml.safe_load(text) == original
    except yaml.YAMLError:
        unchanged = False
    if unchanged:
        path.unlink(missing_ok=True)
        click.echo("Edit cancelled, no changes made.", err=True)
        return 0
    obj = _edited_object(kind, name, text, path)
    update = _update_from(live, obj)
    try:
        client.update_object(update)
    except grpc.RpcError as err:
        if rpc_code(err) == grpc.StatusCode.ABORTED:
            raise CommandError(f"{kind.key}/{name} changed since it was read (resource version "
                               f"{resource_version}): nothing was written. Your edit is kept in {path}; "
                               f"run `corral edit {kind.key} {name}` again to edit the current version "
                               f"({rpc_message(err)})") from None
        raise CommandError(f"{kind.key}/{name}: {rpc_message(err)}\nNothing was changed; your edit is "
                           f"kept in {path}") from None
    path.unlink(missing_ok=True)
    click.echo(f"{kind.key}/{name} edited")
    return 0


def _update_from(live: Any, obj: Any) -> Any:
    """The update request: the edited labels, annotations and spec at the version that was read.
    If `apply` manages the object and the edit left its record alone, the record follows the
    edit (as kubectl edit does), so the next apply compares the file with what is now there."""
    update = type(live)()
    update.CopyFrom(obj)
    update.metadata.resource_version = live.metadata.resource_version
    record = live.metadata.annotations.get(manifest.LAST_APPLIED)
    if record is not None and update.metadata.annotations.get(manifest.LAST_APPLIED) == record:
        update.metadata.annotations[manifest.LAST_APPLIED] = manifest.applied_state(update)
    return update
