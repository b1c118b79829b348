#!/usr/bin/env bash
# Run the whole suite (tests/unit and tests/integration): start the real Ceph RGW (tools/ceph_dev.sh), run pytest
# with --ceph against it and moto, and stop only the cluster we started.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
started=0
if ! bash tools/ceph_dev.sh status >/dev/null 2>&1; then
    bash tools/ceph_dev.sh up
    started=1
fi
cleanup() { if [ "$started" = 1 ]; then bash tools/ceph_dev.sh down || true; fi; }
trap cleanup EXIT
"$PYTHON" -m pytest -q --ceph tests "$@"
