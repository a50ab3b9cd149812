#!/usr/bin/env bash
# The whole test suite: lint, types, unit, driver conformance (real etcd + redis),
# pipeline (real ovs-vswitchd), fullstack (netns multi-node test bed) and the Neutron
# integration (upstream ML2/L3 test classes with mechanism driver df; pinned neutron extra).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test,neutron-test bash scripts/setup.sh
echo "== ruff";  .venv/bin/ruff check dragonflow tests bench
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest -q -ra "$@"
