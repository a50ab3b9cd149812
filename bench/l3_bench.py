"""Benchmark: a router with N subnets (default 200), ports spread over 3 simulated nodes.

Prints: (1) router creation -> every running chassis has reconciled its flows; (2) a newly
started chassis (a VM of the first subnet plugged in) -> its complete flow set installed
(port ACTIVE after the barrier); (3) flows per subnet on each chassis. Controllers run in
this process on the embedded NB (same code as df-controller). Needs root. Asserts nothing.
The OVN 23.03 side-by-side run of TESTBED.md section 7 is not implemented yet.
"""

from __future__ import annotations

import argparse
import time
import uuid

from dragonflow.db.connect import open_nb
from dragonflow.model import Binding, FixedIp, Network, Port, Router, Subnet
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import Testbed, new_prefix


def pfx(i: int) -> str:
    """The /24 of subnet i, without the last octet."""
    return f"10.{i // 250}.{i % 250}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subnets", type=int, default=200)
    args = ap.parse_args()
    n = args.subnets
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
        new_flows = dep.flow_count(hv4)
        print(f"router with {n} subnets, one port per subnet spread over 3 chassis")
        print(f"  NB topology ({n} networks+subnets+ports) created and installed: {topo_s:.2f} s")
        print(f"  router create -> all 3 chassis reconciled: {router_s * 1000:.0f} ms")
        for name in before:
            print(f"  {name}: {before[name]} flows before the router, {after[name]} after "
                  f"({(after[name] - before[name]) / n:.1f} router flows per subnet)")
        print(f"  new chassis hv4 (VM on subnet 0): controller start -> port ACTIVE "
              f"{new_s * 1000:.0f} ms, {new_flows} flows ({new_flows / n:.1f} per subnet)")
    finally:
        dep.stop()
        bed.teardown()


if __name__ == "__main__":
    main()
