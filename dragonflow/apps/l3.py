"""The distributed virtual router: routing is flows on the SOURCE chassis.

A frame sent to a router interface MAC (l2_lookup) enters l3_lookup with the router's key:

* host flows (owner ``port/<id>``, one per port of a network a local router is on: a new
  port compiles its own flows only): destination = a known port IP in a subnet of a local
  router -> decrement TTL / hop limit, source MAC = the router interface on the
  destination network, destination MAC = the port's, network := the destination network,
  out_port := the port; egress delivers locally or tunnels with the DESTINATION network's VNI;
* per attached subnet: an address without a port is dropped;
* extra routes (destination CIDR -> next hop port inside an attached subnet), priority by
  prefix length so the longest prefix wins (attached subnets compete by the same rule);
* anything else goes to the controller, which answers ICMP(v6) net unreachable from the
  ingress interface; an expiring TTL (dec_ttl) also reaches the controller, which answers
  ICMP time exceeded -- both built by this app's packet-in handler, rate-limited per chassis
  by a token bucket (as routers do: RFC 1812 4.3.2.8), the punts policed by a meter.

Onto a provider network (flat, VLAN) a routed frame for a port on another chassis leaves
through the physical network: its source MAC is this chassis' own (``chassis_mac``, as
Neutron DVR's per-host MAC), so the physical switches never see the router MAC behind
several ports. A router with an external gateway sends what matches no interface subnet and
no route (IPv4) on to the NAT stages (apps/nat.py) instead of answering net unreachable.

Reactive mode (``[controller] l3_mode = reactive``): no host flows up front; a packet for an
attached subnet goes to the controller, which records the destination ("learned"), so this
app compiles its host flow with an idle timeout, and re-injects the packet. When OVS expires
the flow, the controller forgets the destination again.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable

from dragonflow.apps.base import (
    local_router_owners,
    network_part_owners,
    routed_network_parts,
    split_owner,
)
from dragonflow.model import Network, Port, Router, RouterPort
from dragonflow.ovs import packets
from dragonflow.ovs.ofchannel import FlowRemoved, PacketIn
from dragonflow.pipeline.fields import read_field
from dragonflow.pipeline.flow import (
    Action,
    DecTtl,
    Flow,
    Goto,
    Meter,
    Next,
    SetField,
    SetReg,
    ToController,
)
from dragonflow.pipeline.punt import Answer, TokenBucket
from dragonflow.pipeline.stages import MeterDecl, Stage, fields
from dragonflow.pipeline.topology import ROUTER_DEVICE_OWNERS, DepKey, OwnersView, Topology, View

LOG = logging.getLogger(__name__)
OFPR_ACTION = 1
OFPR_INVALID_TTL = 2
PUNT = (Meter("punt"), ToController())

ETH = {4: 0x0800, 6: 0x86DD}
DST = {4: "ipv4_dst", 6: "ipv6_dst"}
PRIO_HOST = 300  # above every prefix (100 + up to 128)
PROVIDER_TYPES = ("flat", "vlan")


def prefix_priority(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    return 100 + net.prefixlen


def route_to_port(rp_mac: str, port: Port, net_key: int) -> tuple[Action, ...]:
    return (DecTtl(), SetField("eth_src", rp_mac), SetField("eth_dst", port.mac),
            SetReg("network", net_key), SetReg("out_port", port.unique_key), Goto("deliver"))


class L3App:
    name = "l3"
    stages = (
        Stage("l3_lookup", after=("l3_input", "l2_lookup"),
              matches=fields("router", "eth_type", "ipv4_dst", "ipv6_dst"),
              masked=fields("ipv4_dst", "ipv6_dst"),
              sets=fields("network", "out_port", "eth_src", "eth_dst"), goto=("deliver",),
              punt=True, miss="drop",
              doc="longest prefix: host flows, attached subnets, extra routes"),
    )
    meters = (MeterDecl("punt", rate=1000, burst=200, per_port=200, per_port_burst=40),)

    def __init__(self, icmp_rate: float = 100.0, icmp_burst: float = 50.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.icmp_limit = TokenBucket(icmp_rate, icmp_burst, clock or time.monotonic)
        self.limited = 0

    owner_parts = staticmethod(routed_network_parts)  # host flows: one owner per port
    part_owners = staticmethod(network_part_owners)

    def owners(self, topo: OwnersView) -> set[str]:
        return local_router_owners(topo)

    def compile(self, view: View, owner: str) -> list[Flow]:
        table, obj_id = split_owner(owner)
        if table == "port":
            return self._hosts(view, obj_id, owner)
        return self._router(view, obj_id, owner)

    def _hosts(self, view: View, port_id: str, owner: str) -> list[Flow]:
        """One flow per address of the port in a subnet of a local router's interface on
        its network (reactive: only destinations that router has seen)."""
        port = view.port(port_id)
        if port is None or port.device_owner in ROUTER_DEVICE_OWNERS:
            return []
        net = view.network(port.network_id)
        if net is None:
            return []
        reactive = view.facts.l3_mode == "reactive"
        idle = view.facts.reactive_idle_timeout if reactive else 0
        flows = []
        for router in view.routers_on(net.id):
            for rp in router.ports:
                if rp.network_id != net.id:
                    continue
                for fip in port.fixed_ips:
                    ip = str(fip.ip_address)
                    if not any(fip.ip_address in c.network for c in rp.cidrs):
                        continue
                    if reactive and not view.is_learned(router.id, ip):
                        continue
                    v = fip.ip_address.version
                    match = {"router": router.unique_key, "eth_type": ETH[v], DST[v]: ip}
                    src = rp.mac
                    if (net.network_type in PROVIDER_TYPES and view.facts.chassis_mac
                            and view.ofport(port.id) is None):
                        src = view.facts.chassis_mac  # leaves on the physical network
                    flows.append(Flow.make("l3_lookup", PRIO_HOST, match,
                                           route_to_port(src, port, net.unique_key), owner,
                                           idle_timeout=idle))
        return flows

    def _router(self, view: View, router_id: str, owner: str) -> list[Flow]:
        router = view.router(router_id)
        if router is None or not view.is_local_router(router_id):
            return []
        rkey = router.unique_key
        flows = []
        for v in (4, 6):  # not in any attached subnet, no route: net unreachable
            outside: tuple[Action, ...] = PUNT
            if v == 4 and router.gateway is not None and router.gateway.ip_address.version == 4:
                outside = (Next(),)  # the default route: out of the external gateway
            flows.append(Flow.make("l3_lookup", 1, {"router": rkey, "eth_type": ETH[v]},
                                   outside, owner))
        for rp in router.ports:
            for cidr in rp.cidrs:
                v = cidr.version
                match = {"router": rkey, "eth_type": ETH[v], DST[v]: str(cidr.network)}
                # attached subnet without a host flow: drop (proactive: no such host), or
                # ask the controller (reactive: not learned yet)
                miss: tuple[Action, ...] = PUNT if view.facts.l3_mode == "reactive" else ()
                flows.append(Flow.make("l3_lookup", prefix_priority(cidr.network), match,
                                       miss, owner))
        attached = {c.network for rp in router.ports for c in rp.cidrs}
        for route in router.routes:
            if route.destination in attached:
                # the connected subnet wins, as in any router: the route would compete
                # with the subnet's flow for the same match
                continue
            hop = self._next_hop(view, router, route.nexthop)
            v = route.destination.version
            match = {"router": rkey, "eth_type": ETH[v], DST[v]: str(route.destination)}
            actions: tuple[Action, ...] = ()
            if hop is not None:
                rp, port, net_key = hop
                actions = route_to_port(rp.mac, port, net_key)
            flows.append(Flow.make("l3_lookup", prefix_priority(route.destination), match,
                                   actions, owner))
        return flows

    def _next_hop(self, view: View, router: Router, nexthop: ipaddress.IPv4Address
                  | ipaddress.IPv6Address) -> tuple[RouterPort, Port, int] | None:
        for rp in router.ports:
            if not any(nexthop in c.network for c in rp.cidrs):
                continue
            net = view.network(rp.network_id)
            if net is None:
                return None
            for port in view.addr_ports(rp.network_id, str(nexthop)):
                if port.device_owner not in ROUTER_DEVICE_OWNERS:
                    return rp, port, net.unique_key
        return None

    # --- packet-in: ICMP errors and reactive learning ------------------------------------
    def packet_in(self, topo: Topology, stage: str, pin: PacketIn) -> Answer:
        answer = Answer()
        if pin.in_port is None:
            return answer
        req = packets.parse(pin.data)
        if pin.reason == OFPR_ACTION and self._learn(topo, pin, req, answer):
            return answer
        frame = self._icmp_error(topo, pin, req)
        if frame is not None:
            answer.frames.append((pin.in_port, frame))
        return answer

    def flow_removed(self, topo: Topology, stage: str, msg: FlowRemoved) -> set[DepKey]:
        """A reactive host flow idled out: forget its destination."""
        router = topo.by_unique_key(Router, read_field(msg.match, "router"))
        ip = msg.match.get("ipv4_dst") or msg.match.get("ipv6_dst")
        if router is None or ip is None:
            return set()
        return topo.forget(router.id, str(ip))

    def _learn(self, topo: Topology, pin: PacketIn, req: packets.Parsed,
               answer: Answer) -> bool:
        """Reactive L3: True if the packet is for a known host of an attached subnet."""
        if topo.facts.l3_mode != "reactive" or req.ip_dst is None:
            return False
        router = topo.by_unique_key(Router, read_field(pin.match, "router"))
        if router is None:
            return False
        dst = ipaddress.ip_address(req.ip_dst)
        for rp in router.ports:
            if not any(dst in c.network for c in rp.cidrs):
                continue
            if topo.ports_holding(rp.network_id, str(dst)):
                answer.touched |= topo.learn(router.id, str(dst))
                answer.reinject.append((pin.in_port or 0, pin.data))
            return True  # attached subnet, no such host: dropped, no ICMP
        return False

    def _icmp_error(self, topo: Topology, pin: PacketIn, req: packets.Parsed) -> bytes | None:
        return router_icmp_error(topo, pin, req, self.icmp_limit, self)


def router_icmp_error(topo: Topology, pin: PacketIn, req: packets.Parsed, limit: TokenBucket,
                      counter: object) -> bytes | None:
    """The ICMP error a router sends back from its interface on the packet's network (its
    registers say which): time exceeded for an expired TTL, else net unreachable; None when
    there is no such interface or ``limit`` is out of tokens (``counter.limited`` += 1)."""
    net = topo.by_unique_key(Network, read_field(pin.match, "network"))
    router = topo.by_unique_key(Router, read_field(pin.match, "router"))
    if net is None or router is None or req.ip_version is None:
        return None
    rp = next((rp for rp in router.ports if rp.network_id == net.id), None)
    if rp is None:
        return None
    src = next((c.ip for c in rp.cidrs if c.version == req.ip_version), None)
    if src is None:
        return None
    if not limit.take():
        counter.limited += 1  # type: ignore[attr-defined]
        return None
    kind = packets.TIME_EXCEEDED if pin.reason == OFPR_INVALID_TTL else \
        packets.NET_UNREACHABLE
    return packets.icmp_error(req, kind, rp.mac, str(src))

