"""The DHCPv4 server's answers (RFC 2131), decoded with os-ken's codec: what each request
gets, from the NB. (That the datapath delivers them is proven with dhclient in
tests/fullstack/test_dhcp.py.)"""

from __future__ import annotations

import ipaddress

import pytest
from os_ken.lib.packet import dhcp, ethernet, ipv4, packet, udp

from dragonflow.apps.dhcp import DhcpConfig, build_reply, encode_option, option_code
from dragonflow.model import Network, Port, Subnet
from dragonflow.pipeline.topology import ChassisFacts, Topology

MAC = "fa:16:3e:00:00:0a"


def topo(gateway: str | None = "10.0.0.1", with_ip: bool = True) -> tuple[Topology, Port]:
    t = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",)))
    port = Port.from_dict({
        "id": "p", "topic": "t", "network_id": "n", "mac": MAC, "unique_key": 3,
        "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.10"}] if with_ip else [],
        "extra_dhcp_opts": [{"opt_name": "bootfile-name", "opt_value": "pxe.0"},
                            {"opt_name": "224", "opt_value": "x"},
                            {"opt_name": "no-such-option", "opt_value": "1"}]})
    t.replace_all([
        Network(id="n", topic="t", network_type="vxlan", segmentation_id=5, unique_key=1,
                mtu=1442),
        Subnet.from_dict({"id": "s", "topic": "t", "network_id": "n", "cidr": "10.0.0.0/24",
                          "gateway_ip": gateway, "dns_nameservers": ["10.0.0.53"]}),
        port])
    return t, port


def request(msg_type: int, *, requested: str | None = None, server: str | None = None,
            ciaddr: str = "0.0.0.0", flags: int = 0) -> bytes:
    opts = [dhcp.option(tag=dhcp.DHCP_MESSAGE_TYPE_OPT, value=bytes([msg_type]))]
    if requested:
        opts.append(dhcp.option(tag=dhcp.DHCP_REQUESTED_IP_ADDR_OPT,
                                value=ipaddress.IPv4Address(requested).packed))
    if server:
        opts.append(dhcp.option(tag=dhcp.DHCP_SERVER_IDENTIFIER_OPT,
                                value=ipaddress.IPv4Address(server).packed))
    p = packet.Packet()
    p.add_protocol(ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=MAC, ethertype=0x0800))
    p.add_protocol(ipv4.ipv4(src=ciaddr, dst="255.255.255.255", proto=17))
    p.add_protocol(udp.udp(src_port=68, dst_port=67))
    p.add_protocol(dhcp.dhcp(op=dhcp.DHCP_BOOT_REQUEST, chaddr=MAC, xid=0x1234, flags=flags,
                             ciaddr=ciaddr, options=dhcp.options(option_list=opts)))
    p.serialize()
    return bytes(p.data)


def answer(t: Topology, port: Port, data: bytes) -> tuple[ipv4.ipv4, dhcp.dhcp, dict[int, bytes]]:
    raw = build_reply(t, port, data, DhcpConfig(lease_time=3600))
    assert raw is not None
    p = packet.Packet(raw)
    ip, d = p.get_protocol(ipv4.ipv4), p.get_protocol(dhcp.dhcp)
    return ip, d, {o.tag: o.value for o in d.options.option_list}


def test_discover_gets_an_offer_with_every_option() -> None:
    t, port = topo()
    ip, d, o = answer(t, port, request(dhcp.DHCP_DISCOVER))
    assert o[53] == bytes([dhcp.DHCP_OFFER]) and d.yiaddr == "10.0.0.10" and d.xid == 0x1234
    assert o[54] == ipaddress.IPv4Address("10.0.0.1").packed  # the gateway serves
    assert o[1] == ipaddress.IPv4Address("255.255.255.0").packed
    assert o[3] == ipaddress.IPv4Address("10.0.0.1").packed
    assert o[6] == ipaddress.IPv4Address("10.0.0.53").packed
    assert o[51] == (3600).to_bytes(4, "big") and o[58] == (1800).to_bytes(4, "big")
    assert o[26] == (1442).to_bytes(2, "big") and o[12] == b"host-10-0-0-10"
    assert o[67] == b"pxe.0" and o[224] == b"x"  # extra options by name and number
    assert ip.dst == "10.0.0.10" and ip.src == "10.0.0.1"


def test_request_for_another_address_is_naked_and_for_ours_acked() -> None:
    t, port = topo()
    _, d, o = answer(t, port, request(dhcp.DHCP_REQUEST, requested="10.0.0.99"))
    assert o[53] == bytes([6]) and d.yiaddr == "0.0.0.0" and 51 not in o
    _, d, o = answer(t, port, request(dhcp.DHCP_REQUEST, requested="10.0.0.10",
                                      server="10.0.0.1"))
    assert o[53] == bytes([dhcp.DHCP_ACK]) and d.yiaddr == "10.0.0.10"
    # renewing: no requested-address option, ciaddr set; answered unicast to it
    ip, d, o = answer(t, port, request(dhcp.DHCP_REQUEST, ciaddr="10.0.0.10"))
    assert o[53] == bytes([dhcp.DHCP_ACK]) and ip.dst == "10.0.0.10"
    # a REQUEST naming another server is that server's business
    assert build_reply(t, port, request(dhcp.DHCP_REQUEST, requested="10.0.0.10",
                                        server="10.0.0.2"), DhcpConfig()) is None


def test_inform_release_decline_and_no_address() -> None:
    t, port = topo()
    _, d, o = answer(t, port, request(8, ciaddr="10.0.0.10"))
    assert o[53] == bytes([dhcp.DHCP_ACK]) and d.yiaddr == "0.0.0.0" and 51 not in o
    for kind in (4, 7):  # DECLINE, RELEASE: nothing to answer
        assert build_reply(t, port, request(kind), DhcpConfig()) is None
    t, port = topo(with_ip=False)
    assert build_reply(t, port, request(dhcp.DHCP_DISCOVER), DhcpConfig()) is None


def test_a_subnet_without_gateway_is_served_from_its_dhcp_port_with_a_metadata_route() -> None:
    t, port = topo(gateway=None)
    # no gateway, no DHCP port, no dhcp_ip: the first host address no port uses serves
    _, _, o = answer(t, port, request(dhcp.DHCP_DISCOVER))
    assert o[54] == ipaddress.IPv4Address("10.0.0.1").packed and 3 not in o
    assert o[121] == bytes([32, 169, 254, 169, 254, 10, 0, 0, 1])
    t.apply("port", "dhcp", Port.from_dict({
        "id": "dhcp", "topic": "t", "network_id": "n", "mac": "fa:16:3e:00:00:02",
        "device_owner": "network:dhcp", "unique_key": 9,
        "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.2"}]}))
    ip, d, o = answer(t, port, request(dhcp.DHCP_DISCOVER))
    assert o[54] == ipaddress.IPv4Address("10.0.0.2").packed and 3 not in o
    # option 121: 169.254.169.254/32 via the DHCP server
    assert o[121] == bytes([32, 169, 254, 169, 254, 10, 0, 0, 2])
    assert ip.src == "10.0.0.2"


@pytest.mark.parametrize("data", [b"", b"\x00" * 20, b"\xff" * 300])
def test_garbage_gets_no_answer_and_no_exception(data: bytes) -> None:
    t, port = topo()
    frame = bytes.fromhex("ffffffffffff") + bytes.fromhex(MAC.replace(":", "")) + b"\x08\x00"
    assert build_reply(t, port, frame + data, DhcpConfig()) is None


def test_extra_option_encodings() -> None:
    assert option_code("option:ntp-server") == (42, "ips")
    assert option_code("66") == (66, "str") and option_code("nonsense") is None
    # a number with a name is encoded as the name (dnsmasq): 6 is dns-server, addresses
    assert option_code("6") == (6, "ips") and option_code("option:42") == (42, "ips")
    assert option_code("tag:ipxe,option:bootfile-name") == (67, "str")
    assert option_code("٦") is None  # a digit int() reads but no DHCP option number
    assert encode_option("ips", "10.0.0.1, 10.0.0.2") == bytes([10, 0, 0, 1, 10, 0, 0, 2])
    assert encode_option("u16", "1400") == (1400).to_bytes(2, "big")
    assert encode_option("domains", "a.example") == b"\x01a\x07example\x00"
    with pytest.raises(ValueError):
        encode_option("ips", "not-an-ip")


# --- malformed input: never an exception, never an answer to garbage ------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dragonflow.apps.dhcp import DhcpApp  # noqa: E402
from dragonflow.ovs.ofchannel import PacketIn  # noqa: E402

_T, _PORT = topo()
_VALID = [request(dhcp.DHCP_DISCOVER), request(dhcp.DHCP_REQUEST, requested="10.0.0.10"),
          request(8, ciaddr="10.0.0.10")]


def _pin(data: bytes) -> PacketIn:
    return PacketIn(table_id=2, reason=1, cookie=0, match={"in_port": 7, "reg6": 3},
                    data=data, buffer_id=0xffffffff, total_len=len(data))


@settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(_VALID), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                         max_size=8), st.integers(0, 400))
def test_mutated_dhcp_packets_never_raise(base: bytes, flips: list[tuple[int, int]],
                                          cut: int) -> None:
    data = bytearray(base)
    for at, value in flips:
        if at < len(data):
            data[at] = value
    answer = DhcpApp().packet_in(_T, "dhcp", _pin(bytes(data[:max(14, len(data) - cut)])))
    for _, frame in answer.frames:  # whatever it answers is a well-formed DHCP reply
        assert packet.Packet(frame).get_protocol(dhcp.dhcp) is not None


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(tail: bytes) -> None:
    frame = (bytes.fromhex("ffffffffffff") + bytes.fromhex(MAC.replace(":", "")) + b"\x08\x00"
             + tail)
    app = DhcpApp()
    for _, out in app.packet_in(_T, "dhcp", _pin(frame)).frames:
        assert packet.Packet(out).get_protocol(dhcp.dhcp) is not None


# --- DHCPv6 ------------------------------------------------------------------------------
from os_ken.lib.packet import dhcp6, ipv6  # noqa: E402

from dragonflow.apps.dhcp6 import build_reply6  # noqa: E402


def topo6(mode: str) -> tuple[Topology, Port]:
    t = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",)))
    port = Port.from_dict({"id": "p", "topic": "t", "network_id": "n", "mac": MAC,
                           "unique_key": 3,
                           "fixed_ips": [{"subnet_id": "s6", "ip_address": "fd00::10"}]})
    t.replace_all([
        Network(id="n", topic="t", network_type="vxlan", segmentation_id=5, unique_key=1),
        Subnet.from_dict({"id": "s6", "topic": "t", "network_id": "n", "cidr": "fd00::/64",
                          "gateway_ip": "fd00::1", "dns_nameservers": ["fd00::53"],
                          "ipv6_ra_mode": mode, "ipv6_address_mode": mode}),
        port])
    return t, port


CLIENT_DUID = bytes.fromhex("00030001") + bytes.fromhex(MAC.replace(":", ""))


def request6(kind: int, *, ia: bool = True, server: bytes | None = None) -> bytes:
    opts = [dhcp6.option(code=dhcp6.DHCPV6_OPTION_CLIENTID, data=CLIENT_DUID,
                         length=len(CLIENT_DUID))]
    if ia:
        opts.append(dhcp6.option(code=dhcp6.DHCPV6_OPTION_IA_NA, data=b"\x00\x00\x00\x07"
                                 + b"\x00" * 8, length=12))
    if server:
        opts.append(dhcp6.option(code=dhcp6.DHCPV6_OPTION_SERVERID, data=server,
                                 length=len(server)))
    p = packet.Packet()
    p.add_protocol(ethernet.ethernet(dst="33:33:00:01:00:02", src=MAC, ethertype=0x86DD))
    p.add_protocol(ipv6.ipv6(src="fe80::f816:3eff:fe00:a", dst="ff02::1:2", nxt=17))
    p.add_protocol(udp.udp(src_port=546, dst_port=547))
    p.add_protocol(dhcp6.dhcp6(kind, dhcp6.options(option_list=opts), transaction_id=0x42))
    p.serialize()
    return bytes(p.data)


def answer6(t: Topology, port: Port, data: bytes) -> tuple[ipv6.ipv6, dhcp6.dhcp6,
                                                           dict[int, bytes]]:
    raw = build_reply6(t, port, data, (), "openstacklocal")
    assert raw is not None
    p = packet.Packet(raw)
    d = p.get_protocol(dhcp6.dhcp6)
    return p.get_protocol(ipv6.ipv6), d, {o.code: o.data for o in d.options.option_list}


def test_dhcpv6_stateful_advertises_and_replies_the_nb_address() -> None:
    t, port = topo6("dhcpv6-stateful")
    ip, d, o = answer6(t, port, request6(dhcp6.DHCPV6_SOLICIT))
    assert d.msg_type == dhcp6.DHCPV6_ADVERTISE and d.transaction_id == 0x42
    assert ipaddress.IPv6Address("fd00::10").packed in o[dhcp6.DHCPV6_OPTION_IA_NA]
    assert o[23] == ipaddress.IPv6Address("fd00::53").packed
    assert ip.dst == "fe80::f816:3eff:fe00:a" and ip.src.startswith("fe80::")
    server = o[dhcp6.DHCPV6_OPTION_SERVERID]
    _, d, o = answer6(t, port, request6(dhcp6.DHCPV6_REQUEST, server=server))
    assert d.msg_type == dhcp6.DHCPV6_REPLY
    assert ipaddress.IPv6Address("fd00::10").packed in o[dhcp6.DHCPV6_OPTION_IA_NA]
    # a REQUEST for another server is not ours to answer
    assert build_reply6(t, port, request6(dhcp6.DHCPV6_REQUEST, server=b"\x00\x03\x00\x01"
                                          + b"\x02" * 6), (), "") is None


def test_dhcpv6_stateless_answers_options_and_no_address() -> None:
    t, port = topo6("dhcpv6-stateless")
    _, d, o = answer6(t, port, request6(dhcp6.DHCPV6_INFORMATION_REQUEST, ia=False))
    assert d.msg_type == dhcp6.DHCPV6_REPLY and dhcp6.DHCPV6_OPTION_IA_NA not in o
    assert o[23] == ipaddress.IPv6Address("fd00::53").packed and o[24].startswith(b"\x0e")
    _, d, o = answer6(t, port, request6(dhcp6.DHCPV6_SOLICIT))
    ia = o[dhcp6.DHCPV6_OPTION_IA_NA]
    assert ipaddress.IPv6Address("fd00::10").packed not in ia and b"\x00\x02" in ia  # NoAddrs


_T6, _PORT6 = topo6("dhcpv6-stateful")
_VALID6 = [request6(dhcp6.DHCPV6_SOLICIT), request6(dhcp6.DHCPV6_INFORMATION_REQUEST),
           request6(dhcp6.DHCPV6_RENEW, server=b"\x00\x03\x00\x01" + b"\x01" * 6)]


@settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(_VALID6), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                          max_size=8), st.integers(0, 120))
def test_mutated_dhcpv6_packets_never_raise(base: bytes, flips: list[tuple[int, int]],
                                            cut: int) -> None:
    data = bytearray(base)
    for at, value in flips:
        if at < len(data):
            data[at] = value
    answer = DhcpApp().packet_in(_T6, "dhcp", _pin(bytes(data[:max(14, len(data) - cut)])))
    for _, frame in answer.frames:
        assert packet.Packet(frame).get_protocol(dhcp6.dhcp6) is not None


# --- DHCPv6: the port's extra options ------------------------------------------------------
import logging  # noqa: E402

from dragonflow.apps.dhcp6 import encode_option6, option6_code  # noqa: E402


def topo6_with(mode: str, opts: list[dict[str, object]], port_id: str = "p"
               ) -> tuple[Topology, Port]:
    t, base = topo6(mode)
    port = Port.from_dict({"id": port_id, "topic": "t", "network_id": "n", "mac": MAC,
                           "unique_key": 3, "fixed_ips": [{"subnet_id": "s6",
                                                           "ip_address": "fd00::10"}],
                           "extra_dhcp_opts": opts})
    t.apply("port", base.id, None)
    t.apply("port", port.id, port)
    return t, port


def options6(t: Topology, port: Port, data: bytes) -> list[tuple[int, bytes]]:
    """Every option of the answer, in order (os-ken's parser keeps repeats)."""
    _, d, _ = answer6(t, port, data)
    return [(o.code, o.data) for o in d.options.option_list]


def v6(*addrs: str) -> bytes:
    return b"".join(ipaddress.IPv6Address(a).packed for a in addrs)


def test_dhcpv6_port_options_replace_the_defaults_and_are_sent() -> None:
    t, port = topo6_with("dhcpv6-stateful", [
        {"opt_name": "dns-server", "opt_value": "[fd00::99], fd00::98", "ip_version": 6},
        {"opt_name": "option6:ntp-server", "opt_value": "fd00::123,ff05::101,ntp.example",
         "ip_version": 6},
        {"opt_name": "tag:ipxe,bootfile-url", "opt_value": "http://[fd00::1]/boot.ipxe",
         "ip_version": 6},
        {"opt_name": "bootfile-param", "opt_value": "ro,console=ttyS0", "ip_version": 6},
        {"opt_name": "option6:31", "opt_value": "fd00::7", "ip_version": 6},  # sntp-server
        {"opt_name": "65001", "opt_value": "opaque", "ip_version": 6},
        {"opt_name": "information-refresh-time", "opt_value": "3600", "ip_version": 6},
        # IPv4 options: the DHCPv4 server's, never in a DHCPv6 answer
        {"opt_name": "dns-server", "opt_value": "10.0.0.9", "ip_version": 4},
        {"opt_name": "bootfile-name", "opt_value": "pxe.0", "ip_version": 4}])
    server = None
    for kind in (dhcp6.DHCPV6_SOLICIT, dhcp6.DHCPV6_REQUEST):
        opts = options6(t, port, request6(kind, server=server))
        server = dict(opts)[dhcp6.DHCPV6_OPTION_SERVERID]
        o = dict(opts)
        assert [c for c, _ in opts] == [1, 2, 3, 24, 23, 56, 59, 60, 31, 65001]
        assert o[23] == v6("fd00::99", "fd00::98")  # the port's, not the subnet's fd00::53
        assert o[56] == (b"\x00\x01\x00\x10" + v6("fd00::123")  # server address
                         + b"\x00\x02\x00\x10" + v6("ff05::101")  # multicast address
                         + b"\x00\x03\x00\x0d\x03ntp\x07example\x00")  # name
        assert o[59] == b"http://[fd00::1]/boot.ipxe"
        assert o[60] == b"\x00\x02ro\x00\x0dconsole=ttyS0"
        assert o[31] == v6("fd00::7") and o[65001] == b"opaque"
        assert o[24] == b"\x0eopenstacklocal\x00"  # a default the port does not replace
    # the refresh time only answers an INFORMATION-REQUEST (RFC 8415 21.23)
    o = dict(options6(t, port, request6(dhcp6.DHCPV6_INFORMATION_REQUEST, ia=False)))
    assert o[32] == (3600).to_bytes(4, "big") and o[23] == v6("fd00::99", "fd00::98")


def test_dhcpv6_a_bad_option_is_logged_once_and_the_others_still_sent(
        caplog: pytest.LogCaptureFixture) -> None:
    t, port = topo6_with("dhcpv6-stateless", [
        {"opt_name": "dns-server", "opt_value": "not-an-ip", "ip_version": 6},
        {"opt_name": "ntp-server", "opt_value": "fd00::123,[bad", "ip_version": 6},
        {"opt_name": "information-refresh-time", "opt_value": "-1", "ip_version": 6},
        {"opt_name": "option6:3", "opt_value": "x", "ip_version": 6},  # IA_NA: the server's
        {"opt_name": "no-such-option", "opt_value": "x", "ip_version": 6},
        {"opt_name": "bootfile-url", "opt_value": "tftp://[fd00::1]/pxe", "ip_version": 6}],
        port_id="p-bad")
    with caplog.at_level(logging.WARNING, logger="dragonflow.apps.dhcp6"):
        for _ in range(3):
            o = dict(options6(t, port, request6(dhcp6.DHCPV6_INFORMATION_REQUEST, ia=False)))
            assert o[23] == v6("fd00::53")  # the subnet's stays
            assert o[59] == b"tftp://[fd00::1]/pxe"
            assert not {56, 32, 3} & set(o)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5 and all("p-bad" in w for w in warnings)


def test_dhcpv6_option_names_and_encodings() -> None:
    assert option6_code("dns-server") == option6_code("option6:dns-server") == (23, "ips6")
    assert option6_code("option6:23") == option6_code("23") == (23, "ips6")
    assert option6_code("tag:a,tag:b,option6:bootfile-url") == (59, "str")
    assert option6_code("bootfile-param") == (60, "strings")
    assert option6_code("4242") == (4242, "str")
    for refused in ("2", "option6:13", "0", "65536", "option:dns-server", "tag:x", "nope"):
        assert option6_code(refused) is None, refused
    assert encode_option6("domains", "a.example,b") == b"\x01a\x07example\x00\x01b\x00"
    assert encode_option6("u32", "86400") == (86400).to_bytes(4, "big")
    for kind, bad in (("ips6", ""), ("ips6", "10.0.0.1"), ("ips6", "[::]"),
                      ("domains", "a..b"), ("u32", "4294967296"), ("u32", "soon"),
                      ("ntp", "has space"), ("str", "x" * 70000)):
        with pytest.raises(ValueError):
            encode_option6(kind, bad)
