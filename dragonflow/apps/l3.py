"""The distributed virtual router: routing is flows on the SOURCE chassis.

A frame sent to a router interface MAC (l2_lookup) enters l3_lookup with the router's key:

* host flows (owner ``rnet/<router>/<network>``): destination = a known port IP in a subnet
  of the router -> decrement TTL / hop limit, source MAC = the router interface on the
  destination network, destination MAC = the port's, network := the destination network,
  out_port := the port; egress delivers locally or tunnels with the DESTINATION network's VNI;
* per attached subnet: an address without a port is dropped;
* extra routes (destination CIDR -> next hop port inside an attached subnet), priority by
  prefix length so the longest prefix wins (attached subnets compete by the same rule);
* anything else goes to the controller, which answers ICMP(v6) net unreachable from the
  ingress interface; an expiring TTL (dec_ttl) also reaches the controller, which answers
  ICMP time exceeded -- both rate-limited (see controller/packet_in.py).

Reactive mode (``[controller] l3_mode = reactive``): no host flows up front; a packet for an
attached subnet goes to the controller, which records the destination ("learned"), so this
app compiles its host flow with an idle timeout, and re-injects the packet. When OVS expires
the flow, the controller forgets the destination again.
"""

from __future__ import annotations

import ipaddress

from dragonflow.apps.base import split_owner
from dragonflow.controller.topology import Topology, View
from dragonflow.model import Port, Router, RouterPort
from dragonflow.pipeline.flow import Action, DecTtl, Flow, Goto, SetField, SetReg, ToController

ETH = {4: 0x0800, 6: 0x86DD}
DST = {4: "ipv4_dst", 6: "ipv6_dst"}
PRIO_HOST = 300  # above every prefix (100 + up to 128)


def prefix_priority(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    return 100 + net.prefixlen


def route_to_port(rp_mac: str, port: Port, net_key: int) -> tuple[Action, ...]:
    return (DecTtl(), SetField("eth_src", rp_mac), SetField("eth_dst", port.mac),
            SetReg("network", net_key), SetReg("out_port", port.unique_key), Goto("egress"))


class L3App:
    name = "l3"

    def owners(self, topo: Topology) -> set[str]:
        out = set()
        for rid in topo.local_routers:
            router = topo.get(Router, rid)
            if router is None:
                continue
            out.add(f"router/{rid}")
            out |= {f"rnet/{rid}/{rp.network_id}" for rp in router.ports}
        return out

    def compile(self, view: View, owner: str) -> list[Flow]:
        table, rest = split_owner(owner)
        if table == "rnet":
            router_id, net_id = rest.split("/", 1)
            return self._hosts(view, router_id, net_id, owner)
        return self._router(view, rest, owner)

    def _hosts(self, view: View, router_id: str, net_id: str, owner: str) -> list[Flow]:
        """One flow per known port address on ``net_id`` behind this router."""
        router = view.router(router_id)
        net = view.network(net_id)
        if router is None or net is None or not view.is_local_router(router_id):
            return []
        flows = []
        for rp in router.ports:
            if rp.network_id != net_id:
                continue
            reactive = view.facts.l3_mode == "reactive"
            learned = view.learned(router_id) if reactive else frozenset()
            idle = view.facts.reactive_idle_timeout if reactive else 0
            for port in view.ports_of_network(net_id):
                for fip in port.fixed_ips:
                    if not any(fip.ip_address in c.network for c in rp.cidrs):
                        continue
                    if reactive and str(fip.ip_address) not in learned:
                        continue
                    v = fip.ip_address.version
                    match = {"router": router.unique_key, "eth_type": ETH[v],
                             DST[v]: str(fip.ip_address)}
                    flows.append(Flow.make("l3_lookup", PRIO_HOST, match,
                                           route_to_port(rp.mac, port, net.unique_key), owner,
                                           idle_timeout=idle))
        return flows

    def _router(self, view: View, router_id: str, owner: str) -> list[Flow]:
        router = view.router(router_id)
        if router is None or not view.is_local_router(router_id):
            return []
        rkey = router.unique_key
        flows = []
        for v in (4, 6):  # not in any attached subnet, no route: net unreachable
            flows.append(Flow.make("l3_lookup", 1, {"router": rkey, "eth_type": ETH[v]},
                                   (ToController(),), owner))
        for rp in router.ports:
            for cidr in rp.cidrs:
                v = cidr.version
                match = {"router": rkey, "eth_type": ETH[v], DST[v]: str(cidr.network)}
                # attached subnet without a host flow: drop (proactive: no such host), or
                # ask the controller (reactive: not learned yet)
                miss: tuple[Action, ...] = ((ToController(),)
                                            if view.facts.l3_mode == "reactive" else ())
                flows.append(Flow.make("l3_lookup", prefix_priority(cidr.network), match,
                                       miss, owner))
        for route in router.routes:
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
            for port in view.ports_of_network(rp.network_id):
                if any(f.ip_address == nexthop for f in port.fixed_ips):
                    return rp, port, net.unique_key
        return None
