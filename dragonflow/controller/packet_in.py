"""Packet-in handling: the few answers the local controller builds itself.

* nd_responder -> a neighbour advertisement for a known IPv6 address of a port or a router
  interface in the packet's network;
* l3_lookup, reason "invalid TTL" (dec_ttl at TTL 1) -> ICMP(v6) time exceeded, and reason
  "action" (no subnet, no route) -> ICMP(v6) net unreachable, both from the router interface
  on the network the packet came from (so traceroute shows that interface as the hop);
* l3_lookup in reactive mode, destination in an attached subnet -> learn the destination
  (the L3 app then compiles its host flow) and re-inject the packet from table 0 once the
  flow is installed; a FLOW_REMOVED of such a flow forgets the destination again.

ICMP errors are rate-limited per chassis by a token bucket (as routers do: RFC 1812 4.3.2.8).
Handlers read the topology and return frames to send; they never raise on a bad packet.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dragonflow.controller.topology import DepKey, Topology
from dragonflow.model import Network, Port, Router, RouterPort
from dragonflow.ovs import packets
from dragonflow.ovs.ofchannel import FlowRemoved, PacketIn
from dragonflow.pipeline.stages import PIPELINE, REGISTERS, Pipeline

LOG = logging.getLogger(__name__)
OFPR_ACTION = 1
OFPR_INVALID_TTL = 2


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self) -> bool:
        now = self.clock()
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class Answer:
    frames: list[tuple[int, bytes]] = field(default_factory=list)  # (out ofport, frame)
    reinject: list[tuple[int, bytes]] = field(default_factory=list)  # (in ofport, frame)
    touched: set[DepKey] = field(default_factory=set)


class PacketInHandler:
    def __init__(self, topo: Topology, pipeline: Pipeline = PIPELINE,
                 icmp_rate: float = 100.0, icmp_burst: float = 50.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topo = topo
        self.stage_of = {t: name for name, t in pipeline.table.items()}
        self.icmp_limit = TokenBucket(icmp_rate, icmp_burst, clock)
        self.limited = 0

    def handle(self, pin: PacketIn) -> Answer:
        """What to send (after the flows of this loop iteration are installed)."""
        stage = self.stage_of.get(pin.table_id)
        answer = Answer()
        if pin.in_port is None:
            return answer
        try:
            parsed = packets.parse(pin.data)
            frame = None
            if stage == "nd_responder":
                frame = self._neighbour_advert(pin, parsed)
            elif stage == "l3_lookup":
                if pin.reason == OFPR_ACTION and self._learn(pin, parsed, answer):
                    return answer
                frame = self._icmp_error(pin, parsed)
            else:
                LOG.warning("unexpected packet-in from table %s (%s)", pin.table_id, stage)
        except Exception:
            LOG.exception("packet-in from %s not handled", stage)
            return answer
        if frame is not None:
            answer.frames.append((pin.in_port, frame))
        return answer

    def flow_removed(self, msg: FlowRemoved) -> set[DepKey]:
        """A reactive host flow idled out: forget its destination."""
        if self.stage_of.get(msg.table_id) != "l3_lookup":
            return set()
        router = self._router_by_key(msg.match.get(REGISTERS["router"]))
        ip = msg.match.get("ipv4_dst") or msg.match.get("ipv6_dst")
        if router is None or ip is None:
            return set()
        return self.topo.forget(router.id, str(ip))

    def _learn(self, pin: PacketIn, req: packets.Parsed, answer: Answer) -> bool:
        """Reactive L3: True if the packet is for a known host of an attached subnet."""
        if self.topo.facts.l3_mode != "reactive" or req.ip_dst is None:
            return False
        router = self._router_by_key(pin.match.get(REGISTERS["router"]))
        if router is None:
            return False
        dst = ipaddress.ip_address(req.ip_dst)
        for rp in router.ports:
            if not any(dst in c.network for c in rp.cidrs):
                continue
            for pid in self.topo.net_ports.get(rp.network_id, ()):
                port = self.topo.get(Port, pid)
                if port and any(f.ip_address == dst for f in port.fixed_ips):
                    answer.touched |= self.topo.learn(router.id, str(dst))
                    answer.reinject.append((pin.in_port or 0, pin.data))
                    return True
            return True  # attached subnet, no such host: dropped, no ICMP
        return False

    # --- lookups -----------------------------------------------------------------------
    def _network(self, pin: PacketIn) -> Network | None:
        key = pin.match.get(REGISTERS["network"])
        return next((n for n in self.topo.all(Network) if n.unique_key == key), None)

    def _router_by_key(self, key: object) -> Router | None:
        return next((r for r in self.topo.all(Router) if r.unique_key == key), None)

    def _router_port(self, pin: PacketIn, net: Network) -> RouterPort | None:
        router = self._router_by_key(pin.match.get(REGISTERS["router"]))
        if router is None:
            return None
        return next((rp for rp in router.ports if rp.network_id == net.id), None)

    # --- answers -----------------------------------------------------------------------
    def _neighbour_advert(self, pin: PacketIn, req: packets.Parsed) -> bytes | None:
        net = self._network(pin)
        if net is None or req.ns_target is None:
            return None
        for pid in sorted(self.topo.net_ports.get(net.id, ())):
            port = self.topo.get(Port, pid)
            if port and any(str(f.ip_address) == req.ns_target for f in port.fixed_ips):
                return packets.neighbour_advertisement(req, req.ns_target, port.mac, False)
        for router in self.topo.all(Router):
            for rp in router.ports:
                if rp.network_id == net.id and any(str(c.ip) == req.ns_target
                                                   for c in rp.cidrs):
                    return packets.neighbour_advertisement(req, req.ns_target, rp.mac, True)
        return None

    def _icmp_error(self, pin: PacketIn, req: packets.Parsed) -> bytes | None:
        net = self._network(pin)
        rp = self._router_port(pin, net) if net else None
        if rp is None or req.ip_version is None:
            return None
        src = next((c.ip for c in rp.cidrs if c.version == req.ip_version), None)
        if src is None:
            return None
        if not self.icmp_limit.take():
            self.limited += 1
            return None
        kind = packets.TIME_EXCEEDED if pin.reason == OFPR_INVALID_TTL else \
            packets.NET_UNREACHABLE
        return packets.icmp_error(req, kind, rp.mac, str(src))
