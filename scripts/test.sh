#!/bin/bash
# Runs Corral's test suite: unit tests, proto checks (buf lint, stubs up to date) and the
# end-to-end tests, which start real etcd, controllers, handlers and TCG guests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
