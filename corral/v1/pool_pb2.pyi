from corral.v1 import meta_pb2 as _meta_pb2
from corral.v1 import vm_pb2 as _vm_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatePreservation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_PRESERVATION_UNSPECIFIED: _ClassVar[StatePreservation]
    STATE_PRESERVATION_DISABLED: _ClassVar[StatePreservation]
    STATE_PRESERVATION_OFFLINE: _ClassVar[StatePreservation]

class ScaleInOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCALE_IN_ORDER_UNSPECIFIED: _ClassVar[ScaleInOrder]
    SCALE_IN_ORDER_HIGHEST_INDEX: _ClassVar[ScaleInOrder]
    SCALE_IN_ORDER_NEWEST: _ClassVar[ScaleInOrder]
    SCALE_IN_ORDER_OLDEST: _ClassVar[ScaleInOrder]
STATE_PRESERVATION_UNSPECIFIED: StatePreservation
STATE_PRESERVATION_DISABLED: StatePreservation
STATE_PRESERVATION_OFFLINE: StatePreservation
SCALE_IN_ORDER_UNSPECIFIED: ScaleInOrder
SCALE_IN_ORDER_HIGHEST_INDEX: ScaleInOrder
SCALE_IN_ORDER_NEWEST: ScaleInOrder
SCALE_IN_ORDER_OLDEST: ScaleInOrder

class VirtualMachinePool(_message.Message):
    __slots__ = ("metadata", "spec", "status")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    metadata: _meta_pb2.ObjectMeta
    spec: VirtualMachinePoolSpec
    status: VirtualMachinePoolStatus
    def __init__(self, metadata: _Optional[_Union[_meta_pb2.ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[VirtualMachinePoolSpec, _Mapping]] = ..., status: _Optional[_Union[VirtualMachinePoolStatus, _Mapping]] = ...) -> None: ...

class VirtualMachinePoolSpec(_message.Message):
    __slots__ = ("replicas", "selector", "virtual_machine_template", "paused", "max_unavailable", "scale_in_policy", "auto_healing")
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_MACHINE_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    MAX_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    SCALE_IN_POLICY_FIELD_NUMBER: _ClassVar[int]
    AUTO_HEALING_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    selector: str
    virtual_machine_template: VirtualMachineTemplate
    paused: bool
    max_unavailable: str
    scale_in_policy: ScaleInPolicy
    auto_healing: AutoHealing
    def __init__(self, replicas: _Optional[int] = ..., selector: _Optional[str] = ..., virtual_machine_template: _Optional[_Union[VirtualMachineTemplate, _Mapping]] = ..., paused: _Optional[bool] = ..., max_unavailable: _Optional[str] = ..., scale_in_policy: _Optional[_Union[ScaleInPolicy, _Mapping]] = ..., auto_healing: _Optional[_Union[AutoHealing, _Mapping]] = ...) -> None: ...

class VirtualMachineTemplate(_message.Message):
    __slots__ = ("metadata", "spec")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    metadata: _meta_pb2.ObjectMeta
    spec: _vm_pb2.VirtualMachineSpec
    def __init__(self, metadata: _Optional[_Union[_meta_pb2.ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[_vm_pb2.VirtualMachineSpec, _Mapping]] = ...) -> None: ...

class ScaleInPolicy(_message.Message):
    __slots__ = ("order", "prefer_label_selector", "state_preservation")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    PREFER_LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    STATE_PRESERVATION_FIELD_NUMBER: _ClassVar[int]
    order: ScaleInOrder
    prefer_label_selector: str
    state_preservation: StatePreservation
    def __init__(self, order: _Optional[_Union[ScaleInOrder, str]] = ..., prefer_label_selector: _Optional[str] = ..., state_preservation: _Optional[_Union[StatePreservation, str]] = ...) -> None: ...

class AutoHealing(_message.Message):
    __slots__ = ("disabled", "failed_runs", "window_seconds")
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    FAILED_RUNS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    disabled: bool
    failed_runs: int
    window_seconds: int
    def __init__(self, disabled: _Optional[bool] = ..., failed_runs: _Optional[int] = ..., window_seconds: _Optional[int] = ...) -> None: ...

class VirtualMachinePoolStatus(_message.Message):
    __slots__ = ("replicas", "ready_replicas", "updated_replicas", "template_revision", "conditions", "observed_resource_version")
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    READY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_REVISION_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    ready_replicas: int
    updated_replicas: int
    template_revision: str
    conditions: _containers.RepeatedCompositeFieldContainer[_meta_pb2.Condition]
    observed_resource_version: int
    def __init__(self, replicas: _Optional[int] = ..., ready_replicas: _Optional[int] = ..., updated_replicas: _Optional[int] = ..., template_revision: _Optional[str] = ..., conditions: _Optional[_Iterable[_Union[_meta_pb2.Condition, _Mapping]]] = ..., observed_resource_version: _Optional[int] = ...) -> None: ...

class CreateVirtualMachinePoolRequest(_message.Message):
    __slots__ = ("virtual_machine_pool",)
    VIRTUAL_MACHINE_POOL_FIELD_NUMBER: _ClassVar[int]
    virtual_machine_pool: VirtualMachinePool
    def __init__(self, virtual_machine_pool: _Optional[_Union[VirtualMachinePool, _Mapping]] = ...) -> None: ...

class CreateVirtualMachinePoolResponse(_message.Message):
    __slots__ = ("virtual_machine_pool",)
    VIRTUAL_MACHINE_POOL_FIELD_NUMBER: _ClassVar[int]
    virtual_machine_pool: VirtualMachinePool
    def __init__(self, virtual_machine_pool: _Optional[_Union[VirtualMachinePool, _Mapping]] = ...) -> None: ...

class GetVirtualMachinePoolRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetVirtualMachinePoolResponse(_message.Message):
    __slots__ = ("virtual_machine_pool",)
    VIRTUAL_MACHINE_POOL_FIELD_NUMBER: _ClassVar[int]
    virtual_machine_pool: VirtualMachinePool
    def __init__(self, virtual_machine_pool: _Optional[_Union[VirtualMachinePool, _Mapping]] = ...) -> None: ...

class ListVirtualMachinePoolsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "label_selector")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    label_selector: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., label_selector: _Optional[str] = ...) -> None: ...

class ListVirtualMachinePoolsResponse(_message.Message):
    __slots__ = ("virtual_machine_pools", "next_page_token", "resource_version")
    VIRTUAL_MACHINE_POOLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    virtual_machine_pools: _containers.RepeatedCompositeFieldContainer[VirtualMachinePool]
    next_page_token: str
    resource_version: int
    def __init__(self, virtual_machine_pools: _Optional[_Iterable[_Union[VirtualMachinePool, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class UpdateVirtualMachinePoolRequest(_message.Message):
    __slots__ = ("virtual_machine_pool",)
    VIRTUAL_MACHINE_POOL_FIELD_NUMBER: _ClassVar[int]
    virtual_machine_pool: VirtualMachinePool
    def __init__(self, virtual_machine_pool: _Optional[_Union[VirtualMachinePool, _Mapping]] = ...) -> None: ...

class UpdateVirtualMachinePoolResponse(_message.Message):
    __slots__ = ("virtual_machine_pool",)
    VIRTUAL_MACHINE_POOL_FIELD_NUMBER: _ClassVar[int]
    virtual_machine_pool: VirtualMachinePool
    def __init__(self, virtual_machine_pool: _Optional[_Union[VirtualMachinePool, _Mapping]] = ...) -> None: ...

class DeleteVirtualMachinePoolRequest(_message.Message):
    __slots__ = ("name", "resource_version", "orphan")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ORPHAN_FIELD_NUMBER: _ClassVar[int]
    name: str
    resource_version: int
    orphan: bool
    def __init__(self, name: _Optional[str] = ..., resource_version: _Optional[int] = ..., orphan: _Optional[bool] = ...) -> None: ...

class DeleteVirtualMachinePoolResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchVirtualMachinePoolsRequest(_message.Message):
    __slots__ = ("resource_version", "label_selector")
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    resource_version: int
    label_selector: str
    def __init__(self, resource_version: _Optional[int] = ..., label_selector: _Optional[str] = ...) -> None: ...

class WatchVirtualMachinePoolsResponse(_message.Message):
    __slots__ = ("type", "virtual_machine_pool", "resource_version")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_MACHINE_POOL_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    type: _meta_pb2.WatchEventType
    virtual_machine_pool: VirtualMachinePool
    resource_version: int
    def __init__(self, type: _Optional[_Union[_meta_pb2.WatchEventType, str]] = ..., virtual_machine_pool: _Optional[_Union[VirtualMachinePool, _Mapping]] = ..., resource_version: _Optional[int] = ...) -> None: ...

class ScaleVirtualMachinePoolRequest(_message.Message):
    __slots__ = ("name", "replicas", "resource_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    replicas: int
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., replicas: _Optional[int] = ..., resource_version: _Optional[int] = ...) -> None: ...

class ScaleVirtualMachinePoolResponse(_message.Message):
    __slots__ = ("virtual_machine_pool",)
    VIRTUAL_MACHINE_POOL_FIELD_NUMBER: _ClassVar[int]
    virtual_machine_pool: VirtualMachinePool
    def __init__(self, virtual_machine_pool: _Optional[_Union[VirtualMachinePool, _Mapping]] = ...) -> None: ...
