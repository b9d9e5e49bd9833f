#!/bin/bash
# Runs Corral's test suite: unit tests, proto checks (buf lint, stubs up to date) and the
# end-to-end tests, which start real etcd, controllers, handlers and TCG guests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
# In parallel (pytest-xdist): every end-to-end test has its own etcd prefix, ports, state
# directories and network namespaces, and mostly waits on guests and leases, so 4 workers fit
# 2 cores. One test alone: scripts/test.sh -n 0 tests/test_faults.py::test_dead_node_runs_its_vms_elsewhere_never_twice
# Post-copy tests need userfaultfd for the VM users' QEMU (idempotent; install.sh persists it).
if [[ $(id -u) == 0 && -w /proc/sys/vm/unprivileged_userfaultfd ]]; then
    echo 1 > /proc/sys/vm/unprivileged_userfaultfd
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${CORRAL_TEST_WORKERS:-4}" "$@"
