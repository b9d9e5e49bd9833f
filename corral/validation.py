"""Validation of what users send: every problem is named with its field so a person can fix
it, and nothing invalid reaches the store. Pure functions, no I/O."""
from __future__ import annotations

import posixpath
import re

from corral import hotplug, networks as networks_lib
from corral.v1 import vm_pb2

# \Z, not $: "$" also matches before a final newline ("web\n" is not a name).
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?\Z")
LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?\Z")
#: Instance types' and preferences' names ("u1.small"): DNS-1123 labels joined by '.'.
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
MAX_SUBDOMAIN_LENGTH = 253
#: Instance types' and preferences' names leave room for their revisions' ("instancetype-NAME-RV").
MAX_CATALOGUE_NAME_LENGTH = 200
#: QEMU machine types a VM may ask for: the aliases and their versioned names, nothing else
#: (the string reaches libvirt and QEMU).
MACHINE_TYPE = re.compile(r"^(pc|q35|pc-i440fx-[0-9]{1,2}\.[0-9]{1,2}|pc-q35-[0-9]{1,2}\.[0-9]{1,2})\Z")
#: Huge page sizes and what each is in MiB (guest memory must be a multiple).
HUGEPAGE_SIZES_MIB = {"2Mi": 2, "1Gi": 1024}

MAX_LABELS = 64
MAX_VCPUS = 256
MIN_MEMORY_MIB = 16
MAX_MEMORY_MIB = 4 * 1024 * 1024
MAX_PATH_LENGTH = 4096
MAX_CMDLINE_LENGTH = 4096
MAX_GRACE_SECONDS = 24 * 3600
MAX_DISKS = 16
#: A disk's name is its serial number in the guest, and virtio-blk serials hold 20 bytes.
MAX_DISK_NAME_LENGTH = 20
MAX_USER_DATA_BYTES = 64 * 1024
MAX_NETWORK_DATA_BYTES = 16 * 1024
_FORMATS = (vm_pb2.DISK_FORMAT_RAW, vm_pb2.DISK_FORMAT_QCOW2)
#: Problems listed in one error message (a status message must stay small: gRPC refuses
#: trailers over 16 KiB), and characters of a user's value quoted in one.
MAX_PROBLEMS_SHOWN = 10
MAX_VALUE_SHOWN = 64


class ValidationError(ValueError):
    """One or more fields are invalid; str() lists them all."""

    def __init__(self, problems: list[str]) -> None:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        super().__init__("; ".join(shown) + (f"; and {more} more problems" if more else ""))
        self.problems = problems


def shown(value: str) -> str:
    """A user's value quoted in a message: repr'd (control characters visible), and cut."""
    if len(value) <= MAX_VALUE_SHOWN:
        return repr(value)
    return f"{value[:MAX_VALUE_SHOWN]!r}... ({len(value)} characters)"


def _unprintable(text: str) -> bool:
    """Control, format, separator (other than space), surrogate, private-use or unassigned
    characters: none belongs in a path or a kernel command line, and some cannot be in XML."""
    return not text.isprintable()


def name_problem(name: str, field: str = "metadata.name") -> str | None:
    if not name:
        return f"{field} is required"
    if not DNS1123_LABEL.match(name):
        return (f"{field} {shown(name)} is not a DNS-1123 label: use at most 63 lower-case letters, "
                "digits and '-', starting and ending with a letter or digit")
    return None


def subdomain_problem(name: str, field: str = "metadata.name", limit: int = MAX_SUBDOMAIN_LENGTH) -> str | None:
    """Names of cluster-wide catalogue objects (instance types, preferences, revisions)."""
    if not name:
        return f"{field} is required"
    if len(name) > limit or not DNS1123_SUBDOMAIN.match(name):
        return (f"{field} {shown(name)} is not a DNS-1123 subdomain: use at most {limit} "
                "lower-case letters, digits, '-' and '.', each '.'-separated part starting and ending "
                "with a letter or digit (for example 'u1.small')")
    return None


def label_problems(labels: dict[str, str] | object, field: str) -> list[str]:
    problems: list[str] = []
    items = dict(labels)  # type: ignore[arg-type]
    if len(items) > MAX_LABELS:
        problems.append(f"{field} has {len(items)} entries; at most {MAX_LABELS} are allowed")
        return problems
    for key, value in items.items():
        prefix, slash, name = key.rpartition("/")
        if not LABEL_NAME.match(name) or (slash and not LABEL_PREFIX.match(prefix)):
            problems.append(f"{field} key {shown(key)} is not a valid label key (optional DNS prefix + '/', "
                            "then at most 63 letters, digits, '-', '_' or '.')")
        if not LABEL_VALUE.match(value):
            problems.append(f"{field}[{shown(key)}] value {shown(value)} is not a valid label value "
                            "(at most 63 letters, digits, '-', '_' or '.')")
    return problems


def node_path_problem(path: str, field: str, *, required: bool) -> str | None:
    """A file's path on the node: absolute, normalised, printable, not the root directory.
    Where it may point (allowed roots) is the node's decision."""
    if not path:
        return f"{field} is required" if required else None
    if len(path) > MAX_PATH_LENGTH:
        return f"{field} is longer than {MAX_PATH_LENGTH} characters"
    if not path.startswith("/"):
        return f"{field} {shown(path)} must be an absolute path"
    if _unprintable(path):
        return f"{field} {shown(path)} contains control or other unprintable characters"
    if posixpath.normpath(path) != path or "/../" in path + "/" or path.startswith("//"):
        return f"{field} {shown(path)} must be normalised (no '..', '.', or repeated '/')"
    if path == "/":
        return f"{field} '/' is the root directory: name a file"
    return None


def network_problems(networks) -> list[str]:
    """spec.networks: DNS-label names unique in the VM, one binding each, at most one user
    network, ports 1..65535 with node ports unique per protocol, bridge names that are Linux
    interface names, well-formed unicast MACs (see corral/networks.py)."""
    problems: list[str] = []
    if len(networks) > networks_lib.MAX_NETWORKS:
        return [f"spec.networks has {len(networks)} entries; at most {networks_lib.MAX_NETWORKS} are allowed"]
    names: set[str] = set()
    macs: set[str] = set()
    users = 0
    for index, network in enumerate(networks):
        field = f"spec.networks[{index}]"
        problem = name_problem(network.name, f"{field}.name")
        if problem:
            problems.append(problem)
        elif network.name in names:
            problems.append(f"{field}.name {shown(network.name)} is used by another network of the VM")
        names.add(network.name)
        if network.mac_address:
            if not networks_lib.mac_ok(network.mac_address):
                problems.append(f"{field}.mac_address {shown(network.mac_address)} is not a unicast MAC address "
                                "(six hex octets separated by ':', the first one even, not all zero)")
            elif network.mac_address.lower() in macs:
                problems.append(f"{field}.mac_address {shown(network.mac_address)} is used by another network of the VM")
            macs.add(network.mac_address.lower())
        binding = network.WhichOneof("binding")
        if binding is None:
            problems.append(f"{field} needs a binding: user (port_forwards) or bridge (bridge)")
        elif binding == "bridge":
            bridge = network.bridge.bridge
            if not networks_lib.ifname_ok(bridge):
                problems.append(f"{field}.bridge.bridge {shown(bridge)} is not a Linux interface name "
                                "(1 to 15 of letters, digits, '_', '.', '-')")
        else:
            users += 1
            forwards = network.user.port_forwards
            if len(forwards) > networks_lib.MAX_PORT_FORWARDS:
                problems.append(f"{field}.user.port_forwards has {len(forwards)} entries; at most "
                                f"{networks_lib.MAX_PORT_FORWARDS} are allowed")
                continue
            seen: set[tuple[int, int]] = set()
            for number, forward in enumerate(forwards):
                where = f"{field}.user.port_forwards[{number}]"
                if forward.protocol not in networks_lib.PROTOCOL_NAMES:
                    problems.append(f"{where}.protocol {forward.protocol} is not TCP or UDP")
                for port_field in ("guest_port", "node_port"):
                    port = getattr(forward, port_field)
                    if not 1 <= port <= 65535:
                        problems.append(f"{where}.{port_field} must be between 1 and 65535, not {port}")
                key = (networks_lib.PROTOCOL_NAMES.get(forward.protocol, "tcp"), forward.node_port)
                if key in seen:
                    problems.append(f"{where}.node_port {forward.node_port}/{key[0]} is forwarded twice")
                seen.add(key)
    if users > 1:
        problems.append(f"spec.networks has {users} user networks; at most one is allowed")
    return problems


def disk_problems(disks: list[vm_pb2.Disk] | object) -> list[str]:
    """Extra disks: named (DNS labels, unique, short enough to be a serial), one source each,
    absolute normalised paths, explicit formats. Which paths a node allows is its decision."""
    items = list(disks)  # type: ignore[call-overload]
    if len(items) > MAX_DISKS:
        return [f"spec.disks has {len(items)} entries; at most {MAX_DISKS} are allowed"]
    problems: list[str] = []
    names: set[str] = set()
    paths: set[str] = set()
    for index, disk in enumerate(items):
        field = f"spec.disks[{index}]"
        problem = name_problem(disk.name, f"{field}.name")
        if problem:
            problems.append(problem)
        elif len(disk.name) > MAX_DISK_NAME_LENGTH:
            problems.append(f"{field}.name {shown(disk.name)} is longer than {MAX_DISK_NAME_LENGTH} characters "
                            "(the guest sees it as the disk's serial number)")
        elif disk.name in names:
            problems.append(f"{field}.name {shown(disk.name)} is used by another disk of this VM")
        names.add(disk.name)
        source = disk.WhichOneof("source")
        if source is None:
            problems.append(f"{field} needs a source: ephemeral (base_image_path, base_format) or "
                            "persistent (path, format)")
            continue
        if source == "ephemeral":
            path, fmt = disk.ephemeral.base_image_path, disk.ephemeral.base_format
            path_field, fmt_field = f"{field}.ephemeral.base_image_path", f"{field}.ephemeral.base_format"
        else:
            path, fmt = disk.persistent.path, disk.persistent.format
            path_field, fmt_field = f"{field}.persistent.path", f"{field}.persistent.format"
            if path in paths:
                problems.append(f"{path_field} {shown(path)} is attached twice to this VM")
            paths.add(path)
        problem = node_path_problem(path, path_field, required=True)
        if problem:
            problems.append(problem)
        if fmt not in _FORMATS:
            problems.append(f"{fmt_field} must be given (RAW or QCOW2): formats are never probed")
        problem = enum_problem(disk.bus, vm_pb2.DiskBus, f"{field}.bus")
        if problem:
            problems.append(problem)
    return problems


def cloud_init_problems(cloud_init: vm_pb2.CloudInitNoCloud) -> list[str]:
    problems: list[str] = []
    for value, field, limit in ((cloud_init.user_data, "spec.cloud_init.user_data", MAX_USER_DATA_BYTES),
                                (cloud_init.network_data, "spec.cloud_init.network_data", MAX_NETWORK_DATA_BYTES)):
        size = len(value.encode())
        if size > limit:
            problems.append(f"{field} is {size} bytes; at most {limit // 1024} KiB are allowed")
    return problems


def spec_problems(spec: vm_pb2.VirtualMachineSpec) -> list[str]:
    problems: list[str] = []
    # With an instance type, the size comes from the type (resolved after this check, and
    # checked again then): left unset here, it is not missing.
    sized_by_type = bool(spec.instance_type.name)
    if (spec.vcpus or not sized_by_type) and not 1 <= spec.vcpus <= MAX_VCPUS:
        problems.append(f"spec.vcpus must be between 1 and {MAX_VCPUS}, not {spec.vcpus}")
    if (spec.memory_mib or not sized_by_type) and not MIN_MEMORY_MIB <= spec.memory_mib <= MAX_MEMORY_MIB:
        problems.append(f"spec.memory_mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, "
                        f"not {spec.memory_mib}")
    problems.extend(sizing_problems(spec))
    problems.extend(hotplug.problems(spec, max_vcpus_cap=MAX_VCPUS, max_memory_cap=MAX_MEMORY_MIB))
    source = spec.boot.WhichOneof("source")
    if source is None:
        problems.append("spec.boot needs either kernel (kernel_path, initrd_path, cmdline) or disk (image_path, format)")
    elif source == "kernel":
        kernel = spec.boot.kernel
        for problem in (
            node_path_problem(kernel.kernel_path, "spec.boot.kernel.kernel_path", required=True),
            node_path_problem(kernel.initrd_path, "spec.boot.kernel.initrd_path", required=False),
        ):
            if problem:
                problems.append(problem)
        if len(kernel.cmdline) > MAX_CMDLINE_LENGTH:
            problems.append(f"spec.boot.kernel.cmdline is longer than {MAX_CMDLINE_LENGTH} characters")
        if _unprintable(kernel.cmdline):
            problems.append("spec.boot.kernel.cmdline contains control or other unprintable characters")
    else:
        disk = spec.boot.disk
        problem = node_path_problem(disk.image_path, "spec.boot.disk.image_path", required=True)
        if problem:
            problems.append(problem)
        if disk.format not in (vm_pb2.DISK_FORMAT_RAW, vm_pb2.DISK_FORMAT_QCOW2):
            problems.append("spec.boot.disk.format must be given (RAW or QCOW2): formats are never probed")
    problems.extend(label_problems(spec.node_selector, "spec.node_selector"))
    problems.extend(network_problems(spec.networks))
    problems.extend(disk_problems(spec.disks))
    if spec.HasField("cloud_init"):
        problems.extend(cloud_init_problems(spec.cloud_init))
    if (spec.HasField("termination_grace_period_seconds")
            and not 0 <= spec.termination_grace_period_seconds <= MAX_GRACE_SECONDS):
        problems.append(f"spec.termination_grace_period_seconds must be between 0 (destroy at once) and "
                        f"{MAX_GRACE_SECONDS}, not {spec.termination_grace_period_seconds}")
    if spec.run_strategy not in vm_pb2.RunStrategy.values():
        problems.append(f"spec.run_strategy {spec.run_strategy} is not one of "
                        f"{', '.join(vm_pb2.RunStrategy.keys())}")
    return problems


def enum_problem(value: int, enum, field: str) -> str | None:
    """An enum field holding a number its enum does not define (proto3 keeps unknown values)."""
    if value in enum.values():
        return None
    return f"{field} {value} is not one of {', '.join(enum.keys())}"


def hugepages_problems(hugepages: vm_pb2.Hugepages, memory_mib: int, field: str) -> list[str]:
    size = HUGEPAGE_SIZES_MIB.get(hugepages.page_size)
    if size is None:
        return [f"{field}.page_size {shown(hugepages.page_size)} is not one of {', '.join(HUGEPAGE_SIZES_MIB)}"]
    if memory_mib and memory_mib % size:
        return [f"{field}.page_size {hugepages.page_size}: memory ({memory_mib} MiB) must be a multiple of it"]
    return []


def topology_problem(spec: vm_pb2.VirtualMachineSpec) -> str | None:
    """The CPU topology does not make spec.vcpus (spec.max_vcpus when set: it describes them all)."""
    topology = spec.cpu_topology
    product = topology.sockets * topology.cores * topology.threads
    if not spec.HasField("cpu_topology") or not spec.vcpus or product == (spec.max_vcpus or spec.vcpus):
        return None
    field = "spec.max_vcpus" if spec.max_vcpus else "spec.vcpus"
    return (f"spec.cpu_topology is {topology.sockets} sockets x {topology.cores} cores x "
            f"{topology.threads} threads = {product} vCPUs, but {field} is {spec.max_vcpus or spec.vcpus}")


def sizing_problems(spec: vm_pb2.VirtualMachineSpec) -> list[str]:
    """The fields an instance type or a preference may fill (issue 12), checked wherever they
    came from: references, machine type, firmware, disk bus, CPU topology, huge pages."""
    problems: list[str] = []
    for ref, field in ((spec.instance_type, "spec.instance_type"), (spec.preference, "spec.preference")):
        if ref.name or ref.revision_name:
            problem = subdomain_problem(ref.name, f"{field}.name")
            if problem:
                problems.append(problem)
        if ref.revision_name:
            problem = subdomain_problem(ref.revision_name, f"{field}.revision_name")
            if problem:
                problems.append(problem)
    if spec.machine_type and not MACHINE_TYPE.match(spec.machine_type):
        problems.append(f"spec.machine_type {shown(spec.machine_type)} is not a machine type Corral knows: use "
                        "'pc', 'q35', or a versioned 'pc-i440fx-X.Y' or 'pc-q35-X.Y'")
    for problem in (enum_problem(spec.firmware, vm_pb2.Firmware, "spec.firmware"),
                    enum_problem(spec.disk_bus, vm_pb2.DiskBus, "spec.disk_bus")):
        if problem:
            problems.append(problem)
    if spec.HasField("cpu_topology"):
        topology = spec.cpu_topology
        parts = (("sockets", topology.sockets), ("cores", topology.cores), ("threads", topology.threads))
        bad = [f"spec.cpu_topology.{name} must be between 1 and {MAX_VCPUS}, not {value}"
               for name, value in parts if not 1 <= value <= MAX_VCPUS]
        problems.extend(bad)
        # With an instance type, vcpus is the type's: checked once resolved (controller/instancetypes.py).
        problem = None if bad or spec.instance_type.name else topology_problem(spec)
        if problem:
            problems.append(problem)
    if spec.HasField("hugepages"):
        problems.extend(hugepages_problems(spec.hugepages, spec.memory_mib, "spec.hugepages"))
    return problems


#: All of an object's annotations together (Kubernetes' limit): they live in the object's key.
MAX_ANNOTATIONS_BYTES = 256 * 1024


def annotation_problems(annotations: dict[str, str] | object, field: str) -> list[str]:
    """Keys as label keys; values free text, but all of them together bounded (``corral apply``
    keeps a copy of what it applied there, and a VM's key must stay far below etcd's limit)."""
    problems: list[str] = []
    items = dict(annotations)  # type: ignore[arg-type]
    for key in items:
        prefix, slash, name = key.rpartition("/")
        if not LABEL_NAME.match(name) or (slash and not LABEL_PREFIX.match(prefix)):
            problems.append(f"{field} key {shown(key)} is not a valid key (optional DNS prefix + '/', "
                            "then at most 63 letters, digits, '-', '_' or '.')")
    size = sum(len(key.encode()) + len(value.encode()) for key, value in items.items())
    if size > MAX_ANNOTATIONS_BYTES:
        problems.append(f"{field} take {size} bytes; at most {MAX_ANNOTATIONS_BYTES} are allowed")
    return problems


#: Annotations Corral's controllers keep on objects (a pool's on its VMs, a pool's deletion
#: mode): users may not set them, or a pool would act on what someone wrote there.
SYSTEM_ANNOTATION_PREFIXES = ("corral.dev/pool-", "corral.dev/delete-orphan")


def system_annotation(key: str) -> bool:
    return key.startswith(SYSTEM_ANNOTATION_PREFIXES)


def user_annotation_problems(annotations: dict[str, str] | object, field: str) -> list[str]:
    """Annotations a user sends: bounded, and none of the controllers' own."""
    problems = annotation_problems(annotations, field)
    problems += [f"{field} key {shown(key)} is set by Corral's controllers, not by users"
                 for key in dict(annotations) if system_annotation(key)]  # type: ignore[arg-type]
    return problems


def validate_new_vm(vm: vm_pb2.VirtualMachine) -> None:
    """What CreateVirtualMachine accepts."""
    problems: list[str] = []
    problem = name_problem(vm.metadata.name)
    if problem:
        problems.append(problem)
    problems.extend(label_problems(vm.metadata.labels, "metadata.labels"))
    problems.extend(annotation_problems(vm.metadata.annotations, "metadata.annotations"))
    if not vm.HasField("spec"):
        problems.append("spec is required")
    else:
        problems.extend(spec_problems(vm.spec))
    if problems:
        raise ValidationError(problems)


def validate_vm_update(vm: vm_pb2.VirtualMachine) -> None:
    """What UpdateVirtualMachine accepts: the same as create, and a resource_version."""
    problems: list[str] = []
    if vm.metadata.resource_version <= 0:
        problems.append("metadata.resource_version is required for an update (read the VM first)")
    try:
        validate_new_vm(vm)
    except ValidationError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ValidationError(problems)


#: What a guest's agent may put in the VM's status (a guest controls all of it).
MAX_GUEST_TEXT = 128
MAX_GUEST_INTERFACES = 16
MAX_GUEST_ADDRESSES = 16


def _guest_text(text: str) -> str:
    """A guest's string, printable and short: it ends up in etcd and on admins' terminals."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text[:MAX_GUEST_TEXT])
    return cleaned + ("..." if len(text) > MAX_GUEST_TEXT else "")


def bounded_guest_info(info: vm_pb2.GuestInfo) -> vm_pb2.GuestInfo:
    """What the guest agent reported, capped and stripped of control characters (escape
    sequences), so that no guest can grow its VM's record toward etcd's size limit or write
    to the screen of whoever runs `corral describe`."""
    bounded = vm_pb2.GuestInfo(agent_connected=info.agent_connected,
                               hostname=_guest_text(info.hostname), os_name=_guest_text(info.os_name),
                               os_version=_guest_text(info.os_version),
                               kernel_release=_guest_text(info.kernel_release))
    for interface in info.interfaces[:MAX_GUEST_INTERFACES]:
        bounded.interfaces.add(name=_guest_text(interface.name), mac_address=_guest_text(interface.mac_address),
                               ip_addresses=[_guest_text(a) for a in interface.ip_addresses[:MAX_GUEST_ADDRESSES]])
    return bounded
