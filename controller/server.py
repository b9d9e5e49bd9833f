"""The controller's gRPC server: grpc.aio on an event loop of its own thread. Streams that
wait (every handler's assignments, API watches) are coroutines and hold no thread, so a
replica keeps thousands of them open; unary calls (plain functions that block on etcd) run in
a bounded thread pool. The daemon's main thread stays free for signals and systemd."""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent import futures
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controller.api import VirtualMachineService
from controller.node_api import NodeService
from controller.handler_api import HandlerService
from controller.instancetype_api import InstanceTypeService, PreferenceService
from controller.interceptors import ControllerInterceptor
from controller.limits import StreamLimits, ThreadBoundStreams
from controller.migration_api import MigrationService
from controller.pool_api import VirtualMachinePoolService
from controller.snapshot_api import VirtualMachineSnapshotService
from controller.node_agents import NodeAgents
from controller.vnc import VncService
from controller.watch_cache import WatchCache
from corral import tls
from corral.async_store import AsyncStore
from corral.settings import ControllerSettings, loopback
from corral.store import Store
from corral.v1 import (handler_pb2, handler_pb2_grpc, instancetype_pb2, instancetype_pb2_grpc, migration_pb2,
                       migration_pb2_grpc, node_pb2, node_pb2_grpc, pool_pb2, pool_pb2_grpc, snapshot_pb2,
                       snapshot_pb2_grpc, vm_pb2, vm_pb2_grpc, vnc_pb2, vnc_pb2_grpc)

if TYPE_CHECKING:
    from controller.web_console import WebConsole

log = logging.getLogger("corral.controller")

SERVICE_NAMES = (
    vm_pb2.DESCRIPTOR.services_by_name["VirtualMachineService"].full_name,
    node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    migration_pb2.DESCRIPTOR.services_by_name["MigrationService"].full_name,
    handler_pb2.DESCRIPTOR.services_by_name["HandlerService"].full_name,
    instancetype_pb2.DESCRIPTOR.services_by_name["InstanceTypeService"].full_name,
    instancetype_pb2.DESCRIPTOR.services_by_name["PreferenceService"].full_name,
    pool_pb2.DESCRIPTOR.services_by_name["VirtualMachinePoolService"].full_name,
    vnc_pb2.DESCRIPTOR.services_by_name["VncService"].full_name,
    snapshot_pb2.DESCRIPTOR.services_by_name["VirtualMachineSnapshotService"].full_name,
)
#: Threads for unary calls in flight (they wait on etcd) and the few streams that are still
#: plain generators (consoles, migration watches).
UNARY_THREADS = 64
#: Accept the handlers' keepalive pings (they notice a dead controller by them).
SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 4000),
    ("grpc.http2.max_ping_strikes", 0),
]


class ApiServer:
    def __init__(self, settings: ControllerSettings, store: Store, cache: WatchCache) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self.health = health.HealthServicer()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._grace = 0.0
        self.web_console: WebConsole | None = None
        self.async_store: AsyncStore | None = None
        self._handlers: HandlerService | None = None
        # Whether this replica leads (set by main once its elector exists): a leader turns away
        # node streams that can go elsewhere (settings.leader_sheds_node_streams).
        self.leading: Callable[[], bool] = lambda: False
        self._thread = threading.Thread(target=self._run, name="api-server", daemon=True)

    def start(self) -> None:
        """Serve; raises SystemExit with the reason when the server cannot start."""
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        for name in ("",) + SERVICE_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float) -> None:
        """Stop serving (calls in flight get ``grace`` seconds) and end the loop's thread."""
        self.health.enter_graceful_shutdown()
        self._grace = grace
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            try:
                self.loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # the loop already ended
        self._thread.join(timeout=grace + 5)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        # What coroutines hand to a thread (etcd logins, lease grants, rare fallbacks, waits for
        # the cache): asyncio's default of a few threads could be held by slow ones.
        self.loop.set_default_executor(futures.ThreadPoolExecutor(max_workers=UNARY_THREADS,
                                                                  thread_name_prefix="loop-aux"))
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._error = exc
        finally:
            self._started.set()
            self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.async_store = AsyncStore(self.store)  # its etcd channels belong to this loop
        self._server = self._build()
        await self._server.start()
        hand_off = asyncio.get_running_loop().create_task(self._handlers.hand_off_streams())
        if self.web_console is not None:
            await self.web_console.start()
        self._started.set()
        await self._stop.wait()
        # Calls cut short by the shutdown end their server tasks with errors nobody awaits:
        # expected now, not worth a traceback in the log.
        self.loop.set_exception_handler(lambda _loop, context: log.debug("at shutdown: %s", context.get("message")))
        if self.web_console is not None:
            await self.web_console.stop()
        hand_off.cancel()
        await self._server.stop(self._grace)
        await self.async_store.close()

    def _build(self) -> grpc.aio.Server:
        settings = self.settings
        server = grpc.aio.server(
            migration_thread_pool=futures.ThreadPoolExecutor(max_workers=UNARY_THREADS, thread_name_prefix="api"),
            options=SERVER_OPTIONS, interceptors=[ControllerInterceptor()])
        try:
            # Dialing handlers (consoles, pause, reset): the controller's own certificate, trusting
            # the CA that signs the nodes' certificates.
            agent_credentials = (tls.channel_credentials(settings.tls_client_ca_file, settings.tls_cert_file,
                                                         settings.tls_key_file) if settings.tls_cert_file else None)
        except tls.TLSConfigError as exc:
            raise SystemExit(f"corral-controller: {exc}") from None
        limits = StreamLimits(per_node=settings.node_stream_limit, per_user=settings.user_stream_limit)
        agents = NodeAgents(self.store, agent_credentials)
        # Consoles and VNC displays hold a unary thread each while open: bounded together, so
        # that with the threaded watches below at most half the pool is held by streams.
        interactive = ThreadBoundStreams(total=UNARY_THREADS // 4, per_identity=8)
        vm_pb2_grpc.add_VirtualMachineServiceServicer_to_server(VirtualMachineService(
            store=self.store, cache=self.cache, node_agents=agents, limits=limits, interactive=interactive,
            async_store=self.async_store), server)
        if settings.web_console_listen:
            from controller.web_console import WebConsole  # noqa: PLC0415 - aiohttp only when it is on
            self.web_console = WebConsole(settings, self.store, agents)
        vnc_pb2_grpc.add_VncServiceServicer_to_server(VncService(
            store=self.store, agents=agents, web_url=lambda: self.web_console.url if self.web_console else "",
            interactive=interactive), server)
        node_pb2_grpc.add_NodeServiceServicer_to_server(NodeService(store=self.store, cache=self.cache), server)
        # Watches of pools and migrations still hold a unary thread each: bounded together.
        threaded = ThreadBoundStreams(total=UNARY_THREADS // 4, per_identity=4)
        migration_pb2_grpc.add_MigrationServiceServicer_to_server(MigrationService(store=self.store, threaded=threaded),
                                                                  server)
        self._handlers = HandlerService(store=self.store, cache=self.cache, limits=limits,
                                        async_store=self.async_store,
                                        leading=lambda: settings.leader_sheds_node_streams and self.leading())
        handler_pb2_grpc.add_HandlerServiceServicer_to_server(self._handlers, server)
        instancetype_pb2_grpc.add_InstanceTypeServiceServicer_to_server(
            InstanceTypeService(store=self.store, cache=self.cache), server)
        instancetype_pb2_grpc.add_PreferenceServiceServicer_to_server(
            PreferenceService(store=self.store, cache=self.cache), server)
        pools_service = VirtualMachinePoolService(store=self.store, threaded=threaded)
        pool_pb2_grpc.add_VirtualMachinePoolServiceServicer_to_server(pools_service, server)
        snapshot_pb2_grpc.add_VirtualMachineSnapshotServiceServicer_to_server(
            VirtualMachineSnapshotService(store=self.store), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            SERVICE_NAMES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        if settings.tls_cert_file:
            try:
                credentials = tls.server_credentials(settings.tls_cert_file, settings.tls_key_file,
                                                     settings.tls_client_ca_file)
            except tls.TLSConfigError as exc:
                raise SystemExit(f"corral-controller: {exc}") from None
            if server.add_secure_port(settings.listen, credentials) == 0:
                raise SystemExit(f"corral-controller: cannot listen on {settings.listen}")
            log.info("serving the API on %s with mutual TLS (client CA %s)", settings.listen,
                     settings.tls_client_ca_file)
            return server
        if server.add_insecure_port(settings.listen) == 0:
            raise SystemExit(f"corral-controller: cannot listen on {settings.listen}")
        if loopback(settings.listen):
            log.warning("serving the API on %s WITHOUT TLS (loopback only: this machine's users can act as "
                        "any node or user)", settings.listen)
        else:
            log.warning("INSECURE (--insecure): serving the API on %s WITHOUT TLS to the network: anyone who "
                        "reaches it can act as any node or user", settings.listen)
        return server
