"""df-trace: follow one packet through the logical pipeline of the chassis hosting a port.

    df-trace --port b1 'ip4.dst=10.1.0.11 icmp4'
    df-trace --port b1 --dst-ip 10.0.0.12 --proto tcp --dst-port 80 --json
    df-trace --port b1 'eth.dst=fa:16:3e:00:01:02 ip4.dst=10.0.0.12 udp.dst=53' --remote

It builds the packet (a microflow: what the expression says, the rest from the port's NB
record), runs Open vSwitch's ``ofproto/trace`` on the integration bridge of this chassis,
and translates what OVS reports back into the pipeline's terms: for every table the stage
and its app (the controller's status file), the flow hit -- its app and NB object (from
the flow cookie: 16 bits of app hash, 48 bits of owner hash, see pipeline/lower.py) -- and
the logical fields (pipeline/fields.py) that flow changed; then where the packet ends:
delivered to which local port, tunnelled to which chassis, sent to the controller (which
stage punted it, i.e. which app handles it), or dropped (by which stage, and whether by an
explicit flow of some owner or because nothing matched and the stage's miss is ``drop``).

Connection tracking: ``ofproto/trace`` follows each ``ct()`` recirculation with
ct_state ``trk,new`` unless ``--ct-next`` says otherwise (repeatable, one per
recirculation, e.g. ``--ct-next trk,est``); each recirculation is shown as its own part.
A packet leaving by a tunnel is followed onto the remote chassis with ``--remote``, when
that chassis' OVS run directory is reachable from here (``--remote-rundir CHASSIS=DIR``,
e.g. on a test bed); otherwise df-trace prints the command to run on that chassis
(``--from-tunnel``, which traces a packet as it arrives from a tunnel).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from oslo_config import cfg

from dragonflow import conf as dfconf
from dragonflow.db import errors as db_errors
from dragonflow.db.connect import open_driver
from dragonflow.db.driver import DriverError
from dragonflow.db.nbapi import NbApi
from dragonflow.db.security import NbSecurity
from dragonflow.pipeline.fields import LOCALNET, LOGICAL_FIELDS
from dragonflow.pipeline.lower import PIPELINE_APP, app_cookie, cookie
from dragonflow.pipeline.stages import COPP_KIND_TABLE, COPP_PORT_TABLE

PROG = "df-trace"


def owner_hash(owner: str) -> int:
    """The low 48 bits of the cookie of ``owner``'s flows (whatever the app)."""
    return cookie(PIPELINE_APP, owner) & OWNER_MASK


OWNER_MASK = (1 << 48) - 1


class TraceError(Exception):
    """A user-facing error (bad expression, unknown port, OVS unreachable...)."""


# --- the microflow expression ------------------------------------------------------------

# logical header name -> (OVS field, value kind, protocol it implies)
EXPR_FIELDS: dict[str, tuple[str, str, str | None]] = {
    "eth.src": ("dl_src", "mac", None),
    "eth.dst": ("dl_dst", "mac", None),
    "eth.type": ("dl_type", "int16", None),
    "vlan.vid": ("dl_vlan", "vid", None),
    "ip4.src": ("nw_src", "ip4", "ip4"),
    "ip4.dst": ("nw_dst", "ip4", "ip4"),
    "ip6.src": ("ipv6_src", "ip6", "ip6"),
    "ip6.dst": ("ipv6_dst", "ip6", "ip6"),
    "ip.ttl": ("nw_ttl", "int8", "ip"),
    "ip.proto": ("nw_proto", "int8", "ip"),
    "ip.dscp": ("ip_dscp", "dscp", "ip"),
    "tcp.src": ("tcp_src", "int16", "tcp"),
    "tcp.dst": ("tcp_dst", "int16", "tcp"),
    "tcp.flags": ("tcp_flags", "tcpflags", "tcp"),
    "udp.src": ("udp_src", "int16", "udp"),
    "udp.dst": ("udp_dst", "int16", "udp"),
    "sctp.src": ("sctp_src", "int16", "sctp"),
    "sctp.dst": ("sctp_dst", "int16", "sctp"),
    "icmp4.type": ("icmp_type", "int8", "icmp4"),
    "icmp4.code": ("icmp_code", "int8", "icmp4"),
    "icmp6.type": ("icmpv6_type", "int8", "icmp6"),
    "icmp6.code": ("icmpv6_code", "int8", "icmp6"),
    "nd.target": ("nd_target", "ip6", "icmp6"),
    "arp.op": ("arp_op", "int16", "arp"),
    "arp.spa": ("arp_spa", "ip4", "arp"),
    "arp.tpa": ("arp_tpa", "ip4", "arp"),
    "arp.sha": ("arp_sha", "mac", "arp"),
    "arp.tha": ("arp_tha", "mac", "arp"),
}
# bare protocol words an expression may hold
PROTO_WORDS = {"ip4": "ip4", "ip": "ip4", "ip6": "ip6", "tcp": "tcp", "udp": "udp",
               "sctp": "sctp", "icmp4": "icmp4", "icmp": "icmp4", "icmp6": "icmp6",
               "arp": "arp"}
L4 = ("tcp", "udp", "sctp", "icmp4", "icmp6")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
TCP_FLAGS = {"fin": 0x1, "syn": 0x2, "rst": 0x4, "psh": 0x8, "ack": 0x10, "urg": 0x20}


@dataclass
class Packet:
    """What the expression said: OVS field -> value, and the protocols it implies."""

    fields: dict[str, str] = field(default_factory=dict)
    protos: set[str] = field(default_factory=set)

    def l3(self) -> str | None:
        """'ip4', 'ip6', 'arp' or None (an Ethernet frame only)."""
        if "arp" in self.protos:
            return "arp"
        if "ip6" in self.protos or "icmp6" in self.protos:
            return "ip6"
        if self.protos & {"ip4", "icmp4", "ip", "tcp", "udp", "sctp"}:
            return "ip4"
        return None

    def l4(self) -> str | None:
        found = [p for p in L4 if p in self.protos]
        return found[0] if found else None


def _value(name: str, kind: str, raw: str) -> str:
    def bad(why: str) -> TraceError:
        return TraceError(f"bad value for {name}: {raw!r} ({why})")

    if kind == "mac":
        if not _MAC.match(raw):
            raise bad("expected a MAC address like fa:16:3e:00:00:01")
        return raw.lower()
    if kind in ("ip4", "ip6"):
        try:
            addr = ipaddress.ip_address(raw)
        except ValueError:
            raise bad(f"expected an IPv{kind[-1]} address") from None
        if addr.version != int(kind[-1]):
            raise bad(f"expected an IPv{kind[-1]} address")
        return str(addr)
    if kind == "tcpflags":
        if re.fullmatch(r"(0x[0-9a-fA-F]+|\d+)", raw):
            return raw
        total = 0
        for word in re.split(r"[|+]", raw.lower()):
            if word not in TCP_FLAGS:
                raise bad(f"flags are {'|'.join(TCP_FLAGS)} or a number")
            total |= TCP_FLAGS[word]
        return hex(total)
    try:
        value = int(raw, 0)
    except ValueError:
        raise bad("expected a number") from None
    limit = {"int8": 0xFF, "int16": 0xFFFF, "vid": 4095, "dscp": 63}[kind]
    if not 0 <= value <= limit:
        raise bad(f"out of range 0..{limit}")
    return str(value)


def parse_expr(text: str, packet: Packet | None = None) -> Packet:
    """Parse a microflow expression: ``field=value`` terms and bare protocol words,
    separated by blanks, commas or ``&&`` (e.g. ``eth.src=fa:16:3e:00:00:01 ip4.dst=10.0.0.5
    tcp.dst=80``). Raises TraceError naming the bad term."""
    pkt = packet or Packet()
    for term in re.split(r"[\s,]+|&&", text.strip()):
        if not term:
            continue
        name, eq, raw = term.partition("=")
        name = name.strip().lower()
        raw = raw.strip().strip("'\"")
        if name.endswith("="):  # '==' as in OVN's syntax
            name = name[:-1]
        raw = raw.lstrip("=")
        if not eq:
            if name not in PROTO_WORDS:
                raise TraceError(f"unknown term {term!r} in the expression (a protocol is one "
                                 f"of {', '.join(sorted(PROTO_WORDS))}; fields are "
                                 "field=value)")
            pkt.protos.add(PROTO_WORDS[name])
            continue
        if name not in EXPR_FIELDS:
            raise TraceError(f"unknown field {name!r} in the expression; known fields: "
                             f"{', '.join(EXPR_FIELDS)}")
        if not raw:
            raise TraceError(f"field {name!r} has no value")
        ovs, kind, proto = EXPR_FIELDS[name]
        pkt.fields[ovs] = _value(name, kind, raw)
        if proto:
            pkt.protos.add(proto)
    l4 = [p for p in L4 if p in pkt.protos]
    if len(l4) > 1:
        raise TraceError(f"the expression names more than one transport: {', '.join(l4)}")
    if "arp" in pkt.protos and pkt.protos & ({"ip4", "ip6", "ip"} | set(L4)):
        raise TraceError("the expression mixes arp.* with IP fields")
    if "ip6" in pkt.protos and pkt.protos & {"ip4", "icmp4"}:
        raise TraceError("the expression mixes IPv4 and IPv6 fields")
    if "icmp6" in pkt.protos and "ip4" in pkt.protos:
        raise TraceError("icmp6 with ip4 fields")
    if "icmp4" in pkt.protos and "ip6" in pkt.protos:
        raise TraceError("icmp4 with ip6 fields")
    return pkt


@dataclass
class PortInfo:
    """What the packet's defaults come from: the NB port and its network."""

    id: str
    name: str
    mac: str
    ips: list[str]
    network_id: str
    chassis: str | None


def ovs_flow(pkt: Packet, in_port: str, port: PortInfo | None = None,
             neighbours: dict[str, str] | None = None, gateway_mac: str | None = None
             ) -> str:
    """The ofproto/trace microflow of ``pkt`` entering at ``in_port``. Defaults: eth.src and
    the source address (IP, ARP sender) are the port's; eth.dst the MAC of the NB port that
    holds the destination address (``neighbours``), else the network's router interface
    (``gateway_mac``) for an address off the port's subnets, else broadcast for ARP; ip.ttl
    64; icmp type 8 (echo request); arp.op 1 (request)."""
    f = dict(pkt.fields)
    l3, l4 = pkt.l3(), pkt.l4()
    if port is not None:
        f.setdefault("dl_src", port.mac)
        v4 = [ip for ip in port.ips if ":" not in ip]
        v6 = [ip for ip in port.ips if ":" in ip]
        if l3 == "ip4" and v4:
            f.setdefault("nw_src", v4[0])
        if l3 == "ip6" and v6:
            f.setdefault("ipv6_src", v6[0])
        if l3 == "arp":
            f.setdefault("arp_sha", port.mac)
            if v4:
                f.setdefault("arp_spa", v4[0])
    dst_ip = f.get("nw_dst") or f.get("ipv6_dst") or f.get("arp_tpa")
    if "dl_dst" not in f:
        if l3 == "arp":
            f["dl_dst"] = "ff:ff:ff:ff:ff:ff"
        elif dst_ip and neighbours and dst_ip in neighbours:
            f["dl_dst"] = neighbours[dst_ip]
        elif dst_ip and gateway_mac:
            f["dl_dst"] = gateway_mac
    if l3 == "arp":
        f.setdefault("arp_op", "1")
    if l3 in ("ip4", "ip6"):
        f.setdefault("nw_ttl", "64")
    if l4 == "icmp4":
        f.setdefault("icmp_type", "8")
        f.setdefault("icmp_code", "0")
    if l4 == "icmp6":
        f.setdefault("icmpv6_type", "128")
        f.setdefault("icmpv6_code", "0")
    if "dl_dst" not in f and "dl_src" not in f and l3 is None:
        raise TraceError("nothing to trace: give at least eth.dst, ip4.dst or ip6.dst")
    word = {("ip4", "tcp"): "tcp", ("ip4", "udp"): "udp", ("ip4", "sctp"): "sctp",
            ("ip4", "icmp4"): "icmp", ("ip6", "tcp"): "tcp6", ("ip6", "udp"): "udp6",
            ("ip6", "sctp"): "sctp6", ("ip6", "icmp6"): "icmp6"}.get((l3 or "", l4 or ""))
    if word is None:
        word = {"ip4": "ip", "ip6": "ipv6", "arp": "arp"}.get(l3 or "", "")
    if "dl_type" in f and word:
        raise TraceError("eth.type with IP/ARP fields: the protocol already sets it")
    order = ["dl_src", "dl_dst", "dl_type", "dl_vlan", "arp_op", "arp_spa", "arp_tpa",
             "arp_sha", "arp_tha", "nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "nw_proto",
             "nw_ttl", "ip_dscp"]
    keys = [k for k in order if k in f] + sorted(k for k in f if k not in order)
    parts = ([word] if word else []) + [f"in_port={in_port}"] + [f"{k}={f[k]}" for k in keys]
    return ",".join(parts)


# --- ofproto/trace output ----------------------------------------------------------------

@dataclass
class Step:
    """One table visited: what OVS printed, plus what df-trace derived."""

    table: int
    bridge: str
    match: str = ""
    priority: int | None = None
    cookie: int | None = None
    no_match: bool = False
    actions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    writes: dict[str, str] = field(default_factory=dict)  # field -> value after the flow
    masks: dict[str, int] = field(default_factory=dict)  # field -> bits written (-1: all)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    indent: int = 0


@dataclass
class Section:
    """The first pass, or one recirculation (conntrack) of it."""

    header: str = ""
    flow: str = ""
    steps: list[Step] = field(default_factory=list)
    final_flow: str = ""
    megaflow: str = ""
    datapath_actions: str = ""
    notes: list[str] = field(default_factory=list)


ALL = -1  # "every bit" of a field an action wrote
_TABLE_LINE = re.compile(r"^(\s*)(\d+)\. (.*)$")
_PRIO = re.compile(r"^(?:(.*?), )?priority (\d+)(?:, cookie (0x[0-9a-f]+))?$")
_BRIDGE = re.compile(r'^bridge\("([^"]+)"\)')


def split_flow(flow: str) -> dict[str, str]:
    """An OVS flow string as field -> value (bare words such as 'icmp' map to '')."""
    out: dict[str, str] = {}
    for part in flow.split(","):
        part = part.strip()
        if not part:
            continue
        k, _, v = part.partition("=")
        out[k] = v
    return out


# OVS's names for what actions write -> the names 'Flow:' lines use
_ALIASES = {"eth_src": "dl_src", "eth_dst": "dl_dst", "ip_src": "nw_src", "ip_dst": "nw_dst",
            "ipv4_src": "nw_src", "ipv4_dst": "nw_dst", "tunnel_id": "tun_id",
            "tun_ipv4_dst": "tun_dst", "tun_ipv4_src": "tun_src", "NXM_NX_TUN_ID": "tun_id",
            "NXM_NX_TUN_IPV4_DST": "tun_dst", "OXM_OF_METADATA": "metadata",
            "NXM_OF_ETH_SRC": "dl_src", "NXM_OF_ETH_DST": "dl_dst",
            "NXM_OF_IP_SRC": "nw_src", "NXM_OF_IP_DST": "nw_dst",
            "NXM_OF_ARP_SPA": "arp_spa", "NXM_OF_ARP_TPA": "arp_tpa",
            "NXM_NX_ARP_SHA": "arp_sha", "NXM_NX_ARP_THA": "arp_tha",
            "NXM_OF_ARP_OP": "arp_op", "NXM_NX_IP_TTL": "nw_ttl",
            "NXM_NX_CT_MARK": "ct_mark", "NXM_NX_CT_LABEL": "ct_label",
            "icmpv4_type": "icmp_type", "icmpv4_code": "icmp_code"}


def _canon(name: str) -> str:
    m = re.fullmatch(r"NXM_NX_REG(\d+)", name)
    if m:
        return f"reg{m.group(1)}"
    return _ALIASES.get(name, name)


def _int(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


class State:
    """The packet's registers and headers while the trace goes (OVS prints only the start
    and the end): every set_field/load/write_metadata/move/dec_ttl applied in order."""

    def __init__(self, flow: str) -> None:
        self.f = split_flow(flow)

    def reg(self, name: str) -> int:
        v = _int(self.f.get(name, "0"))
        return v or 0

    def _set_bits(self, name: str, value: int, ofs: int, nbits: int | None) -> None:
        if nbits is None:
            self.f[name] = hex(value)
            return
        mask = ((1 << nbits) - 1) << ofs
        cur = self.reg(name)
        self.f[name] = hex((cur & ~mask) | ((value << ofs) & mask))

    def apply(self, action: str) -> list[tuple[str, int]]:
        """Apply one action line; the fields it wrote, with the bits (-1: all)."""
        a = action.strip()
        if a.startswith("set_field:"):
            value, _, target = a[len("set_field:"):].rpartition("->")
            name = _canon(target)
            if "/" in value and _int(value.split("/")[0]) is not None:
                val, msk = (_int(x) or 0 for x in value.split("/", 1))
                self.f[name] = hex((self.reg(name) & ~msk) | (val & msk))
                return [(name, msk)]
            self.f[name] = value
            return [(name, ALL)]
        if a.startswith("load:"):
            m = re.fullmatch(r"load:(\S+)->(\w+)\[(\d*)(?:\.\.(\d+))?\]", a)
            if not m:
                return []
            name, lval = _canon(m.group(2)), _int(m.group(1)) or 0
            if m.group(3) == "":
                self._set_bits(name, lval, 0, None)
                return [(name, ALL)]
            lo = int(m.group(3))
            hi = int(m.group(4)) if m.group(4) else lo
            self._set_bits(name, lval, lo, hi - lo + 1)
            return [(name, ((1 << (hi - lo + 1)) - 1) << lo)]
        if a.startswith("write_metadata:"):
            vtext, _, mtext = a[len("write_metadata:"):].partition("/")
            wval = _int(vtext) or 0
            wmask = (_int(mtext) or 0) if mtext else (1 << 64) - 1
            self.f["metadata"] = hex((self.reg("metadata") & ~wmask) | (wval & wmask))
            return [("metadata", wmask)]
        if a.startswith("move:"):
            m = re.fullmatch(r"move:(\w+)\[(\d*)(?:\.\.(\d+))?\]->(\w+)\[(\d*)(?:\.\.(\d+))?\]",
                             a)
            if not m:
                return []
            src, dst = _canon(m.group(1)), _canon(m.group(4))
            if re.fullmatch(r"reg\d+|metadata", src) and re.fullmatch(r"reg\d+|metadata", dst):
                s_lo = int(m.group(2) or 0)
                s_hi = int(m.group(3)) if m.group(3) else (s_lo if m.group(2) else 31)
                d_lo = int(m.group(5) or 0)
                n = s_hi - s_lo + 1
                self._set_bits(dst, (self.reg(src) >> s_lo) & ((1 << n) - 1), d_lo, n)
                return [(dst, ((1 << n) - 1) << d_lo)]
            if m.group(2) == "" and m.group(5) == "" and src in self.f:
                self.f[dst] = self.f[src]
            else:
                self.f[dst] = "?"
            return [(dst, ALL)]
        if a == "dec_ttl" or a.startswith("dec_ttl("):
            ttl = _int(self.f.get("nw_ttl", "0")) or 0
            self.f["nw_ttl"] = str(max(0, ttl - 1))
            return [("nw_ttl", ALL)]
        return []


def parse_trace(text: str, bridge: str = "br-int") -> list[Section]:
    """``ofproto/trace`` output -> sections (the first pass and each recirculation), each
    with the tables visited on ``bridge`` (other bridges a tunnel or patch leads to are
    skipped), their actions, the registers they wrote and the outputs they made."""
    sections: list[Section] = [Section()]
    cur = sections[0]
    state = State("")
    in_bridge = ""
    steps_by_indent: list[Step] = []
    pending_header = False
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if set(s) == {"="}:
            if cur.steps or cur.flow:
                if pending_header:
                    pending_header = False
                    continue
                cur = Section()
                sections.append(cur)
                pending_header = True
            else:
                pending_header = not pending_header
            continue
        if pending_header and not cur.flow and not cur.header:
            cur.header = s
            continue
        if s.startswith("Flow: "):
            cur.flow = s[len("Flow: "):]
            state = State(cur.flow)
            continue
        if s.startswith("Final flow: "):
            cur.final_flow = s[len("Final flow: "):]
            if cur.final_flow == "unchanged":
                cur.final_flow = cur.flow
            continue
        if s.startswith("Megaflow: "):
            cur.megaflow = s[len("Megaflow: "):]
            continue
        if s.startswith("Datapath actions: "):
            cur.datapath_actions = s[len("Datapath actions: "):]
            continue
        m = _BRIDGE.match(s)
        if m:
            in_bridge = m.group(1)
            steps_by_indent = []
            continue
        if set(s) == {"-"}:
            continue
        if in_bridge != bridge:
            if not in_bridge:
                cur.notes.append(s)
            continue
        m = _TABLE_LINE.match(line)
        if m:
            indent, table, rest = len(m.group(1).expandtabs()), int(m.group(2)), m.group(3)
            step = Step(table=table, bridge=in_bridge, indent=indent)
            if rest.startswith("No match"):
                step.no_match = True
            else:
                pm = _PRIO.match(rest)
                if pm:
                    step.match = pm.group(1) or ""
                    step.priority = int(pm.group(2))
                    step.cookie = int(pm.group(3), 16) if pm.group(3) else None
                else:
                    step.match = rest
            cur.steps.append(step)
            steps_by_indent = [st for st in steps_by_indent if st.indent < indent] + [step]
            continue
        if not cur.steps:
            cur.notes.append(s)  # 'thaw', 'Resuming from table N'
            continue
        # an action or a note of the step at this depth (after a nested resubmit, the
        # parent's remaining actions come at the parent's depth)
        depth = len(line) - len(line.lstrip())
        owner = cur.steps[-1]
        for st in reversed(steps_by_indent):
            if st.indent + 4 <= depth:
                owner = st
                break
        if s.startswith("->") or s.startswith(">>"):
            note = s.lstrip("->").strip()
            owner.notes.append(note)
            if note.startswith("skipping output to input port") and owner.outputs:
                owner.outputs.pop()  # OVS never sends a frame back where it came from
            continue
        owner.actions.append(s)
        for name, bits in state.apply(s):
            owner.writes[name] = state.f.get(name, "")
            owner.masks[name] = owner.masks.get(name, 0) | bits
        out = _output_of(s, state)
        if out is not None:
            owner.outputs.append(out)
    return [sec for sec in sections if sec.flow or sec.steps]


def _output_of(action: str, state: State) -> dict[str, Any] | None:
    a = action.strip()
    if a.startswith("output:"):
        target = a[len("output:"):]
        return {"ofport": target, "tun_dst": state.f.get("tun_dst"),
                "tun_id": state.f.get("tun_id"), "regs": dict(state.f)}
    if a.startswith("CONTROLLER") or a.startswith("controller("):
        return {"controller": True, "regs": dict(state.f)}
    if a == "IN_PORT" or a == "in_port":
        return {"ofport": "IN_PORT", "regs": dict(state.f)}
    return None


# --- what the chassis knows: pipeline, interfaces, NB ------------------------------------

STAGE_HINTS = {
    "classify": "the frame's ingress (ofport, tunnel VNI, patch) is not one the pipeline "
                "knows: an unbound or unknown port",
    "port_security": "port security (anti-spoofing): the source MAC/IP is not the port's "
                     "own nor an allowed address pair",
    "secgroup_out": "security groups: no egress rule of the source port allows it",
    "secgroup_in": "security groups: no ingress rule of the destination port allows it",
    "l2_lookup": "no port on the network has this destination MAC (unknown MAC), and it is "
                 "no broadcast",
    "l3_lookup": "the router has no route to the destination",
    "egress": "the destination port is not reachable from this chassis",
    "copp_port": "re-injected by the controller: never punted a second time",
}


@dataclass
class Context:
    """Everything the translation reads: the pipeline (status file), the ofports of the
    bridge, the NB (ports, networks, routers, chassis, owners)."""

    chassis: str = ""
    tables: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # stage, app, miss
    app_cookies: dict[int, str] = field(default_factory=dict)  # 16-bit hash -> app
    ifaces: dict[int, dict[str, Any]] = field(default_factory=dict)  # ofport -> iface
    ports: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> port dict
    port_keys: dict[int, str] = field(default_factory=dict)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    network_keys: dict[int, str] = field(default_factory=dict)
    routers: dict[str, dict[str, Any]] = field(default_factory=dict)
    router_keys: dict[int, str] = field(default_factory=dict)
    router_port_keys: dict[int, tuple[str, str]] = field(default_factory=dict)
    chassis_ips: dict[str, str] = field(default_factory=dict)  # ip -> chassis id
    owners: dict[int, str] = field(default_factory=dict)  # 48-bit hash -> owner
    names: dict[tuple[str, str], str] = field(default_factory=dict)  # (table, id) -> name

    def stage_of(self, table: int) -> tuple[str, str, str]:
        if table in self.tables:
            return self.tables[table]
        if table == COPP_PORT_TABLE:
            return ("copp_port", PIPELINE_APP, "-")
        if table == COPP_KIND_TABLE:
            return ("copp_kind", PIPELINE_APP, "-")
        return (f"table{table}", "?", "?")

    def set_pipeline(self, status: dict[str, Any]) -> None:
        self.chassis = status.get("chassis", self.chassis)
        self.tables = {int(p["table"]): (p["stage"], p["app"], p["miss"])
                       for p in status.get("pipeline", ())}
        apps = set(status.get("cookie_apps", {})) | {p["app"] for p in
                                                     status.get("pipeline", ())}
        apps.add(PIPELINE_APP)
        self.app_cookies = {app_cookie(a): a for a in apps}
        for stage, _, _ in self.tables.values():
            self.owners[owner_hash(f"miss/{stage}")] = f"miss/{stage}"

    def set_nb(self, objs: Iterable[Any]) -> None:
        """The NB objects (model objects) the names and owners come from."""
        self.set_nb_dicts((o.TABLE, o.to_dict()) for o in objs)

    def set_nb_dicts(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """The same from (table, JSON form) pairs (``df-db dump``'s objects)."""
        # the owners apps name that are no NB object (apps/*.py, controller/engine.py)
        owners: list[str] = ["copp", "hold/unwired", "metadata/interface",
                             "untracked/icmpv6"]  # + "copp/<port>" (engine.py)
        physnets: set[str] = set()
        for table, d in rows:
            oid = d["id"]
            self.names[(table, oid)] = d.get("name") or ""
            if table == "port":
                self.ports[oid] = d
                self.port_keys[d.get("unique_key") or 0] = oid
                owners += [f"port/{oid}", f"copp/{oid}"]
            elif table == "network":
                self.networks[oid] = d
                self.network_keys[d.get("unique_key") or 0] = oid
                owners.append(f"network/{oid}")
                if d.get("physical_network"):
                    physnets.add(d["physical_network"])
            elif table == "router":
                self.routers[oid] = d
                self.router_keys[d.get("unique_key") or 0] = oid
                owners += [f"router/{oid}", f"gw/{oid}"]
                for rp in d.get("ports", ()):
                    self.router_port_keys[rp.get("unique_key") or 0] = (oid, rp["id"])
            elif table == "chassis":
                self.chassis_ips[str(d.get("ip"))] = oid
                maps = d.get("bridge_mappings") or {}
                physnets |= set(maps) if isinstance(maps, dict) else {p for p, _ in maps}
            elif table == "securitygroup":
                owners.append(f"secgroup/{oid}")
            elif table == "floatingip":
                owners.append(f"fip/{oid}")
        owners += [f"physnet/{p}" for p in physnets]
        for ow in owners:
            self.owners[owner_hash(ow)] = ow
        self.port_keys.pop(0, None)
        self.network_keys.pop(0, None)
        self.router_keys.pop(0, None)

    # --- naming ----------------------------------------------------------------------
    def port_label(self, pid: str) -> str:
        name = self.names.get(("port", pid))
        return f"port {pid}" + (f" ({name})" if name and name != pid else "")

    def owner_label(self, owner: str) -> str:
        kind, _, oid = owner.partition("/")
        table = {"port": "port", "network": "network", "router": "router", "gw": "router",
                 "secgroup": "securitygroup", "fip": "floatingip"}.get(kind)
        if owner.startswith("miss/"):
            return f"table miss of stage {oid}"
        if owner == "copp":
            return "control-plane policing (CoPP)"
        if kind == "copp":
            return f"control-plane policing of {self.port_label(oid)}"
        if kind == "gw":
            return f"gateway of router {oid}"
        if table is None:
            return owner
        name = self.names.get((table, oid))
        shown = {"securitygroup": "security group", "floatingip": "floating IP"}.get(
            table, table)
        return f"{shown} {oid}" + (f" ({name})" if name and name != oid else "")

    def logical(self, name: str, value: int) -> str:
        if name == "network":
            nid = self.network_keys.get(value)
            return f"{nid} (key {value})" if nid else f"key {value}"
        if name in ("in_port", "out_port"):
            if name == "out_port" and value == LOCALNET:
                return "localnet (the physical network)"
            if value == 0:
                return "0 (none/tunnel)"
            pid = self.port_keys.get(value)
            if pid:
                return f"{pid} (key {value})"
            rp = self.router_port_keys.get(value)
            if rp:
                return f"router {rp[0]} interface {rp[1]} (key {value})"
            return f"key {value}"
        if name == "router":
            rid = self.router_keys.get(value)
            return f"{rid} (key {value})" if rid else f"key {value}"
        if name == "punt_table":
            stage = self.stage_of(value)[0]
            return f"{value} ({stage})"
        if name in ("from_tunnel", "reinjected"):
            return "yes" if value else "no"
        return str(value)

    def logical_fields(self, regs: dict[str, str], only: dict[str, int] | None = None
                       ) -> dict[str, str]:
        """Named logical fields out of registers: those non-zero, or those with bits in
        ``only`` (register -> bits written), whatever their value."""
        out: dict[str, str] = {}
        for name, lfd in LOGICAL_FIELDS.items():
            if lfd.register not in regs:
                continue
            if only is not None and not only.get(lfd.register, 0) & lfd.mask:
                continue
            raw = _int(regs[lfd.register] or "0")
            if raw is None:
                continue
            value = (raw >> lfd.ofs) & ((1 << lfd.nbits) - 1)
            if only is None and value == 0:
                continue
            out[name] = self.logical(name, value)
        return out


HEADER_NAMES = {"dl_src": "eth.src", "dl_dst": "eth.dst", "nw_src": "ip4.src",
                "nw_dst": "ip4.dst", "ipv6_src": "ip6.src", "ipv6_dst": "ip6.dst",
                "nw_ttl": "ip.ttl", "arp_op": "arp.op", "arp_spa": "arp.spa",
                "arp_tpa": "arp.tpa", "arp_sha": "arp.sha", "arp_tha": "arp.tha",
                "tp_src": "l4.src", "tp_dst": "l4.dst", "icmp_type": "icmp4.type",
                "tun_dst": "tunnel.dst", "tun_id": "tunnel.vni", "vlan_tci": "vlan"}
REGISTERS = {lfd.register for lfd in LOGICAL_FIELDS.values()}


# --- translation -------------------------------------------------------------------------

def translate(sections: list[Section], ctx: Context) -> dict[str, Any]:
    """The trace in the pipeline's terms (a JSON-able dict): parts (first pass and each
    recirculation) of steps, the outputs, and the verdict."""
    parts: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []
    last_step: dict[str, Any] | None = None
    for sec in sections:
        steps = []
        ct = split_flow(sec.flow)
        for st in sec.steps:
            d = _step(st, ctx)
            steps.append(d)
            for out in st.outputs:
                outputs.append(_resolve_output(out, st, ctx))
            last_step = d
        part: dict[str, Any] = {"flow": sec.flow, "steps": steps,
                                "final_flow": sec.final_flow,
                                "datapath_actions": sec.datapath_actions}
        if sec.header:
            part["recirculation"] = sec.header
            part["ct_state"] = ct.get("ct_state", "")
            part["ct_zone"] = ct.get("ct_zone", "")
        parts.append(part)
    final = split_flow(sections[-1].final_flow) if sections else {}
    return {"chassis": ctx.chassis, "parts": parts, "outputs": outputs,
            "final_logical": ctx.logical_fields(final),
            "verdict": _verdict(outputs, last_step, ctx)}


def _step(st: Step, ctx: Context) -> dict[str, Any]:
    stage, app, miss = ctx.stage_of(st.table)
    d: dict[str, Any] = {"table": st.table, "stage": stage, "stage_app": app,
                         "priority": st.priority, "match": st.match, "actions": st.actions}
    if st.cookie is not None:
        d["cookie"] = f"{st.cookie:#018x}"
        flow_app = ctx.app_cookies.get(st.cookie >> 48)
        owner = ctx.owners.get(st.cookie & OWNER_MASK)
        d["app"] = flow_app or f"unknown app {st.cookie >> 48:#06x}"
        d["owner"] = owner or f"unknown owner {st.cookie & OWNER_MASK:#014x}"
        d["object"] = ctx.owner_label(owner) if owner else "an owner not in the NB (deleted?)"
        d["miss"] = bool(owner and owner.startswith("miss/"))
    else:
        d["miss"] = st.no_match
        if st.no_match:
            d["object"] = "no flow matched (no miss flow either)"
    if d["miss"]:
        d["miss_action"] = miss
    changed = {}
    regs = {w: bits for w, bits in st.masks.items() if w in REGISTERS}
    if regs:
        changed.update(ctx.logical_fields(st.writes, only=regs))
    for w, v in st.writes.items():
        if w not in REGISTERS and w in HEADER_NAMES:
            changed[HEADER_NAMES[w]] = v
    d["changed"] = changed
    ct = [a for a in st.actions if a.startswith("ct(")]
    if ct:
        d["conntrack"] = ct
    if st.notes:
        d["notes"] = st.notes
    d["drop"] = not st.outputs and (st.no_match or not st.actions or st.actions == ["drop"])
    return d


def _resolve_output(out: dict[str, Any], st: Step, ctx: Context) -> dict[str, Any]:
    regs = out.get("regs", {})
    logical = ctx.logical_fields(regs)
    stage = ctx.stage_of(st.table)[0]
    if out.get("controller"):
        raw = _int(regs.get(LOGICAL_FIELDS["punt_table"].register, "0") or "0") or 0
        lfd = LOGICAL_FIELDS["punt_table"]
        punt = (raw >> lfd.ofs) & ((1 << lfd.nbits) - 1)
        origin = punt if st.table in (COPP_KIND_TABLE, COPP_PORT_TABLE) else st.table
        pstage, papp, _ = ctx.stage_of(origin)
        return {"kind": "controller", "stage": pstage, "app": papp, "table": origin,
                "from_table": st.table,
                "why": f"punted by stage {pstage}: app {papp} handles the packet-in",
                "logical": logical}
    target = str(out.get("ofport"))
    if target == "IN_PORT":
        return {"kind": "in_port", "stage": stage, "logical": logical,
                "why": "sent back out of the port it came from (a responder's answer)"}
    ofport = _int(target)
    iface = ctx.ifaces.get(ofport) if ofport is not None else None
    if iface is None:  # a name (OVS prints names when it knows them)
        iface = next((i for i in ctx.ifaces.values() if i.get("name") == target), None)
    res: dict[str, Any] = {"ofport": ofport if ofport is not None else target,
                           "stage": stage, "logical": logical}
    if iface is None:
        res.update(kind="ofport", iface=None)
        return res
    res["iface"] = iface.get("name")
    itype = iface.get("type") or ""
    if itype in ("vxlan", "geneve", "gre", "stt"):
        dst = out.get("tun_dst") or ""
        vni = _int(out.get("tun_id") or "") if out.get("tun_id") else None
        res.update(kind="tunnel", tunnel_type=itype, remote_ip=dst, vni=vni,
                   remote_chassis=ctx.chassis_ips.get(dst))
        return res
    if itype == "patch":
        res.update(kind="patch", peer=(iface.get("options") or {}).get("peer"))
        return res
    pid = (iface.get("external_ids") or {}).get("iface-id")
    res.update(kind="port", port_id=pid,
               port_name=ctx.names.get(("port", pid), "") if pid else "",
               chassis=ctx.chassis)
    if not pid:
        res["kind"] = "interface"
    return res


def _verdict(outputs: list[dict[str, Any]], last: dict[str, Any] | None, ctx: Context
             ) -> dict[str, Any]:
    if outputs:
        kinds = sorted({o["kind"] for o in outputs})
        kind = "controller" if kinds == ["controller"] else "output"
        return {"kind": kind, "outputs": outputs}
    if last is None:
        return {"kind": "drop", "stage": None, "why": "no table visited"}
    stage, app = last["stage"], last["stage_app"]
    if last.get("miss"):
        why = (f"no flow matched in stage {stage} (app {app}): the stage's miss is "
               f"{last.get('miss_action', 'drop')}")
        by = None
    else:
        by = f"{last.get('app', '?')} {last.get('owner', '?')}"
        why = (f"explicit drop in stage {stage} by app {last.get('app', '?')} for "
               f"{last.get('object', '?')} (flow {last['match'] or 'any'}, priority "
               f"{last['priority']})")
    hint = STAGE_HINTS.get(stage)
    return {"kind": "drop", "stage": stage, "app": app, "table": last["table"],
            "miss": bool(last.get("miss")), "by": by, "why": why, "hint": hint}


# --- rendering -----------------------------------------------------------------------------

def describe_output(o: dict[str, Any]) -> str:
    kind = o["kind"]
    if kind == "port":
        name = f" ({o['port_name']})" if o.get("port_name") and o["port_name"] != o.get(
            "port_id") else ""
        return (f"delivered to port {o['port_id']}{name} on chassis {o.get('chassis')} "
                f"(ofport {o['ofport']}, {o['iface']})")
    if kind == "tunnel":
        who = o.get("remote_chassis") or "an unknown chassis"
        return (f"tunnelled ({o['tunnel_type']}, VNI {o['vni']}) to chassis {who} "
                f"({o['remote_ip']}) by {o['iface']}; out_port "
                f"{o['logical'].get('out_port', '?')}")
    if kind == "controller":
        return f"sent to the controller: {o['why']}"
    if kind == "patch":
        return f"out to the physical network by patch {o['iface']} (peer {o.get('peer')})"
    if kind == "in_port":
        return f"{o['why']} (stage {o['stage']})"
    return f"out of ofport {o['ofport']} ({o.get('iface') or 'unknown interface'})"


def render_text(res: dict[str, Any]) -> str:
    lines: list[str] = []
    head = res.get("port")
    if head:
        lines.append(f"df-trace: {head['label']} on chassis {res['chassis']}, ofport "
                     f"{head['ofport']} ({head['iface']})")
    elif res.get("from_tunnel"):
        lines.append(f"df-trace: from tunnel {res['from_tunnel']} on chassis {res['chassis']}")
    lines.append(f"packet: {res['flow']}")
    lines.append(f"  ({res['command']})")
    for part in res["parts"]:
        if part.get("recirculation"):
            lines.append(f"  -- recirculation: {part['recirculation']}")
            lines.append(f"     conntrack: ct_state={part['ct_state'] or '-'} "
                         f"ct_zone={part['ct_zone'] or '-'}")
        for st in part["steps"]:
            label = f"[{st['table']:>3}] {st['stage']} ({st['stage_app']})"
            if st.get("miss"):
                lines.append(f"  {label:<36} no match: miss -> {st.get('miss_action')}")
            else:
                who = st.get("object", "")
                app = st.get("app")
                by = f"{app}: {who}" if app and app != st["stage_app"] else who
                lines.append(f"  {label:<36} {by}")
                lines.append(f"  {'':<38}priority {st['priority']}, match "
                             f"{st['match'] or 'any'}")
            if st.get("changed"):
                lines.append(f"  {'':<38}-> " + ", ".join(
                    f"{k}={v}" for k, v in st["changed"].items()))
            if st.get("conntrack"):
                lines.append(f"  {'':<38}conntrack: {'; '.join(st['conntrack'])}")
    v = res["verdict"]
    lines.append("verdict:")
    if v["kind"] == "drop":
        lines.append(f"  DROPPED in stage {v['stage']}: {v['why']}")
        if v.get("hint"):
            lines.append(f"  ({v['hint']})")
    else:
        for o in v["outputs"]:
            lines.append(f"  {o['kind'].upper()}: {describe_output(o)}")
    for r in res.get("remote", ()):
        if r.get("error") or r.get("command_to_run"):
            lines.append(f"  on chassis {r['chassis']}: {r.get('error', '')}")
            if r.get("command_to_run"):
                lines.append(f"    run there: {r['command_to_run']}")
            continue
        lines.append(f"== on chassis {r['chassis']} (the tunnel's far end) ==")
        lines += ["  " + ln for ln in render_text(r).splitlines()]
    return "\n".join(lines)


# --- OVS and NB access ---------------------------------------------------------------------

def _ovs_env(rundir: str) -> dict[str, str]:
    return {**os.environ, "OVS_RUNDIR": rundir}


def run_trace(rundir: str, bridge: str, flow: str, ct_next: Sequence[str] = ()
              ) -> tuple[str, str]:
    """(ofproto/trace output, the command line) on the ovs-vswitchd of ``rundir``."""
    argv = ["ovs-appctl", "ofproto/trace", bridge, flow]
    for c in ct_next:
        argv += ["--ct-next", c]
    shown = f"OVS_RUNDIR={rundir} " + shlex.join(argv)
    try:
        proc = subprocess.run(argv, env=_ovs_env(rundir), capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TraceError(f"ovs-appctl failed: {e}") from None
    if proc.returncode != 0:
        raise TraceError(f"ofproto/trace failed ({shown}): "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout, shown


def _ovsdb_value(v: Any) -> Any:
    if isinstance(v, list) and len(v) == 2 and v[0] == "map":
        return {k: _ovsdb_value(x) for k, x in v[1]}
    if isinstance(v, list) and len(v) == 2 and v[0] == "set":
        return [_ovsdb_value(x) for x in v[1]]
    if isinstance(v, list) and len(v) == 2 and v[0] == "uuid":
        return v[1]
    return v


def _vsctl(ovsdb: str, *args: str) -> str:
    argv = ["ovs-vsctl", f"--db={ovsdb}", "--timeout=10", *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TraceError(f"ovs-vsctl failed: {e}") from None
    if proc.returncode != 0:
        raise TraceError(f"cannot read the OVSDB at {ovsdb}: {proc.stderr.strip()}")
    return proc.stdout


def interfaces(ovsdb: str, bridge: str) -> dict[int, dict[str, Any]]:
    """ofport -> {name, type, external_ids, options} of the interfaces of ``bridge``."""
    names = set(_vsctl(ovsdb, "list-ifaces", bridge).split())
    doc = json.loads(_vsctl(ovsdb, "--format=json",
                            "--columns=name,ofport,type,external_ids,options",
                            "list", "Interface"))
    out: dict[int, dict[str, Any]] = {}
    for raw in doc["data"]:
        row = dict(zip(doc["headings"], map(_ovsdb_value, raw), strict=True))
        ofport = row.get("ofport")
        if row.get("name") in names and isinstance(ofport, int) and ofport > 0:
            out[ofport] = row
    return out


def read_status(path: str) -> dict[str, Any]:
    try:
        return dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError) as e:
        raise TraceError(f"no controller status file at {path} ({e}): is df-controller "
                         "running on this chassis? (--status-file)") from None


def open_nb(conf: Any, url: str | None) -> tuple[NbApi, bool]:
    u = url or conf.df.nb_db_url
    driver = open_driver(u, timeout=conf.df.nb_db_timeout,
                         security=NbSecurity.from_conf(conf.df))
    return NbApi(driver, root=conf.df.nb_db_root), urlparse(u).scheme != "memory"


def find_port(ctx: Context, ref: str) -> str:
    if ref in ctx.ports:
        return ref
    named = [pid for pid, p in ctx.ports.items() if p.get("name") == ref]
    if len(named) == 1:
        return named[0]
    if named:
        raise TraceError(f"port name {ref!r} is ambiguous: ids {', '.join(sorted(named))}")
    raise TraceError(f"unknown port {ref!r}: no NB port has that id or name")


def port_info(ctx: Context, pid: str) -> PortInfo:
    p = ctx.ports[pid]
    binding = p.get("binding") or {}
    return PortInfo(pid, p.get("name") or "", p["mac"],
                    [str(ip["ip_address"]) for ip in p.get("fixed_ips", ())],
                    p["network_id"], binding.get("chassis_id"))


def neighbours_of(ctx: Context, network_id: str) -> tuple[dict[str, str], str | None]:
    """IP -> MAC of the network's ports (router interfaces included), and the MAC of a
    router interface on it (the gateway, for addresses off the network)."""
    neigh: dict[str, str] = {}
    for p in ctx.ports.values():
        if p.get("network_id") == network_id:
            for ip in p.get("fixed_ips", ()):
                neigh[str(ip["ip_address"])] = p["mac"]
    gw = None
    for r in ctx.routers.values():
        for rp in r.get("ports", ()):
            if rp.get("network_id") == network_id:
                gw = gw or rp["mac"]
                for cidr in rp.get("cidrs", ()):
                    neigh[str(cidr).split("/")[0]] = rp["mac"]
    return neigh, gw


def tunnel_flow(final_flow: str, tunnel_type: str, vni: int, src_ip: str, dst_ip: str
                ) -> str:
    """The flow a tunnelled packet is on the remote chassis: its headers as they left
    (``final_flow``), arriving on that chassis' df-<type> port with the VNI."""
    keep = []
    proto = ""
    drop = re.compile(r"^(reg\d+|xreg\d+|xxreg\d+|metadata|tun_.*|gtpu_.*|in_port|recirc_id|"
                      r"ct_.*|dp_hash|skb_priority|pkt_mark|skb_mark|packet_type|conj_id)$")
    for part in final_flow.split(","):
        k, eq, v = part.partition("=")
        if not eq:
            proto = proto or k
            continue
        if drop.match(k):
            continue
        if k in ("tp_src", "tp_dst") and proto.rstrip("6") in ("tcp", "udp", "sctp"):
            k = f"{proto.rstrip('6')}_{k[3:]}"
        keep.append(f"{k}={v}")
    head = [proto] if proto else []
    return ",".join(head + [f"in_port=df-{tunnel_type}", f"tun_id={vni:#x}",
                            f"tun_src={src_ip}", f"tun_dst={dst_ip}", *keep])


# --- main ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Expression fields: " + ", ".join(EXPR_FIELDS) + "; protocol words: "
               + ", ".join(sorted(PROTO_WORDS)) + ". Defaults: eth.src and the source "
               "address from the port's NB record; eth.dst the MAC of the NB port holding "
               "the destination address on the port's network, else the network's router "
               "interface (off-subnet), broadcast for ARP; ip.ttl 64; icmp type 8 (echo "
               "request), arp.op 1.\n\n--json prints {port, flow, command, parts: [{steps: "
               "[{table, stage, stage_app, app, owner, object, priority, match, actions, "
               "changed, miss, conntrack}], recirculation, ct_state, ct_zone, final_flow}], "
               "outputs, final_logical, verdict: {kind: output|controller|drop, outputs | "
               "stage, app, miss, by, why, hint}, remote: [the same per chassis, or error "
               "and command_to_run]}.\n\nExit status: 0 traced (whatever the verdict), 1 "
               "error.")
    p.add_argument("expr", nargs="*", metavar="EXPR",
                   help="microflow expression, e.g. 'ip4.dst=10.0.0.5 tcp.dst=80' (terms "
                        "separated by blanks, commas or &&)")
    p.add_argument("--port", metavar="PORT",
                   help="NB port id or name the packet comes from (must be on this chassis)")
    p.add_argument("--from-tunnel", metavar="TYPE:VNI:SRC_IP",
                   help="instead of --port: the packet arrives from a tunnel of TYPE (vxlan, "
                        "geneve, gre) with VNI from the chassis at SRC_IP (what --remote "
                        "does on the far end); the expression must give eth.src/eth.dst")
    g = p.add_argument_group("packet flags (same as the expression's fields)")
    g.add_argument("--src-mac", help="eth.src")
    g.add_argument("--dst-mac", help="eth.dst")
    g.add_argument("--src-ip", help="ip4.src or ip6.src")
    g.add_argument("--dst-ip", help="ip4.dst or ip6.dst")
    g.add_argument("--proto", choices=["tcp", "udp", "sctp", "icmp", "icmp6", "arp"],
                   help="transport (or arp)")
    g.add_argument("--src-port", type=int, help="tcp/udp/sctp source port")
    g.add_argument("--dst-port", type=int, help="tcp/udp/sctp destination port")
    g.add_argument("--ttl", type=int, help="ip.ttl (default 64)")
    o = p.add_argument_group("output and tracing")
    o.add_argument("--json", action="store_true", help="print the result as one JSON object")
    o.add_argument("--ct-next", action="append", default=[], metavar="FLAGS",
                   help="ct_state of the next conntrack recirculation (repeatable, in "
                        "order; OVS's default: trk,new), e.g. trk,est")
    o.add_argument("--remote", action="store_true",
                   help="follow a tunnelled packet onto the remote chassis (needs its OVS "
                        "run directory, --remote-rundir; else prints the command to run "
                        "there)")
    o.add_argument("--remote-rundir", action="append", default=[], metavar="CHASSIS=DIR",
                   help="OVS run directory of another chassis reachable from here "
                        "(ovs-vswitchd.pid, db.sock, its controller's status file), "
                        "repeatable")
    o.add_argument("--raw", action="store_true",
                   help="also print OVS's own ofproto/trace output")
    c = p.add_argument_group("this chassis (default: the [df] and [controller] options)")
    c.add_argument("--config-file", action="append", default=[], metavar="PATH",
                   help="oslo.config file (repeatable): [df] nb_db_* select the NB, "
                        "[controller] chassis_id, integration_bridge, ovsdb_connection, "
                        "ovs_rundir, status_file this chassis. Default: "
                        f"{dfconf.DEFAULT_CONFIG_FILE} if it exists")
    c.add_argument("--config-dir", metavar="DIR", help="directory of *.conf files to read too")
    c.add_argument("--db", metavar="URL", help="NB database url (overrides [df] nb_db_url)")
    c.add_argument("--ovs-rundir", metavar="DIR",
                   help="OVS run directory (overrides [controller] ovs_rundir)")
    c.add_argument("--status-file", metavar="PATH",
                   help="the controller's status file (default <ovs_rundir>/<bridge>"
                        ".df-status.json)")
    return p


def _expression(args: argparse.Namespace) -> Packet:
    pkt = parse_expr(" ".join(args.expr))
    flags = []
    ip6 = any(":" in (x or "") for x in (args.src_ip, args.dst_ip))
    fam = "ip6" if ip6 else "ip4"
    if args.src_mac:
        flags.append(f"eth.src={args.src_mac}")
    if args.dst_mac:
        flags.append(f"eth.dst={args.dst_mac}")
    if args.src_ip:
        flags.append(f"{fam}.src={args.src_ip}")
    if args.dst_ip:
        flags.append(f"{fam}.dst={args.dst_ip}")
    proto = args.proto
    if proto == "icmp":
        proto = "icmp6" if ip6 else "icmp4"
    if proto:
        flags.append(proto)
    for flag, end in ((args.src_port, "src"), (args.dst_port, "dst")):
        if flag is not None:
            if proto not in ("tcp", "udp", "sctp"):
                raise TraceError(f"--{end}-port needs --proto tcp, udp or sctp")
            flags.append(f"{proto}.{end}={flag}")
    if args.ttl is not None:
        flags.append(f"ip.ttl={args.ttl}")
    return parse_expr(" ".join(flags), pkt) if flags else pkt


def _load_conf(args: argparse.Namespace) -> Any:
    return dfconf.load_files(args.config_file, args.config_dir, PROG)


def _context(status: dict[str, Any], objs: list[Any], ifaces: dict[int, dict[str, Any]]
             ) -> Context:
    ctx = Context()
    ctx.set_nb(objs)
    ctx.set_pipeline(status)
    ctx.ifaces = ifaces
    return ctx


def trace(args: argparse.Namespace, conf: Any, nb: NbApi) -> dict[str, Any]:
    bridge = conf.controller.integration_bridge
    rundir = args.ovs_rundir or conf.controller.ovs_rundir
    status_path = args.status_file or conf.controller.status_file or \
        f"{rundir}/{bridge}.df-status.json"
    status = read_status(status_path)
    chassis = status.get("chassis") or conf.controller.chassis_id
    objs = list(nb.snapshot()[0])
    ovsdb = conf.controller.ovsdb_connection
    ifaces = interfaces(ovsdb, bridge)
    ctx = _context(status, objs, ifaces)
    ctx.chassis = chassis
    pkt = _expression(args)
    res: dict[str, Any] = {}
    if args.from_tunnel:
        try:
            ttype, vni_s, src_ip = args.from_tunnel.split(":", 2)
            vni = int(vni_s, 0)
            ipaddress.ip_address(src_ip)
        except ValueError:
            raise TraceError(f"--from-tunnel {args.from_tunnel!r}: expected TYPE:VNI:SRC_IP, "
                             "e.g. vxlan:1001:10.0.0.2") from None
        if "dl_dst" not in pkt.fields:
            raise TraceError("--from-tunnel: the expression must give eth.dst")
        mine = next((ip for ip, c in ctx.chassis_ips.items() if c == chassis), "0.0.0.0")
        flow = ovs_flow(pkt, f"df-{ttype}").replace(
            f"in_port=df-{ttype}", f"in_port=df-{ttype},tun_id={vni:#x},tun_src={src_ip},"
                                   f"tun_dst={mine}")
        res["from_tunnel"] = args.from_tunnel
    else:
        if not args.port:
            raise TraceError("--port PORT (or --from-tunnel) is required")
        pid = find_port(ctx, args.port)
        info = port_info(ctx, pid)
        if info.chassis != chassis:
            where = (f"bound to chassis {info.chassis}" if info.chassis
                     else "not bound to any chassis")
            hint = f": run df-trace on {info.chassis}" if info.chassis else ""
            raise TraceError(f"{ctx.port_label(pid)} is {where}, not to this chassis "
                             f"({chassis}){hint}")
        found = [(ofp, i) for ofp, i in ifaces.items()
                 if (i.get("external_ids") or {}).get("iface-id") == pid]
        if not found:
            raise TraceError(f"{ctx.port_label(pid)} is bound to {chassis} but has no "
                             f"interface on {bridge} (external_ids:iface-id={pid})")
        ofport, iface = found[0]
        neigh, gw = neighbours_of(ctx, info.network_id)
        flow = ovs_flow(pkt, str(ofport), info, neigh, gw)
        res["port"] = {"id": pid, "name": info.name, "label": ctx.port_label(pid),
                       "ofport": ofport, "iface": iface.get("name"),
                       "network": info.network_id}
    text, shown = run_trace(rundir, bridge, flow, args.ct_next)
    sections = parse_trace(text, bridge)
    if not sections:
        raise TraceError(f"ofproto/trace printed nothing df-trace understands:\n{text}")
    res.update(flow=flow, command=shown, **translate(sections, ctx))
    if args.raw:
        res["raw"] = text
    if args.remote:
        res["remote"] = follow_remote(args, res, sections, ctx, bridge, nb, objs)
    return res


def follow_remote(args: argparse.Namespace, res: dict[str, Any], sections: list[Section],
                  ctx: Context, bridge: str, nb: NbApi, objs: list[Any]
                  ) -> list[dict[str, Any]]:
    rundirs = {}
    for item in args.remote_rundir:
        name, eq, d = item.partition("=")
        if not eq:
            raise TraceError(f"--remote-rundir {item!r}: expected CHASSIS=DIR")
        rundirs[name] = d
    mine = next((ip for ip, c in ctx.chassis_ips.items() if c == ctx.chassis), "")
    out = []
    seen = set()
    for o in res["verdict"].get("outputs", ()):
        if o["kind"] != "tunnel":
            continue
        remote = o.get("remote_chassis")
        key = (remote, o["vni"])
        if key in seen:
            continue
        seen.add(key)
        final = sections[-1].final_flow
        flow = tunnel_flow(final, o["tunnel_type"], o["vni"] or 0, mine, o["remote_ip"])
        inner = {k: v for k, v in split_flow(flow).items() if k in (
            "dl_src", "dl_dst", "nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "nw_ttl")}
        expr = " ".join(f"{ovs_to_expr(k)}={v}" for k, v in inner.items())
        cmd = (f"df-trace --from-tunnel {o['tunnel_type']}:{o['vni']}:{mine} "
               f"{shlex.quote(expr + _l4_expr(flow))}")
        if remote is None:
            out.append({"chassis": o["remote_ip"], "error": "no NB chassis has this "
                        "tunnel address", "command_to_run": cmd})
            continue
        if remote not in rundirs:
            out.append({"chassis": remote, "error": f"not reachable from here (give "
                        f"--remote-rundir {remote}=DIR)", "command_to_run": cmd})
            continue
        d = rundirs[remote]
        try:
            status = read_status(f"{d}/{bridge}.df-status.json")
            sock = Path(d) / "db.sock"
            ifaces = interfaces(f"unix:{sock}", bridge) if sock.exists() else {}
            rctx = _context(status, objs, ifaces)
            text, shown = run_trace(d, bridge, flow, args.ct_next)
            rsec = parse_trace(text, bridge)
            r = {"chassis": remote, "flow": flow, "command": shown,
                 "from_tunnel": f"{o['tunnel_type']}:{o['vni']}:{mine}",
                 **translate(rsec, rctx)}
            r["chassis"] = remote
            if args.raw:
                r["raw"] = text
            out.append(r)
        except TraceError as e:
            out.append({"chassis": remote, "error": str(e), "command_to_run": cmd})
    return out


_EXPR_OF_OVS = {v[0]: k for k, v in EXPR_FIELDS.items()}


def ovs_to_expr(name: str) -> str:
    return _EXPR_OF_OVS.get(name, name)


def _l4_expr(flow: str) -> str:
    f = split_flow(flow)
    words = {"tcp": "tcp", "udp": "udp", "icmp": "icmp4", "arp": "arp", "tcp6": "tcp",
             "udp6": "udp", "icmp6": "icmp6", "sctp": "sctp"}
    extra = []
    for word, expr in words.items():
        if word in f:
            extra.append(expr)
    for k in ("tcp_src", "tcp_dst", "udp_src", "udp_dst", "icmp_type", "icmp_code",
              "arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha"):
        if k in f:
            extra.append(f"{ovs_to_expr(k)}={f[k]}")
    return (" " + " ".join(extra)) if extra else ""


EXPECTED_ERRORS = (TraceError, cfg.Error, db_errors.NbError, DriverError, ValueError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    nb: NbApi | None = None
    owned = False
    try:
        conf = _load_conf(args)
        nb, owned = open_nb(conf, args.db)
        res = trace(args, conf, nb)
    except EXPECTED_ERRORS as e:  # one line, no traceback
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if nb is not None and owned:
            nb.driver.close()
    if args.json:
        print(json.dumps(res, indent=1, default=str))
    else:
        print(render_text(res))
        if args.raw:
            print("\n--- ofproto/trace ---\n" + res["raw"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
