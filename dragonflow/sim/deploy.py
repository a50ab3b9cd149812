"""A simulated deployment: test-bed nodes + local controllers + an NB database.

Used by ``df demo`` and by the fullstack tests. Controllers run either in this process (one
``LocalController`` per node, all on one embedded NB -- what cheap scale tests need) or as
one ``df-controller`` process per node against etcd/redis (what production looks like).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dragonflow.apps.registry import load_apps
from dragonflow.controller.controller import ControllerConfig, LocalController
from dragonflow.db.nbapi import NbApi
from dragonflow.db.security import NbSecurity
from dragonflow.metadata.proxy import ProxyConfig
from dragonflow.metadata.service import MetadataService, ServiceConfig
from dragonflow.model import (
    AddressPair,
    Binding,
    Chassis,
    DhcpOpt,
    FixedIp,
    FloatingIP,
    Gateway,
    Network,
    Port,
    Router,
    Subnet,
)
from dragonflow.sim.testbed import BR_INT, Node, Testbed, Vm


def node_config(node: Node, tunnel_types: tuple[str, ...], l3_mode: str = "proactive",
                bridge_mappings: dict[str, str] | None = None, gateway: bool = False
                ) -> ControllerConfig:
    return ControllerConfig(
        chassis_id=node.name, tunnel_ip=node.underlay_ip, tunnel_types=tunnel_types,
        integration_bridge=BR_INT, datapath_type="netdev", ovsdb_connection=node.db_target,
        ovs_rundir=str(node.rundir), heartbeat_interval=5.0,
        datapath_id=f"{node.index + 1:016x}", l3_mode=l3_mode,
        bridge_mappings=dict(bridge_mappings or {}), gateway=gateway)


def _mac(prefix: str, name: str) -> str:
    """``prefix`` (4 bytes) + 2 bytes of a hash of ``name``: a MAC per name."""
    h = hashlib.sha256(name.encode()).digest()
    return f"{prefix}:{h[0]:02x}:{h[1]:02x}"


@dataclass
class ControllerProcess:
    node: Node
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Deployment:
    bed: Testbed
    nb: NbApi
    nb_url: str
    in_process: bool = True
    tunnel_types: tuple[str, ...] = ("vxlan", "geneve", "gre")
    topic: str = "demo"
    l3_mode: str = "proactive"
    apps: tuple[str, ...] | None = None  # [controller] apps; None: the default apps
    nb_security: NbSecurity | None = None  # [df] TLS / credential options of the controllers
    controllers: dict[str, LocalController] = field(default_factory=dict)
    processes: dict[str, ControllerProcess] = field(default_factory=dict)
    metadata: dict[str, ControllerProcess] = field(default_factory=dict)  # df-metadata
    metadata_threads: dict[str, MetadataService] = field(default_factory=dict)  # embedded
    created: dict[str, float] = field(default_factory=dict)  # port id -> monotonic time
    # node -> ({physnet: bridge}, gateway-capable): its [controller] bridge_mappings, gateway
    edges: dict[str, tuple[dict[str, str], bool]] = field(default_factory=dict)

    # --- nodes and controllers -------------------------------------------------------
    def add_node(self, name: str, underlay_ip: str, *, physnets: tuple[str, ...] = (),
                 gateway: bool = False) -> Node:
        """A node and its controller; with ``physnets`` the node's bridge for each
        ('br-<physnet>', uplink on the test bed's physical network) is mapped in its
        controller's ``bridge_mappings``; ``gateway``: it may host routers' SNAT."""
        node = self.bed.add_node(name, underlay_ip)
        for p in physnets:
            self.bed.attach_physnet(node, p, f"br-{p}")
        self.edges[name] = ({p: f"br-{p}" for p in physnets}, gateway)
        self.start_controller(node)
        return node

    def start_controller(self, node: Node) -> None:
        mappings, gateway = self.edges.get(node.name, ({}, False))
        cfg = node_config(node, self.tunnel_types, self.l3_mode, mappings, gateway)
        if self.in_process:
            names = self.apps
            ctl = (LocalController(cfg, self.nb) if names is None else
                   LocalController(cfg, self.nb, apps=lambda: load_apps(names)))
            ctl.start()
            self.controllers[node.name] = ctl
            return
        conf = node.rundir / "dragonflow.ini"
        conf.write_text(
            "[df]\n"
            f"nb_db_url = {self.nb_url}\nnb_db_root = {self.nb.root}\n"
            + (self.nb_security.ini_lines() if self.nb_security else "") +
            "[controller]\n"
            f"chassis_id = {cfg.chassis_id}\ntunnel_ip = {cfg.tunnel_ip}\n"
            f"tunnel_types = {','.join(cfg.tunnel_types)}\n"
            f"datapath_type = netdev\novsdb_connection = {cfg.ovsdb_connection}\n"
            f"ovs_rundir = {cfg.ovs_rundir}\nheartbeat_interval = {cfg.heartbeat_interval}\n"
            f"l3_mode = {cfg.l3_mode}\ngateway = {cfg.gateway}\n"
            + (f"bridge_mappings = {','.join(f'{p}:{b}' for p, b in mappings.items())}\n"
               if mappings else "")
            + (f"apps = {','.join(self.apps)}\n" if self.apps is not None else ""))
        log = node.rundir / "df-controller.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dragonflow.cli.controller", "--config-file", str(conf)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        (node.rundir / "df-controller.pid").write_text(str(proc.pid))
        self.processes[node.name] = ControllerProcess(node, proc, log)
        self._wait_started(self.processes[node.name])

    def _wait_started(self, cp: ControllerProcess, timeout: float = 30.0) -> None:
        """Until the process has prepared br-int and registered its chassis."""
        deadline = time.monotonic() + timeout
        since = time.time()
        while time.monotonic() < deadline:
            if cp.proc.poll() is not None:
                raise RuntimeError(f"df-controller of {cp.node.name} exited "
                                   f"({cp.proc.returncode}):\n{cp.log.read_text()[-3000:]}")
            beat = self.nb.liveness().get(cp.node.name, 0.0)
            registered = self.nb.get(Chassis, cp.node.name) is not None and beat >= since - 1
            if registered and subprocess.run(
                    ["ovs-vsctl", "br-exists", BR_INT], env=cp.node.env()).returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"df-controller of {cp.node.name} not up after {timeout}s:\n"
                           f"{cp.log.read_text()[-3000:]}")

    def start_metadata(self, node: Node, nova_url: str | None = None, secret: str = "",
                       timeout: float = 30.0) -> None:
        """Run the metadata service of ``node`` as its controller runs: a ``df-metadata``
        process (``metadata[node]``), or with in-process controllers a thread of this process
        on the same NbApi (``metadata_threads[node]``; what the embedded memory:// NB needs);
        its interface and socket in the node's namespace (``[metadata] netns``). Returns when
        it listens. With ``nova_url`` it forwards to that Nova metadata API, signing with
        ``secret``."""
        if self.in_process:
            svc = MetadataService(ServiceConfig(
                ovsdb_connection=node.db_target, bridge=BR_INT, proxy=ProxyConfig(
                    nova_metadata_url=nova_url, shared_secret=secret, netns=node.netns)),
                self.nb)
            svc.start_thread(timeout)
            self.metadata_threads[node.name] = svc
            return
        conf = node.rundir / "df-metadata.ini"
        conf.write_text(
            "[df]\n"
            f"nb_db_url = {self.nb_url}\nnb_db_root = {self.nb.root}\n"
            + (self.nb_security.ini_lines() if self.nb_security else "") +
            "[controller]\n"
            f"ovsdb_connection = {node.db_target}\nintegration_bridge = {BR_INT}\n"
            f"[metadata]\nnetns = {node.netns}\n"
            + (f"nova_metadata_url = {nova_url}\n" if nova_url else "")
            + f"metadata_proxy_shared_secret = {secret}\n")
        log = node.rundir / "df-metadata.log"
        start = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dragonflow.cli.metadata", "--config-file", str(conf)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        (node.rundir / "df-metadata.pid").write_text(str(proc.pid))
        self.metadata[node.name] = ControllerProcess(node, proc, log)
        deadline = time.monotonic() + timeout
        while "metadata proxy on" not in log.read_bytes()[start:].decode(errors="replace"):
            if proc.poll() is not None:
                raise RuntimeError(f"df-metadata of {node.name} exited ({proc.returncode}):\n"
                                   f"{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"df-metadata of {node.name} not up after {timeout}s:\n"
                                   f"{log.read_text()[-3000:]}")
            time.sleep(0.05)

    def kill_metadata(self, node: Node, sig: int = signal.SIGTERM) -> None:
        if node.name in self.metadata_threads:
            self.metadata_threads.pop(node.name).stop()
            return
        cp = self.metadata.pop(node.name)
        os.kill(cp.pid, sig)
        cp.proc.wait(timeout=20)

    def kill_controller(self, node: Node, sig: int = signal.SIGKILL) -> None:
        if self.in_process:
            self.controllers.pop(node.name).stop()
            return
        cp = self.processes.pop(node.name)
        os.kill(cp.pid, sig)
        cp.proc.wait(timeout=20)

    def stop(self) -> None:
        for svc in self.metadata_threads.values():
            svc.stop()
        self.metadata_threads.clear()
        for ctl in self.controllers.values():
            ctl.stop()
        self.controllers.clear()
        for cp in [*self.processes.values(), *self.metadata.values()]:
            if cp.proc.poll() is None:
                cp.proc.terminate()
                try:
                    cp.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    cp.proc.kill()
                    cp.proc.wait()
        self.processes.clear()
        self.metadata.clear()

    # --- NB topology -----------------------------------------------------------------
    def network(self, name: str, network_type: str, vni: int, cidr: str, *,
                topic: str | None = None, dhcp: bool = False,
                dns: tuple[str, ...] = (), host_routes: tuple[tuple[str, str], ...] = (),
                mtu: int | None = None) -> Network:
        """A network and its subnet ``<name>-subnet``, owned by project ``topic`` (default:
        the deployment's). With ``dhcp``, the subnet has DHCP enabled and its gateway at the
        first address (as Neutron's default)."""
        topic = topic or self.topic
        net = Network(id=name, topic=topic, name=name, network_type=network_type,
                      segmentation_id=vni)
        net = self.nb.create(net.replace(mtu=mtu) if mtu else net)
        sub: dict[str, object] = {"id": f"{name}-subnet", "topic": topic, "network_id": name,
                                  "cidr": cidr, "enable_dhcp": dhcp}
        if dhcp:
            sub["gateway_ip"] = str(ipaddress.ip_network(cidr)[1])
            sub["dns_nameservers"] = list(dns)
            sub["host_routes"] = [{"destination": d, "nexthop": n} for d, n in host_routes]
        self.nb.create(Subnet.from_dict(sub))
        return net

    def subnet(self, network: str, name: str, cidr: str, gateway_ip: str | None = None,
               ipv6_mode: str | None = None) -> Subnet:
        """An extra subnet (e.g. IPv6 next to IPv4) on an existing network; ``ipv6_mode``
        sets both Neutron IPv6 modes (slaac, dhcpv6-stateful, dhcpv6-stateless)."""
        return self.nb.create(Subnet.from_dict({
            "id": name, "topic": self.topic, "network_id": network, "cidr": cidr,
            "gateway_ip": gateway_ip, "enable_dhcp": ipv6_mode is not None,
            "ipv6_ra_mode": ipv6_mode, "ipv6_address_mode": ipv6_mode}))

    def vm(self, node: Node, name: str, network: str, mac: str, ip: str, prefixlen: int = 24,
           *, gateway: str | None = None, ipv6: str | None = None,
           ipv6_subnet: str | None = None, gateway6: str | None = None,
           topic: str | None = None, dhcp: bool = False,
           extra_dhcp_opts: tuple[tuple[str, str], ...] = (), slaac: bool = False,
           device_id: str | None = None, security_groups: tuple[str, ...] = (),
           port_security: bool = True,
           address_pairs: tuple[tuple[str, str | None], ...] = ()) -> Vm:
        """Create the NB port bound to ``node`` and plug a namespaced VM with it (the port
        of project ``topic``, default the deployment's). With ``dhcp`` the VM boots with no
        address: ``vm.dhclient()`` asks for it. The port's ``device_id`` (the instance the
        metadata service names) is the VM's name unless given ("" : none).
        ``security_groups`` / ``port_security`` / ``address_pairs`` ((ip or cidr, mac or
        None), ...) are the port's, as Neutron has them."""
        self.vm_port(node, name, network, mac, ip, ipv6=ipv6, ipv6_subnet=ipv6_subnet,
                     topic=topic, extra_dhcp_opts=extra_dhcp_opts, device_id=device_id,
                     security_groups=security_groups, port_security=port_security,
                     address_pairs=address_pairs)
        return self.bed.add_vm(node, name, mac, None if dhcp else f"{ip}/{prefixlen}",
                               f"{name}-port", ipv6=None if slaac else ipv6, gateway=gateway,
                               gateway6=gateway6, mtu=1500 if dhcp else 1450)

    def vm_port(self, node: Node, name: str, network: str, mac: str, ip: str, *,
                ipv6: str | None = None, ipv6_subnet: str | None = None,
                topic: str | None = None,
                extra_dhcp_opts: tuple[tuple[str, str], ...] = (),
                device_id: str | None = None, security_groups: tuple[str, ...] = (),
                port_security: bool = True,
                address_pairs: tuple[tuple[str, str | None], ...] = ()) -> Port:
        """The NB port ``<name>-port`` of a VM bound to ``node`` (``vm`` creates it, then
        plugs the VM; a test may plug first, as a VM that boots before its port is wired)."""
        self.created[f"{name}-port"] = time.monotonic()
        ips = [{"subnet_id": f"{network}-subnet", "ip_address": ip}]
        if ipv6:
            ips.append({"subnet_id": ipv6_subnet or f"{network}-subnet6",
                        "ip_address": ipv6.split("/")[0]})
        return self.nb.create(Port(
            id=f"{name}-port", topic=topic or self.topic, name=name, network_id=network,
            mac=mac,
            fixed_ips=tuple(FixedIp.from_dict(x) for x in ips),
            binding=Binding(kind="chassis", chassis_id=node.name),
            device_owner="compute:demo", device_id=name if device_id is None else device_id,
            extra_dhcp_opts=tuple(DhcpOpt(opt_name=k, opt_value=v) for k, v in extra_dhcp_opts),
            security_groups=security_groups, port_security_enabled=port_security,
            allowed_address_pairs=tuple(AddressPair.from_dict(
                {"ip_address": a, **({"mac": m} if m else {})}) for a, m in address_pairs)))

    def router(self, name: str, interfaces: list[tuple[str, list[str]]],
               routes: list[tuple[str, str]] | None = None, *,
               topic: str | None = None) -> Router:
        """A router with one interface per (network, [address/prefix, ...])."""
        ports = []
        for i, (network, cidrs) in enumerate(interfaces):
            subnets = [s.id for s in self.nb.by_index(Subnet, "network_id", network)]
            ports.append({"id": f"{name}-if{i}", "mac": f"fa:16:3e:aa:{len(name):02x}:{i:02x}",
                          "network_id": network, "cidrs": cidrs, "subnet_ids": subnets})
        return self.nb.create(Router.from_dict({
            "id": name, "topic": topic or self.topic, "name": name, "ports": ports,
            "routes": [{"destination": d, "nexthop": n} for d, n in routes or ()]}))

    # --- north-south -----------------------------------------------------------------
    def provider_network(self, name: str, physnet: str, cidr: str, *, vlan: int | None = None,
                         external: bool = False, gateway_ip: str | None = None,
                         topic: str | None = None) -> Network:
        """A flat (or, with ``vlan``, VLAN) network on physical network ``physnet`` and its
        subnet ``<name>-subnet`` (no DHCP); ``external``: routers may have their gateway
        on it (Neutron's router:external)."""
        topic = topic or self.topic
        net = self.nb.create(Network(
            id=name, topic=topic, name=name, network_type="vlan" if vlan else "flat",
            segmentation_id=vlan, physical_network=physnet, mtu=1500, external=external))
        self.nb.create(Subnet.from_dict({
            "id": f"{name}-subnet", "topic": topic, "network_id": name, "cidr": cidr,
            "enable_dhcp": False, "gateway_ip": gateway_ip}))
        return net

    def set_gateway(self, router: str, network: str | None, ip: str | None = None,
                    snat: bool = True) -> Router:
        """Set (or with None clear) ``router``'s external gateway: its gateway port on
        ``network`` (device_owner network:router_gateway, as Neutron makes it) at ``ip``."""
        cur = self.nb.get(Router, router)
        assert cur is not None
        port_id = f"{router}-gw"
        if cur.gateway is not None and self.nb.get(Port, port_id) is not None:
            self.nb.update(cur.replace(gateway=None))
            self.nb.delete(Port, port_id)
            cur = self.nb.get(Router, router)
            assert cur is not None
        if network is None:
            return cur
        assert ip is not None
        self.nb.create(Port(
            id=port_id, topic=cur.topic, name=port_id, network_id=network,
            mac=_mac("fa:16:3e:ee", router),
            fixed_ips=(FixedIp.from_dict({"subnet_id": f"{network}-subnet", "ip_address": ip}),),
            device_owner="network:router_gateway", device_id=router))
        return self.nb.update(cur.replace(gateway=Gateway.from_dict(
            {"network_id": network, "ip_address": ip, "enable_snat": snat})))

    def floating_ip(self, name: str, network: str, ip: str, port: str | None = None,
                    router: str | None = None) -> FloatingIP:
        """A floating IP (and its port on ``network``, device_owner network:floatingip),
        associated with ``port`` (its first IPv4 address) through ``router`` if given."""
        self.nb.create(Port(
            id=f"{name}-fport", topic=self.topic, name=name, network_id=network,
            mac=_mac("fa:16:3e:ff", name),
            fixed_ips=(FixedIp.from_dict({"subnet_id": f"{network}-subnet", "ip_address": ip}),),
            device_owner="network:floatingip", device_id=name))
        return self.nb.create(self._fip(name, network, ip, port, router))

    def associate(self, name: str, port: str | None, router: str | None = None) -> FloatingIP:
        """Associate floating IP ``name`` with ``port`` (None: disassociate)."""
        cur = self.nb.get(FloatingIP, name)
        assert cur is not None
        new = self._fip(name, cur.floating_network_id, str(cur.floating_ip_address), port,
                        router)
        return self.nb.update(new.replace(version=cur.version))

    def _fip(self, name: str, network: str, ip: str, port: str | None,
             router: str | None) -> FloatingIP:
        fixed = None
        if port is not None:
            p = self.nb.get(Port, port)
            assert p is not None
            fixed = next(str(f.ip_address) for f in p.fixed_ips if f.ip_address.version == 4)
        return FloatingIP.from_dict({
            "id": name, "topic": self.topic, "name": name, "floating_ip_address": ip,
            "floating_network_id": network, "port_id": port, "fixed_ip_address": fixed,
            "router_id": router if port else None})

    def wait_active(self, port_ids: list[str], timeout: float = 30.0) -> dict[str, float]:
        """Wait until every port is ACTIVE in the NB; returns, per port, the seconds from its
        creation (or from this call) until ACTIVE was seen (polled every 5 ms)."""
        start = time.monotonic()
        seen: dict[str, float] = {}
        while len(seen) < len(port_ids):
            for pid in port_ids:
                if pid not in seen:
                    p = self.nb.get(Port, pid)
                    if p is not None and p.status == "ACTIVE":
                        seen[pid] = time.monotonic() - self.created.get(pid, start)
            if time.monotonic() - start > timeout:
                missing = sorted(set(port_ids) - set(seen))
                raise TimeoutError(f"ports not ACTIVE after {timeout}s: {missing}")
            time.sleep(0.005)
        return seen

    def settle(self, timeout: float = 10.0) -> None:
        """In-process controllers: wait until every one has applied the NB as of now and
        reconciled its switch. (Processes cannot be asked; tests of those poll instead.)"""
        rev = self.nb.revision()
        for name, ctl in self.controllers.items():
            if not ctl.wait_synced(timeout, nb_revision=rev):
                raise TimeoutError(f"controller of {name} did not settle in {timeout}s")

    def flow_count(self, node: Node) -> int:
        out = node.ofctl("dump-flows", BR_INT)
        return sum(1 for line in out.splitlines() if "actions=" in line)
