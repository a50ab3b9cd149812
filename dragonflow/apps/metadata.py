"""Metadata: every local port's requests to 169.254.169.254:80 go to this chassis'
metadata service (``df-metadata``), by flows -- no namespace per network.

One stage before ``classify`` (the answers come in on the metadata interface, which is no
logical port, so they are handled before classify would drop them), physical because it
matches ofports and outputs to them (see dragonflow/metadata/datapath.py for the addresses):

* per local port, per fixed IPv4 address i (the first four): TCP from that address to
  169.254.169.254:80 -> source := the address encoding (port key, i), destination MAC := the
  metadata interface's, out of the metadata interface. SYNs (without ACK) pass the port's own
  meter first (``[metadata] syn_rate`` / ``syn_burst`` per port): one VM cannot flood the
  service. From any other source address (a spoofed one) -> dropped;
* per local port: ARP for 169.254.169.254 answered (VMs with an on-link route to it);
* per local port and address i: from the metadata interface, TCP from 169.254.169.254:80 to
  the encoded address -> destination := the port's address i, MACs := the service's / the
  port's, out of the port's ofport;
* the metadata interface's ARP for any encoded address is answered with the service MAC;
  anything else from it is dropped.

Nothing is installed while the metadata interface is absent (no ``df-metadata`` on this
chassis): then 169.254.169.254 is an address like any other.
"""

from __future__ import annotations

import logging

from dragonflow.apps.base import network_part_owners, network_parts, split_owner
from dragonflow.metadata.datapath import (
    KEY_NET,
    MAX_KEY,
    METADATA_IP,
    METADATA_TCP_PORT,
    SERVICE_MAC,
    port_address,
)
from dragonflow.pipeline.flow import Action, Flow, Meter, Move, Output, OutputInPort, SetField
from dragonflow.pipeline.stages import MeterDecl, Stage, fields
from dragonflow.pipeline.topology import ChassisFacts, OwnersView, View

LOG = logging.getLogger(__name__)
IFACE_OWNER = "metadata/interface"
TCP4 = {"eth_type": 0x0800, "ip_proto": 6}
ARP_REQUEST = {"eth_type": 0x0806, "arp_op": 1}
SYN, ACK = 0x002, 0x010


def arp_answer(mac: str) -> tuple[Action, ...]:
    """Turn an ARP request for any address into the reply from ``mac`` (the asked-for
    address is swapped into the sender's place through a scratch register)."""
    return (Move("eth_src", "eth_dst", 48), SetField("eth_src", mac), SetField("arp_op", 2),
            Move("arp_sha", "arp_tha", 48), SetField("arp_sha", mac),
            Move("arp_tpa", "reg0", 32), Move("arp_spa", "arp_tpa", 32),
            Move("reg0", "arp_spa", 32), OutputInPort())


class MetadataApp:
    name = "metadata"
    stages = (
        Stage("metadata", before=("classify",), physical=True,
              matches=fields("in_ofport", "eth_type", "ip_proto", "ipv4_src", "ipv4_dst",
                             "tcp_src", "tcp_dst", "tcp_flags", "arp_op", "arp_tpa"),
              masked=fields("tcp_flags", "arp_tpa"),
              sets=fields("ipv4_src", "ipv4_dst", "eth_src", "eth_dst", "arp_op", "arp_sha",
                          "arp_tha", "arp_spa", "arp_tpa"),
              miss="next", doc="169.254.169.254:80 of local ports <-> the metadata service"),
    )

    def __init__(self) -> None:
        self.meters: tuple[MeterDecl, ...] = (self._meter(20, 40),)

    @staticmethod
    def _meter(rate: int, burst: int) -> MeterDecl:
        # only the per-port meters police (Meter(name, port=key) on a flow that does not
        # punt: punt=False, so no CoPP flows and no shared meter are made for it)
        return MeterDecl("syn", rate=max(1, rate) * 100, burst=max(0, burst) * 100,
                         per_port=max(1, rate), per_port_burst=max(0, burst), punt=False)

    def configure(self, facts: ChassisFacts) -> None:
        self.meters = (self._meter(facts.metadata_syn_rate, facts.metadata_syn_burst),)

    owner_parts = staticmethod(network_parts)  # its port owners, by network
    part_owners = staticmethod(network_part_owners)

    def owners(self, topo: OwnersView) -> set[str]:
        return {IFACE_OWNER}

    def compile(self, view: View, owner: str) -> list[Flow]:
        md = view.metadata_port()
        if md is None:
            return []
        md_ofport, md_mac = md
        table, obj_id = split_owner(owner)
        if owner == IFACE_OWNER:
            return [
                Flow.make("metadata", 100, dict(ARP_REQUEST, in_ofport=md_ofport,
                                                arp_tpa=str(KEY_NET)),
                          arp_answer(SERVICE_MAC), owner),
                Flow.make("metadata", 1, {"in_ofport": md_ofport}, (), owner),
            ]
        port = view.port(obj_id) if table == "port" else None
        ofport = view.ofport(port.id) if port is not None else None
        if port is None or ofport is None:
            return []
        ips = [str(f.ip_address) for f in port.fixed_ips if f.ip_address.version == 4]
        if not ips:
            return []
        if not 0 < port.unique_key <= MAX_KEY:
            LOG.warning("port %s: unique key %d does not fit the metadata addresses (1..%d): "
                        "its metadata requests are not served", port.id, port.unique_key,
                        MAX_KEY)
            return []
        key = port.unique_key
        request = dict(TCP4, in_ofport=ofport, ipv4_dst=METADATA_IP, tcp_dst=METADATA_TCP_PORT)
        flows = [
            # from a source address that is not the port's own: dropped (spoofed)
            Flow.make("metadata", 100, request, (), owner),
            Flow.make("metadata", 100, dict(ARP_REQUEST, in_ofport=ofport, arp_tpa=METADATA_IP),
                      arp_answer(SERVICE_MAC), owner),
        ]
        for i, ip in enumerate(ips[:4]):
            encoded = port_address(key, i)
            assert encoded is not None
            steer: tuple[Action, ...] = (SetField("ipv4_src", encoded),
                                         SetField("eth_dst", md_mac), Output(md_ofport))
            flows += [
                Flow.make("metadata", 210, dict(request, ipv4_src=ip, tcp_flags=(SYN, SYN | ACK)),
                          (Meter("syn", port=key), *steer), owner),
                Flow.make("metadata", 200, dict(request, ipv4_src=ip), steer, owner),
                Flow.make("metadata", 200,
                          dict(TCP4, in_ofport=md_ofport, ipv4_src=METADATA_IP,
                               tcp_src=METADATA_TCP_PORT, ipv4_dst=encoded),
                          (SetField("ipv4_dst", ip), SetField("eth_src", SERVICE_MAC),
                           SetField("eth_dst", port.mac), Output(ofport)), owner),
            ]
        return flows
