"""Shared fixtures: one real etcd for the session, a freshly built test guest, and a
cluster of real controller and handler processes per test (own key prefix)."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.cluster import REPO, Cluster, Etcd

# The CLI reads its user's client config (~/.config/corral/config: after scripts/local-cluster.sh
# it names the demo's admin context, with TLS): tests, and the CLIs they start, begin from none.
os.environ["CORRAL_CLIENT_CONFIG"] = os.devnull


def pytest_collection_modifyitems(config, items):
    """Slow tests first, so that with parallel workers the longest ones do not start last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_report_header(config):
    return ["libvirt guests run under TCG emulation (nested KVM is unusable on CI machines)"]


@pytest.fixture(scope="session")
def etcd(tmp_path_factory):
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    server = Etcd(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def guest_dir(tmp_path_factory) -> Path:
    """Debian's kernel plus a busybox initramfs that prints CORRAL-GUEST-READY on ttyS0."""
    target = Path(os.environ.get("CORRAL_GUEST_DIR", "/var/tmp/corral-guest"))
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{target}.lock", "w") as lock:  # parallel workers: one builds, the others wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([str(REPO / "scripts" / "build-guest.sh"), str(target)], check=True,
                       stdout=subprocess.DEVNULL)
    return target


@pytest.fixture
def cluster(etcd, guest_dir, tmp_path):
    base = Path(tmp_path)
    made = Cluster(etcd=etcd, base=base, prefix=f"/t-{uuid.uuid4().hex[:8]}/", guest_dir=guest_dir)
    yield made
    made.close()


@pytest.fixture
def root_state_dir():
    """A handler state directory for attacks on files root handles (root only: ownership is
    what they are about)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the attacks are on files root writes and sockets root dials")
    path = Path(tempfile.mkdtemp(prefix="corral-st-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
