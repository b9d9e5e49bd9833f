from corral.v1 import migration_pb2 as _migration_pb2
from corral.v1 import node_pb2 as _node_pb2
from corral.v1 import vm_pb2 as _vm_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MigrationRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIGRATION_ROLE_UNSPECIFIED: _ClassVar[MigrationRole]
    MIGRATION_ROLE_SOURCE: _ClassVar[MigrationRole]
    MIGRATION_ROLE_TARGET: _ClassVar[MigrationRole]

class AssignmentEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSIGNMENT_EVENT_TYPE_UNSPECIFIED: _ClassVar[AssignmentEventType]
    ASSIGNMENT_EVENT_TYPE_UPSERT: _ClassVar[AssignmentEventType]
    ASSIGNMENT_EVENT_TYPE_REMOVE: _ClassVar[AssignmentEventType]
    ASSIGNMENT_EVENT_TYPE_SYNCED: _ClassVar[AssignmentEventType]
MIGRATION_ROLE_UNSPECIFIED: MigrationRole
MIGRATION_ROLE_SOURCE: MigrationRole
MIGRATION_ROLE_TARGET: MigrationRole
ASSIGNMENT_EVENT_TYPE_UNSPECIFIED: AssignmentEventType
ASSIGNMENT_EVENT_TYPE_UPSERT: AssignmentEventType
ASSIGNMENT_EVENT_TYPE_REMOVE: AssignmentEventType
ASSIGNMENT_EVENT_TYPE_SYNCED: AssignmentEventType

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node_name", "labels", "capacity", "cpu_allocation_ratio", "hypervisor", "address", "post_copy_ready", "post_copy_message")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    CPU_ALLOCATION_RATIO_FIELD_NUMBER: _ClassVar[int]
    HYPERVISOR_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    POST_COPY_READY_FIELD_NUMBER: _ClassVar[int]
    POST_COPY_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    labels: _containers.ScalarMap[str, str]
    capacity: _node_pb2.Resources
    cpu_allocation_ratio: int
    hypervisor: str
    address: str
    post_copy_ready: bool
    post_copy_message: str
    def __init__(self, node_name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., capacity: _Optional[_Union[_node_pb2.Resources, _Mapping]] = ..., cpu_allocation_ratio: _Optional[int] = ..., hypervisor: _Optional[str] = ..., address: _Optional[str] = ..., post_copy_ready: _Optional[bool] = ..., post_copy_message: _Optional[str] = ...) -> None: ...

class RegisterNodeResponse(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: _node_pb2.Node
    def __init__(self, node: _Optional[_Union[_node_pb2.Node, _Mapping]] = ...) -> None: ...

class GrantNodeLeaseRequest(_message.Message):
    __slots__ = ("node_name", "ttl_seconds")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    ttl_seconds: int
    def __init__(self, node_name: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class GrantNodeLeaseResponse(_message.Message):
    __slots__ = ("lease_id", "ttl_seconds")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    ttl_seconds: int
    def __init__(self, lease_id: _Optional[int] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class RenewNodeLeaseRequest(_message.Message):
    __slots__ = ("node_name", "lease_id")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    lease_id: int
    def __init__(self, node_name: _Optional[str] = ..., lease_id: _Optional[int] = ...) -> None: ...

class RenewNodeLeaseResponse(_message.Message):
    __slots__ = ("ttl_seconds",)
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ttl_seconds: int
    def __init__(self, ttl_seconds: _Optional[int] = ...) -> None: ...

class AcquireInstanceLockRequest(_message.Message):
    __slots__ = ("node_name", "vm_name", "instance_uid", "lease_id")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    VM_NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    vm_name: str
    instance_uid: str
    lease_id: int
    def __init__(self, node_name: _Optional[str] = ..., vm_name: _Optional[str] = ..., instance_uid: _Optional[str] = ..., lease_id: _Optional[int] = ...) -> None: ...

class AcquireInstanceLockResponse(_message.Message):
    __slots__ = ("acquired", "holder")
    ACQUIRED_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    acquired: bool
    holder: str
    def __init__(self, acquired: _Optional[bool] = ..., holder: _Optional[str] = ...) -> None: ...

class ReclaimInstanceLockRequest(_message.Message):
    __slots__ = ("node_name", "vm_name", "instance_uid", "lease_id")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    VM_NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    vm_name: str
    instance_uid: str
    lease_id: int
    def __init__(self, node_name: _Optional[str] = ..., vm_name: _Optional[str] = ..., instance_uid: _Optional[str] = ..., lease_id: _Optional[int] = ...) -> None: ...

class ReclaimInstanceLockResponse(_message.Message):
    __slots__ = ("reclaimed",)
    RECLAIMED_FIELD_NUMBER: _ClassVar[int]
    reclaimed: bool
    def __init__(self, reclaimed: _Optional[bool] = ...) -> None: ...

class ReleaseInstanceLockRequest(_message.Message):
    __slots__ = ("node_name", "vm_name", "instance_uid")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    VM_NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    vm_name: str
    instance_uid: str
    def __init__(self, node_name: _Optional[str] = ..., vm_name: _Optional[str] = ..., instance_uid: _Optional[str] = ...) -> None: ...

class ReleaseInstanceLockResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportMigrationStatusRequest(_message.Message):
    __slots__ = ("node_name", "vm_name", "vm_uid", "migration_name", "role", "phase", "target_address", "target_domain_xml", "mode", "data_total_bytes", "data_processed_bytes", "data_remaining_bytes", "downtime_ms", "reason", "message", "migration_uri")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    VM_NAME_FIELD_NUMBER: _ClassVar[int]
    VM_UID_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TARGET_DOMAIN_XML_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DATA_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_PROCESSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_REMAINING_BYTES_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_URI_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    vm_name: str
    vm_uid: str
    migration_name: str
    role: MigrationRole
    phase: _migration_pb2.MigrationPhase
    target_address: str
    target_domain_xml: str
    mode: _migration_pb2.MigrationMode
    data_total_bytes: int
    data_processed_bytes: int
    data_remaining_bytes: int
    downtime_ms: int
    reason: str
    message: str
    migration_uri: str
    def __init__(self, node_name: _Optional[str] = ..., vm_name: _Optional[str] = ..., vm_uid: _Optional[str] = ..., migration_name: _Optional[str] = ..., role: _Optional[_Union[MigrationRole, str]] = ..., phase: _Optional[_Union[_migration_pb2.MigrationPhase, str]] = ..., target_address: _Optional[str] = ..., target_domain_xml: _Optional[str] = ..., mode: _Optional[_Union[_migration_pb2.MigrationMode, str]] = ..., data_total_bytes: _Optional[int] = ..., data_processed_bytes: _Optional[int] = ..., data_remaining_bytes: _Optional[int] = ..., downtime_ms: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., migration_uri: _Optional[str] = ...) -> None: ...

class ReportMigrationStatusResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchAssignmentsRequest(_message.Message):
    __slots__ = ("node_name", "avoid_leader")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    AVOID_LEADER_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    avoid_leader: bool
    def __init__(self, node_name: _Optional[str] = ..., avoid_leader: _Optional[bool] = ...) -> None: ...

class WatchAssignmentsResponse(_message.Message):
    __slots__ = ("type", "virtual_machine", "resource_version")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    type: AssignmentEventType
    virtual_machine: _vm_pb2.VirtualMachine
    resource_version: int
    def __init__(self, type: _Optional[_Union[AssignmentEventType, str]] = ..., virtual_machine: _Optional[_Union[_vm_pb2.VirtualMachine, _Mapping]] = ..., resource_version: _Optional[int] = ...) -> None: ...

class ReportVirtualMachineStatusRequest(_message.Message):
    __slots__ = ("node_name", "name", "uid", "phase", "reason", "message", "serial_log_path", "instance_uid", "paused", "guest", "saved_state_path")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SERIAL_LOG_PATH_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    SAVED_STATE_PATH_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    name: str
    uid: str
    phase: _vm_pb2.VirtualMachinePhase
    reason: str
    message: str
    serial_log_path: str
    instance_uid: str
    paused: bool
    guest: _vm_pb2.GuestInfo
    saved_state_path: str
    def __init__(self, node_name: _Optional[str] = ..., name: _Optional[str] = ..., uid: _Optional[str] = ..., phase: _Optional[_Union[_vm_pb2.VirtualMachinePhase, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., serial_log_path: _Optional[str] = ..., instance_uid: _Optional[str] = ..., paused: _Optional[bool] = ..., guest: _Optional[_Union[_vm_pb2.GuestInfo, _Mapping]] = ..., saved_state_path: _Optional[str] = ...) -> None: ...

class ReportVirtualMachineStatusResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: _vm_pb2.VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[_vm_pb2.VirtualMachine, _Mapping]] = ...) -> None: ...

class ReleaseVirtualMachineRequest(_message.Message):
    __slots__ = ("node_name", "name", "uid")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    name: str
    uid: str
    def __init__(self, node_name: _Optional[str] = ..., name: _Optional[str] = ..., uid: _Optional[str] = ...) -> None: ...

class ReleaseVirtualMachineResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStoreHealthRequest(_message.Message):
    __slots__ = ("node_name",)
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    def __init__(self, node_name: _Optional[str] = ...) -> None: ...

class GetStoreHealthResponse(_message.Message):
    __slots__ = ("store_reachable", "message")
    STORE_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    store_reachable: bool
    message: str
    def __init__(self, store_reachable: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...
