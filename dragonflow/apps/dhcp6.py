"""The DHCPv6 server of the dhcp app (RFC 8415), answered from the NB on the VM's chassis.

Subnets with DHCP enabled and ``ipv6_address_mode``:

* ``dhcpv6-stateful``: SOLICIT -> ADVERTISE, REQUEST / RENEW / REBIND -> REPLY with the
  port's NB address in its IA_NA (NoBinding / NotOnLink status when the client asks for
  another), CONFIRM -> REPLY (Success / NotOnLink), RELEASE / DECLINE -> REPLY Success;
* ``dhcpv6-stateless``: INFORMATION-REQUEST -> REPLY with options only (a stateless
  subnet's addresses come from SLAAC; an IA_NA asked for there gets NoAddrsAvail);

options: DNS servers (23: the subnet's, else the configured defaults that are IPv6), the
domain search list (24), and the port's ``ip_version`` 6 extra DHCP options, each replacing
the default of its code. The server's DUID is DUID-LL of the router interface MAC on the
network (or the dhcp app's fixed one); replies go from its link-local address to the
client's, out of the client's own port. os-ken's dhcp6 codec frames the message; the option
bodies (IA_NA, IAADDR, status, DUID) are built here, as it carries them as bytes.

Extra options are named as Neutron hands them to dnsmasq: a dnsmasq ``option6`` name or a
number, bare or as ``option6:<name|number>`` (a ``tag:<class>,`` prefix is dropped: every
client of the port gets the option). Values are dnsmasq's: comma separated, addresses bare or
in brackets; ``ntp-server`` becomes RFC 5908 suboptions (1 for a server address, 2 for a
multicast one, 3 for a name), ``bootfile-param`` RFC 5970's length-prefixed strings. A
number is encoded as its name would be (``option6:23`` is ``dns-server``, as in dnsmasq); a
number with no name here carries the value's bytes. The codes the server builds from the
exchange (DUIDs, IAs, status...) are not a port's to set; information-refresh-time goes only
in the REPLY to an INFORMATION-REQUEST (RFC 8415 21.23). They go, like the defaults, in every
message that carries configuration (ADVERTISE; the REPLY to REQUEST, RENEW, REBIND,
INFORMATION-REQUEST), whatever the client's ORO lists. One that does not encode is logged
once and left out; the others are still sent.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import struct

from os_ken.lib.packet import dhcp6, ethernet, ipv6, packet, udp

from dragonflow.apps.ra import link_local
from dragonflow.model import Network, Port, Router, Subnet
from dragonflow.pipeline.topology import Topology, View

LOG = logging.getLogger(__name__)
CLIENT6 = {"eth_type": 0x86DD, "ip_proto": 17, "udp_src": 546, "udp_dst": 547}
FALLBACK_SERVER_MAC = "fa:16:3e:d4:c9:01"  # no DHCP port, no router interface: ours
MODES = ("dhcpv6-stateful", "dhcpv6-stateless")
OPT_DNS, OPT_DOMAINS = 23, 24
ST_SUCCESS, ST_NOADDRS, ST_NOBINDING, ST_NOTONLINK = 0, 2, 3, 4
PREFERRED, VALID = 604800, 2592000
T1, T2 = PREFERRED // 2, PREFERRED * 4 // 5

# extra DHCPv6 option names Neutron passes to dnsmasq (as option6:<name>) -> (code, kind)
OPTION6_NAMES: dict[str, tuple[int, str]] = {
    "sip-server-domain": (21, "domains"), "sip-server": (22, "ips6"),
    "dns-server": (OPT_DNS, "ips6"), "domain-search": (OPT_DOMAINS, "domains"),
    "nis-server": (27, "ips6"), "nis+-server": (28, "ips6"),
    "nis-domain": (29, "domains"), "nis+-domain": (30, "domains"),
    "sntp-server": (31, "ips6"), "information-refresh-time": (32, "u32"),
    "ntp-server": (56, "ntp"), "bootfile-url": (59, "str"), "bootfile-param": (60, "strings"),
}
_KINDS = {code: kind for code, kind in OPTION6_NAMES.values()}
# built by the server from the exchange (RFC 8415, RFC 3633): never a port's to set
RESERVED6 = frozenset({1, 2, 3, 4, 5, 6, 9, 13, 14, 18, 19, 20, 25, 26})
OPT_REFRESH = 32  # only in the REPLY to an INFORMATION-REQUEST
NTP_ADDR, NTP_MCAST, NTP_FQDN = 1, 2, 3  # RFC 5908 suboptions
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")
_warned: set[tuple[str, str, str]] = set()


def dns_name(name: str) -> bytes:
    """A domain name in DNS wire form (labels, then 0)."""
    out = b""
    for label in name.strip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def bare_option_name(name: str, prefix: str) -> str:
    """An extra DHCP option's name without ``tag:<class>,`` prefixes (every client of the
    port gets it) and without ``prefix`` (``option:`` / ``option6:``)."""
    name = name.strip()
    while name.startswith("tag:") and "," in name:
        name = name.split(",", 1)[1].strip()
    return name[len(prefix):] if name.startswith(prefix) else name


def option6_code(name: str) -> tuple[int, str] | None:
    """(code, value kind) of an ``ip_version`` 6 extra DHCP option as Neutron names it
    (see the module docstring); None for an unknown name or a code the server owns."""
    name = bare_option_name(name, "option6:")
    if name.isascii() and name.isdigit():
        code = int(name)
        if not 0 < code <= 0xFFFF or code in RESERVED6:
            return None
        return code, _KINDS.get(code, "str")
    return OPTION6_NAMES.get(name.lower())


def _addr6(text: str) -> ipaddress.IPv6Address:
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    addr = ipaddress.IPv6Address(text)
    if addr.is_unspecified:  # dnsmasq's "its own address": no such server here
        raise ValueError("'::' names no server here")
    return addr


def _domain(name: str) -> bytes:
    labels = name.strip(".").split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or len(name.strip(".")) > 253:
        raise ValueError(f"{name!r} is not a domain name")
    return dns_name(name)


def encode_option6(kind: str, value: str) -> bytes:
    """An extra DHCPv6 option's value in its wire form; ValueError if it does not fit."""
    parts = [v.strip() for v in value.split(",") if v.strip()]
    if kind in ("ips6", "domains", "ntp") and not parts:
        raise ValueError("no value")
    if kind == "ips6":
        data = b"".join(_addr6(p).packed for p in parts)
    elif kind == "domains":
        data = b"".join(_domain(p) for p in parts)
    elif kind == "u32":
        n = int(value)
        if not 0 <= n <= 0xFFFFFFFF:
            raise ValueError(f"{n} does not fit 32 bits")
        data = struct.pack("!I", n)
    elif kind == "ntp":
        data = b""
        for p in parts:
            try:
                addr = _addr6(p)
            except ValueError:
                try:
                    sub, body = NTP_FQDN, _domain(p)
                except ValueError:
                    raise ValueError(f"{p!r} is neither an IPv6 address nor a name") from None
            else:
                sub, body = (NTP_MCAST if addr.is_multicast else NTP_ADDR), addr.packed
            data += struct.pack("!HH", sub, len(body)) + body
    elif kind == "strings":
        data = b""
        for p in parts:
            raw = p.encode()
            if len(raw) > 0xFFFF:
                raise ValueError("a parameter longer than 65535 bytes")
            data += struct.pack("!H", len(raw)) + raw
    else:
        data = value.encode()
    if len(data) > 0xFFFF:
        raise ValueError("longer than 65535 bytes")
    return data


def _warn_once(port: Port, name: str, value: str, why: str) -> None:
    key = (port.id, name, value)
    if key in _warned:
        return
    if len(_warned) >= 10000:
        _warned.clear()
    _warned.add(key)
    LOG.warning("port %s: extra DHCPv6 option %s=%r not sent: %s", port.id, name, value, why)


def _port_options(port: Port, msg_type: int) -> list[dhcp6.option]:
    """The port's ``ip_version`` 6 extra options for an answer to ``msg_type``; of two
    with one code, the later one counts."""
    found: dict[int, bytes] = {}
    for extra in port.extra_dhcp_opts:
        if extra.ip_version != 6:
            continue
        code_kind = option6_code(extra.opt_name)
        if code_kind is None:
            _warn_once(port, extra.opt_name, extra.opt_value,
                       "not a DHCPv6 option a port may set")
            continue
        code, kind = code_kind
        try:
            data = encode_option6(kind, extra.opt_value)
        except ValueError as e:
            _warn_once(port, extra.opt_name, extra.opt_value, str(e))
            continue
        if code != OPT_REFRESH or msg_type == dhcp6.DHCPV6_INFORMATION_REQUEST:
            found[code] = data
    return [_opt(code, data) for code, data in found.items()]


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
        extra = _port_options(port, kind)
        codes = {o.code for o in extra}
        out = [o for o in out if o.code not in codes] + extra
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
