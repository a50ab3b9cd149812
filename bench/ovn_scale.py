"""OVN 23.03 on bench/scale_bench.py's topology, for its side-by-side figures.

The same shape as ours: ``--chassis`` chassis of which ``--real`` run ovn-controller on a
simulated node (netns + own OVS), the others are SB Chassis records (``ovn-sbctl
chassis-add``) whose ports are bound to them (``lsp-bind``); ``--networks`` logical switches
with ``--ports`` ports spread evenly over chassis and networks, ``--routers`` routers with an
interface on every network of their share. The real chassis' ports are OVS internal ports
with their iface-id, as ours.

Figures per real chassis: OpenFlow flows, ovn-controller RSS, the CPU of a full recompute
(``inc-engine/recompute``), CPU per event -- (a) none: OVN has no periodic heartbeat in the
SB (liveness is BFD / OVSDB probes), (b) a remote port's ``up`` flag written in the SB, (c) a
new port on a local network (NB create + plug -> up), (d) a new port bound to another
chassis on a network a local router reaches -- and idle CPU; NB create -> up p50/p99 of new
local ports. ovn-northd's CPU is not counted (ours has no central component to count).
"""

from __future__ import annotations

import ipaddress
import itertools
import time
from dataclasses import dataclass, field

from common import cpu_seconds, plug, rss_mb
from ovn_peer import OvnPeer

from dragonflow.sim.testbed import Node, Testbed, new_prefix


def subnet_of(i: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"10.{64 + i // 256}.{i % 256}.0/24")


@dataclass
class OvnScale:
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    build_s: float = 0.0




def run_ovn_scale(chassis: int, real: int, ports: int, networks: int, routers: int,
                  events: int) -> OvnScale:
    bed = Testbed(new_prefix())
    ovn = OvnPeer(bed)
    out = OvnScale()
    macs = itertools.count(1)
    try:
        t0 = time.monotonic()
        names = [f"hv{i}" for i in range(chassis)]
        nodes: dict[str, Node] = {}
        for i, c in enumerate(names[:real]):  # on the central's /24 (the SB address)
            nodes[c] = ovn.add_chassis(c, f"10.255.0.{10 + i}")
        for i, c in enumerate(names[real:], start=real):
            ovn.sbctl("chassis-add", c, "geneve", f"10.255.{1 + i // 200}.{10 + i % 200}")
        nets = [f"n{i}" for i in range(networks)]
        batch: list[str] = []

        def flush(force: bool = False) -> None:
            if batch and (force or len(batch) > 2000):
                ovn.nbctl(*batch[1:], timeout=600)
                batch.clear()

        for n in nets:
            batch += ["--", "ls-add", n]
            flush()
        routed: dict[str, str] = {}
        per_router = max(1, networks // max(1, routers))
        for r in range(routers):
            batch += ["--", "lr-add", f"r{r}"]
            for j in range(per_router):
                i = r * per_router + j
                if i >= networks:
                    break
                routed[nets[i]] = f"r{r}"
                lrp = f"r{r}-if{j}"
                batch += ["--", "lrp-add", f"r{r}", lrp,
                          f"fa:16:3e:ee:{r % 256:02x}:{j:02x}", f"{subnet_of(i)[1]}/24",
                          "--", "lsp-add", nets[i], f"{lrp}-sp",
                          "--", "lsp-set-type", f"{lrp}-sp", "router",
                          "--", "lsp-set-addresses", f"{lrp}-sp", "router",
                          "--", "lsp-set-options", f"{lrp}-sp", f"router-port={lrp}"]
            flush()
        next_host = {n: 10 for n in nets}
        by_chassis: dict[str, list[str]] = {c: [] for c in names}

        def lsp(net: str, pid: str) -> list[str]:
            host = next_host[net]
            next_host[net] += 1
            ip = subnet_of(nets.index(net))[host]
            m = next(macs)
            mac = f"fa:16:{m >> 24 & 255:02x}:{m >> 16 & 255:02x}:{m >> 8 & 255:02x}:{m & 255:02x}"
            return ["--", "lsp-add", net, pid, "--", "lsp-set-addresses", pid, f"{mac} {ip}"]

        for p in range(ports):
            n, c = nets[p % networks], names[p % chassis]
            batch += lsp(n, f"p{p}")
            by_chassis[c].append(f"p{p}")
            flush()
        flush(force=True)
        ovn.nbctl("sync", wait="sb", timeout=1200)
        binds: list[str] = []
        for c in names[real:]:
            for pid in by_chassis[c]:
                binds += ["--", "lsp-bind", pid, c]
                if len(binds) > 2000:
                    ovn.sbctl(*binds[1:])
                    binds = []
        if binds:
            ovn.sbctl(*binds[1:])
        for c, node in nodes.items():
            plug(node, by_chassis[c])
        ovn.nbctl("sync", wait="hv", timeout=1200)
        out.build_s = time.monotonic() - t0
        print(f"OVN: {chassis} chassis ({real} real), {ports} ports built and installed in "
              f"{out.build_s:.0f} s", flush=True)
        pids = {c: int((node.rundir / "ovn-controller.pid").read_text()) for c, node in
                nodes.items()}
        for c, node in nodes.items():
            out.rows[c] = {"flows": ovn.flow_count(node), "rss": rss_mb(pids[c])}
        # full recompute CPU (the analogue of our full compile)
        for c, node in nodes.items():
            before = cpu_seconds(pids[c])
            _appctl(node, "inc-engine/recompute")
            _quiet(pids[c])
            out.rows[c]["full"] = (cpu_seconds(pids[c]) - before) * 1000
        before = {c: cpu_seconds(p) for c, p in pids.items()}
        time.sleep(10)
        for c, p in pids.items():
            out.rows[c]["idle"] = (cpu_seconds(p) - before[c]) / 10

        def measure(kind: str, action, settle: float = 0.5) -> None:  # type: ignore[no-untyped-def]
            print(f"OVN: measuring {kind} ...", flush=True)
            b = {c: cpu_seconds(p) for c, p in pids.items()}
            t = time.monotonic()
            action()
            time.sleep(settle)
            wall = time.monotonic() - t
            for c, p in pids.items():
                spent = cpu_seconds(p) - b[c] - out.rows[c]["idle"] * wall
                out.rows[c][kind] = max(0.0, spent) * 1000 / events

        remote = names[real:]

        def remote_up_flags() -> None:
            for i in range(events):
                pid = by_chassis[remote[i % len(remote)]][0]
                ovn.sbctl("set", "Port_Binding", pid, f"up={'false' if i % 2 else 'true'}")

        measure("status", remote_up_flags)
        real_names = list(nodes)
        plugged = {c: len(by_chassis[c]) for c in real_names}

        def new_local_ports() -> None:
            for i in range(events):
                c = real_names[i % len(real_names)]
                net = nets[int(by_chassis[c][0][1:]) % networks]
                pid = f"new-{c}-{i}"
                t = time.monotonic()
                ovn.nbctl(*lsp(net, pid)[1:])
                plug(nodes[c], [pid], start=plugged[c])
                plugged[c] += 1
                ovn.nbctl("wait-until", "Logical_Switch_Port", pid, "up=true", timeout=60)
                out.latencies.append(time.monotonic() - t)

        measure("local_port", new_local_ports)
        hosted = {nets[int(p[1:]) % networks] for c in real_names for p in by_chassis[c][:50]}
        rtrs = {routed[n] for n in hosted if n in routed}
        targets = [n for n, r in routed.items() if r in rtrs and n not in hosted] or nets[-1:]

        def routed_remote_ports() -> None:
            for i in range(events):
                net = targets[i % len(targets)]
                pid = f"rr-{i}"
                # its Port_Binding must exist before it is bound (northd may lag at 10k)
                ovn.nbctl(*lsp(net, pid)[1:], wait="sb")
                ovn.sbctl("lsp-bind", pid, remote[i % len(remote)])

        measure("routed_port", routed_remote_ports, settle=1.0)
        return out
    finally:
        try:
            ovn.stop()
        finally:
            bed.teardown()


def _appctl(node: Node, *args: str) -> str:
    from dragonflow.sim.testbed import sh

    ctl = node.rundir / "ovn-controller.ctl"
    if not ctl.exists():  # named after the pid by default
        pid = (node.rundir / "ovn-controller.pid").read_text().strip()
        ctl = node.rundir / f"ovn-controller.{pid}.ctl"
    return sh(["ovs-appctl", "-t", str(ctl), *args], env=node.env()).stdout


def _quiet(pid: int, timeout: float = 120.0) -> None:
    """Until the process has used no CPU for 0.5 s."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now == last:
            return
        last = now
