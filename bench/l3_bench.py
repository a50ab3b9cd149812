"""Benchmark: a router with N subnets (default 200), ports spread over 3 simulated nodes.

Prints: (1) router creation -> every running chassis has reconciled its flows; (2) a newly
started chassis (a VM of the first subnet plugged in) -> its complete flow set installed
(port ACTIVE after the barrier); (3) flows per subnet on each chassis. Controllers run in
this process on the embedded NB (same code as df-controller). Needs root. Asserts nothing.

With ``--peer ovn`` (the default when OVN is installed) the same topology is then built on
OVN (bench/ovn_peer.py) on a fresh test bed in the same run, and both sides are printed with
the ratio OVN/ours. OVN needs every port really bound, so it gets one VM per port (ours: 3
VMs, the other ports are bound to their chassis in the NB only).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from dataclasses import dataclass

from ovn_peer import INSTALL, L3Figures, ovn_missing, ovn_version, print_table, run_l3

from dragonflow.db.connect import open_nb
from dragonflow.model import Binding, FixedIp, Network, Port, Router, Subnet
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import Testbed, new_prefix


def pfx(i: int) -> str:
    """The /24 of subnet i, without the last octet."""
    return f"10.{i // 250}.{i % 250}"


@dataclass
class Ours:
    topo_s: float
    router_ms: float
    before: dict[str, int]
    after: dict[str, int]
    new_ms: float
    new_flows: int


def run_ours(n: int) -> Ours:
    bed = Testbed(new_prefix())
    nb = open_nb(f"memory://l3bench-{uuid.uuid4().hex[:6]}", root="/l3b/")
    dep = Deployment(bed, nb, "memory://", in_process=True)
    try:
        nodes = [dep.add_node(f"hv{i + 1}", f"10.255.0.{11 + i}") for i in range(3)]
        t0 = time.monotonic()
        for i in range(n):
            net = f"n{i}"
            nb.create(Network(id=net, topic="demo", network_type="vxlan",
                              segmentation_id=1000 + i))
            nb.create(Subnet.from_dict({"id": f"{net}-subnet", "topic": "demo",
                                        "network_id": net, "cidr": f"{pfx(i)}.0/24"}))
            nb.create(Port(id=f"p{i}", topic="demo", network_id=net,
                           mac=f"fa:16:3e:01:{i // 256:02x}:{i % 256:02x}",
                           fixed_ips=(FixedIp.from_dict({"subnet_id": f"{net}-subnet",
                                                         "ip_address": f"{pfx(i)}.10"}),),
                           binding=Binding(kind="chassis", chassis_id=f"hv{i % 3 + 1}")))
        vms = [bed.add_vm(nodes[i % 3], f"v{i}", f"fa:16:3e:01:{i // 256:02x}:{i % 256:02x}",
                          f"{pfx(i)}.10/24", f"p{i}", gateway=f"{pfx(i)}.1") for i in range(3)]
        dep.wait_active([f"p{i}" for i in range(3)], timeout=120)
        dep.settle(60)
        topo_s = time.monotonic() - t0
        before = {nd.name: dep.flow_count(nd) for nd in nodes}
        ports = [{"id": f"r-if{i}", "mac": f"fa:16:3e:aa:{i // 256:02x}:{i % 256:02x}",
                  "network_id": f"n{i}", "cidrs": [f"{pfx(i)}.1/24"]}
                 for i in range(n)]
        t1 = time.monotonic()
        nb.create(Router.from_dict({"id": "r", "topic": "demo", "ports": ports}))
        dep.settle(120)
        router_s = time.monotonic() - t1
        after = {nd.name: dep.flow_count(nd) for nd in nodes}
        assert vms[0].ping(vms[1].ip, timeout=3), "routing does not work"
        hv4 = bed.add_node("hv4", "10.255.0.14")
        nb.create(Port(id="p-new", topic="demo", network_id="n0", mac="fa:16:3e:02:00:01",
                       fixed_ips=(FixedIp.from_dict({"subnet_id": "n0-subnet",
                                                     "ip_address": "10.0.0.77"}),),
                       binding=Binding(kind="chassis", chassis_id="hv4")))
        t2 = time.monotonic()
        dep.start_controller(hv4)
        bed.add_vm(hv4, "vnew", "fa:16:3e:02:00:01", "10.0.0.77/24", "p-new")
        dep.created["p-new"] = t2
        new_s = dep.wait_active(["p-new"], timeout=120)["p-new"]
        dep.settle(60)
        return Ours(topo_s, router_s * 1000, before, after, new_s * 1000, dep.flow_count(hv4))
    finally:
        dep.stop()
        bed.teardown()


def report(n: int, ours: Ours, ovn: L3Figures | None) -> None:
    """One table: our figures, OVN's ('-' when not run) and the ratio OVN/ours."""
    rows: list[tuple[str, float | str, float | str]] = [
        ("NB topology created -> all ports installed (s) [1]", ours.topo_s,
         ovn.topo_s if ovn else "-"),
        ("OVN: plugging its VMs before that, not counted (s)", "-",
         ovn.plumb_s if ovn else "-"),
        ("router create -> all 3 chassis caught up (ms)", ours.router_ms,
         ovn.router_ms if ovn else "-")]
    for hv in ours.before:
        rows += [
            (f"{hv} flows before the router", ours.before[hv], ovn.before[hv] if ovn else "-"),
            (f"{hv} flows after the router", ours.after[hv], ovn.after[hv] if ovn else "-"),
            (f"{hv} router flows per subnet", (ours.after[hv] - ours.before[hv]) / n,
             (ovn.after[hv] - ovn.before[hv]) / n if ovn else "-")]
    rows += [
        ("new chassis hv4: controller start -> VM port up (ms)", ours.new_ms,
         ovn.new_up_ms if ovn else "-"),
        ("new chassis hv4: start -> first ping via router (ms)", "-",
         ovn.new_ping_ms if ovn else "-"),
        ("new chassis hv4: flows", ours.new_flows, ovn.new_flows if ovn else "-"),
        ("new chassis hv4: flows per subnet", ours.new_flows / n,
         ovn.new_flows / n if ovn else "-")]
    peer = f"OVN {ovn_version()}" if ovn else "OVN not run"
    print_table(f"router with {n} subnets, one port per subnet spread over 3 chassis "
                f"(ours vs {peer}; same machine, one run)", rows)
    print(f"[1] ours: {n} NB ports bound to their chassis in the NB, 3 VMs plugged (in the "
          f"time); OVN binds a port only through a plugged VIF, so all {n} VMs are plugged "
          "first and the time runs from the NB transaction to every port up + --wait=hv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subnets", type=int, default=200)
    ap.add_argument("--peer", choices=("ovn", "none"), default=None,
                    help="run OVN on the same topology too (default: ovn if installed)")
    args = ap.parse_args()
    n = args.subnets
    missing = ovn_missing()
    peer = args.peer or ("none" if missing else "ovn")
    if missing and args.peer != "none":
        print(f"OVN not installed: {INSTALL}  (missing: {', '.join(missing)})")
        if args.peer == "ovn":
            sys.exit(2)
    t = time.monotonic()
    ours = run_ours(n)
    print(f"(ours done in {time.monotonic() - t:.0f} s)", flush=True)
    ovn = None
    if peer == "ovn":
        t = time.monotonic()
        ovn = run_l3(n, new_prefix())
        print(f"(OVN done in {time.monotonic() - t:.0f} s)", flush=True)
    report(n, ours, ovn)


if __name__ == "__main__":
    main()
