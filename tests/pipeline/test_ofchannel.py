"""OfChannel against a real ovs-vswitchd (tests/fixtures/ovs_bridge.py).

Bundles install exactly what they carry (checked against OVS's own dump and against the same
flows loaded by ``ovs-ofctl`` from ``str(flow)``), replace_all/modify/delete leave the
expected tables, a bad flow is named and leaves the tables untouched, packet-ins arrive with
their pipeline fields, the channel survives an ovs-vswitchd restart, answers echo probes.
"""

from __future__ import annotations

import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from dragonflow.ovs import encode
from dragonflow.ovs.flows import (
    Controller,
    Move,
    OfFlow,
    Output,
    PopVlan,
    PushVlan,
    Resubmit,
    SetField,
    match,
)
from dragonflow.ovs.ofchannel import ChannelClosed, FlowRemoved, OfChannel, OfError, PacketIn
from tests.fixtures.ovs_bridge import (  # noqa: F401  (pytest fixture)
    OvsBridgeEnv,
    ovs_bridge_fixture,
    realistic_flows,
)

pytestmark = pytest.mark.ovs

FRAME_SRC = "fa:16:3e:12:34:56"


@dataclass
class Conn:
    """A connected channel and what its callbacks delivered."""

    channel: OfChannel
    packet_ins: queue.Queue[PacketIn] = field(default_factory=queue.Queue)
    removed: queue.Queue[FlowRemoved] = field(default_factory=queue.Queue)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def install(self, ops: list[tuple[encode.Command, OfFlow]], replace_all: bool = False
                ) -> None:
        self.channel.install(ops, replace_all=replace_all)


@pytest.fixture
def conn(ovs_bridge: OvsBridgeEnv) -> Iterator[Conn]:
    c = Conn(OfChannel(ovs_bridge.controller_target))
    c.channel.on_packet_in = c.packet_ins.put
    c.channel.on_flow_removed = c.removed.put
    c.channel.on_disconnect = lambda exc: c.disconnected.set()
    c.channel.connect()
    try:
        yield c
    finally:
        c.channel.close()


def adds(flows: list[OfFlow]) -> list[tuple[encode.Command, OfFlow]]:
    return [("add", f) for f in flows]


def fresh_dump(env: OvsBridgeEnv, conn: Conn, flows: list[OfFlow]) -> list[str]:
    """What OVS shows for exactly ``flows`` (installed into emptied tables)."""
    conn.install(adds(flows), replace_all=True)
    return sorted(env.dump_flows())


def send_frame(env: OvsBridgeEnv, dev: str, frame: bytes) -> None:
    """Put a real frame on the wire of veth ``dev`` (inside the test bed namespace)."""
    script = ("import socket, sys\n"
              "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
              "s.bind((sys.argv[1], 0))\n"
              "s.send(bytes.fromhex(sys.argv[2]))\n")
    env.netns_exec(sys.executable, "-c", script, dev, frame.hex())


def wait_packet_in(conn: Conn, data: bytes, timeout: float = 5.0) -> PacketIn:
    """The packet-in carrying ``data`` (the kernel adds its own IPv6 noise on veths)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pin = conn.packet_ins.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise AssertionError("no packet-in with our frame") from None
        if pin.data == data:
            return pin


def frame(src: str, tag: int) -> bytes:
    return bytes.fromhex("ffffffffffff" + src.replace(":", "") + "88b5") + bytes([tag]) * 50


# ---- bundles --------------------------------------------------------------------------------
def test_install_10k_flows_in_one_bundle(ovs_bridge: OvsBridgeEnv, conn: Conn) -> None:
    flows = realistic_flows(10_000)
    conn.install(adds(flows))
    assert ovs_bridge.flow_count() == 10_000
    lines = ovs_bridge.dump_flows("table=75")
    assert len(lines) == 2000 and any("actions=output:" in line for line in lines)


def extra_flows() -> list[OfFlow]:
    """Shapes beyond realistic_flows that OVS accepts: VLANs, IPv6, ICMP, conntrack state."""
    return [
        OfFlow(1, 10, match(in_port=7, vlan_vid=0x1000 | 42), (PopVlan(), Output(8))),
        OfFlow(1, 11, match(in_port=8, vlan_vid=0), (PushVlan(), SetField("vlan_vid", 0x1000 | 42),
                                                     Output(7))),
        OfFlow(2, 20, match(eth_type=0x86DD, ipv6_dst="fd00::/64", ip_proto=58,
                            icmpv6_type=128), (Output(3),), goto=9),
        OfFlow(2, 21, match(eth_type=0x0800, ip_proto=1, icmpv4_type=8, icmpv4_code=0,
                            ipv4_dst="192.168.1.1"), (SetField("ipv4_src", "192.168.1.1"),
                                                     Output(0xFFFFFFF8))),
        OfFlow(3, 30, match(ct_state=(0x21, 0x21), ct_zone=5, reg0=(4, 0xC)), (Output(2),),
               idle_timeout=300),
        OfFlow(3, 31, match(tunnel_id=77, tun_ipv4_src="172.16.0.9", eth_type=0x0800,
                            ip_proto=6, tcp_flags=(2, 2)), (SetField("reg1", 9),), goto=4),
        OfFlow(4, 0, match(), (Controller(128),), cookie=2**64 - 1),
        OfFlow(4, 1, match(pkt_mark=(0x10, 0xF0), eth_type=0x0806, arp_op=2,
                           arp_sha="fa:16:3e:00:00:09"), (Resubmit(5, 0xFFFFFFFE),)),
        OfFlow(5, 2, match(eth_type=0x0806, arp_op=1),
               (Move("eth_src", "eth_dst", 48), Move("arp_sha", "arp_tha", 48),
                Move("reg0", "reg1", 16), Output(0xFFFFFFF8))),
    ]


def test_str_renders_what_ovs_ofctl_loads_identically(ovs_bridge: OvsBridgeEnv,
                                                      conn: Conn) -> None:
    """Our bytes and ovs-ofctl parsing str(flow) give OVS the very same flow tables."""
    flows = realistic_flows(500) + extra_flows()
    ours = fresh_dump(ovs_bridge, conn, flows)
    assert len(ours) == len(flows)
    ovs_bridge.reset_flows()
    with tempfile.NamedTemporaryFile("w", suffix=".flows") as f:
        f.write("\n".join(str(flow) for flow in flows) + "\n")
        f.flush()
        ovs_bridge.ofctl("--bundle", "add-flows", ovs_bridge.bridge, f.name)
    assert sorted(ovs_bridge.dump_flows()) == ours


def test_replace_all_with_one_percent_changed(ovs_bridge: OvsBridgeEnv, conn: Conn) -> None:
    old = realistic_flows(10_000)
    conn.install(adds(old))
    before = set(ovs_bridge.dump_flows())
    new = list(old)
    for i in range(0, len(new), 100):  # 1% of the flows get other actions
        new[i] = replace(new[i], actions=(Output(4000 + i % 7),), goto=None,
                         write_metadata=None)
    conn.install(adds(new), replace_all=True)
    after = set(ovs_bridge.dump_flows())
    assert len(after) == 10_000
    assert len(after - before) == 100 and len(before - after) == 100
    assert sorted(after) == fresh_dump(ovs_bridge, conn, new)


def test_modify_strict_and_delete_strict(ovs_bridge: OvsBridgeEnv, conn: Conn) -> None:
    flows = realistic_flows(1000)
    conn.install(adds(flows))
    changed = [replace(f, actions=(Output(77),), goto=None, write_metadata=None)
               for f in flows[:20]]
    gone = flows[20:40]
    conn.install([("modify_strict", f) for f in changed] + [("delete_strict", f) for f in gone])
    now = sorted(ovs_bridge.dump_flows())
    assert len(now) == 980
    # modify_strict keeps the cookie (OpenFlow 1.3): same as re-adding with the same cookie
    assert now == fresh_dump(ovs_bridge, conn, changed + flows[40:])


@pytest.mark.parametrize("bad, error", [
    (OfFlow(20, 1, match(reg0=1), goto=10), "OFPBIC_BAD_TABLE_ID"),
    (OfFlow(21, 1, match(reg0=2), (Output(0xFFFFFFFF),)), "OFPBAC_BAD_OUT_PORT"),  # ANY
    (OfFlow(22, 1, match(reg0=3), (SetField("vlan_vid", 0x1005),)), "OFPBAC_MATCH_INCONSISTENT"),
])
@pytest.mark.parametrize("replace_all", [False, True])
def test_bad_flow_is_named_and_bundle_changes_nothing(ovs_bridge: OvsBridgeEnv, conn: Conn,
                                                      bad: OfFlow, error: str,
                                                      replace_all: bool) -> None:
    flows = realistic_flows(1000)
    conn.install(adds(flows))
    before = sorted(ovs_bridge.dump_flows())
    ops = [("modify_strict", replace(f, actions=(Output(9),), goto=None,
                                     write_metadata=None)) for f in flows[:300]]
    ops += [("add", bad)] + adds(realistic_flows(300, start=5000))
    with pytest.raises(OfError) as caught:
        conn.channel.install(ops, replace_all=replace_all)  # type: ignore[arg-type]
    assert caught.value.flow == bad and caught.value.op == "add"
    assert caught.value.error.name == error
    assert str(bad) in str(caught.value)
    assert sorted(ovs_bridge.dump_flows()) == before
    conn.install(adds([OfFlow(0, 1, match(reg9=1))]))  # the channel still works
    assert ovs_bridge.flow_count() == 1001


def test_barrier_raises_for_errors_of_raw_sends(conn: Conn) -> None:
    xid = conn.channel.reserve_xids(2)
    good, bad = OfFlow(0, 5, match(reg1=1)), OfFlow(9, 5, match(reg1=2), goto=1)
    conn.channel.send(encode.encode_flow_mods([good, bad], "add", xid))
    with pytest.raises(OfError) as caught:
        conn.channel.barrier()
    assert caught.value.error.xid == xid + 1
    assert caught.value.error.name == "OFPBIC_BAD_TABLE_ID"
    conn.channel.barrier()  # errors are reported once


# ---- packet-in / packet-out / flow-removed ----------------------------------------------
def test_packet_in_carries_table_and_pipeline_fields(ovs_bridge: OvsBridgeEnv,
                                                     conn: Conn) -> None:
    port = ovs_bridge.add_port("vm1", ofport=3)
    conn.install(adds([
        OfFlow(0, 100, match(in_port=port, eth_src=FRAME_SRC),
               (SetField("reg6", 0x66), SetField("metadata", 0x1234)), goto=5),
        OfFlow(5, 10, match(reg6=0x66), (Controller(),), cookie=0xC0FFEE),
    ]))
    trace = ovs_bridge.trace(f"in_port={port},dl_src={FRAME_SRC},dl_type=0x88b5")
    assert " 5. reg6=0x66, priority 10, cookie 0xc0ffee" in trace and "controller(" in trace
    data = frame(FRAME_SRC, 1)
    send_frame(ovs_bridge, "vm1p", data)
    pin = wait_packet_in(conn, data)
    assert (pin.table_id, pin.in_port, pin.cookie, pin.reason) == (5, port, 0xC0FFEE, 1)
    assert pin.match["reg6"] == 0x66 and pin.match["metadata"] == 0x1234

    data = frame(FRAME_SRC, 2)  # packet-out straight into table 0, as if from vm1
    conn.channel.packet_out(port, data, [Resubmit(0)])
    pin = wait_packet_in(conn, data)
    assert (pin.table_id, pin.in_port, pin.match["reg6"]) == (5, port, 0x66)


def test_flow_removed_is_reported_for_expiring_flows(conn: Conn) -> None:
    flow = OfFlow(7, 9, match(reg2=5), (Output(1),), hard_timeout=1, cookie=0x77)
    conn.install(adds([flow]))
    removed = conn.removed.get(timeout=10)
    assert (removed.table_id, removed.priority, removed.cookie) == (7, 9, 0x77)
    assert removed.match == {"reg2": 5}


# ---- connection life cycle ----------------------------------------------------------------
def test_reconnect_after_vswitchd_restart(ovs_bridge: OvsBridgeEnv, conn: Conn) -> None:
    flows = realistic_flows(100)
    conn.install(adds(flows))
    ovs_bridge.restart_vswitchd()
    assert conn.disconnected.wait(10)
    assert not conn.channel.connected
    with pytest.raises(ChannelClosed):
        conn.channel.barrier()
    assert ovs_bridge.flow_count() == 0  # a restarted vswitchd starts empty
    conn.channel.connect()
    conn.install(adds(flows), replace_all=True)
    assert ovs_bridge.flow_count() == 100


def test_echo_probes_are_answered(ovs_bridge: OvsBridgeEnv, conn: Conn) -> None:
    """OVS probes an idle connection (every 5 s at least) and drops it if unanswered."""
    ovs_bridge.vsctl("set", "controller", ovs_bridge.bridge, "inactivity_probe=1000")
    conn.channel.close()
    conn.channel.connect()  # the probe interval applies to new connections
    deadline = time.monotonic() + 15
    while conn.channel.echo_requests < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert conn.channel.echo_requests >= 2  # a 2nd probe only comes if the 1st was answered
    assert conn.channel.connected and not conn.disconnected.is_set()
    conn.channel.barrier()


def test_tcp_target(ovs_bridge: OvsBridgeEnv) -> None:
    """``tcp:host:port`` for OVS ``ptcp:`` targets (dialled from inside the test bed netns,
    where ovs-vswitchd's 127.0.0.1 is)."""
    ovs_bridge.vsctl("set-controller", ovs_bridge.bridge,
                     f"punix:{ovs_bridge.controller_path}", "ptcp:6653:127.0.0.1")
    repo = Path(__file__).resolve().parents[2]
    script = ("import sys\n"
              f"sys.path.insert(0, {str(repo)!r})\n"
              "from dragonflow.ovs.ofchannel import OfChannel\n"
              "from tests.fixtures.ovs_bridge import realistic_flows\n"
              "ch = OfChannel('tcp:127.0.0.1:6653')\n"
              "ch.connect()\n"
              "ch.install([('add', f) for f in realistic_flows(500)])\n"
              "print(ch.datapath_id)\n"
              "ch.close()\n")
    out = ovs_bridge.netns_exec(sys.executable, "-c", script)
    dpid = int(ovs_bridge.vsctl("get", "bridge", ovs_bridge.bridge, "datapath_id").strip()
               .strip('"'), 16)
    assert int(out.strip()) == dpid
    assert ovs_bridge.flow_count() == 500


@pytest.mark.parametrize("target", ["unix:", "tcp:host", "tcp:host:port", "ssl:1.2.3.4:6653",
                                    "/path"])
def test_bad_targets_are_rejected(target: str) -> None:
    with pytest.raises(ValueError, match="bad OpenFlow target"):
        OfChannel(target)
