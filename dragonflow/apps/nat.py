"""North-south: routers' external gateways (SNAT on a gateway chassis, with failover) and
distributed floating IPs (DNAT + SNAT on the chassis of their port), conntrack NAT in OVS.

IPv4. One conntrack zone per router on each chassis (``nat_zone``: allocated from
0xC000.., kept while the router stays local), so two routers' overlapping tenant addresses
never share NAT state.

Stages (``ext_in`` sits at the physical edge, the others around the router's lookup)::

    ext_in   (before classify; from the patch to an external network's physical network)
             ARP requests for an address this chassis answers for (a floating IP of one of
             its ports; the router's gateway IP where it is the active gateway): replied in
             place, tag kept, and their sender learned as a neighbour (a copy punted);
             ARP replies to those addresses: punted, the sender learned; ping to the
             gateway IP: answered; IPv4 to the floating IP's / gateway port's MAC:
             untagged, into the router (l3_input)
    nat_in   (after l3_input) from the external network: to a floating IP -> DNAT to its
             fixed IP; to the gateway IP -> un-SNAT (replies of SNATed connections); then
             the router's lookup delivers to the VM
    snat     (after l3_lookup; what no interface subnet or route of a router with a gateway
             takes) from a fixed IP with a floating IP here -> SNAT to it, source MAC the
             floating IP port's; anything else -> SNAT to the gateway IP on the active
             gateway chassis, or, on any other chassis, the frame as it is through the
             overlay (the internal network's VNI) to the active gateway chassis, whose
             router takes it from there; from the external network: dropped
    ext_out  destination MAC from the neighbours learned on the external network (the host
             itself on the external subnet, else the subnet's gateway); unknown: punted,
             the controller asks (ARP from the NATed source), keeps the frame and sends it
             once the answer came; a floating IP of this chassis is hairpinned into its
             router's DNAT without leaving the node

The gateway chassis of a router: the chassis declaring ``[controller] gateway = true`` that
map the external network's physical network, ranked per router by rendezvous hashing; the
first whose heartbeat moved within ``gateway_dead_time`` is active. Every chassis computes
the same order. A new active gateway (and a chassis whose floating IP just became active)
announces the address with a gratuitous ARP once its flows are in (``installed``), and a
floating IP is reported ACTIVE to the NB then.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from dragonflow.apps.arp import ARP, arp_reply_actions
from dragonflow.apps.base import split_owner
from dragonflow.apps.icmp import swap
from dragonflow.apps.l3 import router_icmp_error
from dragonflow.apps.physical import PROVIDER_TYPES, wire_vlan
from dragonflow.model import Chassis, FloatingIP, Network, Port, Router
from dragonflow.ovs import packets
from dragonflow.ovs.ofchannel import PacketIn
from dragonflow.pipeline.fields import LOCALNET, read_field
from dragonflow.pipeline.flow import (
    NEXT,
    Action,
    Ct,
    DecTtl,
    Flow,
    Goto,
    Meter,
    Nat,
    OutputInPort,
    OutputTunnel,
    PopVlan,
    Resubmit,
    SetField,
    SetReg,
    ToController,
)
from dragonflow.pipeline.punt import Answer, TokenBucket
from dragonflow.pipeline.stages import MeterDecl, Stage, fields
from dragonflow.pipeline.topology import ChassisFacts, OwnersView, Topology, View

LOG = logging.getLogger(__name__)
IPV4 = 0x0800
GATEWAY_OWNER = "network:router_gateway"
FIP_OWNER = "network:floatingip"
ANNOUNCE_AGAIN = (0.5, 1.5)  # seconds after the first gratuitous ARP: sent again
HOLD_SECONDS = 3.0
HOLD_PER_TARGET = 4
HOLD_TARGETS = 256
ASK_EVERY = 0.5  # seconds between ARP requests for one address


def _port_with(view: View, net_id: str, ip: str, owner: str) -> Port | None:
    return next((p for p in view.addr_ports(net_id, ip) if p.device_owner == owner), None)


class NatApp:
    name = "nat"
    stages = (
        Stage("ext_in", physical=True, after=("metadata",), before=("classify",),
              matches=fields("in_ofport", "vlan_vid", "eth_dst", "eth_type", "arp_op",
                             "arp_spa", "arp_tpa", "ip_proto", "icmpv4_type", "ipv4_dst"),
              sets=fields("network", "router", "eth_src", "eth_dst",
                          "arp_op", "arp_sha", "arp_tha", "arp_spa", "arp_tpa", "ipv4_src",
                          "ipv4_dst", "icmpv4_type"),
              goto=("l3_input",), punt=True, miss="next",
              doc="external network edge: ARP and ping for NATed addresses, their "
                  "frames into the router"),
        Stage("nat_in", after=("l3_input",), before=("l3_lookup",),
              matches=fields("router", "network", "eth_type", "ipv4_dst"),
              goto=("l3_lookup",), miss="next",
              doc="DNAT to a floating IP's fixed IP; un-SNAT replies to the gateway IP"),
        Stage("snat", physical=True, after=("l3_lookup",), before=("deliver",),
              matches=fields("router", "network", "from_tunnel", "eth_type", "ipv4_src"),
              sets=fields("network", "eth_src", "from_tunnel"), punt=True, miss="drop",
              doc="SNAT to the floating IP / gateway IP, or to the active gateway chassis"),
        Stage("ext_out", after=("snat",), before=("deliver",),
              matches=fields("network", "eth_type", "ipv4_dst"), masked=fields("ipv4_dst"),
              sets=fields("eth_dst", "out_port", "router"), goto=("deliver",),
              resubmit=("nat_in",), punt=True, miss="drop",
              doc="next hop MAC on the external network (learned by ARP)"),
    )
    meters = (MeterDecl("arp", rate=200, burst=50), MeterDecl("resolve", rate=200, burst=50),
              MeterDecl("icmp", rate=200, burst=50, per_port=50, per_port_burst=20))

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.icmp_limit = TokenBucket(100.0, 50.0, clock)  # ICMP errors sent per second
        self.limited = 0
        # (network, target ip) -> [(when, frame without its destination MAC)]
        self.held: OrderedDict[tuple[str, str], list[tuple[float, bytes]]] = OrderedDict()
        self._asked: dict[tuple[str, str], float] = {}
        # owner -> (MAC, IP, patch, VLAN id) it answers for here, as last compiled (what
        # ``installed`` announces); and what was announced last
        self._answering: dict[str, tuple[str, str, int, int]] = {}
        self._announced: dict[str, tuple[str, str, int, int]] = {}
        # announcements to repeat: (when, owner, what it said, frame)
        self._again: list[tuple[float, str, tuple[str, str, int, int], bytes]] = []

    def owners(self, topo: OwnersView) -> set[str]:
        out = {f"fip/{f}" for f in topo.local_fips()}
        for rid in topo.local_routers:
            router = topo.get(Router, rid)
            if router is not None and router.gateway is not None:
                out.add(f"gw/{rid}")
        return out

    def compile(self, view: View, owner: str) -> list[Flow]:
        table, obj_id = split_owner(owner)
        self._answering.pop(owner, None)
        if table == "gw":
            return self._gateway(view, obj_id, owner)
        if table == "fip":
            return self._fip(view, obj_id, owner)
        return []

    # --- what an external network needs on this chassis ------------------------------------
    def _edge(self, view: View, net_id: str) -> tuple[Network, int, int] | None:
        """(network, patch ofport, wire VLAN) of an external network mapped here."""
        net = view.network(net_id)
        if net is None or not net.external or net.network_type not in PROVIDER_TYPES:
            return None
        patch = view.phys_ofport(net.physical_network)
        return None if patch is None else (net, patch, wire_vlan(net))

    def _answers(self, net: Network, patch: int, vid: int, router: Router, mac: str,
                 ip: str, owner: str) -> list[Flow]:
        """ext_in: ARP for ``ip`` answered from ``mac``; ARP to it learned; frames to
        ``mac`` into ``router``."""
        self._answering[owner] = (mac, ip, patch, vid & 0xFFF)
        edge = {"in_ofport": patch, "vlan_vid": vid}
        strip: tuple[Action, ...] = (PopVlan(),) if vid else ()
        return [
            # another chassis announcing the address (taking it over): never answered
            Flow.make("ext_in", 115, {**edge, "eth_type": ARP, "arp_op": 1, "arp_spa": ip,
                                      "arp_tpa": ip}, (), owner),
            # answered in place; a copy to the controller: who asks is a neighbour (its
            # answers need not wait for an ARP of ours)
            Flow.make("ext_in", 110, {**edge, "eth_type": ARP, "arp_op": 1, "arp_tpa": ip},
                      (SetReg("network", net.unique_key), Meter("arp"), ToController(),
                       *arp_reply_actions(mac, ip)), owner),
            Flow.make("ext_in", 110, {**edge, "eth_type": ARP, "arp_op": 2, "arp_tpa": ip},
                      (SetReg("network", net.unique_key), Meter("arp"), ToController()),
                      owner),
            Flow.make("ext_in", 100, {**edge, "eth_dst": mac, "eth_type": IPV4},
                      (*strip, SetReg("network", net.unique_key),
                       SetReg("router", router.unique_key), Goto("l3_input")), owner),
        ]

    def _next_hops(self, view: View, net: Network, owner: str) -> list[Flow]:
        """ext_out for external network ``net`` (the same flows from every owner on it)."""
        key = net.unique_key
        known = view.neighbours(net.id)
        out = (SetReg("out_port", LOCALNET), Goto("deliver"))
        ask = (Meter("resolve"), ToController())
        flows = [Flow.make("ext_out", 300, {"network": key, "eth_type": IPV4, "ipv4_dst": ip},
                           (SetField("eth_dst", mac), *out), owner)
                 for ip, mac in sorted(known.items())]
        subnets = sorted((s for s in view.subnets_of_network(net.id) if s.cidr.version == 4),
                         key=lambda s: s.id)
        for sub in subnets:  # on the link: the host itself
            flows.append(Flow.make("ext_out", 200, {"network": key, "eth_type": IPV4,
                                                    "ipv4_dst": str(sub.cidr)}, ask, owner))
        # anything else: through the (first) subnet's gateway, the physical network's router
        gw = next((str(s.gateway_ip) for s in subnets if s.gateway_ip is not None), None)
        via: tuple[Action, ...] = (SetField("eth_dst", known[gw]), *out) \
            if gw in known else ask if gw else ()
        flows.append(Flow.make("ext_out", 100, {"network": key, "eth_type": IPV4}, via, owner))
        return flows

    # --- a router's gateway ----------------------------------------------------------------
    def _gateway(self, view: View, router_id: str, owner: str) -> list[Flow]:
        router = view.router(router_id)
        gw = router.gateway if router is not None else None
        if router is None or gw is None or gw.ip_address.version != 4:
            return []
        net = view.network(gw.network_id)
        if net is None or not net.external or net.physical_network is None:
            return []
        gwip = str(gw.ip_address)
        rkey = router.unique_key
        # from outside and nowhere to go inside: never back out
        flows = [Flow.make("snat", 300, {"router": rkey, "network": net.unique_key}, (),
                           owner)]
        ranked = view.gateway_chassis(router_id, net.physical_network)
        active = ranked[0] if ranked else None
        if active is None:  # no live gateway chassis: nothing leaves without a floating IP
            return flows + [Flow.make("snat", 100, {"router": rkey, "eth_type": IPV4},
                                      (Meter("icmp"), ToController()), owner)]
        if active.id != view.facts.chassis_id:
            return flows + self._redirect(view, router, active, owner)
        edge = self._edge(view, net.id)
        port = _port_with(view, net.id, gwip, GATEWAY_OWNER)
        zone = view.nat_zone(router_id)
        if edge is None or port is None or zone is None:
            return flows
        net, patch, vid = edge
        mac = port.mac
        flows += self._answers(net, patch, vid, router, mac, gwip, owner)
        echo = {"in_ofport": patch, "vlan_vid": vid, "eth_dst": mac, "eth_type": IPV4,
                "ip_proto": 1, "icmpv4_type": 8, "ipv4_dst": gwip}
        flows.append(Flow.make("ext_in", 120, echo,
                               (*swap("eth_src", "eth_dst", 48),
                                *swap("ipv4_src", "ipv4_dst", 32),
                                SetField("icmpv4_type", 0), OutputInPort()), owner))
        flows.append(Flow.make("nat_in", 100, {"router": rkey, "network": net.unique_key,
                                               "eth_type": IPV4, "ipv4_dst": gwip},
                               (Ct(zone=zone, nat=Nat(), table=NEXT),), owner))
        nat = Nat("src", gwip) if gw.enable_snat else None
        # (frames other chassis sent here through the overlay included: they leave now;
        # their chassis decremented the TTL, and answered for it)
        for from_tunnel, ttl in ((0, (DecTtl(),)), (1, ())):
            flows.append(Flow.make("snat", 100, {"router": rkey, "eth_type": IPV4,
                                                 "from_tunnel": from_tunnel},
                                   (*ttl, SetReg("network", net.unique_key),
                                    SetReg("from_tunnel", 0), SetField("eth_src", mac),
                                    Ct(commit=True, zone=zone, nat=nat, table=NEXT)), owner))
        return flows + self._next_hops(view, net, owner)

    def _redirect(self, view: View, router: Router, gateway: Chassis, owner: str
                  ) -> list[Flow]:
        """Here the router only forwards: each internal network's frames for the outside go
        as they are, through the overlay, to the active gateway chassis."""
        flows = []
        for rp in router.ports:
            net = view.network(rp.network_id)
            if net is None or net.segmentation_id is None or \
                    net.network_type not in gateway.tunnel_types:
                continue
            tunnel = view.tunnel_ofport(net.network_type)
            if tunnel is None:
                continue
            match = {"router": router.unique_key, "network": net.unique_key, "from_tunnel": 0,
                     "eth_type": IPV4}
            flows.append(Flow.make("snat", 100, match, (DecTtl(), OutputTunnel(
                tunnel, str(gateway.ip), net.segmentation_id)), owner))
        return flows

    # --- a floating IP -----------------------------------------------------------------------
    def _fip(self, view: View, fip_id: str, owner: str) -> list[Flow]:
        fip = view.get(FloatingIP, fip_id)
        if fip is None or fip.port_id is None or fip.router_id is None \
                or fip.floating_ip_address.version != 4:
            return []
        port = view.port(fip.port_id)
        router = view.router(fip.router_id)
        if port is None or router is None or view.ofport(port.id) is None:
            return []
        fixed = fip.fixed_ip_address or next(
            (f.ip_address for f in port.fixed_ips if f.ip_address.version == 4), None)
        edge = self._edge(view, fip.floating_network_id)
        zone = view.nat_zone(router.id)
        if fixed is None or edge is None or zone is None:
            return []
        net, patch, vid = edge
        ip = str(fip.floating_ip_address)
        fport = _port_with(view, net.id, ip, FIP_OWNER)
        if fport is None:
            return []
        mac, rkey = fport.mac, router.unique_key
        flows = self._answers(net, patch, vid, router, mac, ip, owner)
        flows.append(Flow.make("nat_in", 110, {"router": rkey, "network": net.unique_key,
                                               "eth_type": IPV4, "ipv4_dst": ip},
                               (Ct(commit=True, zone=zone, nat=Nat("dst", str(fixed)),
                                   table=NEXT),), owner))
        flows.append(Flow.make("snat", 200, {"router": rkey, "eth_type": IPV4,
                                             "ipv4_src": str(fixed)},
                               (DecTtl(), SetReg("network", net.unique_key),
                                SetField("eth_src", mac),
                                Ct(commit=True, zone=zone, nat=Nat("src", ip), table=NEXT)),
                               owner))
        # to this floating IP from a VM here (any router): into its DNAT, never out
        flows.append(Flow.make("ext_out", 400, {"network": net.unique_key, "eth_type": IPV4,
                                                "ipv4_dst": ip},
                               (SetField("eth_dst", mac), SetReg("router", rkey),
                                Resubmit("nat_in")), owner))
        return flows + self._next_hops(view, net, owner)

    # --- the controller side ---------------------------------------------------------------
    def packet_in(self, topo: Topology, stage: str, pin: PacketIn) -> Answer:
        if stage == "ext_in":
            return self._learn(topo, pin)
        if stage == "ext_out":
            return self._resolve(topo, pin)
        # snat: a TTL that ran out on the way out (time exceeded), or no live gateway
        # chassis (net unreachable), answered from the router's interface
        if pin.in_port is None:
            return Answer()
        frame = router_icmp_error(topo, pin, packets.parse(pin.data), self.icmp_limit, self)
        return Answer(frames=[(pin.in_port, frame)] if frame is not None else [])

    def _learn(self, topo: Topology, pin: PacketIn) -> Answer:
        """An ARP reply / announcement to one of our addresses: its sender is a neighbour;
        the frames that waited for it go out now."""
        net = topo.by_unique_key(Network, read_field(pin.match, "network"))
        arp = packets.parse_arp(pin.data)
        if (net is None or arp is None or arp.sha == "00:00:00:00:00:00"
                or arp.spa == "0.0.0.0"):  # an address probe says nothing of its sender
            return Answer()
        answer = Answer(touched=topo.learn_neighbour(net.id, arp.spa, arp.sha))
        patch = topo.facts.phys_ofports.get(net.physical_network or "")
        vid = wire_vlan(net) & 0xFFF
        held = self.held.pop((net.id, arp.spa), [])
        fresh = self.clock() - HOLD_SECONDS
        if patch is not None:
            answer.frames += [(patch, packets.tagged(packets.with_eth_dst(f, arp.sha), vid))
                              for when, f in held if when >= fresh]
        return answer

    def _resolve(self, topo: Topology, pin: PacketIn) -> Answer:
        """A frame for a next hop not learned yet: ask for it (from the NATed source) and
        keep the frame until the answer."""
        net = topo.by_unique_key(Network, read_field(pin.match, "network"))
        req = packets.parse(pin.data)
        if net is None or req.ip_version != 4 or req.ip_dst is None or req.ip_src is None:
            return Answer()
        dst = ipaddress.ip_address(req.ip_dst)
        target = None
        for sid in sorted(topo.net_subnets.get(net.id, ())):
            sub = topo.objs["subnet"].get(sid)
            cidr = getattr(sub, "cidr", None)
            if cidr is None or cidr.version != 4:
                continue
            if dst in cidr:
                target = str(dst)
                break
            if target is None and getattr(sub, "gateway_ip", None) is not None:
                target = str(sub.gateway_ip)  # type: ignore[union-attr]
        patch = topo.facts.phys_ofports.get(net.physical_network or "")
        if target is None or patch is None:
            return Answer()
        known = topo.facts.neighbours.get((net.id, target))
        if known is not None:  # learned, its flow not in yet: this frame goes now
            return Answer(frames=[(patch, packets.tagged(packets.with_eth_dst(pin.data, known),
                                                         wire_vlan(net) & 0xFFF))])
        now = self.clock()
        key = (net.id, target)
        frames = self.held.pop(key, [])
        self.held[key] = (frames + [(now, pin.data)])[-HOLD_PER_TARGET:]
        while len(self.held) > HOLD_TARGETS:
            self.held.popitem(last=False)
        if now - self._asked.get(key, -ASK_EVERY) < ASK_EVERY:
            return Answer()
        self._asked[key] = now
        ask = packets.arp_request(req.eth_src, req.ip_src, target, wire_vlan(net) & 0xFFF)
        return Answer(frames=[(patch, ask)])

    def installed(self, topo: Topology, owners: set[str],
                  works: Callable[[str], bool]) -> Answer:
        """After the flows of ``owners`` (this app's, just (re)compiled) are in: announce
        an address this chassis now answers for (gratuitous ARP), report floating IPs."""
        answer = Answer()
        for owner in sorted(owners):
            table, obj_id = split_owner(owner)
            said = self._answering.get(owner) if works(owner) else None
            if table == "fip":
                answer.statuses.append(("floatingip", obj_id,
                                        "ACTIVE" if said is not None else "DOWN"))
            if said is None:
                self._announced.pop(owner, None)
                continue
            if self._announced.get(owner) != said:
                self._announced[owner] = said
                mac, ip, patch, vid = said
                LOG.info("%s: announcing %s at %s (gratuitous ARP)", topo.facts.chassis_id,
                         ip, mac)
                garp = packets.arp_request(mac, ip, ip, vid)
                answer.frames.append((patch, garp))
                now = self.clock()
                self._again += [(now + d, owner, said, garp) for d in ANNOUNCE_AGAIN]
        return answer

    # the announcement again, twice (as Neutron's L3 agent does): one lost, or overtaken
    # by the last answer of a chassis that had the address until a moment ago, is repaired
    def periodic_interval(self, facts: ChassisFacts) -> float:
        # often only on a chassis that may announce something (a local router with a
        # gateway: its NAT zone); elsewhere the ticker costs the loop nothing but a rare wake
        return 0.25 if facts.nat_zones else 5.0

    def periodic(self, topo: Topology) -> Answer:
        """The repeats that are due -- only while their owner still answers for the same
        address here: a late repeat of a chassis that gave the address away would take it
        back from the one that has it now."""
        if not self._again:
            return Answer()
        now = self.clock()
        due = [(said[2], f) for when, owner, said, f in self._again
               if when <= now and self._announced.get(owner) == said]
        self._again = [x for x in self._again if x[0] > now]
        return Answer(frames=due)
