"""Benchmark: Neutron create_port -> port ACTIVE -> first ping, through the real Neutron API.

The all-in-one (dragonflow/sim/neutron_aio.py: Neutron under gunicorn, ML2 ``df`` +
``df-l3``, sqlite, noauth) on a private redis-server (``--private etcd``: etcd; ``--db URL``:
yours), two simulated nodes with df-controller processes. A target VM waits on hv1. For
each of N ports: a VM namespace is ready on hv2 with the MAC and IP the port will get (its
OVS port carries no iface-id yet); then, timed from the create_port call:

  create_port (openstacksdk, binding:host_id=hv2, MAC + IP given) returns  -> "API"
  the VIF is plugged: iface-id=<port id> set on its OVS interface (what os-vif does)
  the NB port status turns ACTIVE (its chassis confirmed the flows by a barrier) -> "NB"
  Neutron's port status turns ACTIVE (df provisioning block completed)          -> "Neutron"
  the new VM's first ping reply from the target (pinging every 5 ms)           -> "ping"

Statuses are polled by two threads (NB get every 2 ms; Neutron GET /v2.0/ports/ID every
5 ms). Prints p50/p99/mean. Needs root and the neutron extra. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

from dragonflow.model import Port
from dragonflow.sim import neutron_aio
from dragonflow.sim.neutron_aio import NeutronStack, PrivateDb
from dragonflow.sim.testbed import Testbed, Vm, new_prefix

NODES = [("hv1", "10.255.0.11"), ("hv2", "10.255.0.12")]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


@dataclass
class Figures:
    api: list[float] = field(default_factory=list)
    nb_active: list[float] = field(default_factory=list)
    neutron_active: list[float] = field(default_factory=list)
    ping: list[float] = field(default_factory=list)
    flows: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> before, after


def poll_nb(stack: NeutronStack, port_id: str, t0: float, out: dict[str, float],
            timeout: float = 30.0) -> None:
    """When the NB first shows the port ACTIVE (seconds after t0)."""
    while time.monotonic() - t0 < timeout:
        p = stack.dep.nb.get(Port, port_id)
        if p is not None and p.status == "ACTIVE":
            out["nb"] = time.monotonic() - t0
            return
        time.sleep(0.002)


def poll_neutron(stack: NeutronStack, port_id: str, t0: float, out: dict[str, float],
                 timeout: float = 30.0) -> None:
    """When Neutron first reports the port ACTIVE (a GET every 5 ms)."""
    while time.monotonic() - t0 < timeout:
        if stack.status(port_id) == "ACTIVE":
            out["neutron"] = time.monotonic() - t0
            return
        time.sleep(0.005)


def first_ping(vm: Vm, target: Vm, t0: float) -> float:
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", vm.netns, "ping", "-n", "-i", "0.005", "-c", "4000",
         "-W", "0.2", target.ip], stdout=subprocess.PIPE, text=True)
    assert pinger.stdout is not None
    try:
        for line in pinger.stdout:
            if "bytes from" in line:
                return time.monotonic() - t0
        raise RuntimeError(f"{vm.name}: no ping reply from {target.ip}")
    finally:
        pinger.kill()
        pinger.wait()


def run(ports: int, url: str) -> Figures:
    bed = Testbed(new_prefix())
    stack = None
    try:
        stack = NeutronStack.start(bed, url, NODES, nb_root=f"/nbench{uuid.uuid4().hex[:6]}/")
        net_api = stack.conn.network
        net = net_api.create_network(name="bench")
        sub = net_api.create_subnet(network_id=net.id, ip_version=4, cidr="10.9.0.0/16")
        tport = net_api.create_port(network_id=net.id, name="target", binding_host_id="hv1")
        target = stack.plug(tport.id, "target")
        stack.wait_active([tport.id])
        hv1, hv2 = bed.nodes["hv1"], bed.nodes["hv2"]
        before = {n.name: stack.dep.flow_count(n) for n in (hv1, hv2)}
        fig = Figures()
        for i in range(ports):
            mac, ip = f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}", f"10.9.1.{i + 10}"
            vm = bed.add_vm(hv2, f"p{i}", mac, f"{ip}/16", f"not-yet-{i}")
            vm.exec(f"ip neigh replace {target.ip} lladdr {target.mac} dev eth0")
            seen: dict[str, float] = {}
            t0 = time.monotonic()
            port = net_api.create_port(
                network_id=net.id, name=f"p{i}", binding_host_id="hv2", mac_address=mac,
                fixed_ips=[{"subnet_id": sub.id, "ip_address": ip}])
            fig.api.append(time.monotonic() - t0)
            hv2.vsctl("set", "Interface", vm.port, f"external_ids:iface-id={port.id}")
            pollers = [threading.Thread(target=f, args=(stack, port.id, t0, seen))
                       for f in (poll_nb, poll_neutron)]
            for t in pollers:
                t.start()
            fig.ping.append(first_ping(vm, target, t0))
            for t in pollers:
                t.join()
            if len(seen) < 2:
                raise RuntimeError(f"port {port.id} not ACTIVE in time: {seen}")
            fig.nb_active.append(seen["nb"])
            fig.neutron_active.append(seen["neutron"])
        fig.flows = {n.name: (before[n.name], stack.dep.flow_count(n)) for n in (hv1, hv2)}
        return fig
    finally:
        if stack is not None:
            stack.stop()
        bed.teardown()


def report(ports: int, url: str, fig: Figures) -> None:
    print(f"\n{ports} ports created through the Neutron API on hv2 (target VM on hv1), "
          f"NB {url}; ms from the create_port call")
    print(f"{'':36}{'p50':>9}{'p99':>9}{'mean':>9}")
    for what, vals in (("create_port returned (API)", fig.api),
                       ("NB status ACTIVE (chassis barrier)", fig.nb_active),
                       ("Neutron status ACTIVE", fig.neutron_active),
                       ("first ping reply", fig.ping)):
        ms = [v * 1000 for v in vals]
        print(f"{what:36}{pct(ms, 50):9.1f}{pct(ms, 99):9.1f}{statistics.mean(ms):9.1f}")
    gap = [(n - b) * 1000 for n, b in zip(fig.neutron_active, fig.nb_active, strict=True)]
    print(f"{'NB ACTIVE -> Neutron ACTIVE':36}{pct(gap, 50):9.1f}{pct(gap, 99):9.1f}"
          f"{statistics.mean(gap):9.1f}")
    for node, (before, after) in fig.flows.items():
        print(f"flows on {node}: {before} -> {after} ({(after - before) / ports:.1f} per port)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ports", type=int, default=20)
    ap.add_argument("--db", default=None,
                    help="etcd://host:port or redis://host:port (default: a private server)")
    ap.add_argument("--private", choices=("redis", "etcd"), default="redis",
                    help="which private server to start when --db is not given")
    args = ap.parse_args()
    missing = neutron_aio.missing()
    if missing:
        sys.exit(f"needs: {', '.join(missing)}")
    db = None if args.db else PrivateDb(args.private).start()
    url = args.db or db.url  # type: ignore[union-attr]
    try:
        fig = run(args.ports, url)
    finally:
        if db is not None:
            db.stop()
    report(args.ports, url, fig)


if __name__ == "__main__":
    main()
