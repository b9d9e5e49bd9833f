"""corral-controller: serves the API on every replica; the elected leader also runs the
scheduler. Settings: flags > CORRAL_* environment > settings file (--config) > defaults.
Under systemd (Type=notify) it reports READY=1 once serving, WATCHDOG=1 from its main loop
and STOPPING=1 on shutdown."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from controller import auth
from controller.api import NodeService, VirtualMachineService
from controller.handler_api import HandlerService
from controller.leader import LeaderElector
from controller.node_agents import NodeAgents
from controller.migration_api import MigrationService
from controller.migrations import MigrationReconciler, MigrationSettings
from controller.scheduler import Scheduler
from controller.watch_cache import WatchCache
from corral import logs, metrics, tls
from corral.sdnotify import Watchdog, notify
from corral.settings import ControllerSettings, add_common_arguments, parse_daemon_settings
from corral.store import Store, StoreError
from corral.v1 import (handler_pb2, handler_pb2_grpc, migration_pb2, migration_pb2_grpc, node_pb2, node_pb2_grpc,
                       vm_pb2, vm_pb2_grpc)

log = logging.getLogger("corral.controller")

SERVICE_NAMES = (
    vm_pb2.DESCRIPTOR.services_by_name["VirtualMachineService"].full_name,
    node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    migration_pb2.DESCRIPTOR.services_by_name["MigrationService"].full_name,
    handler_pb2.DESCRIPTOR.services_by_name["HandlerService"].full_name,
)


#: Threads serving calls: one per open stream (each node's assignments, each watch) plus the
#: unary calls in flight.
MAX_WORKERS = 4096
#: Accept the handlers' keepalive pings (they notice a dead controller by them).
SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 4000),
    ("grpc.http2.max_ping_strikes", 0),
]


def parse_settings(argv: list[str] | None) -> ControllerSettings:
    parser = argparse.ArgumentParser(prog="corral-controller", description=__doc__)
    parser.add_argument("--listen", help="HOST:PORT for the gRPC API (CORRAL_LISTEN)")
    parser.add_argument("--leader-lease-seconds", type=int, help="(CORRAL_LEADER_LEASE_SECONDS)")
    parser.add_argument("--replica-id", help="name of this replica in the leader key")
    add_common_arguments(parser, daemon="controller")
    return parse_daemon_settings(parser, argv, ControllerSettings, daemon="controller")


def build_server(settings: ControllerSettings, store: Store,
                 cache: WatchCache) -> tuple[grpc.Server, health.HealthServicer]:
    # Every open stream (a handler's assignments, a watch) holds a worker thread, parked on its
    # own queue (the watch cache wakes only the streams a change concerns).
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="api"),
                         options=SERVER_OPTIONS,
                         interceptors=[metrics.ApiInterceptor(), auth.AuthorizationInterceptor()])
    try:
        # Dialing handlers (consoles, pause, reset): the controller's own certificate, trusting the
        # CA that signs the nodes' certificates.
        agent_credentials = (tls.channel_credentials(settings.tls_client_ca_file, settings.tls_cert_file,
                                                     settings.tls_key_file) if settings.tls_cert_file else None)
    except tls.TLSConfigError as exc:
        raise SystemExit(f"corral-controller: {exc}") from None
    vm_pb2_grpc.add_VirtualMachineServiceServicer_to_server(
        VirtualMachineService(store=store, node_agents=NodeAgents(store, agent_credentials)), server)
    node_pb2_grpc.add_NodeServiceServicer_to_server(NodeService(store=store), server)
    migration_pb2_grpc.add_MigrationServiceServicer_to_server(MigrationService(store=store), server)
    handler_pb2_grpc.add_HandlerServiceServicer_to_server(HandlerService(store=store, cache=cache), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
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
        return server, health_servicer
    if server.add_insecure_port(settings.listen) == 0:
        raise SystemExit(f"corral-controller: cannot listen on {settings.listen}")
    log.warning("serving the API on %s WITHOUT TLS: use only on a trusted network", settings.listen)
    return server, health_servicer


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    logs.setup(settings.log_level, name="controller")
    try:
        store = Store.from_settings(settings)
    except StoreError as exc:
        print(f"corral-controller: {exc}", file=sys.stderr)
        return 2
    cache = WatchCache(store)
    cache.start()
    server, health_servicer = build_server(settings, store, cache)
    migrations = MigrationReconciler(store=store, settings=MigrationSettings.from_settings(settings))
    scheduler = Scheduler(store=store, resync_seconds=settings.resync_seconds,
                          node_loss_margin_seconds=settings.node_loss_margin_seconds, migrations=migrations,
                          cache=cache)
    elector = LeaderElector(store=store, identity=settings.replica_id,
                            lease_seconds=settings.leader_lease_seconds, lead=scheduler.run)
    metrics.register_controller(list_vms=lambda: cache.snapshot()[2], is_leader=lambda: elector.is_leader)
    metrics.serve(settings.metrics_listen)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    for name in ("",) + SERVICE_NAMES:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("controller %s started", settings.replica_id)
    election = threading.Thread(target=elector.run, args=(stop,), name="election", daemon=True)
    election.start()
    notify(f"READY=1\nSTATUS=serving the API on {settings.listen}")
    watchdog = Watchdog()
    while not stop.wait(watchdog.period):
        # Healthy while the election loop runs; a dead one stops the pings and systemd restarts us.
        role = "leader" if elector.is_leader else "follower"
        watchdog.ping(healthy=election.is_alive(),
                      status=f"serving the API on {settings.listen}, {role}" if election.is_alive()
                      else "election loop died")
    notify("STOPPING=1\nSTATUS=stopping")
    health_servicer.enter_graceful_shutdown()
    election.join(timeout=settings.leader_lease_seconds)
    server.stop(grace=2).wait()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
