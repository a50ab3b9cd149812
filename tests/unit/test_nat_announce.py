"""NAT announcements: a chassis that starts answering for an address sends a gratuitous ARP
once its flows are in and repeats it twice; a chassis that stopped answering (the floating
IP moved away) never sends a late repeat, which would take the address back on the physical
network from the chassis that has it now."""

from __future__ import annotations

from dragonflow.apps.nat import ANNOUNCE_AGAIN, NatApp
from dragonflow.ovs import packets
from dragonflow.pipeline.topology import ChassisFacts, Topology

SAID = ("fa:16:3e:ff:00:01", "172.24.4.20", 7, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _announce(app: NatApp, topo: Topology, works: bool) -> list[tuple[int, bytes]]:
    return app.installed(topo, {"fip/f1"}, lambda owner: works).frames


def test_an_announcement_is_repeated_while_the_address_stays_here() -> None:
    clock, topo = Clock(), Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",)))
    app = NatApp(clock)
    app._answering["fip/f1"] = SAID  # what compiling the owner found it answers for
    frames = _announce(app, topo, True)
    garp = packets.arp_request(SAID[0], SAID[1], SAID[1])
    assert frames == [(7, garp)]
    arp = packets.parse_arp(garp)
    assert arp is not None and (arp.op, arp.spa, arp.tpa, arp.sha) == (1, SAID[1], SAID[1],
                                                                       SAID[0])
    assert _announce(app, topo, True) == []  # installed again, nothing new: no announcement
    sent = []
    for delay in ANNOUNCE_AGAIN:
        clock.now = 100.0 + delay
        sent += app.periodic(topo).frames
    assert sent == [(7, garp)] * len(ANNOUNCE_AGAIN)
    clock.now += 10
    assert app.periodic(topo).frames == []


def test_no_late_repeat_after_the_address_moved_away() -> None:
    clock, topo = Clock(), Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",)))
    app = NatApp(clock)
    app._answering["fip/f1"] = SAID
    assert _announce(app, topo, True)
    del app._answering["fip/f1"]  # recompiled: the floating IP went to another chassis
    answer = app.installed(topo, {"fip/f1"}, lambda owner: False)
    assert answer.frames == [] and answer.statuses == [("floatingip", "f1", "DOWN")]
    clock.now += max(ANNOUNCE_AGAIN) + 1
    assert app.periodic(topo).frames == []
    # and when it comes back, it is announced again
    app._answering["fip/f1"] = SAID
    assert _announce(app, topo, True)
