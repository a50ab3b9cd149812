"""OVN (23.03 on Debian 12) as the side-by-side peer of bench/l3_bench.py and
bench/port_ping_bench.py: same machine, same test bed shape, same run.

Central (NB + SB ovsdb-server, ovn-northd) runs in the test bed's ``<prefix>net`` namespace;
the SB listens on tcp:10.255.0.1:6642, an address this module gives to the underlay bridge
'und' there, so every node reaches it over its underlay (br-phy). Each OVN chassis is a
Testbed node whose OVSDB gets the ovn-* external_ids and whose namespace runs ovn-controller,
which creates br-int itself. Ports are bound by external_ids:iface-id on a VM's veth
(Testbed.add_vm). ``ovn-nbctl --wait=hv`` is the barrier: it returns once every chassis
has installed the flows of that NB change.

Every daemon is started with a pid file and stopped by that pid; the Testbed teardown then
removes the namespaces and the run directory. Needs root and ``ovn-central ovn-host``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import first_reply
from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.ovn_northbound import impl_idl

from dragonflow.sim.testbed import BR_INT, Node, Testbed, TestbedError, kill_pid, sh

BINARIES = ("ovn-northd", "ovn-controller", "ovn-nbctl", "ovn-sbctl", "ovsdb-server")
INSTALL = "apt-get install -y ovn-central ovn-host"
NB_SCHEMA = Path("/usr/share/ovn/ovn-nb.ovsschema")
SB_SCHEMA = Path("/usr/share/ovn/ovn-sb.ovsschema")
CENTRAL_IP = "10.255.0.1"
SB_PORT = 6642


def ovn_missing() -> list[str]:
    """What is missing to run the OVN peer (empty when it can run)."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    return missing + [str(s) for s in (NB_SCHEMA, SB_SCHEMA) if not s.exists()]


def ovn_version() -> str:
    return sh(["ovn-nbctl", "--version"]).stdout.splitlines()[0].split()[-1]


def print_table(title: str, rows: Sequence[tuple[str, float | str, float | str]]) -> None:
    """Rows of (figure, ours, OVN) with the ratio OVN/ours where both are numbers."""
    print(title)
    print(f"  {'':52s} {'ours':>10s} {'OVN':>10s} {'OVN/ours':>9s}")
    for name, ours, theirs in rows:
        ratio = (f"{theirs / ours:8.1f}x" if isinstance(ours, float | int) and ours
                 and isinstance(theirs, float | int) else "")
        print(f"  {name:52s} {_fmt(ours):>10s} {_fmt(theirs):>10s} {ratio:>9s}")


def _fmt(v: float | str) -> str:
    if isinstance(v, str):
        return v
    return f"{v:.0f}" if isinstance(v, int) or abs(v) >= 100 else f"{v:.1f}"




@dataclass
class OvnPeer:
    """OVN central in ``<prefix>net`` plus ovn-controller on chosen nodes of ``bed``."""

    bed: Testbed
    chassis: dict[str, Node] = field(default_factory=dict)
    pidfiles: list[Path] = field(default_factory=list)
    rundir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.rundir = self.bed.rundir / "ovn-central"

    @property
    def nb_db(self) -> str:
        return f"unix:{self.rundir / 'nb.sock'}"

    @property
    def sb_db(self) -> str:
        return f"unix:{self.rundir / 'sb.sock'}"

    def _env(self) -> dict[str, str]:
        d = str(self.rundir)
        return {**os.environ, "OVN_RUNDIR": d, "OVN_LOGDIR": d, "OVN_DBDIR": d,
                "OVS_RUNDIR": d, "OVS_LOGDIR": d, "OVS_DBDIR": d}

    # -- central -------------------------------------------------------------------------
    def start_central(self) -> None:
        """NB and SB ovsdb-server and ovn-northd inside ``<prefix>net`` (call after the
        first bed.add_node(), which creates that namespace)."""
        ns, d = self.bed.net_ns, self.rundir
        d.mkdir()
        sh(["ip", "-n", ns, "addr", "add", f"{CENTRAL_IP}/24", "dev", "und"])
        # the nodes' userspace datapath never fills in a checksum the kernel left to the
        # NIC: without this, TCP from here (the SB's SYN-ACK) is dropped on the node side
        sh(["ip", "netns", "exec", ns, "ethtool", "-K", "und", "tx", "off"])
        for db, schema, remote in (("nb", NB_SCHEMA, None),
                                   ("sb", SB_SCHEMA, f"ptcp:{SB_PORT}:{CENTRAL_IP}")):
            sh(["ovsdb-tool", "create", str(d / f"{db}.db"), str(schema)])
            remotes = [f"--remote=punix:{d / f'{db}.sock'}"]
            if remote:
                remotes.append(f"--remote={remote}")
            self._daemon(ns, [
                "ovsdb-server", str(d / f"{db}.db"), *remotes, f"--unixctl={d / f'{db}.ctl'}",
                f"--log-file={d / f'{db}.log'}"], d / f"{db}.pid", self._env())
        self._daemon(ns, [
            "ovn-northd", f"--ovnnb-db={self.nb_db}", f"--ovnsb-db={self.sb_db}",
            f"--unixctl={d / 'northd.ctl'}", f"--log-file={d / 'northd.log'}"],
            d / "northd.pid", self._env())
        self.nbctl("init")
        self.sbctl("init")
        self.nbctl("sync", wait="sb")

    def _daemon(self, netns: str, argv: list[str], pidfile: Path, env: dict[str, str]) -> None:
        sh(["ip", "netns", "exec", netns, *argv, f"--pidfile={pidfile}", "--detach",
            "--no-chdir"], env=env)
        self.pidfiles.append(pidfile)

    def nbctl(self, *args: str, wait: str | None = None, timeout: float = 120.0) -> str:
        w = [f"--wait={wait}"] if wait else []
        return sh(["ovn-nbctl", f"--db={self.nb_db}", f"--timeout={int(timeout)}", *w, *args],
                  env=self._env(), timeout=timeout + 10).stdout.strip()

    def sbctl(self, *args: str) -> str:
        return sh(["ovn-sbctl", f"--db={self.sb_db}", "--timeout=60", *args],
                  env=self._env(), timeout=70).stdout.strip()

    # -- chassis -------------------------------------------------------------------------
    def configure_chassis(self, node: Node, physnets: Sequence[str] = ()) -> None:
        """Point the node's OVSDB at the SB; ovn-controller is not started yet. Each of
        ``physnets`` gets the node's bridge 'br-<physnet>' (uplink on the test bed's
        physical switch) in ovn-bridge-mappings."""
        for p in physnets:
            self.bed.attach_physnet(node, p, f"br-{p}")
        mappings = ",".join(f"{p}:br-{p}" for p in physnets)
        node.vsctl("set", "Open_vSwitch", ".",
                   f"external_ids:ovn-remote=tcp:{CENTRAL_IP}:{SB_PORT}",
                   "external_ids:ovn-encap-type=geneve",
                   f"external_ids:ovn-encap-ip={node.underlay_ip}",
                   f"external_ids:ovn-bridge={BR_INT}",
                   "external_ids:ovn-bridge-datapath-type=netdev",
                   *([f"external_ids:ovn-bridge-mappings={mappings}"] if mappings else []))

    def start_controller(self, node: Node, timeout: float = 60.0) -> None:
        """ovn-controller inside the node namespace; returns once it has made br-int."""
        d = node.rundir
        env = {**node.env(), "OVN_RUNDIR": str(d), "OVN_LOGDIR": str(d)}
        self._daemon(node.netns, ["ovn-controller", node.db_target,
                                  f"--log-file={d / 'ovn-controller.log'}"],
                     d / "ovn-controller.pid", env)
        self.chassis[node.name] = node
        sh(["ovs-vsctl", f"--timeout={int(timeout)}", "wait-until", "Bridge", BR_INT],
           env=node.env(), timeout=timeout + 10)

    def add_chassis(self, name: str, underlay_ip: str, physnets: Sequence[str] = ()) -> Node:
        node = self.bed.add_node(name, underlay_ip)
        if not self.rundir.exists():
            self.start_central()
        self.configure_chassis(node, physnets)
        self.start_controller(node)
        return node

    def wait_up(self, ports: Sequence[str], timeout: float = 120.0) -> None:
        """Until every logical switch port is up (bound and its flows installed)."""
        cmds: list[str] = []
        for p in ports:
            cmds += ["--", "wait-until", "Logical_Switch_Port", p, "up=true"]
        self.nbctl(*cmds[1:], timeout=timeout)

    def flow_count(self, node: Node) -> int:
        out = node.ofctl("-O", "OpenFlow15", "dump-flows", BR_INT)
        return sum(1 for line in out.splitlines() if "actions=" in line)

    def stop(self) -> None:
        """Kill every daemon this peer started, newest first, by its pid file (only if that
        pid still runs a command line naming this run's directory)."""
        for pidfile in reversed(self.pidfiles):
            try:
                pid = int(pidfile.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
            if str(self.bed.rundir).encode() in cmdline:
                kill_pid(pid)
        self.pidfiles.clear()


def lsp_cmds(switch: str, port: str, mac: str, ip: str) -> list[str]:
    """ovn-nbctl commands for a VM port with anti-spoofing (as our ports have by default)."""
    return ["--", "lsp-add", switch, port, "--", "lsp-set-addresses", port, f"{mac} {ip}",
            "--", "lsp-set-port-security", port, f"{mac} {ip}"]


def pfx(i: int) -> str:
    """The /24 of subnet i without the last octet (the same numbering as l3_bench)."""
    return f"10.{i // 250}.{i % 250}"


def lrp_mac(i: int) -> str:
    """The MAC our l3_bench gives router port i."""
    return f"fa:16:3e:aa:{i // 256:02x}:{i % 256:02x}"


@dataclass
class L3Figures:
    subnets: int
    topo_s: float            # N switches+ports created -> all up and --wait=hv synced
    plumb_s: float           # plugging the N VMs before that (Testbed.add_vm), not in topo_s
    router_ms: float         # ovn-nbctl --wait=hv of router + N interfaces
    before: dict[str, int]
    after: dict[str, int]
    new_up_ms: float         # hv4: ovn-controller start -> its VM port up
    new_ping_ms: float       # hv4: ovn-controller start -> first ping via the router
    new_flows: int


def run_l3(n: int, prefix: str) -> L3Figures:
    """A router with ``n`` subnets, one VM port per subnet spread over hv1..hv3, then a
    new chassis hv4 with a VM on subnet 0."""
    bed = Testbed(prefix)
    ovn = OvnPeer(bed)
    try:
        nodes = [ovn.add_chassis(f"hv{i + 1}", f"10.255.0.{11 + i}") for i in range(3)]
        macs = [f"fa:16:3e:01:{i // 256:02x}:{i % 256:02x}" for i in range(n)]
        # plug every VM first (timed apart): the timed part is NB create -> all installed
        tp = time.monotonic()
        vms = [bed.add_vm(nodes[i % 3], f"v{i}", macs[i], f"{pfx(i)}.10/24", f"p{i}",
                          gateway=f"{pfx(i)}.1") for i in range(n)]
        plumb_s = time.monotonic() - tp
        cmds: list[str] = []
        for i in range(n):
            cmds += ["--", "ls-add", f"ls{i}", *lsp_cmds(f"ls{i}", f"p{i}", macs[i],
                                                          f"{pfx(i)}.10")]
        t0 = time.monotonic()
        ovn.nbctl(*cmds[1:])
        ovn.wait_up([f"p{i}" for i in range(n)])
        ovn.nbctl("sync", wait="hv")
        topo_s = time.monotonic() - t0
        before = {nd.name: ovn.flow_count(nd) for nd in nodes}
        cmds = ["lr-add", "lr0"]
        for i in range(n):
            cmds += ["--", "lrp-add", "lr0", f"lrp{i}", lrp_mac(i), f"{pfx(i)}.1/24",
                     "--", "lsp-add", f"ls{i}", f"rp{i}", "--", "lsp-set-type", f"rp{i}",
                     "router", "--", "lsp-set-addresses", f"rp{i}", "router",
                     "--", "lsp-set-options", f"rp{i}", f"router-port=lrp{i}"]
        t1 = time.monotonic()
        ovn.nbctl(*cmds, wait="hv")
        router_ms = (time.monotonic() - t1) * 1000
        after = {nd.name: ovn.flow_count(nd) for nd in nodes}
        if not vms[0].ping(vms[1].ip, timeout=3):
            raise TestbedError("OVN: routing from v0 to v1 does not work")
        hv4 = bed.add_node("hv4", "10.255.0.14")
        ovn.configure_chassis(hv4)
        ovn.nbctl(*lsp_cmds("ls0", "pnew", "fa:16:3e:02:00:01", "10.0.0.77")[1:], wait="hv")
        t2 = time.monotonic()
        ovn.start_controller(hv4)
        vnew = bed.add_vm(hv4, "vnew", "fa:16:3e:02:00:01", "10.0.0.77/24", "pnew",
                          gateway="10.0.0.1")
        # a static neighbour: else the first ARP lost to a flow not yet installed costs
        # the kernel's 1 s retransmit, and we would time that instead of OVN
        vnew.exec(f"ip neigh replace 10.0.0.1 lladdr {lrp_mac(0)} dev eth0")
        ovn.wait_up(["pnew"])
        new_up_ms = (time.monotonic() - t2) * 1000
        new_ping_ms = first_reply(vnew, vms[1].ip, t2) * 1000
        ovn.nbctl("sync", wait="hv")
        return L3Figures(n, topo_s, plumb_s, router_ms, before, after, new_up_ms,
                         new_ping_ms, ovn.flow_count(hv4))
    finally:
        try:
            ovn.stop()
        finally:
            bed.teardown()


class _NbIdl(connection.OvsdbIdl):  # type: ignore[misc]
    """NB IDL that notes when each Logical_Switch_Port is first seen up (on the IDL thread,
    as the update arrives)."""

    up_at: dict[str, float]

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        if (event != "delete" and row._table.name == "Logical_Switch_Port"
                and list(row.up) == [True]):
            self.up_at.setdefault(row.name, time.monotonic())


class _NbApi(impl_idl.OvnNbApiIdlImpl):  # type: ignore[misc]
    """ovsdbapp's OVN NB API with a per-instance connection (ovsdbapp keeps one per class)."""

    @property
    def ovsdb_connection(self) -> Any:
        return self.__dict__.get("_peer_connection")

    @ovsdb_connection.setter
    def ovsdb_connection(self, conn: Any) -> None:
        self.__dict__["_peer_connection"] = conn


class NbClient:
    """One persistent ovsdbapp connection to the NB, as Neutron's OVN driver holds: a port
    create is one transaction, and 'up' is seen as the NB update arrives."""

    def __init__(self, nb_db: str) -> None:
        idl = _NbIdl.from_server(nb_db, "OVN_Northbound",
                                 helper_tables=("Logical_Switch", "Logical_Switch_Port"))
        idl.up_at = {}
        self.idl = idl
        self.conn = connection.Connection(idl, timeout=60)
        self.api = _NbApi(self.conn)

    def create_port(self, switch: str, port: str, mac: str, ip: str) -> None:
        """The port with addresses and anti-spoofing, committed to the NB."""
        addr = [f"{mac} {ip}"]
        self.api.lsp_add(switch, port, addresses=addr, port_security=addr).execute(
            check_error=True)

    def wait_up(self, port: str, timeout: float = 60.0) -> float:
        """Monotonic time at which ``port`` was first seen up."""
        deadline = time.monotonic() + timeout
        while port not in self.idl.up_at:
            if time.monotonic() > deadline:
                raise TestbedError(f"OVN port {port} not up within {timeout}s")
            time.sleep(0.002)
        return self.idl.up_at[port]

    def close(self) -> None:
        self.conn.stop(timeout=10)


@dataclass
class PingFigures:
    ports: int
    to_up_ms: list[float]
    to_ping_ms: list[float]
    commit_ms: list[float]   # of which: the NB transaction that creates the port
    base: dict[str, int]
    flows: dict[str, int]


def run_port_ping(ports: int, prefix: str) -> PingFigures:
    """A target VM on hv1; per new port on hv2: plug the VM, then create the logical port;
    time create -> port up and create -> first ping reply from the target."""
    bed = Testbed(prefix)
    ovn = OvnPeer(bed)
    nb: NbClient | None = None
    try:
        hv1 = ovn.add_chassis("hv1", "10.255.0.11")
        hv2 = ovn.add_chassis("hv2", "10.255.0.12")
        ovn.nbctl("ls-add", "net", *lsp_cmds("net", "target", "fa:16:3e:ff:00:01", "10.9.0.2"),
                  wait="hv")
        target = bed.add_vm(hv1, "target", "fa:16:3e:ff:00:01", "10.9.0.2/16", "target")
        ovn.wait_up(["target"])
        ovn.nbctl("sync", wait="hv")
        base = {n.name: ovn.flow_count(n) for n in (hv1, hv2)}
        nb = NbClient(ovn.nb_db)
        to_up: list[float] = []
        to_ping: list[float] = []
        commit: list[float] = []
        for i in range(ports):
            name, mac = f"p{i}", f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}"
            vm = bed.add_vm(hv2, name, mac, f"10.9.1.{i + 10}/16", name)
            vm.exec(f"ip neigh replace {target.ip} lladdr {target.mac} dev eth0")
            t0 = time.monotonic()
            nb.create_port("net", name, mac, vm.ip)
            commit.append((time.monotonic() - t0) * 1000)
            to_ping.append(first_reply(vm, target.ip, t0) * 1000)
            to_up.append((nb.wait_up(name) - t0) * 1000)
        ovn.nbctl("sync", wait="hv")
        flows = {n.name: ovn.flow_count(n) for n in (hv1, hv2)}
        return PingFigures(ports, to_up, to_ping, commit, base, flows)
    finally:
        try:
            if nb is not None:
                nb.close()
            ovn.stop()
        finally:
            bed.teardown()
