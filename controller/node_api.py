"""The public NodeService: nodes as the scheduler sees them (capacity, what is allocated,
readiness), served by every replica; cordon and uncordon."""
from __future__ import annotations

import logging

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from controller import pagination
from controller.api import check_name
from controller.errors import grpc_errors
from controller.nodes import list_node_views, present_nodes
from controller.watch_cache import WatchCache
from corral.resources import NODES
from corral.selectors import matches, parse_selector
from corral.store import Conflict, NotFound, Store
from corral.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger(__name__)


class NodeService(node_pb2_grpc.NodeServiceServicer):
    """Nodes from the watch cache once it has caught up with etcd (from etcd when it cannot)."""

    def __init__(self, *, store: Store, cache: WatchCache) -> None:
        self.store = store
        self.cache = cache

    def _nodes(self) -> list[node_pb2.Node]:
        if self.cache.fresh():
            return present_nodes(*self.cache.node_views())
        return list_node_views(self.store)

    @grpc_errors
    def GetNode(self, request, context):
        check_name(request.name)
        nodes = {view.metadata.name: view for view in self._nodes()}
        if request.name not in nodes:
            raise NotFound(f"Node {request.name!r} not found")
        return node_pb2.GetNodeResponse(node=nodes[request.name])

    @grpc_errors
    def ListNodes(self, request, context):
        selector = parse_selector(request.label_selector)
        size = pagination.page_size(request.page_size)
        _, after = pagination.decode_token(request.page_token)
        nodes = [n for n in self._nodes()
                 if n.metadata.name > after and matches(selector, n.metadata.labels)]
        page = nodes[:size]
        token = pagination.encode_token(1, page[-1].metadata.name) if len(nodes) > size else ""
        return node_pb2.ListNodesResponse(nodes=page, next_page_token=token)

    def _set_unschedulable(self, name: str, value: bool) -> node_pb2.Node:
        check_name(name)
        for attempt in Retrying(retry=retry_if_exception_type(Conflict), stop=stop_after_attempt(8), reraise=True):
            with attempt:
                node = self.store.get(NODES, name)
                if node.spec.unschedulable != value:
                    node.spec.unschedulable = value
                    self.store.update(NODES, node)
                    log.info("node %s %s", name, "cordoned" if value else "uncordoned")
        return next(view for view in self._nodes() if view.metadata.name == name)

    @grpc_errors
    def CordonNode(self, request, context):
        return node_pb2.CordonNodeResponse(node=self._set_unschedulable(request.name, True))

    @grpc_errors
    def UncordonNode(self, request, context):
        return node_pb2.UncordonNodeResponse(node=self._set_unschedulable(request.name, False))
