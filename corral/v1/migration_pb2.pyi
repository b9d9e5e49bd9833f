import datetime

from corral.v1 import meta_pb2 as _meta_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MigrationPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIGRATION_PHASE_UNSPECIFIED: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_PENDING: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_SCHEDULING: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_SCHEDULED: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_PREPARING_TARGET: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_TARGET_READY: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_RUNNING: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_SUCCEEDED: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_FAILED: _ClassVar[MigrationPhase]

class MigrationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIGRATION_MODE_UNSPECIFIED: _ClassVar[MigrationMode]
    MIGRATION_MODE_PRE_COPY: _ClassVar[MigrationMode]
    MIGRATION_MODE_POST_COPY: _ClassVar[MigrationMode]
MIGRATION_PHASE_UNSPECIFIED: MigrationPhase
MIGRATION_PHASE_PENDING: MigrationPhase
MIGRATION_PHASE_SCHEDULING: MigrationPhase
MIGRATION_PHASE_SCHEDULED: MigrationPhase
MIGRATION_PHASE_PREPARING_TARGET: MigrationPhase
MIGRATION_PHASE_TARGET_READY: MigrationPhase
MIGRATION_PHASE_RUNNING: MigrationPhase
MIGRATION_PHASE_SUCCEEDED: MigrationPhase
MIGRATION_PHASE_FAILED: MigrationPhase
MIGRATION_MODE_UNSPECIFIED: MigrationMode
MIGRATION_MODE_PRE_COPY: MigrationMode
MIGRATION_MODE_POST_COPY: MigrationMode

class Migration(_message.Message):
    __slots__ = ("metadata", "spec", "status")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    metadata: _meta_pb2.ObjectMeta
    spec: MigrationSpec
    status: MigrationStatus
    def __init__(self, metadata: _Optional[_Union[_meta_pb2.ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[MigrationSpec, _Mapping]] = ..., status: _Optional[_Union[MigrationStatus, _Mapping]] = ...) -> None: ...

class MigrationSpec(_message.Message):
    __slots__ = ("vm_name", "target_node", "policy")
    VM_NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    vm_name: str
    target_node: str
    policy: MigrationPolicy
    def __init__(self, vm_name: _Optional[str] = ..., target_node: _Optional[str] = ..., policy: _Optional[_Union[MigrationPolicy, _Mapping]] = ...) -> None: ...

class MigrationPolicy(_message.Message):
    __slots__ = ("bandwidth_mib_per_second", "completion_timeout_per_gib_seconds", "progress_timeout_seconds", "allow_post_copy", "allow_auto_converge")
    BANDWIDTH_MIB_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TIMEOUT_PER_GIB_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_POST_COPY_FIELD_NUMBER: _ClassVar[int]
    ALLOW_AUTO_CONVERGE_FIELD_NUMBER: _ClassVar[int]
    bandwidth_mib_per_second: int
    completion_timeout_per_gib_seconds: int
    progress_timeout_seconds: int
    allow_post_copy: bool
    allow_auto_converge: bool
    def __init__(self, bandwidth_mib_per_second: _Optional[int] = ..., completion_timeout_per_gib_seconds: _Optional[int] = ..., progress_timeout_seconds: _Optional[int] = ..., allow_post_copy: _Optional[bool] = ..., allow_auto_converge: _Optional[bool] = ...) -> None: ...

class MigrationPhaseTransition(_message.Message):
    __slots__ = ("phase", "time")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    phase: MigrationPhase
    time: _timestamp_pb2.Timestamp
    def __init__(self, phase: _Optional[_Union[MigrationPhase, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MigrationStatus(_message.Message):
    __slots__ = ("phase", "source_node", "target_node", "source_instance_uid", "target_instance_uid", "mode", "data_total_bytes", "data_processed_bytes", "data_remaining_bytes", "downtime_ms", "start_time", "end_time", "reason", "message", "phase_transitions", "cancel_requested", "target_address", "post_copy_message")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NODE_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    TARGET_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DATA_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_PROCESSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_REMAINING_BYTES_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PHASE_TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    POST_COPY_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    phase: MigrationPhase
    source_node: str
    target_node: str
    source_instance_uid: str
    target_instance_uid: str
    mode: MigrationMode
    data_total_bytes: int
    data_processed_bytes: int
    data_remaining_bytes: int
    downtime_ms: int
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    reason: str
    message: str
    phase_transitions: _containers.RepeatedCompositeFieldContainer[MigrationPhaseTransition]
    cancel_requested: bool
    target_address: str
    post_copy_message: str
    def __init__(self, phase: _Optional[_Union[MigrationPhase, str]] = ..., source_node: _Optional[str] = ..., target_node: _Optional[str] = ..., source_instance_uid: _Optional[str] = ..., target_instance_uid: _Optional[str] = ..., mode: _Optional[_Union[MigrationMode, str]] = ..., data_total_bytes: _Optional[int] = ..., data_processed_bytes: _Optional[int] = ..., data_remaining_bytes: _Optional[int] = ..., downtime_ms: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., phase_transitions: _Optional[_Iterable[_Union[MigrationPhaseTransition, _Mapping]]] = ..., cancel_requested: _Optional[bool] = ..., target_address: _Optional[str] = ..., post_copy_message: _Optional[str] = ...) -> None: ...

class CreateMigrationRequest(_message.Message):
    __slots__ = ("migration",)
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    migration: Migration
    def __init__(self, migration: _Optional[_Union[Migration, _Mapping]] = ...) -> None: ...

class CreateMigrationResponse(_message.Message):
    __slots__ = ("migration",)
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    migration: Migration
    def __init__(self, migration: _Optional[_Union[Migration, _Mapping]] = ...) -> None: ...

class GetMigrationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetMigrationResponse(_message.Message):
    __slots__ = ("migration",)
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    migration: Migration
    def __init__(self, migration: _Optional[_Union[Migration, _Mapping]] = ...) -> None: ...

class ListMigrationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "label_selector", "vm_name")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    VM_NAME_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    label_selector: str
    vm_name: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., label_selector: _Optional[str] = ..., vm_name: _Optional[str] = ...) -> None: ...

class ListMigrationsResponse(_message.Message):
    __slots__ = ("migrations", "next_page_token", "resource_version")
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    migrations: _containers.RepeatedCompositeFieldContainer[Migration]
    next_page_token: str
    resource_version: int
    def __init__(self, migrations: _Optional[_Iterable[_Union[Migration, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class WatchMigrationsRequest(_message.Message):
    __slots__ = ("resource_version", "label_selector")
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    resource_version: int
    label_selector: str
    def __init__(self, resource_version: _Optional[int] = ..., label_selector: _Optional[str] = ...) -> None: ...

class WatchMigrationsResponse(_message.Message):
    __slots__ = ("type", "migration", "resource_version")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    type: _meta_pb2.WatchEventType
    migration: Migration
    resource_version: int
    def __init__(self, type: _Optional[_Union[_meta_pb2.WatchEventType, str]] = ..., migration: _Optional[_Union[Migration, _Mapping]] = ..., resource_version: _Optional[int] = ...) -> None: ...

class CancelMigrationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CancelMigrationResponse(_message.Message):
    __slots__ = ("migration",)
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    migration: Migration
    def __init__(self, migration: _Optional[_Union[Migration, _Mapping]] = ...) -> None: ...
