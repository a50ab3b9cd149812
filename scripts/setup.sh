#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root):
# Debian packages for the real parts (OVS, etcd, Redis, netns tools) and a virtualenv in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(openvswitch-switch etcd-server etcd-client redis-server iproute2 iputils-ping
      tcpdump ethtool socat isc-dhcp-client traceroute curl python3-venv python3-dev gcc)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts these services on install; the project starts its own, stop the packaged ones.
for svc in etcd redis-server openvswitch-switch; do
    if command -v systemctl >/dev/null && systemctl is-active -q "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true; systemctl disable -q "$svc" 2>/dev/null || true
    fi
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# EXTRAS: which optional parts to install (the test command adds the pinned Neutron).
EXTRAS=${EXTRAS:-test}
stamp=".venv/.df-installed-${EXTRAS//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e ".[${EXTRAS}]"
    if [[ ",${EXTRAS}," == *",test"* ]]; then
        # the example app of another package (tests/ext_app): entry point dragonflow.apps
        .venv/bin/pip install -q -e tests/ext_app
    fi
    touch "$stamp"
fi
