"""Benchmark: NB port create -> port ACTIVE -> first successful ping, and flows per port.

Two simulated nodes (netns + own OVS) with in-process local controllers on the embedded DB
(or --db etcd://... / redis://... with df-controller processes). A target VM waits on hv1;
for each of N new ports on hv2 we time: NB create -> NB status ACTIVE (flows confirmed by a
barrier; stamped as the change reaches a subscriber of the NB stream) and NB create -> the
new VM's first ping reply from the target (pinging every 5 ms).
Prints p50/p99 and how the flow count grows per port. Needs root. Asserts nothing.

With ``--peer ovn`` (the default when OVN is installed) the same sequence then runs on OVN
(bench/ovn_peer.py: a fresh test bed, 2 chassis, ports created through one persistent
ovsdbapp NB connection as Neutron's OVN driver does, 'up' seen as the NB update arrives), and
both sides are printed with the ratio OVN/ours.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from common import first_reply, pct
from ovn_peer import INSTALL, PingFigures, ovn_missing, ovn_version, print_table, run_port_ping

from dragonflow.db.connect import open_nb
from dragonflow.db.nbapi import NbApi
from dragonflow.db.stream import Change, Subscription
from dragonflow.model import Binding, FixedIp, Port
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import Testbed, new_prefix


@dataclass
class Ours:
    to_active_ms: list[float]
    to_ping_ms: list[float]
    base: dict[str, int]
    flows: dict[str, int]


class ActiveSeen:
    """When each port was first seen ACTIVE: stamped as the NB change arrives (a
    subscription to the change stream), as the OVN side stamps 'up' as its NB update
    arrives -- not polled."""

    def __init__(self, nb: NbApi) -> None:
        self.at: dict[str, float] = {}
        self._cv = threading.Condition()
        self._sub = Subscription(nb, self._change, lambda objs, rev: None,
                                 from_revision=nb.revision() + 1)

    def _change(self, ch: Change) -> None:
        if ch.table == "port" and isinstance(ch.obj, Port) and ch.obj.status == "ACTIVE":
            with self._cv:
                self.at.setdefault(ch.id, time.monotonic())
                self._cv.notify_all()

    def wait(self, port_id: str, timeout: float = 60.0) -> float:
        with self._cv:
            if not self._cv.wait_for(lambda: port_id in self.at, timeout):
                raise TimeoutError(f"{port_id} not ACTIVE within {timeout}s")
            return self.at[port_id]

    def close(self) -> None:
        self._sub.close()


def run_ours(ports: int, db: str) -> Ours:
    bed = Testbed(new_prefix())
    nb = open_nb(db, root=f"/bench{uuid.uuid4().hex[:6]}/")
    dep = Deployment(bed, nb, db, in_process=db.startswith("memory:"))
    seen: ActiveSeen | None = None
    try:
        hv1 = dep.add_node("hv1", "10.255.0.11")
        hv2 = dep.add_node("hv2", "10.255.0.12")
        dep.network("net", "vxlan", 4242, "10.9.0.0/16")
        target = dep.vm(hv1, "target", "net", "fa:16:3e:ff:00:01", "10.9.0.2", 16)
        dep.wait_active(["target-port"])
        base = {n.name: dep.flow_count(n) for n in (hv1, hv2)}
        to_active, to_ping = [], []
        seen = ActiveSeen(nb)
        for i in range(ports):
            name = f"p{i}"
            mac = f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}"
            # plug the VM first (as Nova does before the port is bound), then create the port
            vm = bed.add_vm(hv2, name, mac, f"10.9.1.{i + 10}/16", f"{name}-port")
            vm.exec(f"ip neigh replace {target.ip} lladdr {target.mac} dev eth0")
            t0 = time.monotonic()
            nb.create(Port(id=f"{name}-port", topic=dep.topic, network_id="net", mac=mac,
                           fixed_ips=(FixedIp.from_dict({"subnet_id": "net-subnet",
                                                         "ip_address": vm.ip}),),
                           binding=Binding(kind="chassis", chassis_id="hv2")))
            to_ping.append(first_reply(vm, target.ip, t0) * 1000)
            to_active.append((seen.wait(f"{name}-port") - t0) * 1000)
        flows = {n.name: dep.flow_count(n) for n in (hv1, hv2)}
        return Ours(to_active, to_ping, base, flows)
    finally:
        if seen is not None:
            seen.close()
        dep.stop()
        bed.teardown()


def report(ports: int, db: str, ours: Ours, ovn: PingFigures | None) -> None:
    """One table: our figures, OVN's ('-' when not run) and the ratio OVN/ours."""
    rows: list[tuple[str, float | str, float | str]] = []
    for what, mine, theirs in (("create -> ACTIVE / up", ours.to_active_ms,
                                ovn.to_up_ms if ovn else None),
                               ("create -> first ping", ours.to_ping_ms,
                                ovn.to_ping_ms if ovn else None)):
        for stat, fn in (("p50", lambda v: pct(v, 50)), ("p99", lambda v: pct(v, 99)),
                         ("mean", statistics.mean)):
            rows.append((f"{what} {stat} (ms)", fn(mine), fn(theirs) if theirs else "-"))
    rows.append(("OVN: the NB transaction in those, mean (ms)", "-",
                 statistics.mean(ovn.commit_ms) if ovn else "-"))
    for hv in ("hv1", "hv2"):
        rows += [(f"flows on {hv} before the ports", ours.base[hv],
                  ovn.base[hv] if ovn else "-"),
                 (f"flows on {hv} after", ours.flows[hv], ovn.flows[hv] if ovn else "-"),
                 (f"flows per port on {hv}", (ours.flows[hv] - ours.base[hv]) / ports,
                  (ovn.flows[hv] - ovn.base[hv]) / ports if ovn else "-")]
    peer = f"OVN {ovn_version()}" if ovn else "OVN not run"
    print_table(f"{ports} ports created on hv2, target VM on hv1; ours on {db} vs {peer} "
                "(same machine, one run)", rows)
    print("(both: ACTIVE / 'up' timed as the NB update arrives; first ping: pinging every "
          "5 ms from the NB create on)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ports", type=int, default=20)
    ap.add_argument("--db", default="memory://bench")
    ap.add_argument("--peer", choices=("ovn", "none"), default=None,
                    help="run OVN on the same sequence too (default: ovn if installed)")
    args = ap.parse_args()
    missing = ovn_missing()
    peer = args.peer or ("none" if missing else "ovn")
    if missing and args.peer != "none":
        print(f"OVN not installed: {INSTALL}  (missing: {', '.join(missing)})")
        if args.peer == "ovn":
            sys.exit(2)
    ours = run_ours(args.ports, args.db)
    ovn = run_port_ping(args.ports, new_prefix()) if peer == "ovn" else None
    report(args.ports, args.db, ours, ovn)


if __name__ == "__main__":
    main()
