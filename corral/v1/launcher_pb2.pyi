from corral.v1 import migration_pb2 as _migration_pb2
from corral.v1 import snapshot_pb2 as _snapshot_pb2
from corral.v1 import vm_pb2 as _vm_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DomainState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOMAIN_STATE_UNSPECIFIED: _ClassVar[DomainState]
    DOMAIN_STATE_STARTING: _ClassVar[DomainState]
    DOMAIN_STATE_RUNNING: _ClassVar[DomainState]
    DOMAIN_STATE_PAUSED: _ClassVar[DomainState]
    DOMAIN_STATE_SHUTTING_DOWN: _ClassVar[DomainState]
    DOMAIN_STATE_SHUTOFF: _ClassVar[DomainState]
    DOMAIN_STATE_CRASHED: _ClassVar[DomainState]
DOMAIN_STATE_UNSPECIFIED: DomainState
DOMAIN_STATE_STARTING: DomainState
DOMAIN_STATE_RUNNING: DomainState
DOMAIN_STATE_PAUSED: DomainState
DOMAIN_STATE_SHUTTING_DOWN: DomainState
DOMAIN_STATE_SHUTOFF: DomainState
DOMAIN_STATE_CRASHED: DomainState

class DomainStatus(_message.Message):
    __slots__ = ("state", "reason", "message", "vm_uid", "qemu_pid", "launcher_pid", "serial_log_path", "guest", "saved_state_path")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VM_UID_FIELD_NUMBER: _ClassVar[int]
    QEMU_PID_FIELD_NUMBER: _ClassVar[int]
    LAUNCHER_PID_FIELD_NUMBER: _ClassVar[int]
    SERIAL_LOG_PATH_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    SAVED_STATE_PATH_FIELD_NUMBER: _ClassVar[int]
    state: DomainState
    reason: str
    message: str
    vm_uid: str
    qemu_pid: int
    launcher_pid: int
    serial_log_path: str
    guest: _vm_pb2.GuestInfo
    saved_state_path: str
    def __init__(self, state: _Optional[_Union[DomainState, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., vm_uid: _Optional[str] = ..., qemu_pid: _Optional[int] = ..., launcher_pid: _Optional[int] = ..., serial_log_path: _Optional[str] = ..., guest: _Optional[_Union[_vm_pb2.GuestInfo, _Mapping]] = ..., saved_state_path: _Optional[str] = ...) -> None: ...

class GetDomainStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetDomainStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class WatchDomainStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchDomainStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class ShutdownDomainRequest(_message.Message):
    __slots__ = ("grace_period_seconds",)
    GRACE_PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    grace_period_seconds: int
    def __init__(self, grace_period_seconds: _Optional[int] = ...) -> None: ...

class ShutdownDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class KillDomainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KillDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class PauseDomainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class ResumeDomainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class RebootDomainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RebootDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class ResetDomainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResetDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class SaveDomainRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class SaveDomainResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class AttachConsoleRequest(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class AttachConsoleResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class PrepareIncomingRequest(_message.Message):
    __slots__ = ("tls",)
    TLS_FIELD_NUMBER: _ClassVar[int]
    tls: MigrationTLSFiles
    def __init__(self, tls: _Optional[_Union[MigrationTLSFiles, _Mapping]] = ...) -> None: ...

class MigrationTLSFiles(_message.Message):
    __slots__ = ("ca_pem", "cert_pem", "key_pem")
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    ca_pem: str
    cert_pem: str
    key_pem: str
    def __init__(self, ca_pem: _Optional[str] = ..., cert_pem: _Optional[str] = ..., key_pem: _Optional[str] = ...) -> None: ...

class PrepareIncomingResponse(_message.Message):
    __slots__ = ("domain_xml", "libvirt_socket_path")
    DOMAIN_XML_FIELD_NUMBER: _ClassVar[int]
    LIBVIRT_SOCKET_PATH_FIELD_NUMBER: _ClassVar[int]
    domain_xml: str
    libvirt_socket_path: str
    def __init__(self, domain_xml: _Optional[str] = ..., libvirt_socket_path: _Optional[str] = ...) -> None: ...

class MigrateDomainRequest(_message.Message):
    __slots__ = ("destination_uri", "migration_uri", "destination_xml", "bandwidth_mib_per_second", "completion_timeout_seconds", "progress_timeout_seconds", "allow_post_copy", "allow_auto_converge", "listen_address", "tunnelled", "tls")
    DESTINATION_URI_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_URI_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_XML_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MIB_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_POST_COPY_FIELD_NUMBER: _ClassVar[int]
    ALLOW_AUTO_CONVERGE_FIELD_NUMBER: _ClassVar[int]
    LISTEN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TUNNELLED_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    destination_uri: str
    migration_uri: str
    destination_xml: str
    bandwidth_mib_per_second: int
    completion_timeout_seconds: int
    progress_timeout_seconds: int
    allow_post_copy: bool
    allow_auto_converge: bool
    listen_address: str
    tunnelled: bool
    tls: MigrationTLSFiles
    def __init__(self, destination_uri: _Optional[str] = ..., migration_uri: _Optional[str] = ..., destination_xml: _Optional[str] = ..., bandwidth_mib_per_second: _Optional[int] = ..., completion_timeout_seconds: _Optional[int] = ..., progress_timeout_seconds: _Optional[int] = ..., allow_post_copy: _Optional[bool] = ..., allow_auto_converge: _Optional[bool] = ..., listen_address: _Optional[str] = ..., tunnelled: _Optional[bool] = ..., tls: _Optional[_Union[MigrationTLSFiles, _Mapping]] = ...) -> None: ...

class MigrateDomainResponse(_message.Message):
    __slots__ = ("mode", "data_total_bytes", "data_processed_bytes", "data_remaining_bytes", "done", "downtime_ms")
    MODE_FIELD_NUMBER: _ClassVar[int]
    DATA_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_PROCESSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_REMAINING_BYTES_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    mode: _migration_pb2.MigrationMode
    data_total_bytes: int
    data_processed_bytes: int
    data_remaining_bytes: int
    done: bool
    downtime_ms: int
    def __init__(self, mode: _Optional[_Union[_migration_pb2.MigrationMode, str]] = ..., data_total_bytes: _Optional[int] = ..., data_processed_bytes: _Optional[int] = ..., data_remaining_bytes: _Optional[int] = ..., done: _Optional[bool] = ..., downtime_ms: _Optional[int] = ...) -> None: ...

class AbortMigrationRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AbortMigrationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AttachDiskRequest(_message.Message):
    __slots__ = ("disk", "block_device")
    DISK_FIELD_NUMBER: _ClassVar[int]
    BLOCK_DEVICE_FIELD_NUMBER: _ClassVar[int]
    disk: _vm_pb2.Disk
    block_device: bool
    def __init__(self, disk: _Optional[_Union[_vm_pb2.Disk, _Mapping]] = ..., block_device: _Optional[bool] = ...) -> None: ...

class AttachDiskResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class DetachDiskRequest(_message.Message):
    __slots__ = ("disk_name",)
    DISK_NAME_FIELD_NUMBER: _ClassVar[int]
    disk_name: str
    def __init__(self, disk_name: _Optional[str] = ...) -> None: ...

class DetachDiskResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ...) -> None: ...

class ResizeDomainRequest(_message.Message):
    __slots__ = ("vcpus", "memory_mib")
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    vcpus: int
    memory_mib: int
    def __init__(self, vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ...) -> None: ...

class ResizeDomainResponse(_message.Message):
    __slots__ = ("status", "vcpus", "memory_mib")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    status: DomainStatus
    vcpus: int
    memory_mib: int
    def __init__(self, status: _Optional[_Union[DomainStatus, _Mapping]] = ..., vcpus: _Optional[int] = ..., memory_mib: _Optional[int] = ...) -> None: ...
