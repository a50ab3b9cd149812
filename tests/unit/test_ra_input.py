"""Router solicitations the RA app is handed: a well-formed one from a port on an advertised
subnet gets one well-formed advertisement; malformed ones (mutated, truncated, random) never
raise and never get anything but a well-formed advertisement."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from os_ken.lib.packet import ethernet, icmpv6, ipv6, packet

from dragonflow.apps.ra import RouterAdvertApp, link_local
from dragonflow.model import Network, Port, Router, Subnet
from dragonflow.ovs.ofchannel import PacketIn
from dragonflow.pipeline.topology import ChassisFacts, Topology

MAC, RMAC = "fa:16:3e:00:00:0a", "fa:16:3e:aa:00:01"


def topo() -> Topology:
    t = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",)))
    t.replace_all([
        Network(id="n", topic="t", network_type="vxlan", segmentation_id=5, unique_key=1,
                mtu=1400),
        Subnet.from_dict({"id": "s6", "topic": "t", "network_id": "n", "cidr": "fd00:7::/64",
                          "gateway_ip": "fd00:7::1", "ipv6_ra_mode": "slaac",
                          "ipv6_address_mode": "slaac"}),
        Port.from_dict({"id": "p", "topic": "t", "network_id": "n", "mac": MAC,
                        "unique_key": 3,
                        "fixed_ips": [{"subnet_id": "s6", "ip_address": "fd00:7::10"}]}),
        Router.from_dict({"id": "r", "topic": "t", "unique_key": 9, "ports": [
            {"id": "rp", "mac": RMAC, "network_id": "n", "cidrs": ["fd00:7::1/64"],
             "subnet_ids": ["s6"]}]}),
    ])
    t.set_ofport("p", 7)  # local: the router is local, its subnets advertised here
    return t


def rs() -> bytes:
    p = packet.Packet()
    p.add_protocol(ethernet.ethernet(dst="33:33:00:00:00:02", src=MAC, ethertype=0x86DD))
    p.add_protocol(ipv6.ipv6(src=link_local(MAC), dst="ff02::2", nxt=58, hop_limit=255))
    p.add_protocol(icmpv6.icmpv6(type_=icmpv6.ND_ROUTER_SOLICIT,
                                 data=icmpv6.nd_router_solicit(
                                     option=icmpv6.nd_option_sla(hw_src=MAC))))
    p.serialize()
    return bytes(p.data)


def pin(data: bytes) -> PacketIn:
    return PacketIn(table_id=4, reason=1, cookie=0, match={"in_port": 7, "reg6": 3},
                    data=data, buffer_id=0xffffffff, total_len=len(data))


T = topo()


def advert(frame: bytes) -> icmpv6.nd_router_advert:
    icmp = packet.Packet(frame).get_protocol(icmpv6.icmpv6)
    assert icmp is not None and icmp.type_ == icmpv6.ND_ROUTER_ADVERT
    return icmp.data


def options(frame: bytes) -> dict[int, bytes]:
    """RFC 4861 options of the advertisement in ``frame``: type -> body."""
    body, out = frame[14 + 40 + 16:], {}
    while len(body) >= 8 and body[1]:
        out[body[0]] = body[2:body[1] * 8]
        body = body[body[1] * 8:]
    return out


def test_a_solicitation_gets_the_slaac_advertisement() -> None:
    frames = RouterAdvertApp().packet_in(T, "ra", pin(rs())).frames
    assert [ofport for ofport, _ in frames] == [7]
    ra = advert(frames[0][1])
    assert ra.res == 0 and ra.rou_l == 1800  # M=0, O=0: SLAAC
    opts = options(frames[0][1])  # os-ken parses only the first RA option: read them here
    assert opts[1] == bytes.fromhex(RMAC.replace(":", ""))  # source link-layer
    assert opts[5][2:] == (1400).to_bytes(4, "big")  # MTU
    pi = opts[3]  # prefix: length 64, on-link + autonomous, fd00:7::/64
    assert pi[0] == 64 and pi[1] == 0xC0 and pi[14:30] == bytes.fromhex("fd000007" + "00" * 12)
    ip6 = packet.Packet(frames[0][1]).get_protocol(ipv6.ipv6)
    assert ip6.src == link_local(RMAC) and ip6.hop_limit == 255


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=8),
       st.integers(0, 70), st.binary(max_size=64))
def test_malformed_solicitations_never_raise(flips: list[tuple[int, int]], cut: int,
                                             tail: bytes) -> None:
    data = bytearray(rs())
    for at, value in flips:
        if at < len(data):
            data[at] = value
    frame = bytes(data[:max(14, len(data) - cut)]) + tail
    for _, out in RouterAdvertApp().packet_in(T, "ra", pin(frame)).frames:
        advert(out)  # whatever it answers is a well-formed advertisement
