"""What several benches share: process CPU/RSS from /proc, plugging OVS internal ports with an
iface-id, timing a VM's first ping reply, percentiles."""

from __future__ import annotations

import os
import subprocess
import time

from dragonflow.sim.testbed import BR_INT, Node, TestbedError, Vm

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (clock-tick resolution)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def plug(node: Node, port_ids: list[str], start: int = 0, prefix: str = "bp") -> None:
    """Each port as an OVS internal port <prefix><n> with its iface-id (one ovs-vsctl per
    100)."""
    for i in range(0, len(port_ids), 100):
        cmd: list[str] = []
        for j, pid in enumerate(port_ids[i:i + 100]):
            name = f"{prefix}{start + i + j}"
            cmd += ["--", "add-port", BR_INT, name, "--", "set", "Interface", name,
                    "type=internal", f"external_ids:iface-id={pid}"]
        node.vsctl(*cmd)


def first_reply(vm: Vm, ip: str, t0: float, timeout: float = 20.0) -> float:
    """Ping ``ip`` from ``vm`` every 5 ms; seconds from ``t0`` (monotonic) to the first echo
    reply."""
    count = str(int(timeout / 0.005))
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", vm.netns, "ping", "-n", "-i", "0.005", "-c", count,
         "-W", "0.2", "-w", str(int(timeout)), ip], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)  # ENOBUFS while the next hop is unresolved
    try:
        assert pinger.stdout is not None
        for line in pinger.stdout:
            if "bytes from" in line:
                return time.monotonic() - t0
    finally:
        pinger.kill()
        pinger.wait()
    raise TestbedError(f"no ping reply from {ip} to {vm.name} within {timeout}s")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]
