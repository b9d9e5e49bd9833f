"""VirtualMachinePools on a real cluster: etcd, controllers, a handler and real guests (TCG)."""
from __future__ import annotations

import signal
import threading

import grpc
import pytest

from corral.v1 import pool_pb2 as P
from corral.v1 import pool_pb2_grpc, vm_pb2
from tests.cluster import qemu_pid_for, wait_for
from tests.test_failover import leader_of

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING


def pools(cluster) -> pool_pb2_grpc.VirtualMachinePoolServiceStub:
    return pool_pb2_grpc.VirtualMachinePoolServiceStub(cluster.channel())


def pool_of(cluster, name: str, replicas: int, **spec) -> P.VirtualMachinePool:
    pool = P.VirtualMachinePool()
    pool.metadata.name = name
    pool.spec.replicas = replicas
    pool.spec.selector = f"pool={name}"
    template = pool.spec.virtual_machine_template
    template.metadata.labels["pool"] = name
    template.spec.CopyFrom(cluster.guest_vm("template").spec)
    template.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
    for key, value in spec.items():
        setattr(pool.spec, key, value)
    return pool


def create_pool(cluster, pool: P.VirtualMachinePool) -> P.VirtualMachinePool:
    return pools(cluster).CreateVirtualMachinePool(
        P.CreateVirtualMachinePoolRequest(virtual_machine_pool=pool), timeout=10).virtual_machine_pool


def get_pool(cluster, name: str) -> P.VirtualMachinePool:
    return pools(cluster).GetVirtualMachinePool(P.GetVirtualMachinePoolRequest(name=name), timeout=10
                                                ).virtual_machine_pool


def scale(cluster, name: str, replicas: int) -> P.VirtualMachinePool:
    return pools(cluster).ScaleVirtualMachinePool(P.ScaleVirtualMachinePoolRequest(name=name, replicas=replicas),
                                                  timeout=10).virtual_machine_pool


def members(cluster, name: str) -> dict[str, vm_pb2.VirtualMachine]:
    listed = cluster.vms.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(label_selector=f"pool={name}",
                                                                               page_size=1000), timeout=10)
    return {vm.metadata.name: vm for vm in listed.virtual_machines}


def running(cluster, name: str) -> set[str]:
    return {n for n, vm in members(cluster, name).items()
            if vm.status.phase == RUNNING and not vm.metadata.HasField("delete_time")}


def test_scale_up_and_in_keeps_the_lowest_indices(cluster):
    cluster.start_controller()
    cluster.start_handler("n1", vcpus=8, memory_mib=4096)
    created = create_pool(cluster, pool_of(cluster, "web", 0))
    assert created.metadata.uid and created.status.template_revision
    assert members(cluster, "web") == {}

    scale(cluster, "web", 3)
    wait_for(lambda: running(cluster, "web") == {"web-0", "web-1", "web-2"}, timeout=90, what="3 VMs Running")
    vms = members(cluster, "web")
    assert {vm.metadata.owner.uid for vm in vms.values()} == {created.metadata.uid}
    uid_of_0 = vms["web-0"].metadata.uid
    wait_for(lambda: (p := get_pool(cluster, "web")).status.ready_replicas == 3 and p, timeout=20,
             what="pool status: 3 ready")

    scale(cluster, "web", 1)
    wait_for(lambda: set(members(cluster, "web")) == {"web-0"}, timeout=60, what="web-1 and web-2 gone")
    assert members(cluster, "web")["web-0"].metadata.uid == uid_of_0  # the survivor was left alone
    pool = wait_for(lambda: (p := get_pool(cluster, "web")).status.replicas == 1 and p, timeout=20,
                    what="pool status: 1 replica")
    assert {c.type: c.status for c in pool.status.conditions}["Scaling"] is False

    # Deleting the pool deletes its VMs, then the pool.
    pools(cluster).DeleteVirtualMachinePool(P.DeleteVirtualMachinePoolRequest(name="web"), timeout=10)
    wait_for(lambda: not members(cluster, "web"), timeout=60, what="the pool's VMs deleted")
    wait_for(lambda: pool_gone(cluster, "web"), timeout=20, what="the pool deleted")


def pool_gone(cluster, name: str) -> bool:
    try:
        get_pool(cluster, name)
        return False
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return True


def test_auto_healing_replaces_a_vm_whose_runs_keep_failing(cluster):
    cluster.start_controller()
    cluster.start_handler("n1")
    pool = pool_of(cluster, "crashy", 1)
    # The node refuses a missing kernel (handler/devices.py): every run fails at once.
    pool.spec.virtual_machine_template.spec.boot.kernel.kernel_path = str(cluster.guest_dir / "missing-vmlinuz")
    pool.spec.auto_healing.failed_runs = 2
    create_pool(cluster, pool)
    first = wait_for(lambda: members(cluster, "crashy").get("crashy-0"), timeout=20, what="crashy-0")
    replaced = wait_for(lambda: (vm := members(cluster, "crashy").get("crashy-0")) is not None
                        and vm.metadata.uid != first.metadata.uid and vm, timeout=90,
                        what="crashy-0 replaced after 2 failed runs")
    # A fresh count (its node refuses the missing kernel at once: the new VM's first run may
    # have failed already).
    assert replaced.status.restart_count < pool.spec.auto_healing.failed_runs
    conditions = {c.type: c for c in get_pool(cluster, "crashy").status.conditions}
    assert conditions["ReplicaFailure"].status and "crashy-0" in conditions["ReplicaFailure"].message
    log = (cluster.base / "controller-c1.log").read_text()
    assert "pool crashy: vm crashy-0 replaced: its runs kept failing" in log


def test_a_template_change_rolls_out_at_most_max_unavailable_at_a_time(cluster):
    cluster.start_controller()
    cluster.start_handler("n1", vcpus=8, memory_mib=4096)
    created = create_pool(cluster, pool_of(cluster, "roll", 3, max_unavailable="1"))
    wait_for(lambda: len(running(cluster, "roll")) == 3, timeout=90, what="3 VMs Running")
    before = {name: vm.status.instance_uid for name, vm in members(cluster, "roll").items()}

    # Follow every VM change while the rollout runs: never more than one VM down.
    down_at_once: list[int] = []
    stop = threading.Event()
    start_revision = cluster.vms.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(), timeout=10).resource_version

    def follow() -> None:
        phases = {name: RUNNING for name in before}
        stream = cluster.vms.WatchVirtualMachines(vm_pb2.WatchVirtualMachinesRequest(
            resource_version=start_revision, label_selector="pool=roll"), timeout=120)
        try:
            for event in stream:
                vm = event.virtual_machine
                phases[vm.metadata.name] = vm.status.phase if event.type != 3 else 0
                down_at_once.append(sum(1 for phase in phases.values() if phase != RUNNING))
                if stop.is_set():
                    return
        except grpc.RpcError:
            pass

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    pool = get_pool(cluster, "roll")
    pool.spec.virtual_machine_template.spec.memory_mib = 160
    pools(cluster).UpdateVirtualMachinePool(P.UpdateVirtualMachinePoolRequest(virtual_machine_pool=pool), timeout=10)

    def rolled() -> bool:
        vms = members(cluster, "roll")
        return len(vms) == 3 and all(vm.spec.memory_mib == 160 and vm.status.phase == RUNNING for vm in vms.values())

    wait_for(rolled, timeout=120, what="every VM running the new template")
    stop.set()
    after = members(cluster, "roll")
    assert all(after[name].status.instance_uid != uid for name, uid in before.items())  # each got a new run
    assert after.keys() == before.keys()  # same VMs (names and uids), updated in place
    assert down_at_once and max(down_at_once) == 1, down_at_once
    status = wait_for(lambda: (p := get_pool(cluster, "roll")).status.updated_replicas == 3 and p.status,
                      timeout=20, what="pool status: 3 updated")
    assert status.template_revision != created.status.template_revision

    # A change the running guests do not see (the run strategy) is applied without a restart.
    pool = get_pool(cluster, "roll")
    pool.spec.virtual_machine_template.spec.run_strategy = vm_pb2.RUN_STRATEGY_RERUN_ON_FAILURE
    pools(cluster).UpdateVirtualMachinePool(P.UpdateVirtualMachinePoolRequest(virtual_machine_pool=pool), timeout=10)
    wait_for(lambda: all(vm.spec.run_strategy == vm_pb2.RUN_STRATEGY_RERUN_ON_FAILURE
                         for vm in members(cluster, "roll").values()), timeout=30, what="run strategy rolled out")
    assert {n: vm.status.instance_uid for n, vm in members(cluster, "roll").items()} == \
        {n: vm.status.instance_uid for n, vm in after.items()}


def test_a_leader_killed_during_a_scale_up_leaves_exactly_the_replicas(cluster):
    for name in ("c1", "c2", "c3"):
        cluster.start_controller(name, lease_seconds=2)
    leader, _ = wait_for(lambda: leader_of(cluster), timeout=10, what="a leader")
    cluster.preferred = next(name for name in cluster.controllers if name != leader)
    pool = pool_of(cluster, "big", 0)  # no node: the VMs stay Pending, which is all this needs
    create_pool(cluster, pool)
    scale(cluster, "big", 1000)  # the most a pool takes: 25 transactions of 40, the kill lands between
    wait_for(lambda: len(members(cluster, "big")) >= 5, timeout=20, interval=0.02, what="the scale-up under way")
    process, _ = cluster.controllers.pop(leader)
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = len(members(cluster, "big"))
    print(f"leader {leader} killed with {at_kill} of 1000 VMs made")
    assert at_kill < 1000, "the scale-up had ended before the leader was killed"
    wait_for(lambda: len(members(cluster, "big")) == 1000, timeout=90, what="1000 VMs")
    wait_for(lambda: get_pool(cluster, "big").status.replicas == 1000, timeout=30, what="pool status: 1000")
    vms = members(cluster, "big")
    assert set(vms) == {f"big-{i}" for i in range(1000)}
    assert len({vm.metadata.uid for vm in vms.values()}) == 1000


def test_orphaned_vms_stay_without_owner(cluster):
    cluster.start_controller()
    create_pool(cluster, pool_of(cluster, "keep", 2))
    wait_for(lambda: len(members(cluster, "keep")) == 2, timeout=20, what="2 VMs")
    pools(cluster).DeleteVirtualMachinePool(P.DeleteVirtualMachinePoolRequest(name="keep", orphan=True), timeout=10)
    wait_for(lambda: pool_gone(cluster, "keep"), timeout=20, what="the pool deleted")
    vms = members(cluster, "keep")
    assert set(vms) == {"keep-0", "keep-1"}
    assert not any(vm.metadata.HasField("owner") for vm in vms.values())
    assert not any(vm.metadata.HasField("delete_time") for vm in vms.values())


@pytest.mark.parametrize("change, code, words", [
    (lambda p: setattr(p.spec, "replicas", -1), grpc.StatusCode.INVALID_ARGUMENT, "spec.replicas -1"),
    (lambda p: setattr(p.spec, "replicas", 5000), grpc.StatusCode.INVALID_ARGUMENT, "0 to 1000"),
    (lambda p: setattr(p.spec, "selector", "app=other"), grpc.StatusCode.INVALID_ARGUMENT,
     "does not match the template's labels"),
    (lambda p: setattr(p.spec, "selector", ""), grpc.StatusCode.INVALID_ARGUMENT, "spec.selector is required"),
    (lambda p: setattr(p.spec.virtual_machine_template.spec, "vcpus", 0), grpc.StatusCode.INVALID_ARGUMENT,
     "spec.virtual_machine_template"),
    (lambda p: setattr(p.spec, "max_unavailable", "150%"), grpc.StatusCode.INVALID_ARGUMENT, "max_unavailable"),
    (lambda p: setattr(p.metadata, "name", "x" * 60), grpc.StatusCode.INVALID_ARGUMENT, "longer than 58"),
    (lambda p: p.spec.virtual_machine_template.metadata.annotations.update(big="x" * 300_000),
     grpc.StatusCode.INVALID_ARGUMENT, "at most 262144"),
    (lambda p: p.metadata.annotations.update({"corral.dev/delete-orphan": "true"}),
     grpc.StatusCode.INVALID_ARGUMENT, "set by Corral's controllers"),
    (lambda p: p.spec.virtual_machine_template.spec.disks.add(name="data").persistent.CopyFrom(
        vm_pb2.PersistentDisk(path="/srv/disks/shared.qcow2", format=vm_pb2.DISK_FORMAT_QCOW2)),
     grpc.StatusCode.INVALID_ARGUMENT, "put $(VM_NAME) in its path"),
    (lambda p: setattr(p.spec.auto_healing, "failed_runs", 50), grpc.StatusCode.INVALID_ARGUMENT, "0 (default 3) to 10"),
])
def test_bad_pools_are_refused_and_nothing_is_created(cluster, change, code, words):
    cluster.start_controller()
    pool = pool_of(cluster, "bad", 2)
    change(pool)
    with pytest.raises(grpc.RpcError) as err:
        create_pool(cluster, pool)
    assert err.value.code() == code
    assert words in err.value.details()
    listed = pools(cluster).ListVirtualMachinePools(P.ListVirtualMachinePoolsRequest(), timeout=10)
    assert not listed.virtual_machine_pools
    assert not cluster.vms.ListVirtualMachines(vm_pb2.ListVirtualMachinesRequest(), timeout=10).virtual_machines


def test_a_stale_update_is_aborted(cluster):
    cluster.start_controller()
    created = create_pool(cluster, pool_of(cluster, "etag", 0))
    scale(cluster, "etag", 0)  # no change: same version
    pools(cluster).ScaleVirtualMachinePool(P.ScaleVirtualMachinePoolRequest(name="etag", replicas=0), timeout=10)
    for _ in range(5):  # read-modify-write, as clients do: the reconciler's status write may come between
        current = get_pool(cluster, "etag")
        current.spec.paused = True
        try:
            pools(cluster).UpdateVirtualMachinePool(P.UpdateVirtualMachinePoolRequest(virtual_machine_pool=current),
                                                    timeout=10)
            break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED:
                raise
    assert get_pool(cluster, "etag").spec.paused
    created.spec.replicas = 4
    with pytest.raises(grpc.RpcError) as err:
        pools(cluster).UpdateVirtualMachinePool(P.UpdateVirtualMachinePoolRequest(virtual_machine_pool=created),
                                                timeout=10)
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert get_pool(cluster, "etag").spec.replicas == 0
    with pytest.raises(grpc.RpcError) as err:
        pools(cluster).ScaleVirtualMachinePool(P.ScaleVirtualMachinePoolRequest(
            name="etag", replicas=3, resource_version=created.metadata.resource_version), timeout=10)
    assert err.value.code() == grpc.StatusCode.ABORTED
    # Paused: the pool makes no VMs (checked once the reconciler has seen the new count).
    wait_for(lambda: condition(cluster, "etag", "Paused").status, timeout=20, what="the pool Paused")
    scale(cluster, "etag", 2)
    wait_for(lambda: condition(cluster, "etag", "Scaling").message == "0 of 2 VMs", timeout=20,
             what="the reconciler to see 2 replicas wanted")
    assert not members(cluster, "etag")


def condition(cluster, name: str, type_: str):
    return next(c for c in get_pool(cluster, name).status.conditions if c.type == type_)


def test_a_pool_template_naming_an_instance_type_makes_sized_vms(cluster):
    from tests.test_instancetypes import make_type
    cluster.start_controller()
    make_type(cluster, "u1.pool", vcpus=2, memory_mib=192)
    pool = pool_of(cluster, "sized", 2)
    template = pool.spec.virtual_machine_template.spec
    template.ClearField("vcpus")
    template.ClearField("memory_mib")
    template.instance_type.name = "u1.pool"
    create_pool(cluster, pool)
    vms = wait_for(lambda: len(m := members(cluster, "sized")) == 2 and m, timeout=20, what="2 VMs")
    for vm in vms.values():
        assert (vm.spec.vcpus, vm.spec.memory_mib) == (2, 192)
        assert vm.spec.instance_type.revision_name
    # A template whose instance type does not exist is refused, and nothing changes.
    pool = get_pool(cluster, "sized")
    pool.spec.virtual_machine_template.spec.instance_type.name = "u1.missing"
    with pytest.raises(grpc.RpcError) as err:
        pools(cluster).UpdateVirtualMachinePool(P.UpdateVirtualMachinePoolRequest(virtual_machine_pool=pool),
                                                timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "u1.missing" in err.value.details()
    assert get_pool(cluster, "sized").spec.virtual_machine_template.spec.instance_type.name == "u1.pool"


def test_a_foreign_vm_holding_an_index_is_reported(cluster):
    cluster.start_controller()
    squatter = cluster.guest_vm("held-0")
    squatter.metadata.labels["pool"] = "held"
    cluster.create(squatter)
    create_pool(cluster, pool_of(cluster, "held", 2))
    failure = wait_for(lambda: (c := condition(cluster, "held", "ReplicaFailure")).status and c, timeout=20,
                       what="a ReplicaFailure condition")
    assert "held-0" in failure.message and "not the pool's" in failure.message
    vms = members(cluster, "held")
    assert not vms["held-0"].metadata.HasField("owner")  # left alone, not adopted or deleted
    assert "held-1" in vms


def test_scale_in_with_state_preservation_keeps_the_vm_stopped_and_brings_it_back(cluster):
    cluster.start_controller()
    cluster.start_handler("n1", vcpus=8, memory_mib=4096)
    pool = pool_of(cluster, "kept", 2)
    pool.spec.scale_in_policy.state_preservation = P.STATE_PRESERVATION_OFFLINE
    create_pool(cluster, pool)
    wait_for(lambda: running(cluster, "kept") == {"kept-0", "kept-1"}, timeout=90, what="2 VMs Running")
    kept = members(cluster, "kept")["kept-1"]

    scale(cluster, "kept", 1)
    parked = wait_for(lambda: (vm := members(cluster, "kept")["kept-1"]).status.printable_status == "Stopped"
                      and vm, timeout=60, what="kept-1 stopped")
    assert parked.metadata.uid == kept.metadata.uid and not parked.metadata.HasField("delete_time")
    assert qemu_pid_for(kept.status.instance_uid) is None
    wait_for(lambda: get_pool(cluster, "kept").status.replicas == 1, timeout=20, what="pool status: 1 replica")

    scale(cluster, "kept", 2)
    back = wait_for(lambda: (vm := members(cluster, "kept")["kept-1"]).status.phase == RUNNING and vm,
                    timeout=60, what="kept-1 running again")
    assert back.metadata.uid == kept.metadata.uid  # the same VM (its MACs and disks), a new run
    assert back.status.instance_uid != kept.status.instance_uid
    assert set(members(cluster, "kept")) == {"kept-0", "kept-1"}


def test_users_cannot_steer_a_pool_through_its_vms_annotations(cluster):
    cluster.start_controller()
    create_pool(cluster, pool_of(cluster, "owned", 1))
    vm = wait_for(lambda: members(cluster, "owned").get("owned-0"), timeout=20, what="owned-0")
    revision = vm.metadata.annotations["corral.dev/pool-template-revision"]
    for _ in range(10):  # the leader's status writes may get in between
        vm = cluster.get("owned-0")
        vm.metadata.annotations.clear()
        vm.metadata.annotations["corral.dev/pool-scaled-in"] = "true"
        vm.metadata.annotations["note"] = "mine"
        try:
            cluster.vms.UpdateVirtualMachine(vm_pb2.UpdateVirtualMachineRequest(virtual_machine=vm), timeout=10)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ABORTED
    stored = cluster.get("owned-0").metadata.annotations
    assert stored["note"] == "mine" and stored["corral.dev/pool-template-revision"] == revision
    assert "corral.dev/pool-scaled-in" not in stored
    with pytest.raises(grpc.RpcError) as err:
        squatter = cluster.guest_vm("planted")
        squatter.metadata.annotations["corral.dev/pool-rollout"] = "x"
        cluster.create(squatter)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
