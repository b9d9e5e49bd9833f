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

from controller.leader import LeaderElector
from controller.migrations import MigrationReconciler, MigrationSettings
from controller.pool_reconciler import PoolReconciler
from controller.node_agents import NodeAgents
from controller.scheduler import Scheduler
from controller.snapshots import SnapshotReconciler
from controller.server import ApiServer
from controller.watch_cache import WatchCache
from corral import logs, metrics, tls
from corral.sdnotify import Watchdog, notify
from corral.settings import ControllerSettings, add_common_arguments, parse_daemon_settings
from corral.store import Store, StoreError

log = logging.getLogger("corral.controller")


def parse_settings(argv: list[str] | None) -> ControllerSettings:
    parser = argparse.ArgumentParser(prog="corral-controller", description=__doc__)
    parser.add_argument("--listen", help="HOST:PORT for the gRPC API (CORRAL_LISTEN)")
    parser.add_argument("--insecure", action="store_true", default=None,
                        help="serve the API in plaintext on a non-loopback address (CORRAL_INSECURE; "
                             "refused otherwise)")
    parser.add_argument("--leader-lease-seconds", type=int, help="(CORRAL_LEADER_LEASE_SECONDS)")
    parser.add_argument("--replica-id", help="name of this replica in the leader key")
    parser.add_argument("--web-console-listen", help="HOST:PORT of the web VNC console (CORRAL_WEB_CONSOLE_LISTEN; "
                        "empty: off)")
    parser.add_argument("--web-console-url", help="its base URL as browsers reach it (CORRAL_WEB_CONSOLE_URL)")
    add_common_arguments(parser, daemon="controller")
    return parse_daemon_settings(parser, argv, ControllerSettings, daemon="controller")


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    for problem in settings.plaintext_problems():
        print(f"corral-controller: {problem}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, name="controller")
    try:
        store = Store.from_settings(settings)
    except StoreError as exc:
        print(f"corral-controller: {exc}", file=sys.stderr)
        return 2
    cache = WatchCache(store)
    cache.start()
    server = ApiServer(settings, store, cache)
    migrations = MigrationReconciler(store=store, settings=MigrationSettings.from_settings(settings))
    scheduler = Scheduler(store=store, resync_seconds=settings.resync_seconds,
                          node_loss_margin_seconds=settings.node_loss_margin_seconds, migrations=migrations,
                          cache=cache, pools=PoolReconciler(store=store))
    try:  # dialing handlers for snapshots, as the API server does for consoles
        agent_credentials = (tls.channel_credentials(settings.tls_client_ca_file, settings.tls_cert_file,
                                                     settings.tls_key_file) if settings.tls_cert_file else None)
    except tls.TLSConfigError as exc:
        print(f"corral-controller: {exc}", file=sys.stderr)
        return 2
    snapshots = SnapshotReconciler(store=store, agents=NodeAgents(store, agent_credentials), cache=cache)

    def lead(fence, work_stop: threading.Event) -> None:
        """The scheduler, and snapshots in a thread of their own (node calls take seconds)."""
        worker = threading.Thread(target=snapshots.run, args=(fence, work_stop), name="snapshots", daemon=True)
        worker.start()
        try:
            scheduler.run(fence, work_stop)
        finally:
            work_stop.set()
            worker.join(timeout=5)

    elector = LeaderElector(store=store, identity=settings.replica_id,
                            lease_seconds=settings.leader_lease_seconds, lead=lead)
    metrics.register_controller(list_vms=lambda: cache.snapshot()[2], is_leader=lambda: elector.is_leader)
    server.leading = lambda: elector.is_leader
    metrics.serve(settings.metrics_listen)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
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
    election.join(timeout=settings.leader_lease_seconds)
    server.stop(grace=2)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
