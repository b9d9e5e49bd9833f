"""controller/pools.py's decisions, on messages alone (no store)."""
from __future__ import annotations

import pytest

from controller import pools
from corral.v1 import pool_pb2 as P
from corral.v1 import vm_pb2

RUNNING = vm_pb2.VIRTUAL_MACHINE_PHASE_RUNNING
FAILED = vm_pb2.VIRTUAL_MACHINE_PHASE_FAILED


def a_pool(replicas: int, **spec) -> P.VirtualMachinePool:
    pool = P.VirtualMachinePool()
    pool.metadata.name = "web"
    pool.metadata.uid = "pool-uid"
    pool.spec.replicas = replicas
    pool.spec.selector = "app=web"
    pool.spec.virtual_machine_template.metadata.labels["app"] = "web"
    pool.spec.virtual_machine_template.spec.vcpus = 1
    pool.spec.virtual_machine_template.spec.memory_mib = 128
    for key, value in spec.items():
        setattr(pool.spec, key, value)
    return pool


def members(pool: P.VirtualMachinePool, *indices: int, phase: int = RUNNING) -> list[vm_pb2.VirtualMachine]:
    revision = pools.template_revision(pool)
    vms = []
    for index in indices:
        vm = pools.new_vm(pool, index, revision)
        vm.metadata.create_time.FromSeconds(1000 + index)
        vm.status.phase = phase
        vms.append(vm)
    return vms


def plan(pool, vms, now=2000.0, nodes=None):
    return pools.plan(pool, vms, now_seconds=now, wanted_spec=lambda name: pools.spec_for(pool, name),
                      node_labels=lambda name: (nodes or {}).get(name))


def test_scale_up_fills_the_lowest_free_indices_and_waits_for_going_ones():
    pool = a_pool(4)
    vms = members(pool, 0, 2)
    vms[1].metadata.delete_time.FromSeconds(1)  # web-2 is being deleted: its index comes back later
    assert plan(pool, vms).create == [1, 3]
    assert plan(a_pool(2), members(pool, 5)).create == [0]


@pytest.mark.parametrize("order, prefer, gone", [
    (P.SCALE_IN_ORDER_UNSPECIFIED, "", {"web-3", "web-2"}),
    (P.SCALE_IN_ORDER_NEWEST, "", {"web-3", "web-2"}),
    (P.SCALE_IN_ORDER_OLDEST, "", {"web-0", "web-1"}),
    (P.SCALE_IN_ORDER_UNSPECIFIED, "spot=true", {"web-0", "web-3"}),
])
def test_scale_in_picks_victims_by_policy(order, prefer, gone):
    pool = a_pool(2)
    pool.spec.scale_in_policy.order = order
    pool.spec.scale_in_policy.prefer_label_selector = prefer
    vms = members(pool, 0, 1, 2, 3)
    vms[0].metadata.labels["spot"] = "true"
    result = plan(pool, vms)
    assert {vm.metadata.name for vm in result.delete} == gone
    assert not result.create


def test_a_vm_failing_its_last_runs_within_the_window_is_replaced():
    pool = a_pool(1)
    pool.spec.auto_healing.failed_runs = 2
    pool.spec.auto_healing.window_seconds = 100
    vm = members(pool, 0, phase=FAILED)[0]
    vm.status.restart_count = 1
    vm.status.phase_transitions.add(phase=FAILED).time.FromSeconds(1950)
    vm.status.phase_transitions.add(phase=FAILED).time.FromSeconds(1990)
    result = plan(pool, [vm])
    assert result.healed == ["web-0"] and [v.metadata.name for v in result.delete] == ["web-0"]
    assert result.create == []  # made again once the old one is gone
    assert not plan(pool, [vm], now=2100.0).healed  # the first failure is out of the window
    pool.spec.auto_healing.disabled = True
    assert not plan(pool, [vm]).healed


def test_rollout_takes_down_at_most_max_unavailable():
    pool = a_pool(4, max_unavailable="50%")
    vms = members(pool, 0, 1, 2, 3)
    pool.spec.virtual_machine_template.spec.memory_mib = 256
    result = plan(pool, vms)
    assert [vm.metadata.name for vm in result.stop] == ["web-0", "web-1"]
    assert all(vm.metadata.annotations[pools.ROLLOUT_ANNOTATION] == pools.template_revision(pool)
               for vm in result.stop)
    # Next pass: those two are stopping (still Running): nothing more goes down.
    stopping = [result.stop[0], result.stop[1], vms[2], vms[3]]
    assert plan(pool, stopping).stop == []
    # One ended its run: it gets the new spec and starts again; still nobody else goes down.
    stopping[0].status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED
    result = plan(pool, stopping)
    assert [vm.metadata.name for vm in result.update] == ["web-0"] and result.restart == {"web-0"}
    assert result.update[0].spec.memory_mib == 256 and result.stop == []


def test_changes_the_guest_does_not_see_are_made_in_place():
    pool = a_pool(2)
    vms = members(pool, 0, 1)
    for vm in vms:
        vm.status.node_name = "n1"
    pool.spec.virtual_machine_template.spec.run_strategy = vm_pb2.RUN_STRATEGY_ALWAYS
    pool.spec.virtual_machine_template.spec.node_selector["zone"] = "a"
    result = plan(pool, vms, nodes={"n1": {"zone": "a"}})
    assert {vm.metadata.name for vm in result.update} == {"web-0", "web-1"} and not result.stop
    # A node selector the VM's node does not satisfy needs a new run.
    result = plan(pool, vms, nodes={"n1": {"zone": "b"}})
    assert not result.update and [vm.metadata.name for vm in result.stop] == ["web-0"]


def test_persistent_disk_paths_get_each_vms_name():
    pool = a_pool(1)
    disk = pool.spec.virtual_machine_template.spec.disks.add(name="data")
    disk.persistent.path = "/srv/disks/$(VM_NAME).qcow2"
    assert pools.spec_for(pool, "web-7").disks[0].persistent.path == "/srv/disks/web-7.qcow2"


@pytest.mark.parametrize("text, replicas, count", [("", 10, 1), ("3", 10, 3), ("25%", 10, 2), ("10%", 3, 1),
                                                   ("100%", 4, 4)])
def test_max_unavailable(text, replicas, count):
    assert pools.max_unavailable_problem(text) is None
    assert pools.max_unavailable(a_pool(replicas, max_unavailable=text)) == count


@pytest.mark.parametrize("text", ["0", "-1", "0%", "101%", "1.5", "abc", "%"])
def test_bad_max_unavailable(text):
    assert pools.max_unavailable_problem(text)


def test_index_of_accepts_only_the_pools_names():
    assert pools.index_of("web", "web-12") == 12
    assert pools.index_of("web", "web-012") is None
    assert pools.index_of("web", "webx-1") is None
    assert pools.index_of("web", "web-1-2") is None


def test_status_counts_ready_and_updated():
    pool = a_pool(3)
    vms = members(pool, 0, 1, 2)
    vms[2].status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_PENDING
    vms[1].metadata.annotations[pools.REVISION_ANNOTATION] = "old"
    status = plan(pool, vms).status
    assert (status.replicas, status.ready_replicas, status.updated_replicas) == (3, 2, 2)
    ready = {c.type: c for c in status.conditions}["Ready"]
    assert not ready.status and ready.message == "2 of 3 VMs Running"


def test_annotations_are_bounded_but_free_text():
    from corral.validation import MAX_ANNOTATIONS_BYTES, annotation_problems
    assert annotation_problems({"corral.dev/last-applied": '{"spec": {"x": "<&> ü"}}'}, "a") == []
    assert "is not a valid key" in annotation_problems({"bad key": "v"}, "a")[0]
    too_big = {"corral.dev/last-applied": "x" * MAX_ANNOTATIONS_BYTES}
    assert "at most 262144" in annotation_problems(too_big, "metadata.annotations")[0]


def test_offline_state_preservation_parks_victims_and_revives_them_first():
    pool = a_pool(1)
    pool.spec.scale_in_policy.state_preservation = P.STATE_PRESERVATION_OFFLINE
    vms = members(pool, 0, 1)
    result = plan(pool, vms)
    assert [vm.metadata.name for vm in result.park] == ["web-1"] and not result.delete
    vms[1].metadata.annotations[pools.PARKED_ANNOTATION] = "true"
    assert plan(pool, vms).status.replicas == 1  # a parked VM is not one of the replicas
    # Scaling up while web-1 is still stopping: wait for it, make nothing else.
    pool.spec.replicas = 3
    result = plan(pool, vms)
    assert not result.revive and result.create == [2]
    vms[1].status.phase = vm_pb2.VIRTUAL_MACHINE_PHASE_SUCCEEDED
    result = plan(pool, vms)
    assert [vm.metadata.name for vm in result.revive] == ["web-1"] and result.create == [2]


def test_users_cannot_set_the_controllers_annotations():
    from corral.validation import user_annotation_problems
    assert user_annotation_problems({"corral.dev/last-applied": "{}"}, "a") == []
    for key in ("corral.dev/pool-scaled-in", "corral.dev/pool-template-revision", "corral.dev/delete-orphan"):
        assert "set by Corral's controllers" in user_annotation_problems({key: "true"}, "a")[0]


def test_new_vms_are_written_in_batches_that_etcd_takes():
    from controller.pool_reconciler import CREATE_BATCH, CREATE_BATCH_BYTES, _batches, make_vm
    pool = a_pool(100)
    template = pool.spec.virtual_machine_template.spec
    small = [(index, make_vm(pool, index, "r1", template)) for index in range(100)]
    groups = _batches(small)
    assert [len(group) for group in groups] == [CREATE_BATCH, CREATE_BATCH, 100 - 2 * CREATE_BATCH]
    assert [index for group in groups for index, _ in group] == list(range(100)), "order and indices kept"
    template.cloud_init.user_data = "#!/bin/sh\n" + "x" * 60_000
    big = [(index, make_vm(pool, index, "r1", template)) for index in range(20)]
    groups = _batches(big)
    assert all(sum(vm.ByteSize() for _, vm in group) <= CREATE_BATCH_BYTES for group in groups)
    assert sum(len(group) for group in groups) == 20 and len(groups) > 2
    template.cloud_init.user_data = "x" * (CREATE_BATCH_BYTES + 1)
    assert [len(group) for group in _batches([(0, make_vm(pool, 0, "r1", template))] * 2)] == [1, 1]
