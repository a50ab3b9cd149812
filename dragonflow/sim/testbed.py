"""A multi-node test bed on one machine: network namespaces, real OVS, real packets.

Shape (see the project's TESTBED notes)::

    netns <p>net   Linux bridge 'und' (underlay, MTU 1600); one veth 'u-<node>' per node
    netns <p><hv>  its own ovsdb-server + ovs-vswitchd (netdev datapath); br-phy owns the
                   underlay veth 'und0' and carries the node's underlay IP (native tunneling
                   needs the IP on an OVS internal port); br-int is made by the controller
                   (or by ``node.ensure_br_int()`` in tests without one)
    netns <p><vm>  a "VM": 'eth0' (tx offload off) <-> 'tap<vm>' on its node's br-int

Physical (provider) networks, for north-south traffic (``add_physnet``): the physical
switch is an OVS of its own in ``<p>net`` (its ovsdb-server + ovs-vswitchd, run dir 'sw';
this kernel has neither 802.1Q interfaces nor VLAN-filtering Linux bridges), one standalone
bridge 'x-<physnet>' per physical network (a learning, VLAN-aware switch); each node that
maps the physnet gets an OVS bridge of its own (``attach_physnet``, e.g. 'br-ex',
standalone) whose uplink veth 'x-<physnet>' is a trunk port of that switch;
``add_outside`` puts a host of the outside world on it ("outside": an address on the
external subnet, nothing else), untagged or as an access port of a VLAN.

``<p>`` is a unique prefix per run ('df' + 4 hex digits), so parallel or leftover runs never
clash. Every daemon is started by this module with a pid file in the run directory and is
killed by that pid only; teardown then kills what is left in our own namespaces, deletes them
and removes the run directory. Teardown is idempotent.

Used by ``df demo`` (simulated compute nodes) and by the tests (the ``testbed`` fixture in
tests/fixtures/testbed.py).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from dragonflow.ovs.ovsdb import Ovsdb

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
BINARIES = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovs-appctl",
            "ip", "ethtool", "ping")
UNDERLAY_MTU = 1600
BR_INT = "br-int"
BR_PHY = "br-phy"
DEFAULT_TUNNELS = ("vxlan", "geneve")


class TestbedError(Exception):
    """A test-bed command failed; the message carries the command and its stderr."""

    __test__ = False


def sh(cmd: Sequence[str], *, env: dict[str, str] | None = None, check: bool = True,
       timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a command, capture text output; raise TestbedError with stderr on failure."""
    try:
        proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise TestbedError(f"timed out after {timeout}s: {' '.join(cmd)}") from e
    if check and proc.returncode != 0:
        raise TestbedError(f"rc={proc.returncode}: {' '.join(cmd)}\n{proc.stderr.strip()}")
    return proc


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is as good as dead


def kill_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns when it is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)
    raise TestbedError(f"pid {pid} survived SIGKILL")


def _pid_from_file(pidfile: Path, must_contain: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and its command line names our run."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid if must_contain in cmdline and _alive(pid) else None


def new_prefix() -> str:
    return "df" + secrets.token_hex(2)


@dataclass
class Node:
    """One hypervisor: its own OVSDB + ovs-vswitchd inside netns ``<prefix><name>``."""

    bed: Testbed = field(repr=False)
    name: str
    index: int
    netns: str
    underlay_ip: str
    underlay_cidr: str
    rundir: Path

    @property
    def db_sock(self) -> Path:
        return self.rundir / "db.sock"

    @property
    def db_target(self) -> str:
        return f"unix:{self.db_sock}"

    @property
    def controller_target(self) -> str:
        """The passive OpenFlow target of br-int that a local controller dials."""
        return f"punix:{self.rundir / BR_INT}.df"

    def env(self) -> dict[str, str]:
        """Environment that points every ovs-* tool at this node."""
        d = str(self.rundir)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d,
                "OVS_SYSCONFDIR": d}

    def vsctl(self, *args: str) -> str:
        return sh(["ovs-vsctl", "--timeout=20", *args], env=self.env()).stdout.strip()

    def ofctl(self, *args: str) -> str:
        """ovs-ofctl; speaks OpenFlow 1.3 unless the caller passes -O/--protocols."""
        proto = [] if any(a == "-O" or a.startswith("--protocols") for a in args) \
            else ["-O", "OpenFlow13"]
        return sh(["ovs-ofctl", *proto, *args], env=self.env()).stdout.strip()

    def appctl(self, *args: str) -> str:
        return sh(["ovs-appctl", *args], env=self.env()).stdout.strip()

    def ofport(self, iface: str) -> int:
        return int(self.vsctl("get", "Interface", iface, "ofport"))

    def ensure_br_int(self, tunnel_types: Sequence[str] = DEFAULT_TUNNELS,
                      datapath_id: str | None = None) -> dict[str, int]:
        """What the controller does at start: br-int with tunnels; returns their ofports."""
        with Ovsdb(self.db_target) as db:
            return db.ensure_integration_bridge(
                BR_INT, "netdev", tunnel_types, self.controller_target,
                datapath_id if datapath_id is not None else f"{self.index:016x}")

    def netns_exec(self, cmd: Sequence[str], check: bool = True,
                   timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return sh(["ip", "netns", "exec", self.netns, *cmd], env=self.env(), check=check,
                  timeout=timeout)

    def attach_physnet(self, physnet: str, bridge: str = "br-ex") -> None:
        """The node's own bridge ``bridge`` for ``physnet`` (as an operator makes it before
        mapping it: ``[controller] bridge_mappings = <physnet>:<bridge>``), its uplink
        plugged into the physical network's switch."""
        self.bed.attach_physnet(self, physnet, bridge)


@dataclass
class Host:
    """A host of the outside world on a physical network (namespace, 'eth0')."""

    name: str
    netns: str
    ip: str
    mac: str
    dev: str = "eth0"

    def exec(self, cmd: str | Sequence[str], check: bool = False,
             timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return sh(["ip", "netns", "exec", self.netns, *argv], check=check, timeout=timeout)

    def ping(self, ip: str, count: int = 1, timeout: float = 2.0) -> bool:
        return _ping(self.exec, ip, count, timeout)


def _ping(run: object, ip: str, count: int, timeout: float) -> bool:
    """True if at least one of ``count`` echo requests got a reply within ``timeout``."""
    fam = "-6" if ":" in ip else "-4"
    wait = max(1, int(timeout + 0.999))
    proc = run(["ping", fam, "-n", "-q", "-c", str(count), "-i", "0.2",  # type: ignore[operator]
                "-w", str(wait), ip], timeout=wait + 10)
    # ping exits 1 when fewer than count replies arrived before the deadline, so read
    # the summary: any reply counts (and a negative check fails on a single reply)
    m = re.search(r"(\d+) (?:packets )?received", proc.stdout)
    return bool(m and int(m.group(1)) > 0)


@dataclass
class Vm:
    """A namespace with one NIC 'eth0' plugged into br-int of ``node`` as ``port``."""

    name: str
    node: Node
    netns: str
    port: str
    mac: str
    ip: str
    iface_id: str
    ipv6: str | None = None

    def exec(self, cmd: str | Sequence[str], check: bool = False,
             timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a command inside the VM (a string goes through ``sh -c``)."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return sh(["ip", "netns", "exec", self.netns, *argv], check=check, timeout=timeout)

    def dhclient(self, timeout: int = 15) -> subprocess.CompletedProcess[str]:
        """Ask for an IPv4 lease with ISC dhclient, as a booting VM does: binds it (address,
        routes, MTU) in the VM, its resolv.conf is the VM's own (/etc/netns/<ns>/resolv.conf,
        which ``ip netns exec`` mounts over /etc/resolv.conf). Returns dhclient's result
        (exit 0: bound; it keeps running for renewals until the VM goes)."""
        etc = Path("/etc/netns") / self.netns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("")
        base = self.node.rundir / f"dhclient-{self.name}"
        Path(f"{base}.conf").write_text(
            "option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;\n"
            f"timeout {timeout};\nretry 1;\n"
            "request subnet-mask, broadcast-address, routers, domain-name, "
            "domain-name-servers, host-name, interface-mtu, rfc3442-classless-static-routes;\n")
        proc = self.exec(["dhclient", "-4", "-1", "-v", "-cf", f"{base}.conf", "-lf",
                          f"{base}.leases", "-pf", f"{base}.pid", "eth0"], timeout=timeout + 15)
        self.ip = self.exec(["sh", "-c", "ip -4 -o addr show dev eth0 | awk '{print $4}'"]
                            ).stdout.strip().split("/")[0]
        return proc

    def dhclient6(self, stateless: bool = False, timeout: int = 15
                  ) -> subprocess.CompletedProcess[str]:
        """ISC dhclient for IPv6: an address (IA_NA) from DHCPv6, or with ``stateless``
        only the options (INFORMATION-REQUEST); resolv.conf as in :meth:`dhclient`."""
        etc = Path("/etc/netns") / self.netns
        etc.mkdir(parents=True, exist_ok=True)
        if not (etc / "resolv.conf").exists():
            (etc / "resolv.conf").write_text("")
        base = self.node.rundir / f"dhclient6-{self.name}"
        Path(f"{base}.conf").write_text(
            f"timeout {timeout};\nretry 1;\n"
            "request dhcp6.name-servers, dhcp6.domain-search;\n")
        deadline = time.monotonic() + 10  # its link-local address must be past DAD
        while time.monotonic() < deadline:
            ll = self.exec(["ip", "-6", "addr", "show", "dev", "eth0", "scope", "link"]).stdout
            if "inet6" in ll and "tentative" not in ll:
                break
            time.sleep(0.1)
        argv = ["dhclient", "-6", "-1", "-v", "-cf", f"{base}.conf", "-lf", f"{base}.leases",
                "-pf", f"{base}.pid"] + (["-S"] if stateless else []) + ["eth0"]
        return self.exec(argv, timeout=timeout + 15)

    def resolv_conf(self) -> str:
        path = Path("/etc/netns") / self.netns / "resolv.conf"
        return path.read_text() if path.exists() else ""

    def ping(self, ip: str, count: int = 1, timeout: float = 2.0) -> bool:
        """True if at least one of ``count`` echo requests got a reply within ``timeout``."""
        return _ping(self.exec, ip, count, timeout)

    def ofport(self) -> int:
        return self.node.ofport(self.port)


@dataclass
class Testbed:
    """Nodes and VMs of one test run; ``teardown()`` removes every trace of it."""

    __test__: ClassVar[bool] = False  # not a test class, whatever pytest thinks of the name

    prefix: str
    base_dir: Path | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    vms: dict[str, Vm] = field(default_factory=dict)
    physnets: set[str] = field(default_factory=set)
    hosts: dict[str, Host] = field(default_factory=dict)
    switch: Node | None = None  # the physical networks' switch (an OVS in <p>net)
    rundir: Path = field(init=False)
    _net_ready: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not self.prefix or len(self.prefix) > 8:
            raise ValueError(f"prefix must be 1..8 chars, got {self.prefix!r}")
        self.rundir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-", dir=self.base_dir))

    @property
    def net_ns(self) -> str:
        return f"{self.prefix}net"

    def _claim(self, name: str, max_len: int) -> str:
        if not name or len(name) > max_len or not name.replace("-", "").isalnum():
            raise ValueError(f"name {name!r}: 1..{max_len} chars of [a-z0-9-]")
        if name in self.nodes or name in self.vms or name in self.hosts or name == "net":
            raise ValueError(f"name {name!r} already used in this test bed")
        return f"{self.prefix}{name}"

    def _ensure_net(self) -> None:
        if self._net_ready:
            return
        ns = self.net_ns
        sh(["ip", "netns", "add", ns])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "-n", ns, "link", "add", "und", "mtu", str(UNDERLAY_MTU), "type", "bridge"])
        sh(["ip", "-n", ns, "link", "set", "und", "up"])
        self._net_ready = True

    # -- nodes -------------------------------------------------------------------------
    def add_node(self, name: str, underlay_ip: str) -> Node:
        """A hypervisor with OVSDB, ovs-vswitchd and br-phy carrying ``underlay_ip`` (/24
        unless a prefix length is given). br-int is NOT created here."""
        netns = self._claim(name, 12)
        iface = ipaddress.ip_interface(underlay_ip if "/" in underlay_ip else underlay_ip + "/24")
        node = Node(self, name, len(self.nodes) + 1, netns, str(iface.ip), str(iface),
                    self.rundir / name)
        self.nodes[name] = node
        self._ensure_net()
        node.rundir.mkdir()
        sh(["ip", "netns", "add", netns])
        sh(["ip", "-n", netns, "link", "set", "lo", "up"])
        mtu = str(UNDERLAY_MTU)
        sh(["ip", "link", "add", "und0", "netns", netns, "mtu", mtu, "type", "veth",
            "peer", "name", f"u-{name}", "netns", self.net_ns, "mtu", mtu])
        sh(["ip", "-n", self.net_ns, "link", "set", f"u-{name}", "master", "und", "up"])
        sh(["ip", "-n", netns, "link", "set", "und0", "up"])
        sh(["ovsdb-tool", "create", str(node.rundir / "conf.db"), str(SCHEMA)])
        self._start_ovsdb_server(node)
        node.vsctl("--no-wait", "init", "--", "set", "Open_vSwitch", ".",
                   f"external_ids:system-id={name}")
        self._start_vswitchd(node)
        node.vsctl("add-br", BR_PHY, "--", "set", "Bridge", BR_PHY, "datapath_type=netdev",
                   f"other_config:hwaddr=02:ff:00:00:00:{node.index:02x}",
                   "--", "add-port", BR_PHY, "und0")
        self._address_br_phy(node)
        self._learn_underlay_neighbours()
        return node

    def _learn_underlay_neighbours(self) -> None:
        """Tell every node's OVS the underlay MAC of every other node (``tnl/neigh/set``).
        Userspace native tunnelling resolves a tunnel's remote address itself and DROPS the
        packets that find no neighbour entry while it asks; on a real network that costs
        the first packets towards a new peer once, here it made tests that count single
        probes (traceroute) flaky. The same on a restarted ovs-vswitchd (cache gone)."""
        for node in self.nodes.values():
            for peer in self.nodes.values():
                if peer is not node:
                    node.appctl("tnl/neigh/set", BR_PHY, peer.underlay_ip,
                                f"02:ff:00:00:00:{peer.index:02x}")

    def _start_ovsdb_server(self, node: Node) -> None:
        d = node.rundir
        node.netns_exec(["ovsdb-server", str(d / "conf.db"), f"--remote=punix:{node.db_sock}",
                         f"--pidfile={d / 'ovsdb-server.pid'}",
                         f"--log-file={d / 'ovsdb-server.log'}",
                         f"--unixctl={d / 'ovsdb-server.ctl'}", "--detach", "--no-chdir"])

    def restart_ovsdb_server(self, node: Node) -> None:
        """Kill ovsdb-server (by pid) and start it again on the same database file; every
        client is disconnected and has to reconnect."""
        pid = _pid_from_file(node.rundir / "ovsdb-server.pid", str(node.rundir))
        if pid is None:
            raise TestbedError(f"ovsdb-server of {node.name} is not running")
        kill_pid(pid)
        self._start_ovsdb_server(node)

    def _start_vswitchd(self, node: Node) -> None:
        d = node.rundir
        node.netns_exec(["ovs-vswitchd", node.db_target, f"--pidfile={d / 'ovs-vswitchd.pid'}",
                         f"--log-file={d / 'ovs-vswitchd.log'}", "--detach", "--no-chdir"])

    def _address_br_phy(self, node: Node) -> None:
        sh(["ip", "-n", node.netns, "link", "set", BR_PHY, "mtu", str(UNDERLAY_MTU), "up"])
        sh(["ip", "-n", node.netns, "addr", "replace", node.underlay_cidr, "dev", BR_PHY])

    def kill_vswitchd(self, node: Node) -> None:
        """Kill ``node``'s ovs-vswitchd (by pid): its datapath is gone, as a dead node's."""
        pid = _pid_from_file(node.rundir / "ovs-vswitchd.pid", str(node.rundir))
        if pid is not None:
            kill_pid(pid)

    def restart_vswitchd(self, node: Node) -> None:
        """Kill ovs-vswitchd (by pid) and start it again; br-phy gets its address back.

        All OpenFlow flows are gone afterwards, as on a real node."""
        pid = _pid_from_file(node.rundir / "ovs-vswitchd.pid", str(node.rundir))
        if pid is None:
            raise TestbedError(f"ovs-vswitchd of {node.name} is not running")
        kill_pid(pid)
        self._start_vswitchd(node)
        node.vsctl("--timeout=20", "wait-until", "Interface", BR_PHY, "ofport>0")
        self._address_br_phy(node)
        self._learn_underlay_neighbours()

    # -- physical networks and the outside world ---------------------------------------
    def add_physnet(self, physnet: str) -> None:
        """A physical network: Linux bridge 'x-<physnet>' in the net namespace (VLAN tags
        pass through it untouched). Idempotent."""
        if physnet in self.physnets:
            return
        if not physnet or len(physnet) > 8 or not physnet.isalnum():
            raise ValueError(f"physnet {physnet!r}: 1..8 chars of [a-z0-9]")
        sw = self._ensure_switch()
        sw.vsctl("add-br", f"x-{physnet}", "--", "set", "Bridge", f"x-{physnet}",
                 "datapath_type=netdev")
        self.physnets.add(physnet)

    def _ensure_switch(self) -> Node:
        if self.switch is not None:
            return self.switch
        self._ensure_net()
        sw = Node(self, "sw", 0, self.net_ns, "", "", self.rundir / "sw")
        sw.rundir.mkdir()
        sh(["ovsdb-tool", "create", str(sw.rundir / "conf.db"), str(SCHEMA)])
        self._start_ovsdb_server(sw)
        sw.vsctl("--no-wait", "init")
        self._start_vswitchd(sw)
        self.switch = sw
        return sw

    def attach_physnet(self, node: Node, physnet: str, bridge: str = "br-ex") -> None:
        """``node``'s bridge for ``physnet`` (netdev, standalone: a learning switch), its
        uplink veth 'x-<physnet>' on the physical network's Linux bridge."""
        self.add_physnet(physnet)
        up, peer = f"x-{physnet}", f"x{node.index}-{physnet}"
        sh(["ip", "link", "add", up, "netns", node.netns, "type", "veth",
            "peer", "name", peer, "netns", self.net_ns])
        sh(["ip", "-n", self.net_ns, "link", "set", peer, "up"])
        assert self.switch is not None
        self.switch.vsctl("add-port", f"x-{physnet}", peer)
        sh(["ip", "-n", node.netns, "link", "set", up, "up"])
        node.vsctl("--may-exist", "add-br", bridge, "--", "set", "Bridge", bridge,
                   "datapath_type=netdev", "--", "--may-exist", "add-port", bridge, up)

    def add_outside(self, name: str, physnet: str, ip_cidr: str, vlan: int | None = None,
                    gateway: str | None = None, mac: str | None = None) -> Host:
        """A host of the outside world on ``physnet`` (an access port of VLAN ``vlan`` if
        given): one address, optionally a default route, nothing else."""
        netns = self._claim(name, 12)
        self.add_physnet(physnet)
        mac = mac or f"02:0e:{len(self.hosts) + 1:02x}:00:00:{sum(map(ord, name)) % 256:02x}"
        peer = f"o-{name}"[:15]
        sh(["ip", "netns", "add", netns])
        sh(["ip", "-n", netns, "link", "set", "lo", "up"])
        sh(["ip", "link", "add", "eth0", "netns", netns, "type", "veth",
            "peer", "name", peer, "netns", self.net_ns])
        sh(["ip", "-n", self.net_ns, "link", "set", peer, "up"])
        assert self.switch is not None
        self.switch.vsctl("add-port", f"x-{physnet}", peer,
                          *(("--", "set", "Port", peer, f"tag={vlan}") if vlan else ()))
        sh(["ip", "-n", netns, "link", "set", "eth0", "address", mac, "up"])
        sh(["ip", "netns", "exec", netns, "ethtool", "-K", "eth0", "tx", "off"])
        dev = "eth0"
        sh(["ip", "-n", netns, "addr", "add", ip_cidr, "dev", dev])
        if gateway:
            sh(["ip", "-n", netns, "route", "add", "default", "via", gateway])
        host = Host(name, netns, ip_cidr.split("/")[0], mac, dev)
        self.hosts[name] = host
        return host

    # -- VMs ---------------------------------------------------------------------------
    def add_vm(self, node: Node, name: str, mac: str, ip_cidr: str | None, iface_id: str,
               mtu: int = 1450, ipv6: str | None = None, gateway: str | None = None,
               gateway6: str | None = None) -> Vm:
        """A VM namespace whose 'eth0' is plugged into br-int of ``node`` (which must exist)
        as port 'tap<name>' with external_ids:iface-id=<iface_id>, attached-mac=<mac>."""
        netns = self._claim(name, 12)
        port = f"tap{name}"
        if sh(["ovs-vsctl", "br-exists", BR_INT], env=node.env(), check=False).returncode:
            raise TestbedError(f"{BR_INT} does not exist on {node.name}: start the controller "
                               "or call node.ensure_br_int() first")
        vm = Vm(name, node, netns, port, mac, ip_cidr.split("/")[0] if ip_cidr else "", iface_id,
                ipv6.split("/")[0] if ipv6 else None)
        self.vms[name] = vm
        sh(["ip", "netns", "add", netns])
        sh(["ip", "-n", netns, "link", "set", "lo", "up"])
        sh(["ip", "link", "add", "eth0", "netns", netns, "mtu", str(mtu), "type", "veth",
            "peer", "name", port, "netns", node.netns, "mtu", str(mtu)])
        sh(["ip", "-n", netns, "link", "set", "eth0", "address", mac, "up"])
        vm.exec(["ethtool", "-K", "eth0", "tx", "off"], check=True)
        if ip_cidr:  # None: it boots with no address (DHCP)
            sh(["ip", "-n", netns, "addr", "add", ip_cidr, "dev", "eth0"])
        if ipv6:
            sh(["ip", "-n", netns, "-6", "addr", "add", ipv6, "dev", "eth0", "nodad"])
        if gateway:
            sh(["ip", "-n", netns, "route", "add", "default", "via", gateway])
        if gateway6:
            sh(["ip", "-n", netns, "-6", "route", "add", "default", "via", gateway6])
        sh(["ip", "-n", node.netns, "link", "set", port, "up"])
        node.vsctl("add-port", BR_INT, port, "--", "set", "Interface", port,
                   f"external_ids:iface-id={iface_id}", f"external_ids:attached-mac={mac}",
                   "external_ids:iface-status=active")
        return vm

    def remove_vm(self, vm: Vm) -> None:
        """Unplug the VM's port from br-int and delete its namespace."""
        vm.node.vsctl("--if-exists", "del-port", BR_INT, vm.port)
        self._kill_netns(vm.netns)
        self.vms.pop(vm.name, None)

    # -- teardown ----------------------------------------------------------------------
    def _kill_netns(self, netns: str) -> None:
        pids = sh(["ip", "netns", "pids", netns], check=False).stdout.split()
        for pid in pids:  # processes inside OUR namespace were started by this run
            kill_pid(int(pid), grace=1.0)
        sh(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(Path("/etc/netns") / netns, ignore_errors=True)  # a VM's own /etc

    def own_namespaces(self) -> list[str]:
        out = sh(["ip", "netns", "list"]).stdout.splitlines()
        names = [line.split()[0] for line in out if line.strip()]
        return [n for n in names if n.startswith(self.prefix)]

    def teardown(self) -> None:
        """Kill our daemons by pid, then whatever runs in our namespaces, delete the
        namespaces and the run directory. Safe to call again; raises if anything survived."""
        errors: list[str] = []
        for node in [*self.nodes.values(), *([self.switch] if self.switch else [])]:
            for daemon in ("ovs-vswitchd", "ovsdb-server"):
                pid = _pid_from_file(node.rundir / f"{daemon}.pid", str(node.rundir))
                if pid is not None:
                    try:
                        kill_pid(pid)
                    except TestbedError as e:
                        errors.append(str(e))
        for ns in self.own_namespaces():
            try:
                self._kill_netns(ns)
            except TestbedError as e:
                errors.append(str(e))
        shutil.rmtree(self.rundir, ignore_errors=True)
        left = self.own_namespaces()
        if left:
            errors.append(f"namespaces left behind: {left}")
        if errors:
            raise TestbedError("teardown incomplete: " + "; ".join(errors))


def missing_prerequisites() -> list[str]:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if not SCHEMA.exists():
        missing.append(str(SCHEMA))
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    return missing
