"""The metadata interface: an OVS internal port on the integration bridge (through OVSDB)
and its kernel side in the chassis' network namespace -- this process' own, or the named
one of ``[metadata] netns`` (ip netns), where the integration bridge's devices live when the
control plane runs outside it (the simulated nodes of the test bed).

Kernel side, each step idempotent (``ensure_kernel_side`` is re-run periodically: an
ovs-vswitchd restart re-creates the device without its address):

* the device up, 169.254.169.254/32 on it, IPv6 off on it (nothing of the host leaks out);
* the encoded port addresses (datapath.KEY_NET) routed to the device in a table of their own
  (``ROUTE_TABLE``), looked up only by packets from 169.254.169.254 (a policy rule): the
  host's main routing table is not touched, whatever the host uses 100.64.0.0/10 for.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from dragonflow.metadata.datapath import (
    INTERFACE_MAC,
    KEY_NET,
    METADATA_IP,
    ROUTE_TABLE,
    RULE_PRIORITY,
)
from dragonflow.ovs.ovsdb import Ovsdb

LOG = logging.getLogger(__name__)
T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")


class InterfaceError(Exception):
    """The metadata interface could not be set up (the message says which step)."""


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` run in network namespace ``netns`` (None: here). On a thread of its own that
    enters the namespace and ends with ``fn``: no other thread ever changes namespace, and
    a socket ``fn`` creates stays in the namespace it was created in."""
    if not netns:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as e:  # handed to the caller
            error.append(e)

    t = threading.Thread(target=run, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def _ip(netns: str | None, *args: str, check: bool = True) -> str:
    cmd = ["ip", *(("-n", netns) if netns else ()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    if check and proc.returncode != 0:
        raise InterfaceError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc.stdout


def ensure_ovs_port(db: Ovsdb, bridge: str, name: str, mac: str = INTERFACE_MAC,
                    wait: float = 60.0) -> int:
    """The internal port on ``bridge``, once the bridge exists (the controller makes it;
    waits up to ``wait`` seconds for it). Returns its ofport."""
    deadline = time.monotonic() + wait
    while not db.bridge_exists(bridge):
        if time.monotonic() > deadline:
            raise InterfaceError(f"bridge {bridge} does not exist after {wait:.0f}s "
                                 f"(is df-controller running?)")
        time.sleep(0.2)
    return db.ensure_internal_port(bridge, name, mac, {"df-metadata": "true",
                                                       "attached-mac": mac})


def _disable_ipv6(name: str) -> bool:
    path = Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6")
    if not path.exists() or path.read_text().strip() == "1":
        return False
    path.write_text("1\n")
    return True


def ensure_kernel_side(name: str, netns: str | None = None, wait: float = 10.0) -> list[str]:
    """Configure the device (see the module docstring); returns the steps that had to be
    done (empty when everything was in place)."""
    deadline = time.monotonic() + wait
    while _ip(netns, "-o", "link", "show", "dev", name, check=False) == "":
        if time.monotonic() > deadline:
            raise InterfaceError(f"device {name} did not appear in {wait:.0f}s")
        time.sleep(0.05)
    done: list[str] = []
    link = _ip(netns, "-o", "link", "show", "dev", name)
    if "<UP" not in link and ",UP" not in link:
        _ip(netns, "link", "set", "dev", name, "up")
        done.append("link up")
    try:
        if in_netns(netns, lambda: _disable_ipv6(name)):
            done.append("ipv6 off")
    except OSError as e:  # not fatal: the flows drop whatever the device sends but ARP
        LOG.warning("could not disable IPv6 on %s: %s", name, e)
    if f" {METADATA_IP}/32 " not in _ip(netns, "-4", "-o", "addr", "show", "dev", name):
        _ip(netns, "addr", "replace", f"{METADATA_IP}/32", "dev", name)
        done.append(f"address {METADATA_IP}")
    table = str(ROUTE_TABLE)
    if f"{KEY_NET} dev {name}" not in _ip(netns, "-4", "route", "show", "table", table,
                                          check=False):
        _ip(netns, "route", "replace", str(KEY_NET), "dev", name, "table", table)
        done.append(f"route {KEY_NET} table {table}")
    rules = _ip(netns, "-4", "rule", "show")
    if not any(line.split(":", 1)[0].strip() == str(RULE_PRIORITY)
               and f"from {METADATA_IP} lookup {table}" in line for line in rules.splitlines()):
        _ip(netns, "rule", "add", "from", METADATA_IP, "lookup", table, "priority",
            str(RULE_PRIORITY))
        done.append(f"rule from {METADATA_IP} lookup {table}")
    return done
