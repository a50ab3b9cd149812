#!/usr/bin/env bash
# The main job: a demo deployment on the embedded DB (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/df demo "$@"
