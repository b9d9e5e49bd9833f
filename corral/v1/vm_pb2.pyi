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

class Firmware(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIRMWARE_UNSPECIFIED: _ClassVar[Firmware]
    FIRMWARE_BIOS: _ClassVar[Firmware]
    FIRMWARE_UEFI: _ClassVar[Firmware]

class DiskBus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISK_BUS_UNSPECIFIED: _ClassVar[DiskBus]
    DISK_BUS_VIRTIO: _ClassVar[DiskBus]
    DISK_BUS_SCSI: _ClassVar[DiskBus]
    DISK_BUS_SATA: _ClassVar[DiskBus]

class EvictionStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVICTION_STRATEGY_UNSPECIFIED: _ClassVar[EvictionStrategy]
    EVICTION_STRATEGY_LIVE_MIGRATE: _ClassVar[EvictionStrategy]
    EVICTION_STRATEGY_LIVE_MIGRATE_IF_POSSIBLE: _ClassVar[EvictionStrategy]
    EVICTION_STRATEGY_NONE: _ClassVar[EvictionStrategy]
    EVICTION_STRATEGY_EXTERNAL: _ClassVar[EvictionStrategy]

class PortProtocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PORT_PROTOCOL_UNSPECIFIED: _ClassVar[PortProtocol]
    PORT_PROTOCOL_TCP: _ClassVar[PortProtocol]
    PORT_PROTOCOL_UDP: _ClassVar[PortProtocol]

class RunStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STRATEGY_UNSPECIFIED: _ClassVar[RunStrategy]
    RUN_STRATEGY_ALWAYS: _ClassVar[RunStrategy]
    RUN_STRATEGY_RERUN_ON_FAILURE: _ClassVar[RunStrategy]
    RUN_STRATEGY_MANUAL: _ClassVar[RunStrategy]
    RUN_STRATEGY_HALTED: _ClassVar[RunStrategy]
    RUN_STRATEGY_ONCE: _ClassVar[RunStrategy]

class DiskFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISK_FORMAT_UNSPECIFIED: _ClassVar[DiskFormat]
    DISK_FORMAT_RAW: _ClassVar[DiskFormat]
    DISK_FORMAT_QCOW2: _ClassVar[DiskFormat]

class VirtualMachinePhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIRTUAL_MACHINE_PHASE_UNSPECIFIED: _ClassVar[VirtualMachinePhase]
    VIRTUAL_MACHINE_PHASE_PENDING: _ClassVar[VirtualMachinePhase]
    VIRTUAL_MACHINE_PHASE_SCHEDULED: _ClassVar[VirtualMachinePhase]
    VIRTUAL_MACHINE_PHASE_RUNNING: _ClassVar[VirtualMachinePhase]
    VIRTUAL_MACHINE_PHASE_SUCCEEDED: _ClassVar[VirtualMachinePhase]
    VIRTUAL_MACHINE_PHASE_FAILED: _ClassVar[VirtualMachinePhase]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_NORMAL: _ClassVar[EventType]
    EVENT_TYPE_WARNING: _ClassVar[EventType]

class RunAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_ACTION_UNSPECIFIED: _ClassVar[RunAction]
    RUN_ACTION_STOP: _ClassVar[RunAction]
    RUN_ACTION_RESTART: _ClassVar[RunAction]
    RUN_ACTION_SAVE: _ClassVar[RunAction]
FIRMWARE_UNSPECIFIED: Firmware
FIRMWARE_BIOS: Firmware
FIRMWARE_UEFI: Firmware
DISK_BUS_UNSPECIFIED: DiskBus
DISK_BUS_VIRTIO: DiskBus
DISK_BUS_SCSI: DiskBus
DISK_BUS_SATA: DiskBus
EVICTION_STRATEGY_UNSPECIFIED: EvictionStrategy
EVICTION_STRATEGY_LIVE_MIGRATE: EvictionStrategy
EVICTION_STRATEGY_LIVE_MIGRATE_IF_POSSIBLE: EvictionStrategy
EVICTION_STRATEGY_NONE: EvictionStrategy
EVICTION_STRATEGY_EXTERNAL: EvictionStrategy
PORT_PROTOCOL_UNSPECIFIED: PortProtocol
PORT_PROTOCOL_TCP: PortProtocol
PORT_PROTOCOL_UDP: PortProtocol
RUN_STRATEGY_UNSPECIFIED: RunStrategy
RUN_STRATEGY_ALWAYS: RunStrategy
RUN_STRATEGY_RERUN_ON_FAILURE: RunStrategy
RUN_STRATEGY_MANUAL: RunStrategy
RUN_STRATEGY_HALTED: RunStrategy
RUN_STRATEGY_ONCE: RunStrategy
DISK_FORMAT_UNSPECIFIED: DiskFormat
DISK_FORMAT_RAW: DiskFormat
DISK_FORMAT_QCOW2: DiskFormat
VIRTUAL_MACHINE_PHASE_UNSPECIFIED: VirtualMachinePhase
VIRTUAL_MACHINE_PHASE_PENDING: VirtualMachinePhase
VIRTUAL_MACHINE_PHASE_SCHEDULED: VirtualMachinePhase
VIRTUAL_MACHINE_PHASE_RUNNING: VirtualMachinePhase
VIRTUAL_MACHINE_PHASE_SUCCEEDED: VirtualMachinePhase
VIRTUAL_MACHINE_PHASE_FAILED: VirtualMachinePhase
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_NORMAL: EventType
EVENT_TYPE_WARNING: EventType
RUN_ACTION_UNSPECIFIED: RunAction
RUN_ACTION_STOP: RunAction
RUN_ACTION_RESTART: RunAction
RUN_ACTION_SAVE: RunAction

class VirtualMachine(_message.Message):
    __slots__ = ("metadata", "spec", "status")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    metadata: _meta_pb2.ObjectMeta
    spec: VirtualMachineSpec
    status: VirtualMachineStatus
    def __init__(self, metadata: _Optional[_Union[_meta_pb2.ObjectMeta, _Mapping]] = ..., spec: _Optional[_Union[VirtualMachineSpec, _Mapping]] = ..., status: _Optional[_Union[VirtualMachineStatus, _Mapping]] = ...) -> None: ...

class VirtualMachineSpec(_message.Message):
    __slots__ = ("vcpus", "memory_mib", "boot", "node_selector", "run_strategy", "disks", "cloud_init", "networks", "termination_grace_period_seconds", "eviction_strategy", "instance_type", "preference", "machine_type", "firmware", "disk_bus", "cpu_topology", "dedicated_cpu_placement", "hugepages", "headless", "max_vcpus", "max_memory_mib")
    class NodeSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    BOOT_FIELD_NUMBER: _ClassVar[int]
    NODE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    RUN_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_INIT_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    TERMINATION_GRACE_PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EVICTION_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    MACHINE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_FIELD_NUMBER: _ClassVar[int]
    DISK_BUS_FIELD_NUMBER: _ClassVar[int]
    CPU_TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    DEDICATED_CPU_PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    HUGEPAGES_FIELD_NUMBER: _ClassVar[int]
    HEADLESS_FIELD_NUMBER: _ClassVar[int]
    MAX_VCPUS_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    vcpus: int
    memory_mib: int
    boot: BootSource
    node_selector: _containers.ScalarMap[str, str]
    run_strategy: RunStrategy
    disks: _containers.RepeatedCompositeFieldContainer[Disk]
    cloud_init: CloudInitNoCloud
    networks: _containers.RepeatedCompositeFieldContainer[Network]
    termination_grace_period_seconds: int
    eviction_strategy: EvictionStrategy
    instance_type: InstanceTypeRef
    preference: PreferenceRef
    machine_type: str
    firmware: Firmware
    disk_bus: DiskBus
    cpu_topology: CpuTopology
    dedicated_cpu_placement: bool
    hugepages: Hugepages
    headless: bool
    max_vcpus: int
    max_memory_mib: int
    def __init__(self, vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., boot: _Optional[_Union[BootSource, _Mapping]] = ..., node_selector: _Optional[_Mapping[str, str]] = ..., run_strategy: _Optional[_Union[RunStrategy, str]] = ..., disks: _Optional[_Iterable[_Union[Disk, _Mapping]]] = ..., cloud_init: _Optional[_Union[CloudInitNoCloud, _Mapping]] = ..., networks: _Optional[_Iterable[_Union[Network, _Mapping]]] = ..., termination_grace_period_seconds: _Optional[int] = ..., eviction_strategy: _Optional[_Union[EvictionStrategy, str]] = ..., instance_type: _Optional[_Union[InstanceTypeRef, _Mapping]] = ..., preference: _Optional[_Union[PreferenceRef, _Mapping]] = ..., machine_type: _Optional[str] = ..., firmware: _Optional[_Union[Firmware, str]] = ..., disk_bus: _Optional[_Union[DiskBus, str]] = ..., cpu_topology: _Optional[_Union[CpuTopology, _Mapping]] = ..., dedicated_cpu_placement: _Optional[bool] = ..., hugepages: _Optional[_Union[Hugepages, _Mapping]] = ..., headless: _Optional[bool] = ..., max_vcpus: _Optional[int] = ..., max_memory_mib: _Optional[int] = ...) -> None: ...

class InstanceTypeRef(_message.Message):
    __slots__ = ("name", "revision_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision_name: str
    def __init__(self, name: _Optional[str] = ..., revision_name: _Optional[str] = ...) -> None: ...

class PreferenceRef(_message.Message):
    __slots__ = ("name", "revision_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision_name: str
    def __init__(self, name: _Optional[str] = ..., revision_name: _Optional[str] = ...) -> None: ...

class CpuTopology(_message.Message):
    __slots__ = ("sockets", "cores", "threads")
    SOCKETS_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    sockets: int
    cores: int
    threads: int
    def __init__(self, sockets: _Optional[int] = ..., cores: _Optional[int] = ..., threads: _Optional[int] = ...) -> None: ...

class Hugepages(_message.Message):
    __slots__ = ("page_size",)
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    page_size: str
    def __init__(self, page_size: _Optional[str] = ...) -> None: ...

class Disk(_message.Message):
    __slots__ = ("name", "ephemeral", "persistent", "read_only", "bus")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    BUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ephemeral: EphemeralDisk
    persistent: PersistentDisk
    read_only: bool
    bus: DiskBus
    def __init__(self, name: _Optional[str] = ..., ephemeral: _Optional[_Union[EphemeralDisk, _Mapping]] = ..., persistent: _Optional[_Union[PersistentDisk, _Mapping]] = ..., read_only: _Optional[bool] = ..., bus: _Optional[_Union[DiskBus, str]] = ...) -> None: ...

class EphemeralDisk(_message.Message):
    __slots__ = ("base_image_path", "base_format")
    BASE_IMAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    BASE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    base_image_path: str
    base_format: DiskFormat
    def __init__(self, base_image_path: _Optional[str] = ..., base_format: _Optional[_Union[DiskFormat, str]] = ...) -> None: ...

class PersistentDisk(_message.Message):
    __slots__ = ("path", "format")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    path: str
    format: DiskFormat
    def __init__(self, path: _Optional[str] = ..., format: _Optional[_Union[DiskFormat, str]] = ...) -> None: ...

class CloudInitNoCloud(_message.Message):
    __slots__ = ("user_data", "network_data")
    USER_DATA_FIELD_NUMBER: _ClassVar[int]
    NETWORK_DATA_FIELD_NUMBER: _ClassVar[int]
    user_data: str
    network_data: str
    def __init__(self, user_data: _Optional[str] = ..., network_data: _Optional[str] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("name", "user", "bridge", "mac_address")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    MAC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    user: UserNetwork
    bridge: BridgeNetwork
    mac_address: str
    def __init__(self, name: _Optional[str] = ..., user: _Optional[_Union[UserNetwork, _Mapping]] = ..., bridge: _Optional[_Union[BridgeNetwork, _Mapping]] = ..., mac_address: _Optional[str] = ...) -> None: ...

class UserNetwork(_message.Message):
    __slots__ = ("port_forwards",)
    PORT_FORWARDS_FIELD_NUMBER: _ClassVar[int]
    port_forwards: _containers.RepeatedCompositeFieldContainer[PortForward]
    def __init__(self, port_forwards: _Optional[_Iterable[_Union[PortForward, _Mapping]]] = ...) -> None: ...

class PortForward(_message.Message):
    __slots__ = ("protocol", "guest_port", "node_port")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    GUEST_PORT_FIELD_NUMBER: _ClassVar[int]
    NODE_PORT_FIELD_NUMBER: _ClassVar[int]
    protocol: PortProtocol
    guest_port: int
    node_port: int
    def __init__(self, protocol: _Optional[_Union[PortProtocol, str]] = ..., guest_port: _Optional[int] = ..., node_port: _Optional[int] = ...) -> None: ...

class BridgeNetwork(_message.Message):
    __slots__ = ("bridge",)
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    bridge: str
    def __init__(self, bridge: _Optional[str] = ...) -> None: ...

class BootSource(_message.Message):
    __slots__ = ("kernel", "disk")
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    kernel: KernelBoot
    disk: DiskBoot
    def __init__(self, kernel: _Optional[_Union[KernelBoot, _Mapping]] = ..., disk: _Optional[_Union[DiskBoot, _Mapping]] = ...) -> None: ...

class KernelBoot(_message.Message):
    __slots__ = ("kernel_path", "initrd_path", "cmdline")
    KERNEL_PATH_FIELD_NUMBER: _ClassVar[int]
    INITRD_PATH_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    kernel_path: str
    initrd_path: str
    cmdline: str
    def __init__(self, kernel_path: _Optional[str] = ..., initrd_path: _Optional[str] = ..., cmdline: _Optional[str] = ...) -> None: ...

class DiskBoot(_message.Message):
    __slots__ = ("image_path", "format")
    IMAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    image_path: str
    format: DiskFormat
    def __init__(self, image_path: _Optional[str] = ..., format: _Optional[_Union[DiskFormat, str]] = ...) -> None: ...

class PhaseTransition(_message.Message):
    __slots__ = ("phase", "time")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    phase: VirtualMachinePhase
    time: _timestamp_pb2.Timestamp
    def __init__(self, phase: _Optional[_Union[VirtualMachinePhase, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class VirtualMachineStatus(_message.Message):
    __slots__ = ("phase", "node_name", "conditions", "phase_transitions", "serial_log_path", "instance_uid", "restart_count", "start_after", "assignment_token", "printable_status", "runs", "events", "run_request", "saved_state", "restore_from", "run_start_time", "guest", "migration_target", "instance_lock_lease", "snapshot_in_progress", "restore_in_progress", "current_vcpus", "current_memory_mib")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    PHASE_TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    SERIAL_LOG_PATH_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PRINTABLE_STATUS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RUN_REQUEST_FIELD_NUMBER: _ClassVar[int]
    SAVED_STATE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FROM_FIELD_NUMBER: _ClassVar[int]
    RUN_START_TIME_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_TARGET_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_LOCK_LEASE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VCPUS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    phase: VirtualMachinePhase
    node_name: str
    conditions: _containers.RepeatedCompositeFieldContainer[_meta_pb2.Condition]
    phase_transitions: _containers.RepeatedCompositeFieldContainer[PhaseTransition]
    serial_log_path: str
    instance_uid: str
    restart_count: int
    start_after: _timestamp_pb2.Timestamp
    assignment_token: int
    printable_status: str
    runs: _containers.RepeatedCompositeFieldContainer[RunRecord]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    run_request: RunRequest
    saved_state: SavedState
    restore_from: SavedState
    run_start_time: _timestamp_pb2.Timestamp
    guest: GuestInfo
    migration_target: MigrationTarget
    instance_lock_lease: int
    snapshot_in_progress: str
    restore_in_progress: str
    current_vcpus: int
    current_memory_mib: int
    def __init__(self, phase: _Optional[_Union[VirtualMachinePhase, str]] = ..., node_name: _Optional[str] = ..., conditions: _Optional[_Iterable[_Union[_meta_pb2.Condition, _Mapping]]] = ..., phase_transitions: _Optional[_Iterable[_Union[PhaseTransition, _Mapping]]] = ..., serial_log_path: _Optional[str] = ..., instance_uid: _Optional[str] = ..., restart_count: _Optional[int] = ..., start_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., assignment_token: _Optional[int] = ..., printable_status: _Optional[str] = ..., runs: _Optional[_Iterable[_Union[RunRecord, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., run_request: _Optional[_Union[RunRequest, _Mapping]] = ..., saved_state: _Optional[_Union[SavedState, _Mapping]] = ..., restore_from: _Optional[_Union[SavedState, _Mapping]] = ..., run_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., guest: _Optional[_Union[GuestInfo, _Mapping]] = ..., migration_target: _Optional[_Union[MigrationTarget, _Mapping]] = ..., instance_lock_lease: _Optional[int] = ..., snapshot_in_progress: _Optional[str] = ..., restore_in_progress: _Optional[str] = ..., current_vcpus: _Optional[int] = ..., current_memory_mib: _Optional[int] = ...) -> None: ...

class MigrationTarget(_message.Message):
    __slots__ = ("migration_name", "node_name", "instance_uid", "target_address", "target_domain_xml", "bandwidth_mib_per_second", "completion_timeout_seconds", "progress_timeout_seconds", "allow_post_copy", "allow_auto_converge", "cancel_requested", "migration_uri", "cancel_reason", "cancel_message")
    MIGRATION_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TARGET_DOMAIN_XML_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MIB_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_POST_COPY_FIELD_NUMBER: _ClassVar[int]
    ALLOW_AUTO_CONVERGE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_URI_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REASON_FIELD_NUMBER: _ClassVar[int]
    CANCEL_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    migration_name: str
    node_name: str
    instance_uid: str
    target_address: str
    target_domain_xml: str
    bandwidth_mib_per_second: int
    completion_timeout_seconds: int
    progress_timeout_seconds: int
    allow_post_copy: bool
    allow_auto_converge: bool
    cancel_requested: bool
    migration_uri: str
    cancel_reason: str
    cancel_message: str
    def __init__(self, migration_name: _Optional[str] = ..., node_name: _Optional[str] = ..., instance_uid: _Optional[str] = ..., target_address: _Optional[str] = ..., target_domain_xml: _Optional[str] = ..., bandwidth_mib_per_second: _Optional[int] = ..., completion_timeout_seconds: _Optional[int] = ..., progress_timeout_seconds: _Optional[int] = ..., allow_post_copy: _Optional[bool] = ..., allow_auto_converge: _Optional[bool] = ..., cancel_requested: _Optional[bool] = ..., migration_uri: _Optional[str] = ..., cancel_reason: _Optional[str] = ..., cancel_message: _Optional[str] = ...) -> None: ...

class RunRecord(_message.Message):
    __slots__ = ("instance_uid", "node_name", "start_time", "end_time", "phase", "reason", "message")
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    instance_uid: str
    node_name: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    phase: VirtualMachinePhase
    reason: str
    message: str
    def __init__(self, instance_uid: _Optional[str] = ..., node_name: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., phase: _Optional[_Union[VirtualMachinePhase, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("time", "type", "reason", "message")
    TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    type: EventType
    reason: str
    message: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., type: _Optional[_Union[EventType, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("action", "instance_uid", "grace_period_seconds", "force", "request_time")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    action: RunAction
    instance_uid: str
    grace_period_seconds: int
    force: bool
    request_time: _timestamp_pb2.Timestamp
    def __init__(self, action: _Optional[_Union[RunAction, str]] = ..., instance_uid: _Optional[str] = ..., grace_period_seconds: _Optional[int] = ..., force: _Optional[bool] = ..., request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SavedState(_message.Message):
    __slots__ = ("path", "node_name", "instance_uid", "save_time")
    PATH_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SAVE_TIME_FIELD_NUMBER: _ClassVar[int]
    path: str
    node_name: str
    instance_uid: str
    save_time: _timestamp_pb2.Timestamp
    def __init__(self, path: _Optional[str] = ..., node_name: _Optional[str] = ..., instance_uid: _Optional[str] = ..., save_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GuestInfo(_message.Message):
    __slots__ = ("agent_connected", "hostname", "os_name", "os_version", "kernel_release", "interfaces")
    AGENT_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    OS_NAME_FIELD_NUMBER: _ClassVar[int]
    OS_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_RELEASE_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    agent_connected: bool
    hostname: str
    os_name: str
    os_version: str
    kernel_release: str
    interfaces: _containers.RepeatedCompositeFieldContainer[GuestInterface]
    def __init__(self, agent_connected: _Optional[bool] = ..., hostname: _Optional[str] = ..., os_name: _Optional[str] = ..., os_version: _Optional[str] = ..., kernel_release: _Optional[str] = ..., interfaces: _Optional[_Iterable[_Union[GuestInterface, _Mapping]]] = ...) -> None: ...

class GuestInterface(_message.Message):
    __slots__ = ("name", "mac_address", "ip_addresses")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    mac_address: str
    ip_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., mac_address: _Optional[str] = ..., ip_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateVirtualMachineRequest(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class CreateVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class BatchCreateVirtualMachinesRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[CreateVirtualMachineRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[CreateVirtualMachineRequest, _Mapping]]] = ...) -> None: ...

class BatchCreateVirtualMachinesResponse(_message.Message):
    __slots__ = ("virtual_machines",)
    VIRTUAL_MACHINES_FIELD_NUMBER: _ClassVar[int]
    virtual_machines: _containers.RepeatedCompositeFieldContainer[VirtualMachine]
    def __init__(self, virtual_machines: _Optional[_Iterable[_Union[VirtualMachine, _Mapping]]] = ...) -> None: ...

class GetVirtualMachineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class ListVirtualMachinesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "label_selector")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    label_selector: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., label_selector: _Optional[str] = ...) -> None: ...

class ListVirtualMachinesResponse(_message.Message):
    __slots__ = ("virtual_machines", "next_page_token", "resource_version")
    VIRTUAL_MACHINES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    virtual_machines: _containers.RepeatedCompositeFieldContainer[VirtualMachine]
    next_page_token: str
    resource_version: int
    def __init__(self, virtual_machines: _Optional[_Iterable[_Union[VirtualMachine, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class UpdateVirtualMachineRequest(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class UpdateVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class DeleteVirtualMachineRequest(_message.Message):
    __slots__ = ("name", "resource_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class DeleteVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class WatchVirtualMachinesRequest(_message.Message):
    __slots__ = ("resource_version", "label_selector")
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    resource_version: int
    label_selector: str
    def __init__(self, resource_version: _Optional[int] = ..., label_selector: _Optional[str] = ...) -> None: ...

class WatchVirtualMachinesResponse(_message.Message):
    __slots__ = ("type", "virtual_machine", "resource_version")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    type: _meta_pb2.WatchEventType
    virtual_machine: VirtualMachine
    resource_version: int
    def __init__(self, type: _Optional[_Union[_meta_pb2.WatchEventType, str]] = ..., virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ..., resource_version: _Optional[int] = ...) -> None: ...

class StartVirtualMachineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class StartVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class StopVirtualMachineRequest(_message.Message):
    __slots__ = ("name", "grace_period_seconds", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    grace_period_seconds: int
    force: bool
    def __init__(self, name: _Optional[str] = ..., grace_period_seconds: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class StopVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class RestartVirtualMachineRequest(_message.Message):
    __slots__ = ("name", "grace_period_seconds", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    grace_period_seconds: int
    force: bool
    def __init__(self, name: _Optional[str] = ..., grace_period_seconds: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class RestartVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class PauseVirtualMachineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PauseVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class UnpauseVirtualMachineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnpauseVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class SoftRebootVirtualMachineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SoftRebootVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class ResetVirtualMachineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ResetVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class SaveVirtualMachineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SaveVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class RestoreVirtualMachineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RestoreVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class OpenConsoleRequest(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class OpenConsoleResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class AddVolumeRequest(_message.Message):
    __slots__ = ("name", "disk", "resource_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    disk: Disk
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., disk: _Optional[_Union[Disk, _Mapping]] = ..., resource_version: _Optional[int] = ...) -> None: ...

class AddVolumeResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class RemoveVolumeRequest(_message.Message):
    __slots__ = ("name", "disk_name", "resource_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISK_NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    disk_name: str
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., disk_name: _Optional[str] = ..., resource_version: _Optional[int] = ...) -> None: ...

class RemoveVolumeResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...

class ResizeVirtualMachineRequest(_message.Message):
    __slots__ = ("name", "vcpus", "memory_mib", "resource_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    vcpus: int
    memory_mib: int
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ..., resource_version: _Optional[int] = ...) -> None: ...

class ResizeVirtualMachineResponse(_message.Message):
    __slots__ = ("virtual_machine",)
    VIRTUAL_MACHINE_FIELD_NUMBER: _ClassVar[int]
    virtual_machine: VirtualMachine
    def __init__(self, virtual_machine: _Optional[_Union[VirtualMachine, _Mapping]] = ...) -> None: ...
