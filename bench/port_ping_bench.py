"""Benchmark: NB port create -> port ACTIVE -> first successful ping, and flows per port.

Two simulated nodes (netns + own OVS) with in-process local controllers on the embedded DB
(or --db etcd://... / redis://... with df-controller processes). A target VM waits on hv1;
for each of N new ports on hv2 we time: NB create -> NB status ACTIVE (flows confirmed by a
barrier) and NB create -> the new VM's first ping reply from the target (pinging every 5 ms).
Prints p50/p99 and how the flow count grows per port. Needs root. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import uuid

from dragonflow.db.connect import open_nb
from dragonflow.model import Binding, FixedIp, Port
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import Testbed, new_prefix


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ports", type=int, default=20)
    ap.add_argument("--db", default="memory://bench")
    args = ap.parse_args()
    bed = Testbed(new_prefix())
    nb = open_nb(args.db, root=f"/bench{uuid.uuid4().hex[:6]}/")
    dep = Deployment(bed, nb, args.db, in_process=args.db.startswith("memory:"))
    try:
        hv1 = dep.add_node("hv1", "10.255.0.11")
        hv2 = dep.add_node("hv2", "10.255.0.12")
        dep.network("net", "vxlan", 4242, "10.9.0.0/16")
        target = dep.vm(hv1, "target", "net", "fa:16:3e:ff:00:01", "10.9.0.2", 16)
        dep.wait_active(["target-port"])
        base = {n.name: dep.flow_count(n) for n in (hv1, hv2)}
        to_active, to_ping = [], []
        for i in range(args.ports):
            name = f"p{i}"
            mac = f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}"
            # plug the VM first (as Nova does before the port is bound), then create the port
            vm = bed.add_vm(hv2, name, mac, f"10.9.1.{i + 10}/16", f"{name}-port")
            vm.exec(f"ip neigh replace {target.ip} lladdr {target.mac} dev eth0")
            t0 = time.monotonic()
            dep.created[f"{name}-port"] = t0
            nb.create(Port(id=f"{name}-port", topic=dep.topic, network_id="net", mac=mac,
                           fixed_ips=(FixedIp.from_dict({"subnet_id": "net-subnet",
                                                         "ip_address": vm.ip}),),
                           binding=Binding(kind="chassis", chassis_id="hv2")))
            pinger = subprocess.Popen(
                ["ip", "netns", "exec", vm.netns, "ping", "-n", "-i", "0.005", "-c", "2000",
                 "-W", "0.2", target.ip], stdout=subprocess.PIPE, text=True)
            assert pinger.stdout is not None
            for line in pinger.stdout:
                if "bytes from" in line:
                    to_ping.append(time.monotonic() - t0)
                    break
            pinger.kill()
            pinger.wait()
            to_active.append(dep.wait_active([f"{name}-port"])[f"{name}-port"])
        flows = {n.name: dep.flow_count(n) for n in (hv1, hv2)}
        ms = [x * 1000 for x in to_ping]
        ma = [x * 1000 for x in to_active]
        print(f"NB driver: {args.db}; {args.ports} ports created on hv2, target VM on hv1")
        print(f"create -> ACTIVE      p50 {pct(ma, 50):6.1f} ms  p99 {pct(ma, 99):6.1f} ms  "
              f"mean {statistics.mean(ma):6.1f} ms")
        print(f"create -> first ping  p50 {pct(ms, 50):6.1f} ms  p99 {pct(ms, 99):6.1f} ms  "
              f"mean {statistics.mean(ms):6.1f} ms")
        for n in ("hv1", "hv2"):
            per = (flows[n] - base[n]) / args.ports
            print(f"flows on {n}: {base[n]} -> {flows[n]}  ({per:.1f} per port)")
        print("(OVN 23.03 on this machine, TESTBED.md: port create -> first ping 33-51 ms)")
    finally:
        dep.stop()
        bed.teardown()


if __name__ == "__main__":
    main()
