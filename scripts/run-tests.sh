#!/usr/bin/env bash
# The whole test suite: lint, types, unit, driver conformance (real etcd + redis),
# pipeline (real ovs-vswitchd) and fullstack (netns multi-node test bed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff";  .venv/bin/ruff check dragonflow tests bench
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest -q -ra "$@"
