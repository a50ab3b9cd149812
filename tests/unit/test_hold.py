"""The physical app's hold: address requests an ofport sends before its port is wired are
kept (bounded in number and age) and given back, once, when the port's flows are in."""

from __future__ import annotations

from dragonflow.apps.physical import HOLD_PER_PORT, HOLD_PORTS, HOLD_SECONDS, PhysicalApp
from dragonflow.ovs.ofchannel import PacketIn
from dragonflow.pipeline.topology import ChassisFacts, Topology


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pin(ofport: int, data: bytes) -> PacketIn:
    return PacketIn(table_id=1, reason=1, cookie=0, match={"in_port": ofport}, data=data,
                    buffer_id=0xFFFFFFFF, total_len=len(data))


def setup() -> tuple[PhysicalApp, Topology, Clock]:
    clock = Clock()
    topo = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",)))
    topo.facts.tunnel_ofports = {"vxlan": 9}
    return PhysicalApp(clock=clock), topo, clock


def test_held_frames_are_replayed_from_their_ofport_once_the_port_is_wired() -> None:
    app, topo, _ = setup()
    assert app.packet_in(topo, "classify", pin(5, b"discover")).frames == []
    app.packet_in(topo, "classify", pin(6, b"other"))
    topo.facts.ofports["p5"] = 5
    assert app.port_wired(topo, "p5").replay == [(5, b"discover")]
    assert app.port_wired(topo, "p5").replay == []  # once
    assert list(app.held) == [6]  # another ofport's are its own


def test_per_port_count_total_ports_and_age_are_bounded() -> None:
    app, topo, clock = setup()
    for i in range(HOLD_PER_PORT + 3):
        app.packet_in(topo, "classify", pin(5, bytes([i])))
    topo.facts.ofports["p5"] = 5
    got = app.port_wired(topo, "p5").replay
    assert [f for _, f in got] == [bytes([i]) for i in range(3, HOLD_PER_PORT + 3)]  # newest
    for ofport in range(100, 100 + HOLD_PORTS + 10):
        app.packet_in(topo, "classify", pin(ofport, b"x"))
    assert len(app.held) == HOLD_PORTS and 100 not in app.held  # oldest ofports dropped
    clock.now += HOLD_SECONDS + 1
    topo.facts.ofports["late"] = 100 + HOLD_PORTS + 9
    assert app.port_wired(topo, "late").replay == []  # too old to be worth answering
    app.packet_in(topo, "classify", pin(7, b"new"))
    assert list(app.held) == [7]  # stale ofports expired on the way


def test_a_tunnels_unknown_vni_and_unwired_ports_give_nothing() -> None:
    app, topo, _ = setup()
    app.packet_in(topo, "classify", pin(9, b"from a tunnel"))
    assert not app.held
    assert app.port_wired(topo, "nowhere").replay == []


def test_a_request_whose_port_was_wired_meanwhile_is_replayed_at_once_but_only_once() -> None:
    """The port went ACTIVE while its request waited in the packet-in queue: replayed now
    (sent after this iteration's flows). Back again (its flows are not there after all):
    held, not replayed in a loop."""
    app, topo, _ = setup()
    topo.facts.ofports["p5"] = 5
    assert app.packet_in(topo, "classify", pin(5, b"discover")).replay == [(5, b"discover")]
    assert app.packet_in(topo, "classify", pin(5, b"discover")).replay == []
    assert app.port_wired(topo, "p5").replay == [(5, b"discover")]
