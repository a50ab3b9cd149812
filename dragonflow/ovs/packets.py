"""Packets the controller itself answers with, built and parsed with os-ken's packet library:
neighbour advertisements (IPv6 ND responder) and ICMP/ICMPv6 errors (time exceeded,
destination unreachable) sent on behalf of a router interface.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from os_ken.lib.packet import ethernet, icmp, icmpv6, ipv4, ipv6, packet
from os_ken.ofproto import ether, inet


@dataclass(frozen=True)
class Parsed:
    eth_src: str
    eth_dst: str
    ip_version: int | None
    ip_src: str | None
    ip_dst: str | None
    ns_target: str | None  # set for an IPv6 neighbour solicitation
    ip_bytes: bytes  # the IP packet (header + payload), for quoting in ICMP errors


def parse(data: bytes) -> Parsed:
    pkt = packet.Packet(data)
    eth = pkt.get_protocol(ethernet.ethernet)
    if eth is None:
        raise ValueError("not an Ethernet frame")
    v4 = pkt.get_protocol(ipv4.ipv4)
    v6 = pkt.get_protocol(ipv6.ipv6)
    target = None
    if v6 is not None:
        icmp6 = pkt.get_protocol(icmpv6.icmpv6)
        if icmp6 is not None and icmp6.type_ == icmpv6.ND_NEIGHBOR_SOLICIT:
            target = str(icmp6.data.dst)
    ip = v4 or v6
    return Parsed(eth.src, eth.dst, ip.version if ip else None,
                  str(ip.src) if ip else None, str(ip.dst) if ip else None, target,
                  bytes(data[14:]))


def neighbour_advertisement(req: Parsed, target: str, mac: str, router: bool) -> bytes:
    """The NA answering ``req`` (a solicitation for ``target``) from ``mac``."""
    assert req.ip_src is not None
    dst_ip = req.ip_src
    if ipaddress.ip_address(dst_ip).is_unspecified:  # DAD probe: answer to all-nodes
        dst_ip = "ff02::1"
    flags = (0b100 if router else 0) | 0b010 | 0b001  # R, S, O
    if dst_ip == "ff02::1":
        flags &= ~0b010
    na = icmpv6.nd_neighbor(res=flags, dst=target,
                            option=icmpv6.nd_option_tla(hw_src=mac))
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=req.eth_src, src=mac, ethertype=ether.ETH_TYPE_IPV6))
    pkt.add_protocol(ipv6.ipv6(src=target, dst=dst_ip, nxt=inet.IPPROTO_ICMPV6, hop_limit=255))
    pkt.add_protocol(icmpv6.icmpv6(type_=icmpv6.ND_NEIGHBOR_ADVERT, data=na))
    pkt.serialize()
    return bytes(pkt.data)


TIME_EXCEEDED = "time_exceeded"
NET_UNREACHABLE = "net_unreachable"
ICMP_NET_UNREACHABLE_CODE = 0  # RFC 792
ICMPV6_NO_ROUTE_CODE = 0  # RFC 4443


def icmp_error(req: Parsed, kind: str, src_mac: str, src_ip: str) -> bytes:
    """An ICMP(v6) error about ``req`` from the router interface (src_mac, src_ip)."""
    assert req.ip_src is not None
    pkt = packet.Packet()
    if req.ip_version == 4:
        quoted = req.ip_bytes[: (req.ip_bytes[0] & 0x0F) * 4 + 8]
        if kind == TIME_EXCEEDED:
            body = icmp.icmp(type_=icmp.ICMP_TIME_EXCEEDED, code=0,
                             data=icmp.TimeExceeded(data=quoted))
        else:
            body = icmp.icmp(type_=icmp.ICMP_DEST_UNREACH, code=ICMP_NET_UNREACHABLE_CODE,
                             data=icmp.dest_unreach(data=quoted))
        pkt.add_protocol(ethernet.ethernet(dst=req.eth_src, src=src_mac,
                                           ethertype=ether.ETH_TYPE_IP))
        pkt.add_protocol(ipv4.ipv4(src=src_ip, dst=req.ip_src, proto=inet.IPPROTO_ICMP, ttl=64))
    else:
        quoted = req.ip_bytes[: 1280 - 48]
        if kind == TIME_EXCEEDED:
            body = icmpv6.icmpv6(type_=icmpv6.ICMPV6_TIME_EXCEEDED, code=0,
                                 data=bytes(4) + quoted)  # 4 unused bytes, the packet
        else:
            body = icmpv6.icmpv6(type_=icmpv6.ICMPV6_DST_UNREACH, code=ICMPV6_NO_ROUTE_CODE,
                                 data=bytes(4) + quoted)
        pkt.add_protocol(ethernet.ethernet(dst=req.eth_src, src=src_mac,
                                           ethertype=ether.ETH_TYPE_IPV6))
        pkt.add_protocol(ipv6.ipv6(src=src_ip, dst=req.ip_src, nxt=inet.IPPROTO_ICMPV6,
                                   hop_limit=64))
    pkt.add_protocol(body)
    pkt.serialize()
    return bytes(pkt.data)


# --- ARP on external networks (apps/nat.py) ----------------------------------------------
@dataclass(frozen=True)
class Arp:
    op: int  # 1 request, 2 reply
    sha: str
    spa: str
    tha: str
    tpa: str


def parse_arp(data: bytes) -> Arp | None:
    """The ARP message in ``data`` (a frame, VLAN tag or not); None if it is none."""
    from os_ken.lib.packet import arp

    msg = packet.Packet(data).get_protocol(arp.arp)
    if msg is None:
        return None
    return Arp(msg.opcode, msg.src_mac, str(msg.src_ip), msg.dst_mac, str(msg.dst_ip))


def arp_request(src_mac: str, src_ip: str, target_ip: str, vlan: int = 0) -> bytes:
    """A broadcast ARP request for ``target_ip`` from (src_mac, src_ip); a gratuitous ARP
    (an announcement) when ``target_ip == src_ip``. Tagged with VLAN id ``vlan`` if > 0."""
    from os_ken.lib.packet import arp

    bcast = "ff:ff:ff:ff:ff:ff"
    tha = "00:00:00:00:00:00"
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=bcast, src=src_mac, ethertype=ether.ETH_TYPE_ARP))
    pkt.add_protocol(arp.arp(opcode=arp.ARP_REQUEST, src_mac=src_mac, src_ip=src_ip,
                             dst_mac=tha, dst_ip=target_ip))
    pkt.serialize()
    return tagged(bytes(pkt.data), vlan)


def tagged(frame: bytes, vlan: int) -> bytes:
    """``frame`` with an 802.1Q header for VLAN id ``vlan`` (unchanged for 0)."""
    if not vlan:
        return frame
    return frame[:12] + (0x8100).to_bytes(2, "big") + (vlan & 0xFFF).to_bytes(2, "big") \
        + frame[12:]


def with_eth_dst(frame: bytes, mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", "")) + frame[6:]
