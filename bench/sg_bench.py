"""Benchmark: one security group with a remote-group rule at N members, ours and OVN in the
same run. Prints figures, asserts nothing. Needs root.

The group (ours: SecurityGroup "sg"; OVN: port group ``pg_sg`` with Neutron's ACLs) has an
egress rule (IPv4, anything) and an ingress rule from its own members (IPv4, remote group:
OVN ``outport == @pg_sg && ip4 && ip4.src == $pg_sg_ip4``, allow-related; every member also in
``neutron_pg_drop``, as Neutron's OVN driver does). N members on one /16 network, member i on
chassis i % ``--chassis``: ``--real`` of the chassis are simulated nodes (netns, own
ovs-vswitchd; ours a df-controller process on a private redis NB, OVN ovn-controller on an
OVN central) with their members plugged as OVS internal ports; the others are NB chassis
that never run (ours: Chassis records; OVN: ``ovn-sbctl chassis-add`` + ``lsp-bind``), their
ports still members, so every real chassis holds every member's address.

Per N (a fresh test bed per N and side): flows per real chassis -- total, in the filter
stages (ours secgroup_*, OVN's *acl* / *stateful* stages) and flows naming a member address
there; then ``--joins`` members join one at a time (a new port on a phantom chassis, in the
group; OVN: one ovsdbapp transaction -- port + both port groups -- as Neutron's driver
commits it) and we time NB commit -> the flow with its address ADDED on EVERY real chassis,
stamped by an ``ovs-ofctl monitor`` per chassis (no polling); controller CPU per join; flows
added per joined member. Once (first size): TCP connections/s from a VM on one real node to
a server VM on another (a separate network), the server port with no group vs in a
stateful group allowing it -- the datapath cost of conntrack, ours vs OVN's.

    bench/sg_bench.py                              # N = 10, 100, 1000, 5000, OVN if installed
    bench/sg_bench.py --sizes 10,100 --peer none
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from common import cpu_seconds, pct, plug
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
from dragonflow.db.nbapi import NbApi
from dragonflow.model import (
    Binding,
    Chassis,
    FixedIp,
    Port,
    SecurityGroup,
    SecurityGroupRule,
)
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.neutron_aio import PrivateDb
from dragonflow.sim.testbed import BR_INT, Node, Testbed, TestbedError, new_prefix

MEMBER_NET = ipaddress.ip_network("10.20.0.0/16")
TCP_NET = "10.30.0"
# OVN 23.03 (controller/lflow.h): logical ingress table t is OpenFlow table 8 + t, egress 42 + t
OVN_INGRESS_BASE, OVN_EGRESS_BASE = 8, 42
NW_SRC = re.compile(r"nw_src=(\d+\.\d+\.\d+\.\d+)(?=[,\s]|$)")
TABLE = re.compile(r"\btable=(\d+)")

# TCP: a server on every port of an aligned block (one masked match in both rule sets); each
# run its own PORTS_PER_RUN ports, so no 4-tuple -- and no conntrack entry -- is used twice
TCP_PORTS = range(5120, 5376)
PORTS_PER_RUN = 16
CONNECT_TIMEOUT = 1.0  # the client's, per connection (about the SYN retransmit time)

SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in range(int(sys.argv[1]), int(sys.argv[2])):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1024)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        try:
            c, _ = key.fileobj.accept()
        except BlockingIOError:
            continue
        try:
            c.sendall(b"x")
        except OSError:
            pass
        c.close()
"""

# sequential short connections, round robin over the given ports: connect, read the server's
# byte, close (a failure costs the 1 s timeout); prints "<ok> <failed> <seconds>"
CLIENT = r"""
import socket, sys, time
ip, ports, secs = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], float(sys.argv[3])
ok = failed = 0
t0 = time.monotonic()
end = t0 + secs
while time.monotonic() < end:
    s = socket.socket()
    s.settimeout(float(sys.argv[4]))
    try:
        s.connect((ip, ports[(ok + failed) % len(ports)]))
        if s.recv(1) == b"x":
            ok += 1
        else:
            failed += 1
    except OSError:
        failed += 1
    finally:
        s.close()
print(ok, failed, time.monotonic() - t0)
"""


def member_ip(i: int) -> str:
    return str(MEMBER_NET[i + 10])


def member_mac(i: int) -> str:
    return f"fa:16:3e:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def chassis_name(i: int) -> str:
    return f"hv{i}"


def real_ip(i: int) -> str:
    return f"10.255.0.{10 + i}"  # real nodes on the OVN central's /24


def phantom_ip(i: int) -> str:
    return f"10.255.{1 + i // 200}.{10 + i % 200}"


@dataclass
class SizeFigures:
    n: int
    local: dict[str, int] = field(default_factory=dict)       # local members per real chassis
    flows: dict[str, int] = field(default_factory=dict)       # total, per real chassis
    filter_flows: dict[str, int] = field(default_factory=dict)
    addr_flows: dict[str, int] = field(default_factory=dict)  # naming a member address
    addrs: dict[str, int] = field(default_factory=dict)       # distinct member addresses
    join_ms: list[float] = field(default_factory=list)        # commit -> on every chassis
    join_flows: float = 0.0                                  # flows added per joined member
    join_cpu_ms: float = 0.0                                 # local controller, per join
    central_cpu_ms: float | None = None                      # OVN: ovn-northd, per join
    build_s: float = 0.0
    error: str | None = None


@dataclass
class ConnFigures:
    rates: dict[str, list[float]] = field(default_factory=lambda: {"none": [], "group": []})
    failed: dict[str, int] = field(default_factory=lambda: {"none": 0, "group": 0})
    # the same runs without the time the failed connections waited for their timeout
    unstalled: dict[str, list[float]] = field(
        default_factory=lambda: {"none": [], "group": []})
    error: str | None = None


@dataclass
class Side:
    sizes: dict[int, SizeFigures] = field(default_factory=dict)
    conn: ConnFigures | None = None


# --- flows --------------------------------------------------------------------------------
def dump(node: Node, ovn: bool) -> list[str]:
    args = ("-O", "OpenFlow15") if ovn else ()
    out = node.ofctl(*args, "dump-flows", BR_INT)
    return [line for line in out.splitlines() if "actions=" in line]


def table_of(line: str) -> int:
    m = TABLE.search(line)
    return int(m.group(1)) if m else 0


def count_flows(lines: list[str], filter_tables: set[int], fig: SizeFigures, name: str
                ) -> None:
    flt = [ln for ln in lines if table_of(ln) in filter_tables]
    addrs = [a for ln in flt for a in NW_SRC.findall(ln.split("actions=")[0])
             if ipaddress.ip_address(a) in MEMBER_NET]
    fig.flows[name] = len(lines)
    fig.filter_flows[name] = len(flt)
    fig.addr_flows[name] = len(addrs)
    fig.addrs[name] = len(set(addrs))


def wait_stable(nodes: Iterable[Node], ovn: bool, want_addrs: int, filter_tables: set[int],
                timeout: float = 900.0) -> None:
    """Until every node has ``want_addrs`` member addresses in its filter stages and its
    flow count stayed the same over one second."""
    deadline = time.monotonic() + timeout
    for node in nodes:
        last = -1
        while True:
            lines = dump(node, ovn)
            flt = {a for ln in lines if table_of(ln) in filter_tables
                   for a in NW_SRC.findall(ln.split("actions=")[0])}
            have = sum(1 for a in flt if ipaddress.ip_address(a) in MEMBER_NET)
            if have >= want_addrs and len(lines) == last:
                break
            last = len(lines) if have >= want_addrs else -1
            if time.monotonic() > deadline:
                raise TestbedError(f"{node.name}: {have} of {want_addrs} member addresses "
                                   f"installed after {timeout:.0f}s")
            time.sleep(1.0)


class FlowWatch:
    """``ovs-ofctl monitor`` of one table of a node's br-int: when a flow matching
    ``nw_src=<ip>`` was first seen ADDED (or MODIFIED), stamped as the update arrives."""

    def __init__(self, node: Node, table: int) -> None:
        self.node = node
        self.seen: dict[str, float] = {}
        self._cv = threading.Condition()
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "ovs-ofctl", "-O", "OpenFlow13", "monitor", BR_INT,
             f"watch:!initial,!delete,table={table}"], env=node.env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            self.stop()
            raise TestbedError(f"{node.name}: ovs-ofctl monitor did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            if "FLOW_MONITOR reply" in line:
                self._ready.set()
            if "event=ADDED" not in line and "event=MODIFIED" not in line:
                continue
            ips = NW_SRC.findall(line.split("actions=")[0])
            if ips:
                with self._cv:
                    for ip in ips:
                        self.seen.setdefault(ip, now)
                    self._cv.notify_all()

    def wait(self, ip: str, timeout: float) -> float:
        with self._cv:
            if not self._cv.wait_for(lambda: ip in self.seen, timeout):
                raise TestbedError(f"{self.node.name}: no flow for {ip} within {timeout}s")
            return self.seen[ip]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def time_joins(nodes: list[Node], table: int, joins: int, join: Callable[[int], str],
               after: Callable[[int], None], pids: list[int], central: int | None,
               fig: SizeFigures) -> None:
    """``join(j)`` commits member j and returns its address; timed from before the call to
    the flow with that address seen on every node; ``after(j)`` runs untimed."""
    watches: list[FlowWatch] = []
    try:
        watches = [FlowWatch(n, table) for n in nodes]
        cpu0 = [cpu_seconds(p) for p in pids]
        c0 = cpu_seconds(central) if central else 0.0
        for j in range(joins):
            t0 = time.monotonic()
            ip = join(j)
            stamps = [w.wait(ip, 60) for w in watches]
            fig.join_ms.append((max(stamps) - t0) * 1000)
            after(j)
            time.sleep(0.25)
        time.sleep(0.5)
        fig.join_cpu_ms = statistics.mean(
            cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)) * 1000 / joins
        if central:
            fig.central_cpu_ms = (cpu_seconds(central) - c0) * 1000 / joins
        print(f"    {joins} joins: every chassis p50 {pct(fig.join_ms, 50):.0f} ms, p99 "
              f"{pct(fig.join_ms, 99):.0f} ms; local controller CPU per join "
              f"{fig.join_cpu_ms:.1f} ms", flush=True)
    finally:
        for w in watches:
            w.stop()


# --- TCP connection rate ------------------------------------------------------------------
class TcpPair:
    """The server VM's TCP server and a client run in its peer VM."""

    def __init__(self, srv_ns: str, cli_ns: str, srv_ip: str) -> None:
        self.cli_ns, self.srv_ip = cli_ns, srv_ip
        self.next_port = TCP_PORTS.start
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", srv_ns, sys.executable, "-c", SERVER,
             str(TCP_PORTS.start), str(TCP_PORTS.stop)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.server.stdout is not None
        if self.server.stdout.readline().strip() != "ready":
            raise TestbedError("TCP server did not start")

    def run(self, seconds: float) -> tuple[int, int, float]:
        """(connections, failed connections, seconds) of one client run, on server ports no
        run used before."""
        ports = range(self.next_port, self.next_port + PORTS_PER_RUN)
        if ports.stop > TCP_PORTS.stop:
            raise TestbedError("out of fresh TCP server ports: fewer --conn-rounds")
        self.next_port = ports.stop
        out = subprocess.run(
            ["ip", "netns", "exec", self.cli_ns, sys.executable, "-c", CLIENT, self.srv_ip,
             ",".join(map(str, ports)), str(seconds), str(CONNECT_TIMEOUT)],
            capture_output=True, text=True,
            timeout=seconds + 30)
        ok, failed, secs = out.stdout.split()
        return int(ok), int(failed), float(secs)

    def measure(self, conn: ConnFigures, modes: dict[str, Callable[[], None]],
                seconds: float, rounds: int) -> None:
        for _ in range(rounds):
            for mode, switch in modes.items():
                switch()
                if self.run(0.5)[0] == 0:  # warm-up: neighbours, megaflows
                    raise TestbedError(f"no TCP connection in mode {mode}")
                ok, failed, secs = self.run(seconds)
                conn.rates[mode].append(ok / secs)
                conn.unstalled[mode].append(ok / max(0.1, secs - failed * CONNECT_TIMEOUT))
                conn.failed[mode] += failed
                print(f"    TCP {mode:5s}: {ok / secs:7.0f} connections/s ({failed} failed)",
                      flush=True)

    def stop(self) -> None:
        self.server.kill()
        self.server.wait()


# --- ours ---------------------------------------------------------------------------------
def rule(rid: str, direction: str, **kw: object) -> SecurityGroupRule:
    return SecurityGroupRule.from_dict({"id": rid, "direction": direction,
                                        "ethertype": "IPv4", **kw})


def our_port(nb: NbApi, topic: str, i: int, chassis: str, groups: tuple[str, ...]) -> str:
    pid = f"m{i}"
    nb.create(Port(id=pid, topic=topic, network_id="net", mac=member_mac(i),
                   fixed_ips=(FixedIp(subnet_id="net-subnet",
                                      ip_address=ipaddress.ip_address(member_ip(i))),),
                   binding=Binding(kind="chassis", chassis_id=chassis),
                   device_owner="compute:bench", security_groups=groups))
    return pid


def pipeline_tables(node: Node) -> dict[str, int]:
    st = json.loads((node.rundir / f"{BR_INT}.df-status.json").read_text())
    return {p["stage"]: p["table"] for p in st["pipeline"]}


def run_ours(n: int, args: argparse.Namespace, conn: ConnFigures | None) -> SizeFigures:
    fig = SizeFigures(n)
    bed = Testbed(new_prefix())
    db = PrivateDb(kind=args.db, base_dir=bed.rundir).start()
    nb = open_nb(db.url, root="/sgbench/")
    dep = Deployment(bed, nb, db.url, in_process=False)
    pair: TcpPair | None = None
    try:
        t0 = time.monotonic()
        topic = dep.topic
        dep.network("net", "vxlan", 100, str(MEMBER_NET))
        nb.create(SecurityGroup(id="sg", topic=topic, rules=(
            rule("e4", "egress"), rule("in-sg", "ingress", remote_group_id="sg"))))
        for c in range(args.real, args.chassis):
            nb.create(Chassis(id=chassis_name(c), ip=ipaddress.ip_address(phantom_ip(c)),
                              tunnel_types=("vxlan",)))
            nb.beat(chassis_name(c), time.time())
        local: dict[str, list[str]] = {chassis_name(c): [] for c in range(args.real)}
        for i in range(n):
            ch = chassis_name(i % args.chassis)
            pid = our_port(nb, topic, i, ch, ("sg",))
            if ch in local:
                local[ch].append(pid)
        nodes = [dep.add_node(chassis_name(c), real_ip(c)) for c in range(args.real)]
        for node in nodes:
            plug(node, local[node.name], prefix="m")
        dep.wait_active([p for ps in local.values() for p in ps], timeout=900)
        tables = pipeline_tables(nodes[0])
        filt = {t for s, t in tables.items() if s.startswith("secgroup")}
        wait_stable(nodes, False, n, filt)
        fig.build_s = time.monotonic() - t0
        for node in nodes:
            fig.local[node.name] = len(local[node.name])
            count_flows(dump(node, False), filt, fig, node.name)
        print(f"  ours N={n}: built and installed in {fig.build_s:.0f} s; flows per real "
              f"chassis {list(fig.flows.values())}", flush=True)

        phantoms = [chassis_name(c) for c in range(args.real, args.chassis)]

        def join(j: int) -> str:
            our_port(nb, topic, n + j, phantoms[j % len(phantoms)], ("sg",))
            return member_ip(n + j)

        pids = [dep.processes[node.name].pid for node in nodes]
        time_joins(nodes, tables["secgroup_in"], args.joins, join, lambda j: None, pids,
                   None, fig)
        wait_stable(nodes, False, n + args.joins, filt)
        fig.join_flows = statistics.mean(
            len(dump(node, False)) - fig.flows[node.name] for node in nodes) / args.joins
        if conn is not None and len(nodes) >= 2:
            pair = ours_tcp(dep, nodes, tables, args, conn)
        return fig
    except Exception as e:  # report it, go on with the next size / side
        traceback.print_exc()
        fig.error = f"{type(e).__name__}: {str(e)[:200]}"
        return fig
    finally:
        if pair is not None:
            pair.stop()
        dep.stop()
        try:
            nb.driver.close()
        finally:
            db.stop()
            bed.teardown()


def ours_tcp(dep: Deployment, nodes: list[Node], tables: dict[str, int],
             args: argparse.Namespace, conn: ConnFigures) -> TcpPair:
    nb = dep.nb
    dep.network("tcpnet", "vxlan", 300, f"{TCP_NET}.0/24")
    nb.create(SecurityGroup(id="web", topic=dep.topic, rules=(
        rule("web-e4", "egress"),
        rule("web-tcp", "ingress", protocol="tcp", port_range_min=TCP_PORTS.start,
             port_range_max=TCP_PORTS.stop - 1))))
    srv = dep.vm(nodes[0], "srv", "tcpnet", "fa:16:3f:00:00:10", f"{TCP_NET}.10")
    cli = dep.vm(nodes[1], "cli", "tcpnet", "fa:16:3f:00:00:11", f"{TCP_NET}.11")
    dep.wait_active(["srv-port", "cli-port"], timeout=60)
    ct_table = tables["secgroup_in_ct"]

    def ct_flows() -> int:
        return sum(1 for ln in dump(nodes[0], False) if table_of(ln) == ct_table)

    base = ct_flows()

    def switch(on: bool) -> Callable[[], None]:
        def apply() -> None:
            p = nb.get_or_raise(Port, "srv-port")
            nb.update(p.replace(security_groups=("web",) if on else ()))
            deadline = time.monotonic() + 30
            while (ct_flows() > base) != on:
                if time.monotonic() > deadline:
                    raise TestbedError(f"ours: server group {'on' if on else 'off'} not "
                                       "installed within 30 s")
                time.sleep(0.1)
            time.sleep(0.5)
        return apply

    pair = TcpPair(srv.netns, cli.netns, srv.ip)
    print("  ours: TCP connection rate ...", flush=True)
    try:
        pair.measure(conn, {"none": switch(False), "group": switch(True)},
                     args.conn_seconds, args.conn_rounds)
    except Exception as e:
        traceback.print_exc()
        conn.error = f"{type(e).__name__}: {str(e)[:200]}"
    return pair


# --- OVN ----------------------------------------------------------------------------------
class PgClient(NbClient):
    """NbClient whose IDL also holds port groups (a port joins one in its create txn)."""

    def __init__(self, nb_db: str) -> None:  # not NbClient.__init__: more helper tables
        idl = _NbIdl.from_server(nb_db, "OVN_Northbound", helper_tables=(
            "Logical_Switch", "Logical_Switch_Port", "Port_Group"))
        idl.up_at = {}
        self.idl = idl
        self.conn = connection.Connection(idl, timeout=60)
        self.api = _NbApi(self.conn)

    def create_member(self, switch: str, port: str, mac: str, ip: str,
                      groups: tuple[str, ...]) -> None:
        """Port and its port groups in one transaction, as Neutron's OVN driver."""
        addr = [f"{mac} {ip}"]
        with self.api.transaction(check_error=True) as txn:
            lsp = txn.add(self.api.lsp_add(switch, port, addresses=addr, port_security=addr))
            for pg in groups:
                txn.add(self.api.pg_add_ports(pg, lsp))

    def set_groups(self, port: str, groups: dict[str, bool]) -> None:
        row = self.api.lookup("Logical_Switch_Port", port)
        with self.api.transaction(check_error=True) as txn:
            for pg, on in groups.items():
                txn.add((self.api.pg_add_ports if on else self.api.pg_del_ports)(pg, row))


def acl(pg: str, direction: str, prio: int, match: str, action: str) -> list[str]:
    return ["--", "--type=port-group", "acl-add", pg, direction, str(prio), match, action]


def ovn_stages(ovn: OvnPeer) -> dict[str, int]:
    """OpenFlow table of each logical switch stage (read off the empty switch 'stages')."""
    out = ovn.sbctl("lflow-list", "stages")
    stages: dict[str, int] = {}
    for m in re.finditer(r"table=\s*(\d+)\s*\((ls_(in|out)_\w+)\s*\)", out):
        base = OVN_INGRESS_BASE if m.group(3) == "in" else OVN_EGRESS_BASE
        stages[m.group(2)] = base + int(m.group(1))
    return stages


def ovn_filter_tables(stages: dict[str, int]) -> set[int]:
    """The stages that implement ACLs: pre-ACL, hints, ACL, stateful commit."""
    return {t for s, t in stages.items() if "acl" in s or "stateful" in s}


def run_ovn(n: int, args: argparse.Namespace, conn: ConnFigures | None) -> SizeFigures:
    fig = SizeFigures(n)
    bed = Testbed(new_prefix())
    ovn = OvnPeer(bed)
    client: PgClient | None = None
    pair: TcpPair | None = None
    try:
        t0 = time.monotonic()
        nodes = [ovn.add_chassis(chassis_name(c), real_ip(c)) for c in range(args.real)]
        adds: list[str] = []
        for c in range(args.real, args.chassis):
            adds += ["--", "chassis-add", chassis_name(c), "geneve", phantom_ip(c)]
        if adds:
            ovn.sbctl(*adds[1:])
        cmds = ["ls-add", "net", "--", "ls-add", "stages",
                "--", "pg-add", "pg_sg", "--", "pg-add", "neutron_pg_drop",
                *acl("pg_sg", "from-lport", 1002, "inport == @pg_sg && ip4", "allow-related"),
                *acl("pg_sg", "to-lport", 1002,
                     "outport == @pg_sg && ip4 && ip4.src == $pg_sg_ip4", "allow-related"),
                *acl("neutron_pg_drop", "from-lport", 1001, "inport == @neutron_pg_drop && ip",
                     "drop"),
                *acl("neutron_pg_drop", "to-lport", 1001, "outport == @neutron_pg_drop && ip",
                     "drop")]
        ovn.nbctl(*cmds)
        batch: list[str] = []
        local: dict[str, list[str]] = {chassis_name(c): [] for c in range(args.real)}
        binds: dict[str, str] = {}
        names = [f"m{i}" for i in range(n)]
        for i, name in enumerate(names):
            batch += lsp_cmds("net", name, member_mac(i), member_ip(i))
            ch = chassis_name(i % args.chassis)
            if ch in local:
                local[ch].append(name)
            else:
                binds[name] = ch
            if len(batch) > 3000:
                ovn.nbctl(*batch[1:], timeout=900)
                batch = []
        if batch:
            ovn.nbctl(*batch[1:], timeout=900)
        ovn.nbctl("pg-set-ports", "pg_sg", *names, "--", "pg-set-ports", "neutron_pg_drop",
                  *names, timeout=900)
        ovn.nbctl("sync", wait="sb", timeout=900)
        bind_phantoms(ovn, binds)
        for node in nodes:
            plug(node, local[node.name], prefix="m")
        if any(local.values()):
            ovn.wait_up([p for ps in local.values() for p in ps], timeout=900)
        ovn.nbctl("sync", wait="hv", timeout=900)
        stages = ovn_stages(ovn)
        filt = ovn_filter_tables(stages)
        wait_stable(nodes, True, n, filt)
        fig.build_s = time.monotonic() - t0
        for node in nodes:
            fig.local[node.name] = len(local[node.name])
            count_flows(dump(node, True), filt, fig, node.name)
        print(f"  OVN  N={n}: built and installed in {fig.build_s:.0f} s; flows per real "
              f"chassis {list(fig.flows.values())}", flush=True)

        client = PgClient(ovn.nb_db)
        phantoms = [chassis_name(c) for c in range(args.real, args.chassis)]

        def join(j: int) -> str:
            assert client is not None
            i = n + j
            client.create_member("net", f"m{i}", member_mac(i), member_ip(i),
                                 ("pg_sg", "neutron_pg_drop"))
            return member_ip(i)

        def bind(j: int) -> None:  # untimed: the port lands on its (phantom) chassis
            bind_phantoms(ovn, {f"m{n + j}": phantoms[j % len(phantoms)]})

        pids = [int((node.rundir / "ovn-controller.pid").read_text()) for node in nodes]
        northd = int((ovn.rundir / "northd.pid").read_text())
        time_joins(nodes, stages["ls_out_acl"], args.joins, join, bind, pids, northd, fig)
        ovn.nbctl("sync", wait="hv", timeout=300)
        wait_stable(nodes, True, n + args.joins, filt)
        fig.join_flows = statistics.mean(
            len(dump(node, True)) - fig.flows[node.name] for node in nodes) / args.joins
        if conn is not None and len(nodes) >= 2:
            pair = ovn_tcp(ovn, client, bed, nodes, args, conn)
        return fig
    except Exception as e:
        traceback.print_exc()
        fig.error = f"{type(e).__name__}: {str(e)[:200]}"
        return fig
    finally:
        try:
            if pair is not None:
                pair.stop()
            if client is not None:
                client.close()
            ovn.stop()
        finally:
            bed.teardown()


def bind_phantoms(ovn: OvnPeer, binds: dict[str, str]) -> None:
    cmds: list[str] = []
    for port, ch in binds.items():
        cmds += ["--", "lsp-bind", port, ch]
        if len(cmds) > 3000:
            ovn.sbctl(*cmds[1:])
            cmds = []
    if cmds:
        ovn.sbctl(*cmds[1:])


def ovn_tcp(ovn: OvnPeer, client: PgClient, bed: Testbed, nodes: list[Node],
            args: argparse.Namespace, conn: ConnFigures) -> TcpPair:
    srv_mac, cli_mac = "fa:16:3f:00:00:10", "fa:16:3f:00:00:11"
    ovn.nbctl("ls-add", "tcpnet", *lsp_cmds("tcpnet", "srv", srv_mac, f"{TCP_NET}.10"),
              *lsp_cmds("tcpnet", "cli", cli_mac, f"{TCP_NET}.11"),
              "--", "pg-add", "pg_web",
              *acl("pg_web", "from-lport", 1002, "inport == @pg_web && ip4", "allow-related"),
              *acl("pg_web", "to-lport", 1002,
                   f"outport == @pg_web && ip4 && tcp && tcp.dst >= {TCP_PORTS.start} && "
                   f"tcp.dst <= {TCP_PORTS.stop - 1}",
                   "allow-related"))
    srv = bed.add_vm(nodes[0], "srv", srv_mac, f"{TCP_NET}.10/24", "srv")
    cli = bed.add_vm(nodes[1], "cli", cli_mac, f"{TCP_NET}.11/24", "cli")
    ovn.wait_up(["srv", "cli"])
    ovn.nbctl("sync", wait="hv")

    def switch(on: bool) -> Callable[[], None]:
        def apply() -> None:
            client.set_groups("srv", {"pg_web": on, "neutron_pg_drop": on})
            ovn.nbctl("sync", wait="hv")
            time.sleep(0.5)
        return apply

    pair = TcpPair(srv.netns, cli.netns, srv.ip)
    print("  OVN: TCP connection rate ...", flush=True)
    try:
        pair.measure(conn, {"none": switch(False), "group": switch(True)},
                     args.conn_seconds, args.conn_rounds)
    except Exception as e:
        traceback.print_exc()
        conn.error = f"{type(e).__name__}: {str(e)[:200]}"
    return pair


# --- report -------------------------------------------------------------------------------
def mean(d: dict[str, int]) -> float:
    return statistics.mean(d.values()) if d else 0.0


def report(sizes: list[int], ours: Side, theirs: Side | None, args: argparse.Namespace
           ) -> None:
    def val(side: Side | None, n: int, fn: Callable[[SizeFigures], Any]) -> float | str:
        if side is None:
            return "-"
        f = side.sizes.get(n)
        if f is None or f.error is not None:
            return "failed" if f is not None else "-"
        return fn(f)

    peer = f"OVN {ovn_version()}" if theirs else "OVN not run"
    rows: list[tuple[str, float | str, float | str]] = []
    prev: int | None = None
    for n in sizes:
        rows += [
            (f"N={n}: flows per real chassis", val(ours, n, lambda f: mean(f.flows)),
             val(theirs, n, lambda f: mean(f.flows))),
            ("  in the filter stages", val(ours, n, lambda f: mean(f.filter_flows)),
             val(theirs, n, lambda f: mean(f.filter_flows))),
            ("  of those, naming a member address",
             val(ours, n, lambda f: mean(f.addr_flows)),
             val(theirs, n, lambda f: mean(f.addr_flows))),
            ("  total per member", val(ours, n, lambda f: mean(f.flows) / f.n),
             val(theirs, n, lambda f: mean(f.flows) / f.n)),
            ("  added per joined member (remote chassis)",
             val(ours, n, lambda f: f.join_flows), val(theirs, n, lambda f: f.join_flows)),
        ]
        if prev is not None:
            rows.append((f"  growth per member since N={prev}",
                         val(ours, n, partial(slope, ours, prev)),
                         val(theirs, n, partial(slope, theirs, prev))))
        prev = n
    print_table(f"\nflows per real chassis (mean of {args.real}; {args.chassis} chassis, members "
                f"i on chassis i % {args.chassis}); ours vs {peer}", rows)
    print("  filter stages: ours secgroup_out_ct/secgroup_out/secgroup_in_ct/secgroup_in; OVN "
          "the ls_in/ls_out *acl* and *stateful* stages (pre-ACL, hints, ACL, commit)")
    for n in sizes:
        for name, side in (("ours", ours), ("OVN", theirs)):
            f = side.sizes.get(n) if side else None
            if f is not None and f.error is None and any(v != n for v in f.addrs.values()):
                print(f"  CHECK {name} N={n}: distinct member addresses in the filter "
                      f"stages per chassis {f.addrs} (expected {n})")
            if f is not None and f.error:
                print(f"  {name} N={n} failed: {f.error}")

    rows = []
    for n in sizes:
        rows += [
            (f"N={n}: join -> every chassis p50 (ms)",
             val(ours, n, lambda f: pct(f.join_ms, 50)),
             val(theirs, n, lambda f: pct(f.join_ms, 50))),
            ("  p99 (ms)", val(ours, n, lambda f: pct(f.join_ms, 99)),
             val(theirs, n, lambda f: pct(f.join_ms, 99))),
            ("  max (ms)", val(ours, n, lambda f: max(f.join_ms)),
             val(theirs, n, lambda f: max(f.join_ms))),
            ("  local controller CPU per join, per chassis (ms)",
             val(ours, n, lambda f: f.join_cpu_ms), val(theirs, n, lambda f: f.join_cpu_ms)),
            ("  OVN: ovn-northd CPU per join (ms)", "-",
             val(theirs, n, lambda f: f.central_cpu_ms if f.central_cpu_ms is not None
                 else "-")),
        ]
    print_table(f"\nmember join -> its address installed on every real chassis ({args.joins} "
                f"joins per N, one at a time; ours on {args.db} vs {peer})", rows)
    print("  from before the NB commit (ours: NbApi.create of the port; OVN: one ovsdbapp "
          "transaction, port + port groups) to the flow ADDED on the last of the "
          f"{args.real} chassis, seen by ovs-ofctl monitor; OVN binds the port to its phantom "
          "chassis after that, untimed (its CPU counted)")

    oc, tc = ours.conn, theirs.conn if theirs else None
    if oc is None and tc is None:
        return

    def rate(c: ConnFigures | None, mode: str, unstalled: bool = False) -> float | str:
        if c is None or not c.rates[mode]:
            return "-" if c is None or c.error is None else "failed"
        return statistics.mean((c.unstalled if unstalled else c.rates)[mode])

    def cost(c: ConnFigures | None) -> float | str:
        a, b = rate(c, "none"), rate(c, "group")
        if isinstance(a, float) and isinstance(b, float) and a:
            return (1 - b / a) * 100
        return "-"

    print_table(f"\nTCP connections/s, client VM -> server VM on another node, sequential "
                f"short connections ({args.conn_rounds} x {args.conn_seconds:g} s per mode, "
                "mean)", [
                    ("server port in no group", rate(oc, "none"), rate(tc, "none")),
                    ("server port in a stateful group allowing it", rate(oc, "group"),
                     rate(tc, "group")),
                    ("cost of the group (% fewer connections/s)", cost(oc), cost(tc)),
                    ("failed connections (no group / group)",
                     f"{oc.failed['none']}/{oc.failed['group']}" if oc else "-",
                     f"{tc.failed['none']}/{tc.failed['group']}" if tc else "-"),
                    (f"in a group, the {CONNECT_TIMEOUT:g} s waits of failed ones left out",
                     rate(oc, "group", True), rate(tc, "group", True)),
                ])
    print(f"  group: egress any, ingress tcp {TCP_PORTS.start}-{TCP_PORTS.stop - 1} (OVN: pg_web "
          "allow-related ACLs + "
          "neutron_pg_drop); the client port is in no group; OVN sends the whole switch "
          "through conntrack once one of its ports has a stateful ACL")
    for name, c in (("ours", oc), ("OVN", tc)):
        if c is not None and c.error:
            print(f"  {name} TCP failed: {c.error}")


def slope(side: Side | None, prev: int, f: SizeFigures) -> float | str:
    p = side.sizes.get(prev) if side else None
    if p is None or p.error is not None:
        return "-"
    return (mean(f.flows) - mean(p.flows)) / (f.n - p.n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000,5000",
                    help="members of the group, comma-separated")
    ap.add_argument("--chassis", type=int, default=50, help="chassis in all (real + phantom)")
    ap.add_argument("--real", type=int, default=3, help="real chassis (simulated nodes)")
    ap.add_argument("--joins", type=int, default=20, help="members joining, per N")
    ap.add_argument("--conn-seconds", type=float, default=5.0,
                    help="seconds per TCP connection-rate run (0: skip)")
    ap.add_argument("--conn-rounds", type=int, default=2,
                    help="rounds of (no group, group) runs")
    ap.add_argument("--db", choices=("redis", "etcd"), default="redis", help="our NB")
    ap.add_argument("--peer", choices=("ovn", "none"), default=None,
                    help="also run OVN (default: when installed)")
    args = ap.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if args.real < 2 or args.chassis <= args.real:
        ap.error("need --real >= 2 and --chassis > --real")
    missing = ovn_missing()
    peer = args.peer or ("none" if missing else "ovn")
    if peer == "ovn" and missing:
        print(f"OVN not installed: {INSTALL}  (missing: {', '.join(missing)})")
        sys.exit(2)
    ours, theirs = Side(), Side() if peer == "ovn" else None
    t_start = time.monotonic()
    for k, n in enumerate(sizes):
        tcp = k == 0 and args.conn_seconds > 0
        print(f"N={n} ...", flush=True)
        if tcp:
            ours.conn = ConnFigures()
        ours.sizes[n] = run_ours(n, args, ours.conn if tcp else None)
        if theirs is not None:
            if tcp:
                theirs.conn = ConnFigures()
            theirs.sizes[n] = run_ovn(n, args, theirs.conn if tcp else None)
        print(f"N={n} done at {time.monotonic() - t_start:.0f} s", flush=True)
    report(sizes, ours, theirs, args)
    print(f"\n(run took {time.monotonic() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
