#!/bin/bash
# Regenerates the Python stubs in corral/v1/ from protos/corral/v1/*.proto.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. protos/corral/v1/*.proto
