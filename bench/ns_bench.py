"""Benchmark: north-south -- floating IP associate -> reachable, and SNAT gateway failover --
ours (df-controller processes on a private redis/etcd NB) and OVN in the same run, on the
same test-bed shape. Prints figures and the ratio OVN/ours; asserts nothing. Needs root.

Test bed (each side a fresh one, one after the other): hv1 a compute node, hv2 and hv3
gateway-capable; every node maps physical network "ext" (its own br-ext, uplink on the test
bed's physical switch); a host of the outside world at 172.24.4.100 on that network; an
external flat network 172.24.4.0/24, a tenant network 10.0.0.0/24 (ours vxlan, OVN geneve),
a router with its gateway at 172.24.4.10 (SNAT for the tenant network) and N VMs on hv1,
plus one VM "s" (no floating IP) on hv1. Ours: Deployment (provider_network, router,
set_gateway, unassociated floating IPs, then associate). OVN: a switch with a localnet port
(network_name=ext), the router's port on it with gateway chassis hv2 (priority 2) and hv3
(priority 1), an SNAT rule for 10.0.0.0/24, distributed floating IPs (dnat_and_snat with
logical_port and external_mac).

(1) floating IP associate -> reachable from outside: per floating IP, the outside host pings
    it every 5 ms (``ping -D``; its ARP retransmit set to 10 ms, the kernel's floor, so an
    unanswered ARP costs 10 ms, not 1 s) from just before the NB write that associates it
    with a VM's port (ours: ``Deployment.associate``, one NB update; OVN: one ovsdbapp
    transaction adding the dnat_and_snat NAT row, as Neutron's OVN driver commits it) until
    the first echo reply: p50 / p99 / max over N floating IPs. The VMs have a static
    neighbour entry for their gateway (no VM-side ARP in the time).
(2) SNAT failover outage: VM "s" pings the outside host every 50 ms (``ping -D``); the
    active gateway chassis' controller (df-controller / ovn-controller) and its
    ovs-vswitchd are SIGKILLed one right after the other; outage = the gap between the last
    echo reply before the kill and the first one after (no reply within ``--failover-wait``
    seconds: reported as such). Which chassis is active: ours the highest
    ``gateway_rank(router, chassis)`` of hv2/hv3; OVN the chassis the SB binds the router's
    chassisredirect port to. Failure detection at the defaults: ours the NB heartbeat of
    gateway chassis (gateway_heartbeat_interval 0.5 s, gateway_dead_time 2 s), OVN BFD
    between chassis (bfd enable=true at OVS defaults: min_rx 1000 ms, mult 3). Afterwards
    the source address the outside host sees on VM s's pings is printed (it must still be
    the router's gateway IP).

    .venv/bin/python bench/ns_bench.py                # 50 floating IPs, redis NB, + OVN
    .venv/bin/python bench/ns_bench.py --fips 10 --skip-ovn --db etcd
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from common import pct
from ovn_peer import (
    INSTALL,
    NbClient,
    OvnPeer,
    _NbApi,
    _NbIdl,
    lsp_cmds,
    ovn_missing,
    ovn_version,
    print_table,
)
from ovsdbapp.backend.ovs_idl import connection

from dragonflow.db.connect import open_nb
from dragonflow.model import FixedIp, FloatingIP, Port
from dragonflow.pipeline.topology import gateway_rank
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.neutron_aio import PrivateDb
from dragonflow.sim.probes import echo_source
from dragonflow.sim.testbed import Host, Node, Testbed, TestbedError, Vm, new_prefix

EXT_CIDR, EXT_GW = "172.24.4.0/24", "172.24.4.1"
OUTSIDE = "172.24.4.100"
ROUTER_GW = "172.24.4.10"
TENANT_CIDR, TENANT_GW = "10.0.0.0/24", "10.0.0.1"
ROUTER = "r1"
ROUTER_IF_MAC = f"fa:16:3e:aa:{len(ROUTER):02x}:00"   # what Deployment.router gives r1-if0
GW_MAC = "fa:16:3e:ee:00:01"                         # OVN's router port on ext
SNAT_VM = ("s", "fa:16:3e:20:00:05", "10.0.0.5")
MAX_FIPS = 200
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")
ERROR = re.compile(r"^\[\d+\.\d+\] From (\S+) icmp_seq=\d+ (.*)")


def fip_ip(i: int) -> str:
    return f"172.24.4.{20 + i}"


def vm_ip(i: int) -> str:
    return f"10.0.0.{20 + i}"


def vm_mac(i: int) -> str:
    return f"fa:16:3e:21:{i // 256:02x}:{i % 256:02x}"


def fip_mac(i: int) -> str:
    """The floating IP's port MAC (ours) / external_mac (OVN)."""
    return f"fa:16:3e:ff:{i // 256:02x}:{i % 256:02x}"


# --- probes --------------------------------------------------------------------------------
class Pinger:
    """``ping -D -n -i <interval>`` from a namespace, its replies (wall-clock receive time,
    icmp_seq) collected by a reader thread, the ICMP errors it reports ("From ...") counted.
    A count, not a deadline (-w): with -w, iputils ping exits at the first ICMP error."""

    def __init__(self, netns: str, ip: str, interval: float, deadline: float) -> None:
        self.replies: list[tuple[float, int]] = []
        self._first = threading.Event()
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "ping", "-n", "-D", "-i", f"{interval}",
             "-W", "1", "-c", str(int(deadline / interval)), ip],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.other: list[str] = []  # the last lines that were not replies
        self.errors: Counter[str] = Counter()  # ICMP errors reported, by kind
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = REPLY.match(line)
            if m:
                with self._lock:
                    self.replies.append((float(m.group(1)), int(m.group(2))))
                self._first.set()
            elif line.strip():
                self.other = [*self.other[-4:], line.strip()]
                err = ERROR.match(line)
                if err:
                    self.errors[f"from {err.group(1)}: {err.group(2).strip()}"] += 1

    def first(self, timeout: float) -> float | None:
        """Wall-clock time of the first reply (None: none within ``timeout``)."""
        if not self._first.wait(timeout):
            return None
        with self._lock:
            return self.replies[0][0]

    def snapshot(self) -> list[tuple[float, int]]:
        with self._lock:
            return list(self.replies)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=5)


def tune_arp(host: Host) -> None:
    """The outside host's ARP: retransmit every 10 ms (default 1 s; the kernel probes no
    faster than HZ/100), so a floating IP that starts answering ARP is resolved within
    10 ms. After 10 unanswered probes the entry fails (ping reports Destination Host
    Unreachable) and the next echo request starts asking again."""
    host.exec(f"sysctl -qw net.ipv4.neigh.{host.dev}.retrans_time_ms=10 "
              f"net.ipv4.neigh.{host.dev}.mcast_solicit=10", check=True)


def static_gateway(vm: Vm) -> None:
    vm.exec(f"ip neigh replace {TENANT_GW} lladdr {ROUTER_IF_MAC} dev eth0", check=True)


def eventually(fn: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.1)
    return False


@dataclass
class Figures:
    side: str
    fip_ms: list[float] = field(default_factory=list)
    fip_of: list[str] = field(default_factory=list)       # the floating IP of each fip_ms
    fip_failed: list[str] = field(default_factory=list)   # floating IPs never reachable
    fip_early: int = 0            # replies seen before the NB write (must be 0)
    fip_errors: Counter[str] = field(default_factory=Counter)  # ICMP errors the pings got
    active: str = ""
    outage_s: float | str = "-"   # last reply before the kill -> first reply after
    detect_s: float | str = "-"   # kill done -> first reply after
    lost: int | str = "-"         # echo requests unanswered around the kill
    after: str = ""               # what the failover left (OVN: who binds the cr port)
    notes: list[str] = field(default_factory=list)
    error: str = ""


def time_fip(out: Host, fip: str, write: Callable[[], object], timeout: float,
             fig: Figures, diagnose: Callable[[str], str]) -> None:
    """Ping ``fip`` from ``out`` every 5 ms from just before ``write()`` (the NB write) on;
    appends the ms from the write to the first echo reply to ``fig``; if none comes within
    ``timeout``, notes what ``diagnose(fip)`` and a later ping say."""
    pinger = Pinger(out.netns, fip, 0.005, timeout + 5)
    try:
        time.sleep(0.1)  # ping running, ARP for the address already being asked
        if pinger.first(0) is not None:
            fig.fip_early += 1
        t0 = time.time()
        write()
        first = pinger.first(timeout)
        if first is None:
            fig.fip_failed.append(fip)
            rc = pinger.proc.poll()
            neigh = out.exec(["ip", "neigh", "show", fip]).stdout.strip() or "no entry"
            pinger.stop()
            later = out.ping(fip, count=5, timeout=3)
            fig.notes.append(f"{fip} not reachable within {timeout:.0f} s (ping "
                             f"{'still running' if rc is None else f'had exited {rc}'}, "
                             f"its last lines {pinger.other}; outside's "
                             f"neighbour: {neigh}; {diagnose(fip)}; a new ping 5 x 0.2 s "
                             f"right after: {'answered' if later else 'no reply'})")
        else:
            fig.fip_ms.append((first - t0) * 1000)
            fig.fip_of.append(fip)
    finally:
        pinger.stop()
        fig.fip_errors.update(pinger.errors)


def time_failover(vm: Vm, kill: Callable[[], None], wait: float, fig: Figures) -> None:
    """``vm`` pings the outside host every 50 ms; ``kill()`` the active gateway; the gap in
    the replies around it."""
    pinger = Pinger(vm.netns, OUTSIDE, 0.05, wait + 30)
    try:
        if not eventually(lambda: len(pinger.snapshot()) >= 20, 10):
            raise TestbedError(f"{fig.side}: SNAT pings from {vm.name} not answered before "
                               "the kill")
        t_kill = time.time()
        kill()
        t_dead = time.time()
        fig.notes.append(f"kill took {(t_dead - t_kill) * 1000:.0f} ms")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if any(ts > t_dead for ts, _ in pinger.snapshot()):
                break
            time.sleep(0.05)
        time.sleep(2.0)  # and some replies after it, to see it stays up
        replies = pinger.snapshot()
        before = [r for r in replies if r[0] <= t_dead]
        after = [r for r in replies if r[0] > t_dead]
        if not before:
            raise TestbedError(f"{fig.side}: no reply before the kill")
        if not after:
            fig.outage_s = f">{wait:.0f} s"
            fig.detect_s = "none"
            fig.lost = "all"
            return
        fig.outage_s = after[0][0] - before[-1][0]
        fig.detect_s = after[0][0] - t_dead
        fig.lost = after[0][1] - before[-1][1] - 1
        gaps = [b[0] - a[0] for a, b in zip(after, after[1:], strict=False)]
        if gaps and max(gaps) > 0.5:
            fig.notes.append(f"after recovery, another gap of {max(gaps):.2f} s")
    finally:
        pinger.stop()
        if pinger.errors:
            fig.notes.append("ICMP errors s's pings got around the kill: " + ", ".join(
                f"{k} x{v}" for k, v in pinger.errors.most_common(5)))


def sigkill_pidfile(node: Node, daemon: str) -> None:
    """SIGKILL the node's ``daemon`` by its pid file (only if that pid is this run's)."""
    path = node.rundir / f"{daemon}.pid"
    pid = int(path.read_text().strip())
    cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
    if str(node.rundir).encode() not in cmdline:
        raise TestbedError(f"pid {pid} in {path} is not {node.name}'s {daemon}")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        time.sleep(0.005)
    raise TestbedError(f"{daemon} of {node.name} (pid {pid}) survived SIGKILL")


def flows_naming(node: Node, ip: str) -> int:
    """Flows on the node's br-int that name ``ip``."""
    out = node.ofctl("-O", "OpenFlow15", "dump-flows", "br-int")
    return sum(1 for line in out.splitlines() if re.search(rf"{re.escape(ip)}(?![\d/])", line))


# --- ours ----------------------------------------------------------------------------------
def diagnose_ours(dep: Deployment, hv1: Node, fip: str) -> str:
    f = next((x for x in dep.nb.list(FloatingIP) if str(x.floating_ip_address) == fip), None)
    return (f"NB floating IP status {f.status if f else 'gone'}; hv1 br-int flows naming it: "
            f"{flows_naming(hv1, fip)}")


def run_ours(args: argparse.Namespace) -> Figures:
    fig = Figures("ours")
    bed = Testbed(new_prefix())
    db = PrivateDb(kind=args.db, base_dir=bed.rundir).start()
    nb = open_nb(db.url, root=f"/ns{uuid.uuid4().hex[:6]}/")
    dep = Deployment(bed, nb, db.url, in_process=False)
    try:
        hv1 = dep.add_node("hv1", "10.255.0.11", physnets=("ext",))
        dep.add_node("hv2", "10.255.0.12", physnets=("ext",), gateway=True)
        dep.add_node("hv3", "10.255.0.13", physnets=("ext",), gateway=True)
        out = bed.add_outside("out", "ext", f"{OUTSIDE}/24")
        tune_arp(out)
        dep.provider_network("ext", "ext", EXT_CIDR, external=True, gateway_ip=EXT_GW)
        dep.network("t1", "vxlan", 501, TENANT_CIDR)
        dep.router(ROUTER, [("t1", [f"{TENANT_GW}/24"])])
        dep.set_gateway(ROUTER, "ext", ROUTER_GW)
        s = dep.vm(hv1, SNAT_VM[0], "t1", SNAT_VM[1], SNAT_VM[2], gateway=TENANT_GW)
        vms = [dep.vm(hv1, f"v{i}", "t1", vm_mac(i), vm_ip(i), gateway=TENANT_GW)
               for i in range(args.fips)]
        for vm in [s, *vms]:
            static_gateway(vm)
        dep.wait_active([f"{vm.name}-port" for vm in [s, *vms]], timeout=120)
        if not eventually(lambda: s.ping(OUTSIDE, count=1, timeout=1), 30):
            raise TestbedError("ours: SNAT from VM s to the outside does not work")
        # the floating IPs, unassociated (as Neutron creates them before associating)
        for i in range(args.fips):
            name = f"fip{i}"
            nb.create(Port(
                id=f"{name}-fport", topic=dep.topic, name=name, network_id="ext",
                mac=fip_mac(i), fixed_ips=(FixedIp.from_dict(
                    {"subnet_id": "ext-subnet", "ip_address": fip_ip(i)}),),
                device_owner="network:floatingip", device_id=name))
            nb.create(FloatingIP.from_dict({
                "id": name, "topic": dep.topic, "name": name,
                "floating_ip_address": fip_ip(i), "floating_network_id": "ext"}))
        time.sleep(2.0)  # every controller has seen them
        print(f"  ours: {args.fips} VMs up, SNAT works; timing floating IPs ...", flush=True)
        for i, vm in enumerate(vms):
            time_fip(out, fip_ip(i), partial(dep.associate, f"fip{i}", f"{vm.name}-port",
                                             ROUTER), args.fip_timeout, fig,
                     partial(diagnose_ours, dep, hv1))
        print(f"  ours: floating IPs done ({len(fig.fip_ms)} reachable, "
              f"{len(fig.fip_failed)} not); SNAT failover ...", flush=True)
        active = max(("hv2", "hv3"), key=lambda c: gateway_rank(ROUTER, c))
        fig.active = active
        node = bed.nodes[active]

        def kill() -> None:
            dep.kill_controller(node)       # SIGKILL, waits for it
            sigkill_pidfile(node, "ovs-vswitchd")

        time_failover(s, kill, args.failover_wait, fig)
        fig.notes.append(f"after: the outside sees s's pings from {seen_source(out, s)}")
        return fig
    except Exception as e:  # report it with what we have
        traceback.print_exc()
        fig.error = f"{type(e).__name__}: {str(e)[:300]}"
        return fig
    finally:
        dep.stop()
        try:
            nb.driver.close()
        finally:
            db.stop()
            bed.teardown()


# --- OVN -----------------------------------------------------------------------------------
class NatClient(NbClient):
    """NbClient whose IDL also holds the routers and their NAT rows (a floating IP is one
    NAT row added to its router in one transaction, as Neutron's OVN driver commits it)."""

    def __init__(self, nb_db: str) -> None:  # not NbClient.__init__: more helper tables
        idl = _NbIdl.from_server(nb_db, "OVN_Northbound", helper_tables=(
            "Logical_Switch", "Logical_Switch_Port", "Logical_Router", "NAT"))
        idl.up_at = {}
        self.idl = idl
        self.conn = connection.Connection(idl, timeout=60)
        self.api: Any = _NbApi(self.conn)

    def add_fip(self, router: str, fip: str, ip: str, port: str, mac: str) -> None:
        self.api.lr_nat_add(router, "dnat_and_snat", fip, ip, logical_port=port,
                            external_mac=mac).execute(check_error=True)


def cr_chassis(ovn: OvnPeer, lrp: str) -> str:
    """The chassis the SB binds the router port's chassisredirect port to ('' if none)."""
    uid = ovn.sbctl("--bare", "--columns=chassis", "find", "Port_Binding",
                    f"logical_port=cr-{lrp}")
    if not uid:
        return ""
    return ovn.sbctl("--bare", "get", "Chassis", uid, "name").strip('"')


def bfd_summary(node: Node, config: bool = False) -> str:
    """'<remote>: <state>' of every BFD session of the node (ovs-appctl bfd/show); with
    ``config`` also the bfd column ovn-controller set on the tunnel interfaces."""
    out = node.appctl("bfd/show")
    sessions = re.findall(r"---- (\S+) ----.*?Local Session State: (\w+)", out, re.S)
    text = ", ".join(f"{i}: {st}" for i, st in sorted(sessions)) or "no BFD session"
    if config and sessions:
        text += f" (bfd {node.vsctl('get', 'Interface', sorted(sessions)[0][0], 'bfd')})"
    return text


def seen_source(out: Host, vm: Vm) -> str:
    """The source address the outside host sees on an echo request from ``vm``."""
    return echo_source(out.netns, out.dev, lambda: vm.ping(OUTSIDE, count=3)) or "nothing seen"


def diagnose_ovn(ovn: OvnPeer, hv1: Node, fip: str) -> str:
    nat = ovn.nbctl("--bare", "--columns=logical_port,external_mac", "find", "NAT",
                    f"external_ip={fip}").split()
    lflows = sum(1 for line in ovn.sbctl("lflow-list", ROUTER).splitlines() if fip in line)
    return (f"NB NAT row {nat or 'missing'}; SB logical flows naming it: {lflows}; hv1 br-int "
            f"flows naming it: {flows_naming(hv1, fip)}")


def run_ovn(args: argparse.Namespace) -> Figures:
    fig = Figures("OVN")
    bed = Testbed(new_prefix())
    ovn = OvnPeer(bed)
    nb: NatClient | None = None
    try:
        hv1 = ovn.add_chassis("hv1", "10.255.0.11", physnets=("ext",))
        ovn.add_chassis("hv2", "10.255.0.12", physnets=("ext",))
        ovn.add_chassis("hv3", "10.255.0.13", physnets=("ext",))
        out = bed.add_outside("out", "ext", f"{OUTSIDE}/24")
        tune_arp(out)
        # the external network: a switch with a localnet port on physnet "ext"
        ovn.nbctl("ls-add", "ext", "--", "lsp-add", "ext", "ext-localnet",
                  "--", "lsp-set-type", "ext-localnet", "localnet",
                  "--", "lsp-set-addresses", "ext-localnet", "unknown",
                  "--", "lsp-set-options", "ext-localnet", "network_name=ext",
                  "--", "ls-add", "t1", "--", "lr-add", ROUTER,
                  "--", "lrp-add", ROUTER, "lrp-t1", ROUTER_IF_MAC, f"{TENANT_GW}/24",
                  "--", "lsp-add", "t1", "t1-rp", "--", "lsp-set-type", "t1-rp", "router",
                  "--", "lsp-set-addresses", "t1-rp", "router",
                  "--", "lsp-set-options", "t1-rp", "router-port=lrp-t1",
                  "--", "lrp-add", ROUTER, "lrp-ext", GW_MAC, f"{ROUTER_GW}/24",
                  "--", "lsp-add", "ext", "ext-rp", "--", "lsp-set-type", "ext-rp", "router",
                  "--", "lsp-set-addresses", "ext-rp", "router",
                  "--", "lsp-set-options", "ext-rp", "router-port=lrp-ext",
                  "nat-addresses=router")
        ovn.nbctl("lrp-set-gateway-chassis", "lrp-ext", "hv2", "2")
        ovn.nbctl("lrp-set-gateway-chassis", "lrp-ext", "hv3", "1")
        ovn.nbctl("lr-nat-add", ROUTER, "snat", ROUTER_GW, TENANT_CIDR,
                  "--", "lr-route-add", ROUTER, "0.0.0.0/0", EXT_GW)
        names = [SNAT_VM[0]] + [f"v{i}" for i in range(args.fips)]
        macs = [SNAT_VM[1]] + [vm_mac(i) for i in range(args.fips)]
        ips = [SNAT_VM[2]] + [vm_ip(i) for i in range(args.fips)]
        cmds: list[str] = []
        for n, m, ip in zip(names, macs, ips, strict=True):
            cmds += lsp_cmds("t1", n, m, ip)
        ovn.nbctl(*cmds[1:])
        vms = [bed.add_vm(hv1, n, m, f"{ip}/24", n, gateway=TENANT_GW)
               for n, m, ip in zip(names, macs, ips, strict=True)]
        for vm in vms:
            static_gateway(vm)
        ovn.wait_up(names)
        ovn.nbctl("sync", wait="hv")
        s, vms = vms[0], vms[1:]
        if not eventually(lambda: s.ping(OUTSIDE, count=1, timeout=1), 30):
            raise TestbedError("OVN: SNAT from VM s to the outside does not work")
        nb = NatClient(ovn.nb_db)
        time.sleep(1.0)
        print(f"  OVN: {args.fips} VMs up, SNAT works; timing floating IPs ...", flush=True)
        for i, vm in enumerate(vms):
            time_fip(out, fip_ip(i), partial(nb.add_fip, ROUTER, fip_ip(i), vm.ip, vm.name,
                                             fip_mac(i)), args.fip_timeout, fig,
                     partial(diagnose_ovn, ovn, hv1))
        print(f"  OVN: floating IPs done ({len(fig.fip_ms)} reachable, "
              f"{len(fig.fip_failed)} not); SNAT failover ...", flush=True)
        ovn.nbctl("sync", wait="hv")
        active = cr_chassis(ovn, "lrp-ext")
        fig.active = active
        fig.notes.append(f"BFD on hv1 before the kill: {bfd_summary(hv1, config=True)}")
        if active not in ("hv2", "hv3"):
            raise TestbedError(f"OVN: cr-lrp-ext bound to {active!r}, not a gateway chassis")
        node = bed.nodes[active]

        def kill() -> None:
            sigkill_pidfile(node, "ovn-controller")
            sigkill_pidfile(node, "ovs-vswitchd")

        time_failover(s, kill, args.failover_wait, fig)
        fig.after = cr_chassis(ovn, "lrp-ext")
        fig.notes.append(f"after: cr-lrp-ext bound to {fig.after or 'nothing'}; BFD on hv1: "
                         f"{bfd_summary(hv1)}; the outside sees s's pings from "
                         f"{seen_source(out, s)}")
        return fig
    except Exception as e:
        traceback.print_exc()
        fig.error = f"{type(e).__name__}: {str(e)[:300]}"
        return fig
    finally:
        try:
            if nb is not None:
                nb.close()
            ovn.stop()
        finally:
            bed.teardown()


# --- report --------------------------------------------------------------------------------
def report(args: argparse.Namespace, ours: Figures | None, ovn: Figures | None) -> None:
    def stat(f: Figures | None, fn: Callable[[list[float]], float]) -> float | str:
        if f is None:
            return "-"
        return fn(f.fip_ms) if f.fip_ms else "n/a"

    def val(f: Figures | None, attr: str) -> Any:
        v = getattr(f, attr) if f is not None else ""
        return "-" if v == "" else v

    def reached(f: Figures | None) -> str:
        return f"{len(f.fip_ms)}/{n}" if f is not None else "-"

    n = args.fips
    rows: list[tuple[str, float | str, float | str]] = [
        ("FIP associate -> reachable from outside p50 (ms)", stat(ours, lambda v: pct(v, 50)),
         stat(ovn, lambda v: pct(v, 50))),
        ("FIP associate -> reachable from outside p90 (ms)", stat(ours, lambda v: pct(v, 90)),
         stat(ovn, lambda v: pct(v, 90))),
        ("FIP associate -> reachable from outside p99 (ms)", stat(ours, lambda v: pct(v, 99)),
         stat(ovn, lambda v: pct(v, 99))),
        ("FIP associate -> reachable from outside max (ms)", stat(ours, max), stat(ovn, max)),
        ("FIPs reachable", reached(ours), reached(ovn)),
        ("SNAT failover outage (s)", val(ours, "outage_s"), val(ovn, "outage_s")),
        ("  of which: kill -> first reply after (s)", val(ours, "detect_s"),
         val(ovn, "detect_s")),
        ("  echo requests lost (every 50 ms)", val(ours, "lost"), val(ovn, "lost")),
        ("  active gateway killed", val(ours, "active"), val(ovn, "active")),
    ]
    peer = f"OVN {ovn_version()}" if ovn else "OVN not run"
    print()
    mine = f"ours (df-controller on {args.db})" if ours else "ours not run"
    print_table(f"north-south, {n} floating IPs on hv1, gateways hv2/hv3; {mine} vs {peer} "
                "(same machine, one run)", rows)
    print("(ratio OVN/ours: above 1 means ours is faster / its outage shorter)")
    for f in (ours, ovn):
        if f is None:
            continue
        if f.fip_ms:
            slow = sorted(zip(f.fip_of, f.fip_ms, strict=True), key=lambda x: -x[1])[:3]
            print(f"  {f.side}: slowest (in the order associated from .20 on): " + ", ".join(
                f"{ip} {ms:.0f} ms" for ip, ms in slow))
        for note in f.notes:
            print(f"  {f.side}: {note}")
        if f.fip_errors:
            print(f"  {f.side}: ICMP errors the outside's FIP pings got: "
                  + ", ".join(f"{k} x{v}" for k, v in f.fip_errors.most_common(5)))
        if f.fip_early:
            print(f"  {f.side}: {f.fip_early} floating IPs answered BEFORE their NB write")
        if f.error:
            print(f"  {f.side} FAILED: {f.error}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fips", type=int, default=50,
                    help=f"floating IPs (one VM each) to time, 1..{MAX_FIPS} (default 50)")
    ap.add_argument("--db", choices=("redis", "etcd"), default="redis",
                    help="our NB server, started privately (default redis)")
    ap.add_argument("--skip-ovn", action="store_true", help="run ours only")
    ap.add_argument("--skip-ours", action="store_true", help="run OVN only")
    ap.add_argument("--fip-timeout", type=float, default=20.0,
                    help="seconds to wait for a floating IP to answer (default 20)")
    ap.add_argument("--failover-wait", type=float, default=30.0,
                    help="seconds to wait for SNAT to come back after the kill (default 30)")
    args = ap.parse_args()
    if not 1 <= args.fips <= MAX_FIPS:
        ap.error(f"--fips: 1..{MAX_FIPS}")
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    missing = [] if args.skip_ovn else ovn_missing()
    if missing:
        print(f"OVN not installed: {INSTALL}  (missing: {', '.join(missing)}); "
              "or run with --skip-ovn")
        sys.exit(2)
    if args.skip_ours and args.skip_ovn:
        ap.error("--skip-ours and --skip-ovn: nothing to run")
    t = time.monotonic()
    ours = None
    if not args.skip_ours:
        ours = run_ours(args)
        print(f"(ours done in {time.monotonic() - t:.0f} s)", flush=True)
    theirs = None
    if not args.skip_ovn:
        t = time.monotonic()
        theirs = run_ovn(args)
        print(f"(OVN done in {time.monotonic() - t:.0f} s)", flush=True)
    report(args, ours, theirs)


if __name__ == "__main__":
    main()
