"""Manifests: YAML (or JSON) documents describing Corral resources, as kubectl reads them.

Pure functions: text in, protobuf messages out, a ManifestError naming the source and the
field on anything wrong. Nothing here talks to a server.

    apiVersion: corral.dev/v1
    kind: VirtualMachine
    metadata: {name: demo, labels: {app: demo}}
    spec:
      vcpus: 1
      memoryMib: 128
      boot: {kernel: {kernelPath: /var/lib/corral/guest/vmlinuz}}

Field names are accepted in camelCase (as printed by ``-o yaml``) or snake_case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from google.protobuf import descriptor as _descriptor
from google.protobuf import json_format

from corral.v1 import instancetype_pb2, pool_pb2, vm_pb2

API_VERSION = "corral.dev/v1"
VM_KIND = "VirtualMachine"
POOL_KIND = "VirtualMachinePool"
INSTANCE_TYPE_KIND = "InstanceType"
PREFERENCE_KIND = "Preference"
#: Every kind a manifest may describe, and its message.
KINDS: dict[str, type] = {
    VM_KIND: vm_pb2.VirtualMachine,
    POOL_KIND: pool_pb2.VirtualMachinePool,
    INSTANCE_TYPE_KIND: instancetype_pb2.InstanceType,
    PREFERENCE_KIND: instancetype_pb2.Preference,
}
#: Where `corral apply` keeps what it last applied (kubectl's last-applied-configuration).
LAST_APPLIED = "corral.dev/last-applied"

_TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "spec")
# Metadata the server sets; a manifest may not carry it (both spellings).
_SERVER_METADATA = {
    "uid": "uid",
    "resourceVersion": "resourceVersion",
    "resource_version": "resourceVersion",
    "createTime": "createTime",
    "create_time": "createTime",
    "deleteTime": "deleteTime",
    "delete_time": "deleteTime",
    "owner": "owner",
}
# What a manifest's metadata holds; a pool's template metadata holds no name (VMs are POOL-INDEX).
_METADATA_FIELDS = ("name", "labels", "annotations")

_FD = _descriptor.FieldDescriptor


class ManifestError(ValueError):
    """A manifest that cannot become a request; str() names the source, document and field."""

    def __init__(self, source: str, message: str, *, document: int | None = None,
                 field: str | None = None) -> None:
        self.source = source
        self.document = document
        self.field = field
        self.reason = message
        where = source
        if document is not None:
            where += f" (document {document + 1})"
        if field:
            message = f"{field}: {message}"
        super().__init__(f"{where}: {message}")


def load_documents(text: str, source: str = "<stdin>") -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``text``, each a mapping; a ManifestError otherwise."""
    return [doc for _, doc in _load(text, source)[0]]


def _load(text: str, source: str) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """(index, mapping) of each non-empty document, and how many documents there were."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ManifestError(source, f"invalid YAML{at}: {problem}") from None
    out: list[tuple[int, dict[str, Any]]] = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise ManifestError(source, f"expected a mapping, got {_type_name(doc)}",
                                document=index if len(docs) > 1 else None)
        out.append((index, dict(doc)))
    if not out:
        raise ManifestError(source, "no documents found")
    return out, len(docs)


def parse_object(doc: Mapping[str, Any], source: str = "<stdin>", *, document: int | None = None,
                 kinds: Iterable[str] = tuple(KINDS)) -> Any:
    """One manifest document of one of ``kinds`` as its message (metadata name, labels and
    annotations, and spec): what a create or an update sends."""
    kinds = tuple(kinds)

    def fail(message: str, field: str | None = None) -> ManifestError:
        return ManifestError(source, message, document=document, field=field)

    expected = " or ".join(repr(k) for k in kinds)
    api_version = doc.get("apiVersion", doc.get("api_version"))
    kind = doc.get("kind")
    if api_version is None:
        raise fail(f"missing apiVersion (expected {API_VERSION!r})", "apiVersion")
    if api_version != API_VERSION:
        raise fail(f"unsupported apiVersion {api_version!r} (expected {API_VERSION!r})",
                   "apiVersion")
    if kind is None:
        raise fail(f"missing kind (expected {expected})", "kind")
    if kind not in kinds:
        raise fail(f"unsupported kind {kind!r} (expected {expected})", "kind")
    for key in doc:
        if key == "status":
            raise fail("status is set by the server and may not appear in a manifest", "status")
        if key not in _TOP_LEVEL_FIELDS and key != "api_version":
            raise fail(f"unknown field (known fields: {', '.join(_TOP_LEVEL_FIELDS)})", str(key))

    metadata = doc.get("metadata")
    if not isinstance(metadata, Mapping):
        raise fail("missing metadata (a mapping with at least a name)" if metadata is None
                   else f"expected a mapping, got {_type_name(metadata)}", "metadata")
    _check_metadata(metadata, "metadata", fail)
    name = metadata.get("name")
    if not name:
        raise fail("missing name", "metadata.name")
    spec = doc.get("spec")
    if spec is None:
        raise fail("missing spec", "spec")
    if kind == POOL_KIND and isinstance(spec, Mapping):
        for key in ("maxUnavailable", "max_unavailable"):  # a count or "25%", as kubectl's IntOrString
            value = spec.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                spec = {**spec, key: str(value)}
        template = spec.get("virtualMachineTemplate", spec.get("virtual_machine_template"))
        if isinstance(template, Mapping) and isinstance(template.get("metadata"), Mapping):
            _check_metadata(template["metadata"], "spec.virtualMachineTemplate.metadata", fail, named=False)

    message = KINDS[kind]()
    body = _normalize({"metadata": dict(metadata), "spec": spec}, message.DESCRIPTOR)
    _check_fields(body, message.DESCRIPTOR, "", fail)
    try:
        json_format.ParseDict(body, message)
    except json_format.ParseError as err:
        raise fail(_clean_parse_error(str(err))) from None
    return message


def _check_metadata(metadata: Mapping[str, Any], path: str, fail, *, named: bool = True) -> None:
    """Server-set fields and (in a pool's template) a name are refused, each named."""
    for key in metadata:
        if key in _SERVER_METADATA:
            raise fail("set by the server and may not appear in a manifest", f"{path}.{_SERVER_METADATA[key]}")
        if key == "name" and not named:
            raise fail("a pool names its VMs POOL-INDEX: the template has labels and annotations only",
                       f"{path}.name")
        if key not in _METADATA_FIELDS:
            raise fail(f"unknown field {str(key)!r} (known fields: {', '.join(_METADATA_FIELDS)})",
                       f"{path}.{key}")


def parse_vm(doc: Mapping[str, Any], source: str = "<stdin>", *,
             document: int | None = None) -> vm_pb2.VirtualMachine:
    """One manifest document as a VirtualMachine to create."""
    return parse_object(doc, source, document=document, kinds=(VM_KIND,))


def parse_objects(text: str, source: str = "<stdin>") -> list[Any]:
    """Every object of any kind in a (possibly multi-document) manifest; all or a ManifestError."""
    docs, total = _load(text, source)
    return [parse_object(doc, source, document=index if total > 1 else None) for index, doc in docs]


def parse_vms(text: str, source: str = "<stdin>") -> list[vm_pb2.VirtualMachine]:
    """Every VirtualMachine in a (possibly multi-document) manifest; all or a ManifestError."""
    docs, total = _load(text, source)
    return [parse_vm(doc, source, document=index if total > 1 else None) for index, doc in docs]


def kind_of(obj: Any) -> str:
    """The manifest kind of a message: "VirtualMachinePool"."""
    return obj.DESCRIPTOR.name


def check_unique_names(objects: Iterable[tuple[str, Any]]) -> None:
    """A ManifestError if two manifests (source, object) name the same object of one kind."""
    seen: dict[tuple[str, str], str] = {}
    for source, obj in objects:
        key = (kind_of(obj), obj.metadata.name)
        if key in seen:
            raise ManifestError(source, f"{key[0].lower()} {key[1]!r} is also defined in "
                                f"{seen[key]}", field="metadata.name")
        seen[key] = source


def to_manifest(obj: Any, *, annotations: bool = True) -> dict[str, Any]:
    """An object as a manifest dict (apiVersion, kind, metadata name/labels/annotations, spec):
    re-creatable, nothing the server sets."""
    body = json_format.MessageToDict(obj)
    meta = body.get("metadata", {})
    keep = ("name", "labels", "annotations") if annotations else ("name", "labels")
    out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind_of(obj),
                           "metadata": {k: v for k, v in meta.items() if k in keep}}
    if "spec" in body:
        out["spec"] = body["spec"]
    return out


def vm_to_manifest(vm: vm_pb2.VirtualMachine) -> dict[str, Any]:
    """A VM as a manifest dict (apiVersion, kind, metadata name/labels, spec): re-creatable."""
    return to_manifest(vm, annotations=False)


def applied_state(obj: Any) -> str:
    """What `corral apply` records of an object and compares: labels, annotations (but its own)
    and spec, as canonical JSON (sorted keys, proto JSON names), so equal objects are equal text."""
    body = json_format.MessageToDict(obj)
    meta = body.get("metadata", {})
    notes = {k: v for k, v in meta.get("annotations", {}).items() if k != LAST_APPLIED}
    state = {"labels": meta.get("labels", {}), "annotations": notes, "spec": body.get("spec", {})}
    return json.dumps(state, sort_keys=True, separators=(",", ":"))


# --- helpers -------------------------------------------------------------------------------


def _normalize(value: Any, desc: _descriptor.Descriptor) -> Any:
    """Enum values may be written short, as KubeVirt writes them: ``raw``/``qcow2`` for
    DISK_FORMAT_RAW, ``Always``, ``LiveMigrateIfPossible``, ``uefi``, ``HighestIndex``.
    Walks the message's fields; anything it does not recognise is left for the checks."""
    if not isinstance(value, Mapping):
        return value
    fields = {f.name: f for f in desc.fields} | {f.json_name: f for f in desc.fields}
    out = dict(value)
    for key, item in value.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None or item is None:
            continue
        items = item if _is_repeated(field) and isinstance(item, list) else None
        if field.type == _FD.TYPE_ENUM:
            out[key] = [_enum_value(i, field.enum_type) for i in items] if items is not None \
                else _enum_value(item, field.enum_type)
        elif field.type == _FD.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            out[key] = [_normalize(i, field.message_type) for i in items] if items is not None \
                else _normalize(item, field.message_type)
    return out


def _enum_value(value: Any, enum: _descriptor.EnumDescriptor) -> Any:
    """"LiveMigrate" -> "EVICTION_STRATEGY_LIVE_MIGRATE" when that is a value of ``enum``."""
    if not isinstance(value, str) or value in enum.values_by_name:
        return value
    full = _upper_snake(enum.name) + "_" + _upper_snake(value)
    return full if full in enum.values_by_name else value


def _upper_snake(camel: str) -> str:
    """RerunOnFailure -> RERUN_ON_FAILURE."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", camel).upper()


def _check_fields(value: Any, desc: _descriptor.Descriptor, path: str, fail) -> None:
    """Unknown fields and wrongly typed maps, named by their path, before ParseDict sees them."""
    if not isinstance(value, Mapping):
        raise fail(f"expected a mapping, got {_type_name(value)}", path or None)
    by_name: dict[str, _descriptor.FieldDescriptor] = {}
    for field in desc.fields:
        by_name[field.name] = field
        by_name[field.json_name] = field
    for key, item in value.items():
        here = f"{path}.{key}" if path else str(key)
        field = by_name.get(key) if isinstance(key, str) else None
        if field is None:
            known = ", ".join(f.json_name for f in desc.fields)
            raise fail(f"unknown field {str(key)!r} (known fields: {known})", here)
        if item is None:
            continue
        if field.type != _FD.TYPE_MESSAGE:
            continue
        msg = field.message_type
        if msg.GetOptions().map_entry:
            if not isinstance(item, Mapping):
                raise fail(f"expected a mapping, got {_type_name(item)}", here)
            value_field = msg.fields_by_name["value"]
            for map_key, map_value in item.items():
                if not isinstance(map_key, str):
                    raise fail(f"keys must be strings; quote {map_key!r}", here)
                if value_field.type == _FD.TYPE_STRING and not isinstance(map_value, str):
                    raise fail(f"expected a string, got {_type_name(map_value)} "
                               f"{map_value!r} (quote it)", f"{here}.{map_key}")
            continue
        if msg.full_name.startswith("google.protobuf."):
            continue  # well-known types (Timestamp) have their own JSON forms
        if _is_repeated(field):
            if not isinstance(item, list):
                raise fail(f"expected a list, got {_type_name(item)}", here)
            for i, element in enumerate(item):
                _check_fields(element, msg, f"{here}[{i}]", fail)
        else:
            _check_fields(item, msg, here, fail)


def _is_repeated(field: _descriptor.FieldDescriptor) -> bool:
    is_repeated = getattr(field, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated() if callable(is_repeated) else is_repeated)
    return field.label == _FD.LABEL_REPEATED


def _clean_parse_error(message: str) -> str:
    """json_format's 'Failed to parse a field: Failed to parse b field: why at X.' -> 'a.b: why'."""
    message = message.split("\n")[0].strip()
    path = []
    while True:
        m = re.match(r"Failed to parse (\w+) field: ", message)
        if not m:
            break
        path.append(m.group(1))
        message = message[m.end():]
    at = re.search(r' at "?[A-Z]\w*\.([\w.]+?)"?\.*$', message)
    if at:
        path = at.group(1).split(".")
        message = message[:at.start()]
    message = message.rstrip(".")
    return f"{'.'.join(path)}: {message}" if path else message


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    if value is None:
        return "null"
    return type(value).__name__
