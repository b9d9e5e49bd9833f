"""VirtualMachineService.OpenConsole: relays a client's console stream to the handler of the
node that runs the VM (NodeAgentService.AttachInstanceConsole), which relays it to the run's
launcher. Any replica serves it; nothing is written to the store.

The first request names the VM (and may carry input). The stream ends when the console does
(the run stopped), when the client cancels, or with the handler's error code (UNAVAILABLE:
the node does not answer; connect again once its handler is back)."""
from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from controller import node_agents
from controller.errors import RequestError, call_ended
from corral.logs import log_vm
from corral.resources import VMS
from corral.store import Store
from corral.v1 import node_agent_pb2, vm_pb2
from corral.validation import ValidationError, name_problem

log = logging.getLogger(__name__)


def open_console(store: Store, agents: node_agents.NodeAgents, requests: Iterator[vm_pb2.OpenConsoleRequest],
                 context: grpc.ServicerContext) -> Iterator[vm_pb2.OpenConsoleResponse]:
    first = next(requests, None)
    if first is None or not first.name:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "name: the first request must name the VM")
    problem = name_problem(first.name, "name")
    if problem:
        raise ValidationError([problem])
    vm = store.get(VMS, first.name)
    stub, name, instance_uid = agents.live_run(vm)
    node = vm.status.node_name

    ended = call_ended(context)

    def keystrokes() -> Iterator[node_agent_pb2.AttachInstanceConsoleRequest]:
        yield node_agent_pb2.AttachInstanceConsoleRequest(name=name, instance_uid=instance_uid, data=first.data)
        try:
            for request in requests:
                yield node_agent_pb2.AttachInstanceConsoleRequest(data=request.data)
        except Exception:  # noqa: BLE001 - the client's call ended (RpcError, or grpc.aio's AbortError)
            return  # the relay below ends too
        # The client's input ended (a half-close): its output keeps coming until it leaves, so
        # the node's stream stays open rather than passing the half-close down to the launcher.
        ended.wait()

    call = stub.AttachInstanceConsole(keystrokes())
    context.add_callback(call.cancel)
    log_vm(log, vm, "console of vm %s opened (node %s)", name, node)
    try:
        for response in call:
            yield vm_pb2.OpenConsoleResponse(data=response.data)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.CANCELLED and ended.is_set():
            return  # the client left
        raise node_agents.upstream_error(exc, node) from None
    finally:
        call.cancel()
        log_vm(log, vm, "console of vm %s closed", name)
