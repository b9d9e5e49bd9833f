"""InstanceTypeService and PreferenceService: the cluster's catalogue of VM sizes and defaults.
Both are plain stored objects (etcd, read through on every call: they are few and rarely
change); one generic body serves both. A type or preference that a VM or a pool template
names cannot be deleted (the VM keeps its revision either way, but the name would dangle)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from controller import pagination
from controller.api import list_page
from controller.errors import RequestError, grpc_errors
from controller.instancetypes import instance_type_problems, preference_problems
from controller.objects import new_metadata
from controller.watch_cache import WatchCache
from corral.resources import INSTANCE_TYPES, POOLS, PREFERENCES, VMS
from corral.selectors import matches, parse_selector
from corral.store import Conflict, Kind, Store
from corral.v1 import instancetype_pb2, instancetype_pb2_grpc, vm_pb2
from corral.validation import (MAX_CATALOGUE_NAME_LENGTH, ValidationError, annotation_problems, label_problems,
                               subdomain_problem)

#: Referrers named in a refused delete's message.
REFERRERS_SHOWN = 5


@dataclass(frozen=True)
class Catalogue:
    """What differs between the two services."""

    kind: Kind
    noun: str  # "instance type"
    field: str  # the VM spec's reference field, "instance_type"
    problems: Callable[[object], list[str]]


INSTANCE_TYPE = Catalogue(INSTANCE_TYPES, "instance type", "instance_type", instance_type_problems)
PREFERENCE = Catalogue(PREFERENCES, "preference", "preference", preference_problems)


def _check_name(name: str) -> None:
    problem = subdomain_problem(name, "name")
    if problem:
        raise ValidationError([problem])


def _validate(obj, catalogue: Catalogue) -> None:
    problem = subdomain_problem(obj.metadata.name, limit=MAX_CATALOGUE_NAME_LENGTH)
    problems = [problem] if problem else []
    problems += label_problems(obj.metadata.labels, "metadata.labels")
    problems += annotation_problems(obj.metadata.annotations, "metadata.annotations")
    problems += catalogue.problems(obj.spec)
    if problems:
        raise ValidationError(problems)


def referrers(vms: list[vm_pb2.VirtualMachine], pools: list, field: str, name: str) -> list[str]:
    """The VMs and pool templates whose spec names ``name`` in ``field``, as "vm NAME" /
    "pool NAME", sorted."""
    found = [f"vm {vm.metadata.name}" for vm in vms if getattr(vm.spec, field).name == name]
    found += [f"pool {pool.metadata.name}" for pool in pools
              if getattr(pool.spec.virtual_machine_template.spec, field).name == name]
    return sorted(found)


class _CatalogueService:
    def __init__(self, *, store: Store, cache: WatchCache | None, catalogue: Catalogue) -> None:
        self.store = store
        self.cache = cache
        self.catalogue = catalogue

    def create(self, given):
        _validate(given, self.catalogue)
        obj = type(given)()
        new_metadata(obj.metadata, given.metadata)
        obj.spec.CopyFrom(given.spec)
        return self.store.create(self.catalogue.kind, obj)

    def get(self, name: str):
        _check_name(name)
        return self.store.get(self.catalogue.kind, name)

    def list(self, request) -> tuple[list, str]:
        selector = parse_selector(request.label_selector)
        size = pagination.page_size(request.page_size)
        items, token, _ = list_page(self.store, self.catalogue.kind, size=size, token=request.page_token,
                                    keep=lambda obj: matches(selector, obj.metadata.labels))
        return items, token

    def update(self, given):
        """Labels, annotations and spec replaced, guarded by resource_version (the etag)."""
        if given.metadata.resource_version <= 0:
            raise ValidationError(["metadata.resource_version is required for an update (read it first)"])
        _validate(given, self.catalogue)
        current = self.store.get(self.catalogue.kind, given.metadata.name)
        if current.metadata.resource_version != given.metadata.resource_version:
            raise Conflict(f"{self.catalogue.noun} {given.metadata.name!r} is at resource_version "
                           f"{current.metadata.resource_version}, not {given.metadata.resource_version}: "
                           "read it again and retry")
        current.metadata.labels.clear()
        current.metadata.labels.update(given.metadata.labels)
        current.metadata.annotations.clear()
        current.metadata.annotations.update(given.metadata.annotations)
        current.spec.CopyFrom(given.spec)
        return self.store.update(self.catalogue.kind, current)

    def delete(self, name: str, resource_version: int) -> None:
        _check_name(name)
        current = self.store.get(self.catalogue.kind, name)
        if resource_version and resource_version != current.metadata.resource_version:
            raise Conflict(f"{self.catalogue.noun} {name!r} is at resource_version "
                           f"{current.metadata.resource_version}, not {resource_version}")
        using = referrers(self._vms(), self.store.list_all(POOLS)[0], self.catalogue.field, name)
        if using:
            shown = ", ".join(using[:REFERRERS_SHOWN]) + (f" and {len(using) - REFERRERS_SHOWN} more"
                                                          if len(using) > REFERRERS_SHOWN else "")
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"{self.catalogue.noun} {name!r} is named by {len(using)} VM(s) or pool(s): "
                               f"{shown}; delete them, or change what they name, first")
        self.store.delete(self.catalogue.kind, name, resource_version=current.metadata.resource_version)

    def _vms(self) -> list[vm_pb2.VirtualMachine]:
        """Every VM: from the watch cache once it has this replica's view of etcd, else etcd."""
        if self.cache is not None and self.cache.fresh():
            with self.cache.cond:
                return list(self.cache.vms.values())
        return self.store.list_all(VMS)[0]


class InstanceTypeService(instancetype_pb2_grpc.InstanceTypeServiceServicer):
    def __init__(self, *, store: Store, cache: WatchCache | None = None) -> None:
        self.body = _CatalogueService(store=store, cache=cache, catalogue=INSTANCE_TYPE)

    @grpc_errors
    def CreateInstanceType(self, request, context):
        return instancetype_pb2.CreateInstanceTypeResponse(instance_type=self.body.create(request.instance_type))

    @grpc_errors
    def GetInstanceType(self, request, context):
        return instancetype_pb2.GetInstanceTypeResponse(instance_type=self.body.get(request.name))

    @grpc_errors
    def ListInstanceTypes(self, request, context):
        items, token = self.body.list(request)
        return instancetype_pb2.ListInstanceTypesResponse(instance_types=items, next_page_token=token)

    @grpc_errors
    def UpdateInstanceType(self, request, context):
        return instancetype_pb2.UpdateInstanceTypeResponse(instance_type=self.body.update(request.instance_type))

    @grpc_errors
    def DeleteInstanceType(self, request, context):
        self.body.delete(request.name, request.resource_version)
        return instancetype_pb2.DeleteInstanceTypeResponse()


class PreferenceService(instancetype_pb2_grpc.PreferenceServiceServicer):
    def __init__(self, *, store: Store, cache: WatchCache | None = None) -> None:
        self.body = _CatalogueService(store=store, cache=cache, catalogue=PREFERENCE)

    @grpc_errors
    def CreatePreference(self, request, context):
        return instancetype_pb2.CreatePreferenceResponse(preference=self.body.create(request.preference))

    @grpc_errors
    def GetPreference(self, request, context):
        return instancetype_pb2.GetPreferenceResponse(preference=self.body.get(request.name))

    @grpc_errors
    def ListPreferences(self, request, context):
        items, token = self.body.list(request)
        return instancetype_pb2.ListPreferencesResponse(preferences=items, next_page_token=token)

    @grpc_errors
    def UpdatePreference(self, request, context):
        return instancetype_pb2.UpdatePreferenceResponse(preference=self.body.update(request.preference))

    @grpc_errors
    def DeletePreference(self, request, context):
        self.body.delete(request.name, request.resource_version)
        return instancetype_pb2.DeletePreferenceResponse()
