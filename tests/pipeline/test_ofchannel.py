"""OfChannel against a real ovs-vswitchd (tests/fixtures/ovs_bridge.py).

Bundles install exactly what they carry (checked against OVS's own dump and against the same
flows loaded by ``ovs-ofctl`` from ``str(flow)``), replace_all/modify/delete leave the
expected tables, a bad flow is named and leaves the tables untouched, packet-ins arrive with
their pipeline fields, the channel survives an ovs-vswitchd restart, answers echo probes.
Conntrack (ct with zone / table / nat / exec, ct_clear), conjunction, set_queue, load and
metered flows install and read back as ``str(flow)`` says; meters (userspace datapath)
install, modify, delete, and errors name the meter.
"""

from __future__ import annotations

import queue
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from dragonflow.ovs import encode
from dragonflow.ovs.flows import (
    Conjunction,
    Controller,
    Ct,
    CtClear,
    Load,
    Move,
    Nat,
    OfFlow,
    OfMeter,
    Output,
    PopVlan,
    PushVlan,
    Resubmit,
    SetField,
    SetQueue,
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


# ---- conntrack, conjunction, set_queue, load, meters ----------------------------------------
IP = {"eth_type": 0x0800}


def new_action_flows() -> list[OfFlow]:
    """One flow per new action kind (cookie = index + 1, to find each in the dump)."""
    flows = [
        # un-NAT lookup: ct(nat) in the zone from reg13[0..15], recirculate to 31
        OfFlow(30, 100, match(**IP, ct_state=(0, 0x20)),
               (Ct(zone_field="reg13", table=31, nat=Nat()),)),
        OfFlow(31, 100, match(**IP, ct_state=(0x21, 0x21), ct_zone=5),
               (Ct(commit=True, zone_field="reg13", table=32,
                   nat=Nat("src", "10.0.0.1", "10.0.0.9", 1000, 2000),
                   exec=(Load("ct_mark", 0x5), Load("ct_label", 1, 5, 1))),)),
        OfFlow(31, 90, match(**IP, ct_mark=(1, 1), ct_label=(1 << 100 | 1, 1 << 100 | 1)),
               (CtClear(), Resubmit(30))),
        OfFlow(31, 80, match(**IP, ct_label=1 << 127 | 5, ct_mark=7),
               (Ct(commit=True, force=True, zone=7,
                   nat=Nat("src", "10.0.0.1", port_min=99),  # NAT body needing padding
                   exec=(SetField("ct_label", 2**128 - 1), SetField("ct_mark", 9))),)),
        OfFlow(32, 50, match(**IP, ip_proto=6, tcp_dst=21), (Ct(commit=True, alg=21, table=33),)),
        OfFlow(32, 40, match(eth_type=0x86DD, ip_proto=17),
               (Ct(commit=True, alg=69, nat=Nat("dst", "fd00::1", "fd00::9", 80, 90,
                                                persistent=True, random=True)),)),
        OfFlow(32, 30, match(eth_type=0x86DD), (Ct(commit=True, table=0, zone_field="reg0",
                                                   zone_ofs=16, nat=Nat("dst", "fd00::5")),)),
        # a conjunction: clause 1/2 on sources, 2/2 on destinations, then conj_id
        OfFlow(40, 100, match(**IP, ipv4_src="10.0.0.1"), (Conjunction(7, 1, 2),)),
        OfFlow(40, 100, match(**IP, ipv4_src="10.0.0.2"),
               (Conjunction(7, 1, 2), Conjunction(8, 3, 3))),
        OfFlow(40, 100, match(**IP, ipv4_dst="10.0.1.0/24"), (Conjunction(7, 2, 2),)),
        OfFlow(40, 100, match(**IP, conj_id=7), (SetQueue(3), Output(2))),
        OfFlow(41, 10, match(reg0=1), (Load("reg0", 5, 3, 4), Load("metadata", 1, 63, 1),
                                       Load("eth_dst", 0xFA163E000001, 0, 48), Output(1)),
               meter=5, goto=42),
    ]
    return [replace(f, cookie=i + 1) for i, f in enumerate(flows)]


_NXM_NAMES = {"NXM_NX_REG0": "reg0", "NXM_NX_REG13": "reg13", "NXM_NX_CT_MARK": "ct_mark",
              "NXM_NX_CT_LABEL": "ct_label", "OXM_OF_METADATA": "metadata",
              "NXM_OF_ETH_DST": "eth_dst"}


def split_top(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]] if text else parts


def normalized_actions(actions: str) -> list[object]:
    """Action list in a comparable form: NXM names -> ovs-ofctl names, the arguments of
    ct(...) as a set (OVS prints them in its own order)."""
    for nxm, name in _NXM_NAMES.items():
        actions = actions.replace(nxm, name)
    out: list[object] = []
    for part in split_top(actions):
        if part.startswith("ct(") and part.endswith(")"):
            out.append(("ct", frozenset(split_top(part[3:-1]))))
        else:
            out.append(part)
    return out


def dumped_actions(lines: list[str]) -> dict[int, str]:
    """cookie -> the actions text of each dumped flow."""
    found = {}
    for line in lines:
        cookie = re.search(r"cookie=(0x[0-9a-f]+)", line)
        assert cookie is not None, line
        found[int(cookie.group(1), 16)] = line.split(" actions=", 1)[1]
    return found


def dumped_meters(env: OvsBridgeEnv) -> dict[int, str]:
    """meter id -> ``dump-meters`` text of it in str(OfMeter) form (one line, commas)."""
    out = env.ofctl("dump-meters", env.bridge)
    meters = {}
    for block in out.split("meter=")[1:]:
        text = "meter=" + ",".join(block.split())
        meters[int(text.split(",")[0][6:])] = text.replace("bands=,", "bands=")
    return meters


def test_new_actions_install_and_read_back_as_str_says(ovs_bridge: OvsBridgeEnv,
                                                       conn: Conn) -> None:
    """Our bytes give OVS exactly the flows ``str(flow)`` names: action by action after
    normalizing OVS's spelling, and identical tables when ovs-ofctl loads str(flow)."""
    meter = OfMeter(5, 1000, burst=100)
    conn.channel.install_meters([("add", meter)])
    flows = new_action_flows()
    ours = fresh_dump(ovs_bridge, conn, flows)
    assert len(ours) == len(flows)
    by_cookie = dumped_actions(ours)
    for flow in flows:
        want = str(flow).split(",actions=", 1)[1]
        assert normalized_actions(by_cookie[flow.cookie]) == normalized_actions(want), flow
    # the clause numbering as ovs-ofctl writes it: 1-based
    assert by_cookie[9] == "conjunction(7,1/2),conjunction(8,3/3)"
    assert by_cookie[10] == "conjunction(7,2/2)"
    assert by_cookie[12].startswith("meter:5,")  # the meter instruction first
    # ... and the conjunction works: both clauses hit -> the conj_id=7 flow
    conn.install(adds([OfFlow(0, 0, match(), goto=40)]))
    hit = ovs_bridge.trace("in_port=LOCAL,ip,nw_src=10.0.0.2,nw_dst=10.0.1.9")
    assert "40. conj_id=7,ip, priority 100, cookie 0xb" in hit and "set_queue:3" in hit
    miss = ovs_bridge.trace("in_port=LOCAL,ip,nw_src=10.0.0.3,nw_dst=10.0.1.9")
    assert "40. No match." in miss

    ovs_bridge.reset_flows()  # str(flow) is ovs-ofctl syntax that loads the same tables
    with tempfile.NamedTemporaryFile("w", suffix=".flows") as f:
        f.write("\n".join(str(flow) for flow in flows) + "\n")
        f.flush()
        ovs_bridge.ofctl("--bundle", "add-flows", ovs_bridge.bridge, f.name)
    assert sorted(ovs_bridge.dump_flows()) == ours
    assert dumped_meters(ovs_bridge) == {5: str(meter)}


def test_meters_install_modify_delete(ovs_bridge: OvsBridgeEnv, conn: Conn) -> None:
    """Meters work in the userspace (netdev) datapath; errors name the meter."""
    a, b = OfMeter(1, 100), OfMeter(2, 5000, burst=300, unit="kbps")
    conn.channel.install_meters([("add", a), ("add", b)])
    assert dumped_meters(ovs_bridge) == {1: str(a), 2: str(b)}
    faster = replace(a, rate=250)
    conn.channel.install_meters([("modify", faster)])
    assert dumped_meters(ovs_bridge) == {1: str(faster), 2: str(b)}

    c = OfMeter(3, 10)
    with pytest.raises(OfError) as caught:  # not atomic: c stays, the error names b
        conn.channel.install_meters([("add", c), ("add", b)])
    assert (caught.value.op, caught.value.meter) == ("add", b)
    assert caught.value.error.name == "OFPMMFC_METER_EXISTS"
    assert str(b) in str(caught.value)
    with pytest.raises(OfError) as caught:
        conn.channel.install_meters([("modify", OfMeter(9, 1))])
    assert caught.value.error.name == "OFPMMFC_UNKNOWN_METER"
    assert sorted(dumped_meters(ovs_bridge)) == [1, 2, 3]

    # a flow may only name an existing meter; deleting the meter deletes its flows
    with pytest.raises(OfError) as caught:
        conn.install(adds([OfFlow(0, 1, match(reg0=1), (Output(1),), meter=9)]))
    assert caught.value.error.name == "OFPMMFC_INVALID_METER"  # OVS's code for a flow-mod
    conn.install(adds([OfFlow(0, 1, match(reg0=1), (Output(1),), meter=1),
                       OfFlow(0, 2, match(reg0=2), (Output(1),), meter=2),
                       OfFlow(0, 3, match(reg0=3), (Output(1),))]))
    conn.channel.install_meters([("delete", a)])
    assert sorted(dumped_meters(ovs_bridge)) == [2, 3]
    assert ovs_bridge.flow_count() == 2
    conn.channel.delete_all_meters()
    assert dumped_meters(ovs_bridge) == {}
    assert ovs_bridge.dump_flows() == ["priority=3,reg0=0x3 actions=output:1"]


def test_meters_travel_with_the_bundle_and_a_rejected_one_discards_it(
        ovs_bridge: OvsBridgeEnv, conn: Conn) -> None:
    """install(meters=): the meter-mods go just before the bundle, checked by its barrier
    (one round trip fewer); flows naming the new meter go in with it. A rejected meter-mod
    discards the bundle (no flow of it installed) and the error names the meter."""
    a = OfMeter(1, 100)
    conn.channel.install(adds([OfFlow(0, 1, match(reg0=1), (Output(1),), meter=1)]),
                         meters=[("add", a)])
    assert dumped_meters(ovs_bridge) == {1: str(a)}
    assert ovs_bridge.dump_flows() == ["priority=1,reg0=0x1 actions=meter:1,output:1"]
    with pytest.raises(OfError) as caught:  # meter 1 exists: the add is refused
        conn.channel.install(adds([OfFlow(0, 2, match(reg0=2), (Output(1),), meter=1)]),
                             meters=[("add", OfMeter(1, 7))])
    assert (caught.value.op, caught.value.meter) == ("add", OfMeter(1, 7))
    assert caught.value.error.name == "OFPMMFC_METER_EXISTS"
    assert ovs_bridge.dump_flows() == ["priority=1,reg0=0x1 actions=meter:1,output:1"]
    assert dumped_meters(ovs_bridge) == {1: str(a)}


def test_meter_mods_are_not_allowed_in_bundles(conn: Conn) -> None:
    """Why install_meters() is not atomic: OVS refuses meter-mods inside ONF bundles."""
    xid = conn.channel.reserve_xids(3)
    inner = encode.osken_meter_mod("add", OfMeter(1, 100), xid + 1)
    wrapped = ofpp.ONFBundleAddMsg(encode.DATAPATH, 4, encode.BUNDLE_FLAGS, inner, [])
    wrapped.set_xid(xid + 1)
    wrapped.serialize()
    conn.channel.send(encode.bundle_ctrl(4, ofp.ONF_BCT_OPEN_REQUEST, xid))
    conn.channel.send(bytes(wrapped.buf))
    with pytest.raises(OfError) as caught:
        conn.channel.barrier()
    assert caught.value.error.name == "ONFERR_ET_MSG_UNSUP"
    assert caught.value.error.xid == xid + 1
    conn.channel.send(encode.bundle_ctrl(4, ofp.ONF_BCT_DISCARD_REQUEST, xid + 2))
    conn.channel.barrier()


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
