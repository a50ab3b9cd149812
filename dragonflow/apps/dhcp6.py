"""The DHCPv6 server of the dhcp app (RFC 8415), answered from the NB on the VM's chassis.

Subnets with DHCP enabled and ``ipv6_address_mode``:

* ``dhcpv6-stateful``: SOLICIT -> ADVERTISE, REQUEST / RENEW / REBIND -> REPLY with the
  port's NB address in its IA_NA (NoBinding / NotOnLink status when the client asks for
  another), CONFIRM -> REPLY (Success / NotOnLink), RELEASE / DECLINE -> REPLY Success;
* ``dhcpv6-stateless``: INFORMATION-REQUEST -> REPLY with options only (a stateless
  subnet's addresses come from SLAAC; an IA_NA asked for there gets NoAddrsAvail);

options: DNS servers (23: the subnet's, else the configured defaults that are IPv6) and the
domain search list (24). The server's DUID is DUID-LL of the router interface MAC on the
network (or the dhcp app's fixed one); replies go from its link-local address to the
client's, out of the client's own port. os-ken's dhcp6 codec frames the message; the option
bodies (IA_NA, IAADDR, status, DUID) are built here, as it carries them as bytes.
"""

from __future__ import annotations

import ipaddress
import struct

from os_ken.lib.packet import dhcp6, ethernet, ipv6, packet, udp

from dragonflow.apps.ra import link_local
from dragonflow.model import Network, Port, Router, Subnet
from dragonflow.pipeline.topology import Topology, View

CLIENT6 = {"eth_type": 0x86DD, "ip_proto": 17, "udp_src": 546, "udp_dst": 547}
FALLBACK_SERVER_MAC = "fa:16:3e:d4:c9:01"  # no DHCP port, no router interface: ours
MODES = ("dhcpv6-stateful", "dhcpv6-stateless")
OPT_DNS, OPT_DOMAINS = 23, 24
ST_SUCCESS, ST_NOADDRS, ST_NOBINDING, ST_NOTONLINK = 0, 2, 3, 4
PREFERRED, VALID = 604800, 2592000
T1, T2 = PREFERRED // 2, PREFERRED * 4 // 5


def dns_name(name: str) -> bytes:
    """A domain name in DNS wire form (labels, then 0)."""
    out = b""
    for label in name.strip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def v6_subnet(topo: Topology | View, port: Port) -> tuple[Subnet, ipaddress.IPv6Address] | None:
    """The port's address on a DHCPv6 subnet (stateful or stateless), if any."""
    for f in port.fixed_ips:
        sub = topo.get(Subnet, f.subnet_id)
        if (sub is not None and sub.ip_version == 6 and sub.enable_dhcp
                and sub.ipv6_address_mode in MODES):
            assert isinstance(f.ip_address, ipaddress.IPv6Address)
            return sub, f.ip_address
    return None


def _opt(code: int, data: bytes) -> dhcp6.option:
    return dhcp6.option(code=code, data=data, length=len(data))


def _status(code: int, text: str) -> bytes:
    return struct.pack("!HH", dhcp6.DHCPV6_OPTION_STATUS_CODE, 2 + len(text)) \
        + struct.pack("!H", code) + text.encode()


def _ia_na(iaid: bytes, addr: ipaddress.IPv6Address | None, status: tuple[int, str] | None
           ) -> bytes:
    body = iaid + struct.pack("!II", T1 if addr else 0, T2 if addr else 0)
    if addr is not None:
        iaaddr = addr.packed + struct.pack("!II", PREFERRED, VALID)
        body += struct.pack("!HH", dhcp6.DHCPV6_OPTION_IAADDR, len(iaaddr)) + iaaddr
    if status is not None:
        body += _status(*status)
    return body


def _server_mac(topo: Topology, net: Network) -> str:
    for rid in sorted(topo.local_routers):
        router = topo.get(Router, rid)
        for rp in router.ports if router else ():
            if rp.network_id == net.id:
                return rp.mac
    return FALLBACK_SERVER_MAC


def build_reply6(topo: Topology, port: Port, data: bytes, dns_defaults: tuple[str, ...],
                 domain: str) -> bytes | None:
    """The answer to the DHCPv6 message ``data`` from ``port`` (None: none)."""
    pkt = packet.Packet(data)
    ip6 = pkt.get_protocol(ipv6.ipv6)
    req = pkt.get_protocol(dhcp6.dhcp6)
    if ip6 is None or req is None or req.options is None:
        return None
    net = topo.get(Network, port.network_id)
    found = v6_subnet(topo, port)
    if net is None or found is None:
        return None
    sub, addr = found
    opts = {o.code: o.data for o in req.options.option_list}
    client_id = opts.get(dhcp6.DHCPV6_OPTION_CLIENTID)
    if client_id is None:
        return None
    mac = _server_mac(topo, net)
    duid = struct.pack("!HH", 3, 1) + bytes(int(x, 16) for x in mac.split(":"))
    server_id = opts.get(dhcp6.DHCPV6_OPTION_SERVERID)
    kind = req.msg_type
    if kind in (dhcp6.DHCPV6_REQUEST, dhcp6.DHCPV6_RENEW, dhcp6.DHCPV6_RELEASE,
                dhcp6.DHCPV6_DECLINE) and server_id != duid:
        return None  # meant for another server
    stateful = sub.ipv6_address_mode == "dhcpv6-stateful"
    out = [_opt(dhcp6.DHCPV6_OPTION_CLIENTID, client_id),
           _opt(dhcp6.DHCPV6_OPTION_SERVERID, duid)]
    ia = opts.get(dhcp6.DHCPV6_OPTION_IA_NA)
    reply_type = dhcp6.DHCPV6_REPLY
    if kind == dhcp6.DHCPV6_SOLICIT:
        reply_type = dhcp6.DHCPV6_ADVERTISE
        if ia is not None:
            out.append(_opt(dhcp6.DHCPV6_OPTION_IA_NA, _ia_na(
                ia[:4], addr if stateful else None,
                None if stateful else (ST_NOADDRS, "addresses by SLAAC here"))))
    elif kind in (dhcp6.DHCPV6_REQUEST, dhcp6.DHCPV6_RENEW, dhcp6.DHCPV6_REBIND):
        if ia is not None:
            asked = _asked(ia)
            if not stateful:
                out.append(_opt(dhcp6.DHCPV6_OPTION_IA_NA,
                                _ia_na(ia[:4], None, (ST_NOADDRS, "addresses by SLAAC here"))))
            elif asked and addr not in asked and kind != dhcp6.DHCPV6_REQUEST:
                out.append(_opt(dhcp6.DHCPV6_OPTION_IA_NA,
                                _ia_na(ia[:4], None, (ST_NOBINDING, "not this address"))))
            else:
                out.append(_opt(dhcp6.DHCPV6_OPTION_IA_NA, _ia_na(ia[:4], addr, None)))
    elif kind == dhcp6.DHCPV6_CONFIRM:
        asked = _asked(ia) if ia is not None else []
        ok = all(a in sub.cidr for a in asked)
        out.append(_opt(dhcp6.DHCPV6_OPTION_STATUS_CODE, _status(
            ST_SUCCESS if ok else ST_NOTONLINK, "on link" if ok else "not on link")[4:]))
    elif kind in (dhcp6.DHCPV6_RELEASE, dhcp6.DHCPV6_DECLINE):
        out.append(_opt(dhcp6.DHCPV6_OPTION_STATUS_CODE, _status(ST_SUCCESS, "ok")[4:]))
    elif kind != dhcp6.DHCPV6_INFORMATION_REQUEST:
        return None
    if kind in (dhcp6.DHCPV6_SOLICIT, dhcp6.DHCPV6_REQUEST, dhcp6.DHCPV6_RENEW,
                dhcp6.DHCPV6_REBIND, dhcp6.DHCPV6_INFORMATION_REQUEST):
        dns = [str(d) for d in sub.dns_nameservers] or [
            d for d in dns_defaults if ":" in d]
        if dns:
            out.append(_opt(OPT_DNS, b"".join(ipaddress.IPv6Address(d).packed for d in dns)))
        if domain:
            out.append(_opt(OPT_DOMAINS, dns_name(domain)))
    answer = dhcp6.dhcp6(reply_type, dhcp6.options(option_list=out),
                         transaction_id=req.transaction_id)
    p = packet.Packet()
    p.add_protocol(ethernet.ethernet(dst=port.mac, src=mac, ethertype=0x86DD))
    p.add_protocol(ipv6.ipv6(src=link_local(mac), dst=ip6.src, nxt=17, hop_limit=255))
    p.add_protocol(udp.udp(src_port=547, dst_port=546))
    p.add_protocol(answer)
    p.serialize()
    return bytes(p.data)


def _asked(ia: bytes) -> list[ipaddress.IPv6Address]:
    """The addresses in an IA_NA option body (after IAID, T1, T2)."""
    out, at = [], 12
    while at + 4 <= len(ia):
        code, length = struct.unpack_from("!HH", ia, at)
        if code == dhcp6.DHCPV6_OPTION_IAADDR and length >= 16 and at + 4 + 16 <= len(ia):
            out.append(ipaddress.IPv6Address(ia[at + 4:at + 20]))
        at += 4 + length
    return out
