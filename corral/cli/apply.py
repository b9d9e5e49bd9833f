"""`corral create -f` and `corral apply -f`: manifests of any kind, from files, directories or stdin.

Every manifest is read and checked before anything is sent, so a typo in the third document
creates nothing. `apply` records what it applied in the annotation corral.dev/last-applied
(labels, annotations and spec as canonical JSON, kubectl's approach) and compares the file
with that record: equal is "unchanged" and writes nothing; different is an update carrying the
resource_version it read ("configured"), which the server refuses if the object moved meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click
import grpc

from corral import manifest
from corral.cli.base import CommandError, cli, client_of, read_source, rpc_code, rpc_message
from corral.cli.kinds import kind_of
from corral.client import Client
from corral.validation import (ValidationError, label_problems, name_problem, spec_problems, subdomain_problem,
                               validate_new_vm)

#: What must exist before what names it: instance types and preferences before VMs and pools.
_ORDER = {manifest.INSTANCE_TYPE_KIND: 0, manifest.PREFERENCE_KIND: 1}


def load_objects(filenames: Sequence[str]) -> list[tuple[str, Any]]:
    """(source, object) of every document, in dependency order then file order; a CommandError
    naming the file, document and field on the first bad one (before anything is sent)."""
    objects: list[tuple[str, Any]] = []
    try:
        for filename in filenames:
            for source, text in read_source(filename):
                objects.extend((source, obj) for obj in manifest.parse_objects(text, source))
        manifest.check_unique_names(objects)
    except manifest.ManifestError as err:
        raise CommandError(str(err)) from None
    for source, obj in objects:
        _check_locally(source, obj)
    return sorted(objects, key=lambda item: _ORDER.get(manifest.kind_of(item[1]), 2))


def _check_locally(source: str, obj: Any) -> None:
    """The server's own checks that need nothing but the object, run before anything is sent:
    names, labels, and the spec of a VM (or a pool's template) not sized from an instance type
    or a preference (the server fills those in first, so it alone can judge them)."""
    problems: list[str] = []
    kind = manifest.kind_of(obj)
    if kind in (manifest.INSTANCE_TYPE_KIND, manifest.PREFERENCE_KIND):
        problem = subdomain_problem(obj.metadata.name)
        problems += ([problem] if problem else []) + label_problems(obj.metadata.labels, "metadata.labels")
    elif kind == manifest.VM_KIND and not _sized(obj.spec):
        try:
            validate_new_vm(obj)
        except ValidationError as err:
            problems.append(str(err))
    elif kind == manifest.POOL_KIND:
        problem = name_problem(obj.metadata.name)
        problems += ([problem] if problem else []) + label_problems(obj.metadata.labels, "metadata.labels")
        template = obj.spec.virtual_machine_template
        if not _sized(template.spec):
            problems += [f"spec.virtualMachineTemplate: {p}" for p in spec_problems(template.spec)]
    if problems:
        raise CommandError(f"{source}: {kind_of(obj).key}/{obj.metadata.name}: INVALID_ARGUMENT: "
                           f"{ValidationError(problems)}")


def _sized(spec: Any) -> bool:
    return spec.HasField("instance_type") or spec.HasField("preference")


def _filename_option(func):
    return click.option("-f", "--filename", "filenames", multiple=True, required=True, metavar="FILE|DIR|-",
                        help="Manifest file, directory (*.yaml, *.yml, *.json) or - for stdin (repeatable).")(func)


@cli.command()
@_filename_option
@click.pass_context
def create(ctx: click.Context, filenames: tuple[str, ...]) -> int:
    """Create objects from manifests (several YAML documents per file allowed).

    Every manifest is checked before anything is sent: one bad document creates nothing.
    """
    objects = load_objects(filenames)
    client = client_of(ctx)
    failed = 0
    for _source, obj in objects:
        try:
            created = client.create_object(obj)
        except grpc.RpcError as err:
            click.echo(f"error: {rpc_message(err)}", err=True)
            failed += 1
            continue
        click.echo(f"{kind_of(obj).key}/{created.metadata.name or obj.metadata.name} created")
    return 1 if failed else 0


def apply_one(client: Client, obj: Any) -> str:
    """Creates or updates one object as the manifest says; returns created, configured or
    unchanged. Raises grpc.RpcError when the server refuses. An update that met a concurrent
    write (a pool's status, a VM's phase) is computed again from a fresh read, a few times:
    what the manifest says is merged anew each time, so nothing the other writer did is lost."""
    for attempt in range(4):
        try:
            return _apply_once(client, obj)
        except grpc.RpcError as err:
            if rpc_code(err) != grpc.StatusCode.ABORTED or attempt == 3:
                raise
    raise AssertionError("unreachable")


def _apply_once(client: Client, obj: Any) -> str:
    kind = manifest.kind_of(obj)
    desired = manifest.applied_state(obj)
    try:
        live = client.get_object(kind, obj.metadata.name)
    except grpc.RpcError as err:
        if rpc_code(err) != grpc.StatusCode.NOT_FOUND:
            raise
        obj.metadata.annotations[manifest.LAST_APPLIED] = desired
        client.create_object(obj)
        return "created"
    # Without a record (made by `create`, or by a server that keeps no annotations) the
    # object itself is compared: what the manifest says against what is stored.
    record = live.metadata.annotations.get(manifest.LAST_APPLIED)
    if (record or manifest.applied_state(live)) == desired:
        return "unchanged"
    client.update_object(applied_update(live, obj, record, desired))
    return "configured"


def _previous(live: Any, record: str | None) -> dict[str, Any]:
    """What the last apply set ({} of annotations without a record: none were apply's), and
    the spec to compare the manifest's with (the stored one without a record)."""
    try:
        previous = json.loads(record) if record else {}
    except ValueError:
        previous = {}
    if not isinstance(previous, dict):
        previous = {}
    if not record:
        previous["spec"] = json.loads(manifest.applied_state(live))["spec"]
    return previous


def applied_update(live: Any, obj: Any, record: str | None, desired: str) -> Any:
    """The update request: the live object with the manifest's labels and spec, its
    annotations (those the last apply set and the manifest dropped are removed; others, set by
    people or controllers, stay), the new record, and the resource_version that was read."""
    update = type(live)()
    update.CopyFrom(live)
    if "status" in update.DESCRIPTOR.fields_by_name:
        update.ClearField("status")
    update.metadata.labels.clear()
    update.metadata.labels.update(obj.metadata.labels)
    previous = _previous(live, record)
    for key in previous.get("annotations") or {}:
        if key not in obj.metadata.annotations:
            update.metadata.annotations.pop(key, None)
    update.metadata.annotations.update(obj.metadata.annotations)
    update.metadata.annotations[manifest.LAST_APPLIED] = desired
    # A spec the file did not change stays as stored: the server may have filled it in (from an
    # instance type), and a running VM's spec cannot change, though its labels can.
    if previous.get("spec") != json.loads(desired)["spec"]:
        update.spec.CopyFrom(obj.spec)
    return update


@cli.command()
@_filename_option
@click.pass_context
def apply(ctx: click.Context, filenames: tuple[str, ...]) -> int:
    """Create objects, or update them to what the manifests say (VMs, pools, instance types,
    preferences). Unchanged objects are not written. An object the server refuses is reported
    and the others go on (exit code 1)."""
    objects = load_objects(filenames)
    client = client_of(ctx)
    failed = 0
    for _source, obj in objects:
        what = f"{kind_of(obj).key}/{obj.metadata.name}"
        try:
            outcome = apply_one(client, obj)
        except grpc.RpcError as err:
            click.echo(f"error: {what}: {rpc_message(err)}", err=True)
            failed += 1
            continue
        click.echo(f"{what} {outcome}")
    return 1 if failed else 0
