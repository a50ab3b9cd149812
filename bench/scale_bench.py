"""Benchmark: what one local controller costs in a large deployment. Prints, asserts nothing.

The NB holds the whole deployment -- ``--chassis`` chassis, ``--ports`` ports over
``--networks`` networks (VXLAN) and ``--routers`` routers (each on networks/routers of
them), ports spread evenly over the chassis. ``--real`` of those chassis are real: a
simulated node each (netns, its own ovsdb-server + ovs-vswitchd) with a ``df-controller``
process on a private redis NB, its share of the ports plugged as OVS internal ports. The
other chassis are NB records whose heartbeats this bench writes (every chassis once per
``--heartbeat`` seconds, as live controllers would): what a controller costs depends on the
NB it follows and the events it sees, not on how many peers run a process.

Per real chassis: installed flows, controller RSS, full-compile time (its status file),
objects followed (each real controller restarted once, so its first full compile covers
everything); then controller CPU (utime+stime of the process, averaged over many
events) for (a) a remote chassis' heartbeat, (b) a remote port's status write, (c) a new
port on a local network (create -> ACTIVE), (d) a new port on a remote network that a local
router reaches; idle CPU with every heartbeat flowing; NB create -> ACTIVE p50/p99 of new
local ports. Needs root.

    bench/scale_bench.py     # 50 chassis, 10,000 ports, 500 networks, 100 routers, 3 real
    bench/scale_bench.py --ports 2000 --networks 100 --routers 20 --chassis 20
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import signal
import statistics
import threading
import time
from dataclasses import dataclass

from common import cpu_seconds, pct, plug, rss_mb
from ovn_peer import INSTALL, ovn_missing, ovn_version, print_table
from ovn_scale import OvnScale, run_ovn_scale

from dragonflow.db.connect import open_nb
from dragonflow.db.nbapi import NbApi
from dragonflow.model import Binding, Chassis, FixedIp, Network, Port, Router, Subnet
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.neutron_aio import PrivateDb
from dragonflow.sim.testbed import BR_INT, Node, Testbed, new_prefix

MACS = itertools.count(1)






@dataclass
class World:
    chassis: list[str]
    nets: list[str]
    routed: dict[str, str]  # network -> its router
    ports_by_chassis: dict[str, list[str]]
    next_host: dict[str, int]


def subnet_of(i: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"10.{64 + i // 256}.{i % 256}.0/24")


def build_nb(nb: NbApi, args: argparse.Namespace) -> World:
    t0 = time.monotonic()
    chassis = [f"hv{i}" for i in range(args.chassis)]
    for i, c in enumerate(chassis):
        nb.create(Chassis(id=c, ip=f"10.255.{1 + i // 200}.{10 + i % 200}",
                          tunnel_types=("vxlan",)))
        nb.beat(c, time.time())
    nets = [f"n{i}" for i in range(args.networks)]
    for i, n in enumerate(nets):
        nb.create(Network(id=n, topic=f"proj{i % 7}", network_type="vxlan",
                          segmentation_id=5000 + i))
        nb.create(Subnet.from_dict({"id": f"{n}-s", "topic": f"proj{i % 7}", "network_id": n,
                                    "cidr": str(subnet_of(i)), "enable_dhcp": False}))
    routed: dict[str, str] = {}
    per_router = max(1, args.networks // max(1, args.routers))
    for r in range(args.routers):
        ifaces = []
        for j in range(per_router):
            i = r * per_router + j
            if i >= len(nets):
                break
            routed[nets[i]] = f"r{r}"
            ifaces.append({"id": f"r{r}-if{j}", "mac": f"fa:16:3e:ee:{r % 256:02x}:{j:02x}",
                           "network_id": nets[i], "subnet_ids": [f"{nets[i]}-s"],
                           "cidrs": [f"{subnet_of(i)[1]}/24"]})
        nb.create(Router.from_dict({"id": f"r{r}", "topic": "admin", "ports": ifaces}))
    ports_by_chassis: dict[str, list[str]] = {c: [] for c in chassis}
    next_host = {n: 10 for n in nets}
    for p in range(args.ports):
        n = nets[p % len(nets)]
        c = chassis[p % len(chassis)]
        pid = create_port(nb, n, c, next_host, nets.index(n), f"p{p}")
        ports_by_chassis[c].append(pid)
    print(f"NB built: {len(chassis)} chassis, {args.ports} ports, {len(nets)} networks, "
          f"{args.routers} routers in {time.monotonic() - t0:.0f} s", flush=True)
    return World(chassis, nets, routed, ports_by_chassis, next_host)


def create_port(nb: NbApi, net: str, chassis: str, next_host: dict[str, int], index: int,
                pid: str) -> str:
    host = next_host[net]
    next_host[net] += 1
    ip = subnet_of(index)[host]
    n = next(MACS)
    nb.create(Port(id=pid, topic=f"proj{(index + 3) % 7}", network_id=net,
                   mac=f"fa:16:{n >> 24 & 255:02x}:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:"
                       f"{n & 255:02x}",
                   fixed_ips=(FixedIp(subnet_id=f"{net}-s", ip_address=str(ip)),),
                   binding=Binding(kind="chassis", chassis_id=chassis),
                   device_owner="compute:bench"))
    return pid




class Heartbeats(threading.Thread):
    """Every chassis that has no real controller beats once per ``interval``."""

    def __init__(self, nb: NbApi, chassis: list[str], interval: float) -> None:
        super().__init__(daemon=True)
        self.nb, self.chassis, self.interval = nb, chassis, interval
        self.stop = threading.Event()
        self.beats = 0

    def run(self) -> None:
        gap = self.interval / max(1, len(self.chassis))
        while not self.stop.is_set():
            for c in self.chassis:
                if self.stop.wait(gap):
                    return
                self.nb.beat(c, time.time())
                self.beats += 1


def status_of(node: Node) -> dict:
    return json.loads((node.rundir / f"{BR_INT}.df-status.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chassis", type=int, default=50)
    ap.add_argument("--real", type=int, default=3)
    ap.add_argument("--ports", type=int, default=10000)
    ap.add_argument("--networks", type=int, default=500)
    ap.add_argument("--routers", type=int, default=100)
    ap.add_argument("--heartbeat", type=float, default=10.0)
    ap.add_argument("--events", type=int, default=20, help="events per measured kind")
    ap.add_argument("--peer", choices=["ovn", "none"], default=None,
                    help="also run OVN on the same topology (default: when installed)")
    args = ap.parse_args()
    peer = args.peer or ("none" if ovn_missing() else "ovn")
    ours = run_ours(args)
    if peer == "ovn":
        print(f"\nOVN {ovn_version()} on the same topology ...", flush=True)
        theirs = run_ovn_scale(args.chassis, args.real, args.ports, args.networks,
                               args.routers, args.events)
        compare(ours, theirs)
    elif args.peer == "ovn":
        print(f"OVN is not installed ({', '.join(ovn_missing())}): {INSTALL}")


def compare(ours: dict[str, float], theirs: OvnScale) -> None:
    def avg(kind: str) -> float:
        vals = [r[kind] for r in theirs.rows.values() if kind in r]
        return sum(vals) / len(vals) if vals else 0.0

    lat = [x * 1000 for x in theirs.latencies]
    print_table("\nper real chassis, mean (CPU in ms of the local controller per event)", [
        ("flows", ours["flows"], avg("flows")),
        ("controller RSS (MB)", ours["rss"], avg("rss")),
        ("full compile / recompute CPU (ms)", ours["full"], avg("full")),
        ("idle CPU (% of a core)", ours["idle"] * 100, avg("idle") * 100),
        ("(a) remote heartbeat (ms)", ours["heartbeat"], "none in OVN"),
        ("(b) remote port status write (ms)", ours["status"], avg("status")),
        ("(c) new local port (ms)", ours["local_port"], avg("local_port")),
        ("(d) new port, remote net of a local router (ms)", ours["routed_port"],
         avg("routed_port")),
        ("new local port: create -> up p50 (ms)", ours["p50"],
         statistics.median(lat) if lat else "-"),
        ("new local port: create -> up p99 (ms)", ours["p99"], pct(lat, 99) if lat else "-"),
    ])
    print("  OVN: ovn-controller only (ovn-northd's CPU not counted); create -> up through "
          "ovn-nbctl wait-until (a process per port)")


def run_ours(args: argparse.Namespace) -> dict[str, float]:
    bed = Testbed(new_prefix())
    db = PrivateDb(base_dir=bed.rundir).start()
    nb = open_nb(db.url, root="/scale/")
    dep = Deployment(bed, nb, db.url, in_process=False)
    beats: Heartbeats | None = None
    try:
        world = build_nb(nb, args)
        real = world.chassis[:args.real]
        t0 = time.monotonic()
        nodes = {c: dep.add_node(c, f"10.255.{1 + i // 200}.{10 + i % 200}")
                 for i, c in enumerate(real)}
        for c, node in nodes.items():
            plug(node, world.ports_by_chassis[c])
        local = [p for c in real for p in world.ports_by_chassis[c]]
        dep.wait_active(local, timeout=600)
        print(f"{args.real} real chassis up, {len(local)} local ports ACTIVE in "
              f"{time.monotonic() - t0:.0f} s", flush=True)
        # restart each real controller: its first full compile now covers everything
        for c, node in nodes.items():
            dep.kill_controller(node, signal.SIGTERM)
            (node.rundir / f"{BR_INT}.df-status.json").unlink(missing_ok=True)
            t = time.monotonic()
            dep.start_controller(node)
            while time.monotonic() - t < 120:
                path = node.rundir / f"{BR_INT}.df-status.json"
                if path.exists() and status_of(node).get("flows_installed", 0) > 0:
                    break
                time.sleep(0.1)
            print(f"{c}: controller restarted, flows reinstalled in "
                  f"{time.monotonic() - t:.1f} s", flush=True)
        beats = Heartbeats(nb, world.chassis[args.real:], args.heartbeat)
        beats.start()
        time.sleep(2)
        pids = {c: dep.processes[c].pid for c in real}
        rows: dict[str, dict[str, float]] = {c: {} for c in real}
        for c, node in nodes.items():
            st = status_of(node)
            rows[c].update(flows=dep.flow_count(node), rss=rss_mb(pids[c]),
                           full=st["full_compile_ms"], followed=st["objects_followed"])

        def measure(kind: str, action, settle: float = 0.3) -> None:  # type: ignore[no-untyped-def]
            print(f"measuring {kind} ...", flush=True)
            before = {c: cpu_seconds(p) for c, p in pids.items()}
            t = time.monotonic()
            action()
            time.sleep(settle)
            wall = time.monotonic() - t
            idle_share = {c: rows[c].get("idle", 0.0) * wall for c in real}
            for c, p in pids.items():
                spent = cpu_seconds(p) - before[c] - idle_share[c]
                rows[c][kind] = max(0.0, spent) * 1000 / args.events

        # idle: only the phantom heartbeats flowing
        before = {c: cpu_seconds(p) for c, p in pids.items()}
        time.sleep(10)
        for c, p in pids.items():
            rows[c]["idle"] = (cpu_seconds(p) - before[c]) / 10
        remote = world.chassis[args.real:]

        def heartbeats() -> None:
            for i in range(args.events):
                nb.beat(remote[i % len(remote)], time.time())

        measure("heartbeat", heartbeats)

        def status_writes() -> None:
            for i in range(args.events):
                p = nb.get_or_raise(Port, world.ports_by_chassis[remote[i % len(remote)]][0])
                nb.update(p.replace(status="DOWN" if p.status == "ACTIVE" else "ACTIVE"))

        measure("status", status_writes)
        latencies: list[float] = []
        plugged = {c: len(world.ports_by_chassis[c]) for c in real}

        def new_local_ports() -> None:
            for i in range(args.events):
                c = real[i % len(real)]
                # a network this chassis already hosts
                pid0 = world.ports_by_chassis[c][0]
                net = nb.get_or_raise(Port, pid0).network_id
                pid = create_port(nb, net, c, world.next_host, world.nets.index(net),
                                  f"new-{c}-{i}")
                t = time.monotonic()
                plug(nodes[c], [pid], start=plugged[c])
                plugged[c] += 1
                dep.created[pid] = t
                latencies.append(dep.wait_active([pid], timeout=60)[pid])

        measure("local_port", new_local_ports, settle=0.5)

        def routed_remote_ports() -> None:
            # a network reached by a local router but with no port on the real chassis
            hosted = {nb.get_or_raise(Port, p).network_id for c in real
                      for p in world.ports_by_chassis[c][:50]}
            routers = {world.routed[n] for n in hosted if n in world.routed}
            targets = [n for n, r in world.routed.items() if r in routers and n not in hosted]
            for i in range(args.events):
                net = targets[i % len(targets)] if targets else world.nets[-1]
                create_port(nb, net, remote[i % len(remote)], world.next_host,
                            world.nets.index(net), f"rr-{i}")

        measure("routed_port", routed_remote_ports, settle=1.0)
        print(f"\n{args.chassis} chassis ({args.real} real), {args.ports} ports, "
              f"{args.networks} networks, {args.routers} routers; phantom heartbeats "
              f"written: {beats.beats}")
        print(f"{'chassis':<8}{'flows':>8}{'RSS MB':>8}{'full ms':>9}{'followed':>9}"
              f"{'idle %':>8}{'hb ms':>7}{'st ms':>7}{'new ms':>8}{'rt ms':>7}")
        for c in real:
            r = rows[c]
            print(f"{c:<8}{r['flows']:>8.0f}{r['rss']:>8.0f}{r['full']:>9.0f}"
                  f"{r['followed']:>9.0f}{r['idle'] * 100:>8.1f}{r['heartbeat']:>7.1f}"
                  f"{r['status']:>7.1f}{r['local_port']:>8.1f}{r['routed_port']:>7.1f}")
        print("  hb/st: controller CPU per remote heartbeat / remote port status write; new: "
              "per new local port; rt: per new port on a remote network a local router "
              "reaches (CPU ms per event, clock-tick resolution averaged over "
              f"{args.events} events, idle CPU subtracted)")
        p50 = statistics.median(latencies) * 1000 if latencies else 0.0
        p99 = pct(latencies, 99) * 1000 if latencies else 0.0
        print(f"new local port: NB create -> ACTIVE p50 {p50:.0f} ms, p99 {p99:.0f} ms "
              f"({len(latencies)} ports, heartbeats of every other chassis flowing)")
        mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in rows[real[0]]}
        return {**mean, "p50": p50, "p99": p99}
    finally:
        if beats is not None:
            beats.stop.set()
        dep.stop()
        bed.teardown()
        nb.driver.close()
        db.stop()


if __name__ == "__main__":
    main()
