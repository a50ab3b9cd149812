"""Distributed DHCPv4 (and DHCPv6: apps/dhcp6.py): every chassis answers its own VMs,
from the NB, in the controller.

A local port with an IPv4 address on a subnet with DHCP enabled gets one flow: its DHCP
client traffic (UDP 68 -> 67) is punted, policed per port (meter ``dhcp``). The packet-in
handler knows the sender from the datapath (the logical in_port register, not the frame's
MAC or IP) and answers from the NB, as RFC 2131 says:

* DISCOVER -> OFFER; REQUEST (selecting, init-reboot, renewing by unicast, rebinding) -> ACK
  when the address asked for is the port's, NAK otherwise; a REQUEST naming another server
  is ignored; INFORM -> ACK without a lease; RELEASE and DECLINE need no answer.
* Options: subnet mask, router (the gateway; none when the subnet has none), DNS (the
  subnet's, else ``[controller] dhcp_dns_servers``), domain name, host name (host-<ip>),
  lease time / T1 / T2, server identifier, interface MTU (the network's: Neutron
  computes it less the overlay overhead), classless static routes (121: the
  subnet's host routes, plus 169.254.169.254 via the DHCP server when the subnet has no
  gateway, and the default route when there are host routes -- a client that gets option 121
  ignores option 3), and the port's extra DHCP options (by name or number).
* The server address is the subnet's ``dhcp_ip``, else the address of the network's DHCP
  port (device_owner network:dhcp), else the gateway, else the subnet's first (or last) host
  address when no port uses it (a subnet without a gateway still gets DHCP, and the metadata
  route points at this address); its MAC is that port's or the router
  interface's, else a fixed locally administered one. ARP for the server address is answered
  here when nothing else on the network owns it, so unicast renewals reach us.

Built with os-ken's DHCP codec (the OpenFlow library we already use: no second packet stack).
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from dataclasses import dataclass

from os_ken.lib.packet import dhcp, ethernet, ipv4, packet, udp

from dragonflow.apps.arp import arp_reply_actions
from dragonflow.apps.base import network_part_owners, network_parts, split_owner
from dragonflow.apps.dhcp6 import (
    CLIENT6,
    FALLBACK_SERVER_MAC,
    bare_option_name,
    build_reply6,
    dns_name,
    v6_subnet,
)
from dragonflow.model import Network, Port, Subnet
from dragonflow.ovs.ofchannel import PacketIn
from dragonflow.pipeline.fields import read_field
from dragonflow.pipeline.flow import Flow, Meter, ToController
from dragonflow.pipeline.punt import Answer
from dragonflow.pipeline.stages import MeterDecl, Stage, fields
from dragonflow.pipeline.topology import (
    ROUTER_DEVICE_OWNERS,
    ChassisFacts,
    OwnersView,
    Topology,
    View,
)

LOG = logging.getLogger(__name__)
ROUTER_OWNERS = ("network:router_interface", "network:router_interface_distributed",
                 "network:ha_router_replicated_interface")
METADATA_IP = "169.254.169.254"
CLIENT = {"eth_type": 0x0800, "ip_proto": 17, "udp_src": 68, "udp_dst": 67}
# message types os-ken's codec does not name (RFC 2132 9.6)
DHCP_DECLINE, DHCP_NAK, DHCP_RELEASE, DHCP_INFORM = 4, 6, 7, 8

# extra DHCP option names Neutron accepts (dnsmasq's names) -> (code, kind)
OPTION_NAMES: dict[str, tuple[int, str]] = {
    "netmask": (1, "ip"), "router": (3, "ips"), "dns-server": (6, "ips"),
    "log-server": (7, "ips"), "lpr-server": (9, "ips"), "hostname": (12, "str"),
    "domain-name": (15, "str"), "swap-server": (16, "ip"), "root-path": (17, "str"),
    "extension-path": (18, "str"), "ip-forward-enable": (19, "bool"),
    "policy-filter": (21, "ips"), "max-datagram-reassembly": (22, "u16"),
    "default-ttl": (23, "u8"), "mtu": (26, "u16"), "all-subnets-local": (27, "bool"),
    "broadcast": (28, "ip"), "router-discovery": (31, "bool"),
    "router-solicitation": (32, "ip"), "static-route": (33, "ips"),
    "trailer-encapsulation": (34, "bool"), "arp-timeout": (35, "u32"),
    "ethernet-encap": (36, "bool"), "tcp-ttl": (37, "u8"), "tcp-keepalive": (38, "u32"),
    "nis-domain": (40, "str"), "nis-server": (41, "ips"), "ntp-server": (42, "ips"),
    "netbios-ns": (44, "ips"), "netbios-dd": (45, "ips"), "netbios-nodetype": (46, "u8"),
    "netbios-scope": (47, "str"), "x-windows-fs": (48, "ips"), "x-windows-dm": (49, "ips"),
    "lease-time": (51, "u32"), "T1": (58, "u32"), "T2": (59, "u32"),
    "vendor-class": (60, "str"), "nis+-domain": (64, "str"), "nis+-server": (65, "ips"),
    "tftp-server": (66, "str"), "bootfile-name": (67, "str"), "mobile-ip-home": (68, "ips"),
    "smtp-server": (69, "ips"), "pop3-server": (70, "ips"), "nntp-server": (71, "ips"),
    "irc-server": (74, "ips"), "user-class": (77, "str"), "client-arch": (93, "u16"),
    "client-interface-id": (94, "str"), "client-machine-id": (97, "str"),
    "domain-search": (119, "domains"), "sip-server": (120, "str"),
    "classless-static-route": (121, "routes"), "vendor-id-encap": (125, "str"),
    "tftp-server-address": (150, "ips"), "server-ip-address": (-1, "siaddr"),
    "wpad": (252, "str"),
}


_KINDS = {code: kind for code, kind in OPTION_NAMES.values() if code > 0}


def option_code(name: str) -> tuple[int, str] | None:
    """(code, value kind) of an extra DHCP option named as Neutron allows it: a dnsmasq
    name, a number, or ``option:<name|number>``; a ``tag:<class>,`` prefix is dropped
    (every client of the port gets it). A number is encoded as its name would be (``6``
    is ``dns-server``, as in dnsmasq); a number with no name carries the value's bytes."""
    name = bare_option_name(name, "option:")
    if name.isascii() and name.isdigit():
        code = int(name)
        return (code, _KINDS.get(code, "str")) if 0 < code < 255 else None
    return OPTION_NAMES.get(name)


def encode_option(kind: str, value: str) -> bytes:
    """An extra option's value in its wire form; ValueError if it does not fit the kind."""
    parts = [v.strip() for v in value.split(",") if v.strip()]
    if kind == "ip":
        return ipaddress.IPv4Address(parts[0]).packed
    if kind == "ips":
        return b"".join(ipaddress.IPv4Address(p).packed for p in parts)
    if kind in ("u8", "u16", "u32", "bool"):
        n = 1 if value.strip().lower() in ("true", "yes") else 0 if value.strip().lower() in (
            "false", "no") else int(value)
        fmt = {"u8": "!B", "bool": "!B", "u16": "!H", "u32": "!I"}[kind]
        return struct.pack(fmt, n)
    if kind == "domains":
        return b"".join(dns_name(p) for p in parts)
    if kind == "routes":  # "dest/len,gw,dest/len,gw"
        return _classless([(ipaddress.IPv4Network(parts[i]), ipaddress.IPv4Address(parts[i + 1]))
                           for i in range(0, len(parts) - 1, 2)])
    return value.encode()




def _classless(routes: list[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]]) -> bytes:
    """RFC 3442: width, the significant octets of the destination, the router."""
    out = b""
    for net, gw in routes:
        width = net.prefixlen
        out += bytes([width]) + net.network_address.packed[:(width + 7) // 8] + gw.packed
    return out


@dataclass(frozen=True)
class Server:
    ip: str
    mac: str


class DhcpApp:
    name = "dhcp"
    stages = (
        Stage("dhcp", after=("arp_responder",), before=("nd_responder",),
              matches=fields("in_port", "network", "eth_type", "ip_proto", "udp_src",
                             "udp_dst", "arp_op", "arp_tpa"),
              sets=fields("eth_src", "eth_dst", "arp_op", "arp_sha", "arp_tha", "arp_spa",
                          "arp_tpa"),
              punt=True, miss="next",
              doc="DHCPv4/v6 from local ports punted (answered from the NB); server ARP"),
    )
    def __init__(self) -> None:
        self.malformed = 0  # DHCP packets the codec could not read (never answered)
        self.meters: tuple[MeterDecl, ...] = self._meter(50, 20)

    @staticmethod
    def _meter(rate: int, burst: int) -> tuple[MeterDecl, ...]:
        # a VM flooding DISCOVERs uses up its own budget, not its neighbours' leases
        return (MeterDecl("dhcp", rate=1000, burst=200, per_port=max(1, rate),
                          per_port_burst=max(0, burst)),)

    def configure(self, facts: ChassisFacts) -> None:
        """[controller] dhcp_rate_per_port / dhcp_burst_per_port."""
        self.meters = self._meter(facts.dhcp_rate_per_port, facts.dhcp_burst_per_port)

    owner_parts = staticmethod(network_parts)  # its port owners, by network
    part_owners = staticmethod(network_part_owners)

    def owners(self, topo: OwnersView) -> set[str]:
        return {f"network/{n}" for n in topo.local_networks}

    def compile(self, view: View, owner: str) -> list[Flow]:
        table, obj_id = split_owner(owner)
        if table == "network":
            return self._server_arp(view, obj_id, owner)
        port = view.port(obj_id)
        if port is None or view.ofport(port.id) is None:
            return []
        flows = []  # no address to give: its DHCP goes wherever the network sends it
        if any(s is not None and s.enable_dhcp and s.ip_version == 4
               for f in port.fixed_ips if (s := view.get(Subnet, f.subnet_id))):
            flows.append(Flow.make("dhcp", 100, dict(CLIENT, in_port=port.unique_key),
                                   (Meter("dhcp"), ToController()), owner))
        if v6_subnet(view, port) is not None:
            flows.append(Flow.make("dhcp", 100, dict(CLIENT6, in_port=port.unique_key),
                                   (Meter("dhcp"), ToController()), owner))
        return flows

    def _server_arp(self, view: View, net_id: str, owner: str) -> list[Flow]:
        """ARP for each DHCP subnet's server address, when no port of the network owns it
        (a port's address is answered by the ARP responder before this stage). Read from
        the topology's per-network indexes: a port joining the network changes nothing
        here unless it takes a server address."""
        net = view.network(net_id)
        if net is None or not view.is_local_network(net_id):
            return []
        flows = []
        for sub in view.subnets_of_network(net_id):
            if not (sub.enable_dhcp and sub.ip_version == 4):
                continue
            server = server_address(view, sub)
            if server is None or any(p.device_owner not in ROUTER_DEVICE_OWNERS
                                     for p in view.addr_ports(net_id, server.ip)):
                continue
            flows.append(Flow.make("dhcp", 100, {"network": net.unique_key, "eth_type": 0x0806,
                                                 "arp_op": 1, "arp_tpa": server.ip},
                                   arp_reply_actions(server.mac, server.ip), owner))
        return flows

    # --- the server ------------------------------------------------------------------
    def packet_in(self, topo: Topology, stage: str, pin: PacketIn) -> Answer:
        answer = Answer()
        port = topo.by_unique_key(Port, read_field(pin.match, "in_port"))
        if port is None or pin.in_port is None:
            return answer
        try:
            if pin.data[12:14] == b"\x86\xdd":
                cfg = self.config(topo)
                reply = build_reply6(topo, port, pin.data, cfg.dns_servers, cfg.domain)
            else:
                reply = build_reply(topo, port, pin.data, self.config(topo))
        except Exception as e:  # the packet library rejects it: malformed, no answer
            self.malformed += 1
            LOG.debug("malformed DHCP from port %s (%d so far): %r", port.id, self.malformed, e)
            return answer
        if reply is not None:
            answer.frames.append((pin.in_port, reply))
        return answer

    @staticmethod
    def config(topo: Topology) -> DhcpConfig:
        f = topo.facts
        return DhcpConfig(f.dhcp_lease_time, tuple(f.dhcp_dns_servers), f.dhcp_domain)


@dataclass(frozen=True)
class DhcpConfig:
    lease_time: int = 86400
    dns_servers: tuple[str, ...] = ()
    domain: str = "openstacklocal"


def server_address(view: View, sub: Subnet) -> Server | None:
    """The subnet's DHCP server address and MAC (see the module docstring), read through
    the per-network indexes (the ports holding an address, the DHCP ports) instead of every
    port of the network."""
    net_id = sub.network_id
    dhcp_port = next((p for p in view.dhcp_ports(net_id)
                      if any(f.subnet_id == sub.id for f in p.fixed_ips)), None)
    ip = sub.dhcp_ip
    if ip is None and dhcp_port is not None:
        ip = next(f.ip_address for f in dhcp_port.fixed_ips if f.subnet_id == sub.id)
    if ip is None:
        ip = sub.gateway_ip
    if ip is None:  # no gateway, no DHCP port: the first (else last) host address no port uses
        hosts = (sub.cidr[1], sub.cidr[-2]) if sub.cidr.num_addresses > 2 else ()
        ip = next((h for h in hosts if not view.addr_ports(net_id, str(h))), None)
    if ip is None:
        return None
    holders = view.addr_ports(net_id, str(ip))
    mac = holders[0].mac if holders else (
        dhcp_port.mac if dhcp_port is not None else FALLBACK_SERVER_MAC)
    return Server(str(ip), mac)


def build_reply(topo: Topology, port: Port, data: bytes, cfg: DhcpConfig) -> bytes | None:
    """The server's answer to the DHCP packet ``data`` sent by ``port`` (None: no answer)."""
    pkt = packet.Packet(data)
    req = pkt.get_protocol(dhcp.dhcp)
    if req is None or req.op != dhcp.DHCP_BOOT_REQUEST or req.options is None:
        return None
    opts = {o.tag: o.value for o in req.options.option_list}
    kind = opts.get(dhcp.DHCP_MESSAGE_TYPE_OPT, b"")
    msg_type = kind[0] if len(kind) == 1 else None
    net = topo.get(Network, port.network_id)
    found = _port_address(topo, port)
    if net is None or found is None:
        return None  # no DHCP address on this port: no answer
    sub, ip = found
    server = server_address(View(topo), sub)  # from the indexes: no walk of the network
    if server is None:
        return None
    requested = opts.get(dhcp.DHCP_REQUESTED_IP_ADDR_OPT)
    server_id = opts.get(dhcp.DHCP_SERVER_IDENTIFIER_OPT)
    if msg_type == dhcp.DHCP_DISCOVER:
        reply = dhcp.DHCP_OFFER
    elif msg_type == dhcp.DHCP_REQUEST:
        if server_id is not None and server_id != ipaddress.IPv4Address(server.ip).packed:
            return None  # the client chose another server
        asked = (ipaddress.IPv4Address(requested) if requested and len(requested) == 4
                 else ipaddress.IPv4Address(req.ciaddr))
        reply = dhcp.DHCP_ACK if asked == ip else DHCP_NAK
    elif msg_type == DHCP_INFORM:
        reply = dhcp.DHCP_ACK
    else:  # RELEASE, DECLINE (the address is the NB's: nothing to free), unknown
        if msg_type in (DHCP_RELEASE, DHCP_DECLINE):
            LOG.info("DHCP %s from port %s (%s)", "RELEASE" if msg_type == DHCP_RELEASE
                     else "DECLINE", port.id, ip)
        return None
    options = _options(topo, port, net, sub, ip, server, cfg, reply, msg_type)
    yiaddr = "0.0.0.0" if reply == DHCP_NAK or msg_type == DHCP_INFORM else str(ip)
    siaddr = "0.0.0.0"
    for o in port.extra_dhcp_opts:
        found_code = option_code(o.opt_name) if o.ip_version == 4 else None
        if found_code is not None and found_code[1] == "siaddr":
            siaddr = o.opt_value.strip()
    answer = dhcp.dhcp(op=dhcp.DHCP_BOOT_REPLY, chaddr=req.chaddr, xid=req.xid,
                       flags=req.flags, ciaddr=req.ciaddr, yiaddr=yiaddr, siaddr=siaddr,
                       giaddr=req.giaddr, options=dhcp.options(option_list=options))
    # RFC 2131 4.1 (no relay): to ciaddr when the client has one; broadcast when it asks
    # for it or for a NAK; else to the address offered. Always to the port's MAC, out of
    # its own ofport.
    if reply == DHCP_NAK or (req.ciaddr == "0.0.0.0" and req.flags & 0x8000):
        dst_ip = "255.255.255.255"
    elif req.ciaddr != "0.0.0.0":
        dst_ip = req.ciaddr
    else:
        dst_ip = str(ip)
    out = packet.Packet()
    out.add_protocol(ethernet.ethernet(dst=port.mac, src=server.mac, ethertype=0x0800))
    out.add_protocol(ipv4.ipv4(src=server.ip, dst=dst_ip, proto=17, ttl=64))
    out.add_protocol(udp.udp(src_port=67, dst_port=68))
    out.add_protocol(answer)
    out.serialize()
    return bytes(out.data)


def _port_address(topo: Topology, port: Port) -> tuple[Subnet, ipaddress.IPv4Address] | None:
    for f in port.fixed_ips:
        sub = topo.get(Subnet, f.subnet_id)
        if sub is not None and sub.enable_dhcp and sub.ip_version == 4:
            assert isinstance(f.ip_address, ipaddress.IPv4Address)
            return sub, f.ip_address
    return None


def _options(topo: Topology, port: Port, net: Network, sub: Subnet,
             ip: ipaddress.IPv4Address, server: Server, cfg: DhcpConfig, reply: int,
             msg_type: int | None) -> list[dhcp.option]:
    def opt(code: int, value: bytes) -> dhcp.option:
        return dhcp.option(tag=code, value=value)

    ip4 = ipaddress.IPv4Address
    out = [opt(dhcp.DHCP_MESSAGE_TYPE_OPT, bytes([reply])),
           opt(dhcp.DHCP_SERVER_IDENTIFIER_OPT, ip4(server.ip).packed)]
    if reply == DHCP_NAK:
        return out
    if msg_type != DHCP_INFORM:
        lease = cfg.lease_time
        out += [opt(dhcp.DHCP_IP_ADDR_LEASE_TIME_OPT, struct.pack("!I", lease)),
                opt(58, struct.pack("!I", lease // 2)),
                opt(59, struct.pack("!I", lease * 7 // 8))]
    out.append(opt(dhcp.DHCP_SUBNET_MASK_OPT, sub.cidr.netmask.packed))
    if sub.gateway_ip is not None:
        out.append(opt(dhcp.DHCP_GATEWAY_ADDR_OPT, sub.gateway_ip.packed))
    dns = [str(d) for d in sub.dns_nameservers] or list(cfg.dns_servers)
    if dns:
        out.append(opt(dhcp.DHCP_DNS_SERVER_ADDR_OPT,
                       b"".join(ip4(d).packed for d in dns)))
    if cfg.domain:
        out.append(opt(15, cfg.domain.encode()))
    out.append(opt(dhcp.DHCP_HOST_NAME_OPT, f"host-{str(ip).replace('.', '-')}".encode()))
    # Neutron's network MTU is what a VM may use (the overlay overhead already taken off)
    out.append(opt(26, struct.pack("!H", net.mtu)))
    routes = [(r.destination, r.nexthop) for r in sub.host_routes
              if r.destination.version == 4]
    if sub.gateway_ip is None:
        routes.append((ipaddress.IPv4Network(f"{METADATA_IP}/32"), ip4(server.ip)))
    elif routes:  # with option 121 the client ignores option 3: repeat the default route
        routes.append((ipaddress.IPv4Network("0.0.0.0/0"), sub.gateway_ip))
    if routes:
        out.append(opt(121, _classless(routes)))  # type: ignore[arg-type]
    codes = {o.tag for o in out}
    for extra in port.extra_dhcp_opts:
        if extra.ip_version != 4:
            continue
        found = option_code(extra.opt_name)
        if found is None or found[1] == "siaddr":
            if found is None:
                LOG.warning("port %s: extra DHCP option %r is not known; not sent", port.id,
                            extra.opt_name)
            continue
        code, kind = found
        try:
            value = encode_option(kind, extra.opt_value)
        except (ValueError, IndexError) as e:
            LOG.warning("port %s: extra DHCP option %s=%r not sent: %s", port.id,
                        extra.opt_name, extra.opt_value, e)
            continue
        out = [o for o in out if o.tag != code] if code in codes else out
        out.append(opt(code, value))
        codes.add(code)
    return out
