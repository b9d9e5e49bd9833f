"""Settings are validated at start: a bad value stops the daemon with a message naming it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from corral.settings import ControllerSettings, HandlerSettings
from tests.cluster import REPO


def test_environment_lists_and_labels_parse(monkeypatch):
    monkeypatch.setenv("CORRAL_ETCD_ENDPOINTS", "http://10.0.0.1:2379, http://10.0.0.2:2379")
    monkeypatch.setenv("CORRAL_NODE_LABELS", "disk=ssd,zone=a")
    settings = HandlerSettings()
    assert settings.etcd_endpoints == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    assert settings.node_labels == {"disk": "ssd", "zone": "a"}


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("CORRAL_LISTEN", "127.0.0.1:1")
    assert ControllerSettings(listen="127.0.0.1:2").listen == "127.0.0.1:2"


@pytest.mark.parametrize("module,args,env,needle", [
    ("controller.main", ["--leader-lease-seconds", "0"], {}, "leader_lease_seconds"),
    ("controller.main", [], {"CORRAL_ETCD_ENDPOINTS": "etcd-without-port"}, "etcd_endpoints"),
    ("controller.main", [], {"CORRAL_ETCD_PREFIX": "corral"}, "etcd_prefix"),
    ("handler.main", ["--node-labels", "novalue"], {}, "node_labels"),
    ("handler.main", ["--heartbeat-seconds", "1"], {}, "heartbeat_seconds"),
])
def test_bad_settings_stop_the_daemon_with_a_clear_message(module, args, env, needle):
    result = subprocess.run([sys.executable, "-m", module, *args], env={**os.environ, **env}, cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "invalid settings" in result.stderr and needle in result.stderr


def test_handler_refuses_a_state_dir_too_long_for_qemu_sockets(tmp_path):
    long_dir = tmp_path / ("x" * 60)
    result = subprocess.run([sys.executable, "-m", "handler.main", "--state-dir", str(long_dir),
                             "--listen", "127.0.0.1:0", "--migration-listen", "127.0.0.1:0"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "too long" in result.stderr


@pytest.mark.parametrize("module,args,needles", [
    ("controller.main", ["--listen", "0.0.0.0:7100"], ["listen 0.0.0.0:7100 would serve plaintext"]),
    ("controller.main", ["--listen", "10.1.2.3:7100"], ["listen 10.1.2.3:7100 would serve plaintext"]),
    ("handler.main", ["--listen", "127.0.0.1:0"], ["migration_listen 0.0.0.0:7102 would serve plaintext"]),
    ("handler.main", [], ["listen 0.0.0.0:7101 would serve plaintext", "migration_listen 0.0.0.0:7102"]),
])
def test_daemons_refuse_plaintext_on_the_network_unless_told(module, args, needles):
    """Secure by default: without TLS a daemon serves only loopback addresses; anything else
    needs --insecure, said out loud. (Nothing starts: the refusal comes before etcd is dialed.)"""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CORRAL_ETCD_ENDPOINTS": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    for needle in needles:
        assert needle in result.stderr
    assert "--insecure" in result.stderr
