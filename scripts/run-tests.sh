#!/usr/bin/env bash
# The whole test suite: lint, types, unit, driver conformance (real etcd + redis),
# pipeline (real ovs-vswitchd), fullstack (netns multi-node test bed) and the Neutron
# integration (upstream ML2/L3 test classes with mechanism driver df; pinned neutron extra).
# No arguments: the whole suite; arguments: passed to one pytest run (e.g. a test file).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test,neutron-test bash scripts/setup.sh
echo "== ruff";  .venv/bin/ruff check dragonflow tests bench
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
if [ $# -gt 0 ]; then  # what the arguments select, in one run
    exec .venv/bin/python -m pytest -q -ra "$@"
fi
# The whole suite in two runs: the Neutron tests (upstream ML2/L3 test classes, CPU-bound,
# each on its own sqlite database) on every core with pytest-xdist -- they are half the
# suite's time -- then everything else (servers, OVS, namespaces) in one process, as it
# shares session-wide servers and deployments. Both always run; the first failure's status
# is the script's.
rc=0
echo "-- tests/neutron (pytest-xdist, -n $(nproc))"
.venv/bin/python -m pytest -q -ra -n "$(nproc)" tests/neutron || rc=$?
echo "-- everything else"
.venv/bin/python -m pytest -q -ra --ignore=tests/neutron || { s=$?; [ "$rc" -ne 0 ] || rc=$s; }
exit "$rc"
