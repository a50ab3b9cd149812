"""The template encoder produces exactly os-ken's bytes, for every flow shape.

The oracle below builds os-ken ``OFPFlowMod`` / ``ONFBundleAddMsg`` / ``ONFBundleCtrlMsg``
objects directly (written independently of dragonflow.ovs.encode) and compares
``serialize()`` output byte for byte: plain flow-mods, bundle-wrapped flow-mods, every
command, every shape used by the pipeline tests and bench (``realistic_flows``), every
field and action kind, and a hypothesis-generated variety. Also: match() normalization.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from dragonflow.ovs import encode
from dragonflow.ovs.flows import (
    FIELDS,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    OFPP_LOCAL,
    PREREQUISITES,
    Action,
    Controller,
    DecTtl,
    Group,
    Move,
    OfFlow,
    Output,
    PopVlan,
    PushVlan,
    Resubmit,
    SetField,
    match,
)
from tests.fixtures.ovs_bridge import realistic_flows

DP = ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)
COMMANDS = {"add": ofp.OFPFC_ADD, "modify_strict": ofp.OFPFC_MODIFY_STRICT,
            "delete_strict": ofp.OFPFC_DELETE_STRICT}


# ---- the oracle: plain os-ken -------------------------------------------------------------
def oracle_action(a: Action) -> Any:
    if isinstance(a, Output):
        return ofpp.OFPActionOutput(a.port, 0)
    if isinstance(a, Controller):
        return ofpp.OFPActionOutput(ofp.OFPP_CONTROLLER, a.max_len)
    if isinstance(a, SetField):
        return ofpp.OFPActionSetField(**{a.field: a.value})
    if isinstance(a, PushVlan):
        return ofpp.OFPActionPushVlan(a.ethertype)
    if isinstance(a, PopVlan):
        return ofpp.OFPActionPopVlan()
    if isinstance(a, Group):
        return ofpp.OFPActionGroup(a.group_id)
    if isinstance(a, Resubmit):
        port = 0xFFF8 if a.in_port is None else a.in_port & 0xFFFF
        return ofpp.NXActionResubmitTable(in_port=port, table_id=a.table)
    if isinstance(a, Move):
        return ofpp.NXActionRegMove(src_field=a.src, dst_field=a.dst, n_bits=a.n_bits,
                                    src_ofs=a.src_ofs, dst_ofs=a.dst_ofs)
    if isinstance(a, DecTtl):
        return ofpp.OFPActionDecNwTtl()
    raise AssertionError(a)


def oracle_flow_mod(flow: OfFlow, command: str, xid: int) -> Any:
    inst: list[Any] = []
    if flow.actions:
        inst.append(ofpp.OFPInstructionActions(
            ofp.OFPIT_APPLY_ACTIONS, [oracle_action(a) for a in flow.actions]))
    if flow.write_metadata is not None:
        inst.append(ofpp.OFPInstructionWriteMetadata(*flow.write_metadata))
    if flow.goto is not None:
        inst.append(ofpp.OFPInstructionGotoTable(flow.goto))
    fields = {name: value if mask is None else (value, mask) for name, value, mask in flow.match}
    flags = ofp.OFPFF_SEND_FLOW_REM if flow.idle_timeout or flow.hard_timeout else 0
    msg = ofpp.OFPFlowMod(DP, flow.cookie, 0, flow.table, COMMANDS[command], flow.idle_timeout,
                          flow.hard_timeout, flow.priority, ofp.OFP_NO_BUFFER, ofp.OFPP_ANY,
                          ofp.OFPG_ANY, flags, ofpp.OFPMatch(**fields), inst)
    msg.set_xid(xid)
    return msg


def oracle_bytes(msg: Any) -> bytes:
    msg.serialize()
    return bytes(msg.buf)


def oracle_bundle_add(flow: OfFlow, command: str, bundle_id: int, xid: int) -> bytes:
    add = ofpp.ONFBundleAddMsg(DP, bundle_id, encode.BUNDLE_FLAGS,
                               oracle_flow_mod(flow, command, xid), [])
    add.set_xid(xid)
    return oracle_bytes(add)


def assert_same_bytes(flow: OfFlow) -> None:
    for i, command in enumerate(COMMANDS):
        xid = 0x10203 + i
        want = oracle_bytes(oracle_flow_mod(flow, command, xid))
        got = encode.encode_flow_mods([flow], command, xid)  # type: ignore[arg-type]
        assert got == want, f"{command} {flow}\n got {got.hex()}\nwant {want.hex()}"
        got = encode.encode_bundle_adds([(command, flow)], 77, xid)  # type: ignore[list-item]
        assert got == oracle_bundle_add(flow, command, 77, xid), f"bundled {command} {flow}"


# ---- every shape the pipeline tests and the bench use -------------------------------------
def test_realistic_shapes_match_osken() -> None:
    flows = realistic_flows(40)  # 10 shapes x 4 value sets
    assert len({f.shape for f in flows}) == 10
    for flow in flows:
        assert_same_bytes(flow)


def test_batch_is_concatenation_with_consecutive_xids() -> None:
    flows = realistic_flows(25)
    want = b"".join(oracle_bytes(oracle_flow_mod(f, "add", 500 + i))
                    for i, f in enumerate(flows))
    assert encode.encode_flow_mods(flows, "add", 500) == want


def test_whole_bundle_matches_osken() -> None:
    flows = realistic_flows(12)
    ops = [("modify_strict" if i % 3 else "add", f) for i, f in enumerate(flows)]

    def ctrl(kind: int, xid: int) -> bytes:
        msg = ofpp.ONFBundleCtrlMsg(DP, 9, kind, encode.BUNDLE_FLAGS, [])
        msg.set_xid(xid)
        return oracle_bytes(msg)

    delete_all = ofpp.OFPFlowMod(DP, table_id=ofp.OFPTT_ALL, command=ofp.OFPFC_DELETE,
                                 buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY,
                                 out_group=ofp.OFPG_ANY, match=ofpp.OFPMatch())
    delete_all.set_xid(101)
    wrapped = ofpp.ONFBundleAddMsg(DP, 9, encode.BUNDLE_FLAGS, delete_all, [])
    wrapped.set_xid(101)
    want = ctrl(ofp.ONF_BCT_OPEN_REQUEST, 100) + oracle_bytes(wrapped)
    want += b"".join(oracle_bundle_add(f, op, 9, 102 + i) for i, (op, f) in enumerate(ops))
    want += ctrl(ofp.ONF_BCT_COMMIT_REQUEST, 102 + len(ops))
    got = encode.encode_bundle(ops, 9, 100, replace_all=True)  # type: ignore[arg-type]
    assert got == want


# ---- every field, every action ------------------------------------------------------------
def _sample(name: str, seed: int) -> Any:
    spec = FIELDS[name]
    raw = bytes((seed * 37 + k * 11 + 1) & 0xFF for k in range(spec.nbytes))
    if spec.kind == "mac":
        return ":".join(f"{b:02x}" for b in raw)
    if spec.kind == "ipv4":
        return socket.inet_ntop(socket.AF_INET, raw)
    if spec.kind == "ipv6":
        return socket.inet_ntop(socket.AF_INET6, raw)
    return int.from_bytes(raw, "big")


def _with_prerequisites(name: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for req, allowed in PREREQUISITES.get(name, ()):
        fields[req] = min(allowed)
    return fields


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_match_field_plain_and_masked(name: str) -> None:
    for masked in (False, True):
        fields = _with_prerequisites(name)
        value = _sample(name, 3)
        fields[name] = (value, _sample(name, 5)) if masked else value
        flow = OfFlow(3, 7, match(**fields), (Output(1),), cookie=9)
        assert_same_bytes(flow)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_set_field(name: str) -> None:
    flow = OfFlow(1, 2, match(reg0=1), (SetField(name, _sample(name, 7)), Output(2)), goto=4)
    assert_same_bytes(flow)


@pytest.mark.parametrize("action", [
    Output(5), Output(OFPP_IN_PORT), Output(OFPP_LOCAL), Controller(), Controller(128),
    PushVlan(), PushVlan(0x88A8), PopVlan(), Group(42), Resubmit(9), Resubmit(9, 3),
    Resubmit(0, OFPP_IN_PORT), Resubmit(200, OFPP_LOCAL), Move("eth_src", "eth_dst", 48),
    Move("reg0", "reg7", 16), Move("tunnel_id", "metadata", 64), Move("arp_sha", "arp_tha", 48),
    Move("eth_src", "reg9", 16, src_ofs=32), Move("ipv6_src", "reg2", 32, src_ofs=64),
    Move("reg8", "eth_dst", 32, dst_ofs=0), DecTtl(),
], ids=repr)
def test_every_action(action: Action) -> None:
    assert_same_bytes(OfFlow(4, 100, match(in_port=3), (action,)))
    assert_same_bytes(OfFlow(4, 100, match(), (action, Output(7), action),
                             write_metadata=(1, 3), goto=8, idle_timeout=30))


def test_instruction_combinations_and_timeouts() -> None:
    m = match(reg3=(0x10, 0xF0))
    for actions in ((), (Output(1),)):
        for goto in (None, 9):
            for wmd in (None, (0xAB, 0xFF)):
                for idle, hard in ((0, 0), (10, 0), (0, 20)):
                    assert_same_bytes(OfFlow(2, 9, m, actions, goto, wmd, 0xFFEE, idle, hard))


# ---- hypothesis: a variety of matches and actions -----------------------------------------
_PROFILES: list[dict[str, int]] = [
    {}, {"eth_type": 0x0800}, {"eth_type": 0x86DD}, {"eth_type": 0x0806},
    {"eth_type": 0x0800, "ip_proto": 6}, {"eth_type": 0x0800, "ip_proto": 17},
    {"eth_type": 0x86DD, "ip_proto": 132}, {"eth_type": 0x0800, "ip_proto": 1},
    {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 135},
    {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 136},
]


def _value(name: str) -> st.SearchStrategy[Any]:
    spec = FIELDS[name]
    if spec.kind == "int":
        return st.integers(0, spec.limit - 1)
    raw = st.binary(min_size=spec.nbytes, max_size=spec.nbytes)
    if spec.kind == "mac":
        return raw.map(lambda b: ":".join(f"{x:02x}" for x in b))
    family = socket.AF_INET if spec.kind == "ipv4" else socket.AF_INET6
    return raw.map(lambda b: socket.inet_ntop(family, b))


@st.composite
def matches(draw: st.DrawFn) -> Any:
    profile = draw(st.sampled_from(_PROFILES))
    pool = sorted(name for name in FIELDS if name not in profile and all(
        profile.get(req) in allowed for req, allowed in PREREQUISITES.get(name, ())))
    fields: dict[str, Any] = dict(profile)
    for name in draw(st.lists(st.sampled_from(pool), max_size=6, unique=True)):
        value = draw(_value(name))
        fields[name] = (value, draw(_value(name))) if draw(st.booleans()) else value
    return match(**fields)


def actions() -> st.SearchStrategy[Action]:
    ports = st.one_of(st.integers(1, 0xFEFF),
                      st.sampled_from([OFPP_IN_PORT, OFPP_LOCAL, OFPP_CONTROLLER]))
    set_fields = st.sampled_from(sorted(FIELDS)).flatmap(
        lambda name: _value(name).map(lambda v: SetField(name, v)))
    moves = st.tuples(st.sampled_from(sorted(FIELDS)), st.sampled_from(sorted(FIELDS))).flatmap(
        lambda sd: st.integers(1, 8 * min(FIELDS[sd[0]].nbytes, FIELDS[sd[1]].nbytes)).map(
            lambda n: Move(sd[0], sd[1], n)))
    return st.one_of(
        ports.map(Output), moves, st.integers(0, 0xFFFF).map(Controller), set_fields,
        st.sampled_from([0x8100, 0x88A8]).map(PushVlan), st.just(PopVlan()),
        st.integers(0, 0xFFFFFF00).map(Group),
        st.builds(Resubmit, st.integers(0, 254), st.one_of(st.none(), ports)))


@settings(max_examples=300, deadline=None)
@given(table=st.integers(0, 253), priority=st.integers(0, 0xFFFF), m=matches(),
       acts=st.lists(actions(), max_size=5),
       goto=st.one_of(st.none(), st.integers(0, 254)),
       wmd=st.one_of(st.none(), st.tuples(st.integers(0, 2**64 - 1),
                                          st.integers(0, 2**64 - 1))),
       cookie=st.integers(0, 2**64 - 1), idle=st.integers(0, 0xFFFF),
       hard=st.integers(0, 0xFFFF))
def test_generated_flows_match_osken(table: int, priority: int, m: Any, acts: list[Action],
                                     goto: int | None, wmd: tuple[int, int] | None,
                                     cookie: int, idle: int, hard: int) -> None:
    assert_same_bytes(OfFlow(table, priority, m, tuple(acts), goto, wmd, cookie, idle, hard))


# ---- the value type -----------------------------------------------------------------------
def test_match_normalizes_so_equal_matches_compare_equal() -> None:
    a = match(eth_dst="FA:16:3E:00:00:0A", ipv4_dst="10.0.0.7/24", eth_type=0x800,
              reg6=(0x1234, 0xFF), metadata=(5, 2**64 - 1), reg1=(7, 0))
    b = match(metadata=5, reg6=(0x34, 0xFF), eth_type=0x0800,
              ipv4_dst=("10.0.0.0", "255.255.255.0"), eth_dst="fa:16:3e:00:00:0a")
    assert a == b
    assert a == (("eth_dst", "fa:16:3e:00:00:0a", None), ("eth_type", 0x800, None),
                 ("ipv4_dst", "10.0.0.0", "255.255.255.0"), ("metadata", 5, None),
                 ("reg6", 0x34, 0xFF))
    assert match(eth_type=0x86DD, ipv6_src="FD00:0:0::1") == \
        (("eth_type", 0x86DD, None), ("ipv6_src", "fd00::1", None))


@pytest.mark.parametrize("fields, message", [
    ({"tcp_dst": 80}, "tcp_dst needs eth_type=0x800 or 0x86dd"),
    ({"eth_type": 0x800, "tcp_dst": 80}, "tcp_dst needs ip_proto=6"),
    ({"eth_type": 0x86DD, "ip_proto": 1, "icmpv4_type": 8}, "icmpv4_type needs eth_type=0x800"),
    ({"arp_tpa": "10.0.0.1"}, "arp_tpa needs eth_type=0x806"),
    ({"reg0": 2**32}, "field reg0"),
    ({"eth_src": "aa:bb"}, "field eth_src: bad MAC"),
    ({"eth_type": 0x800, "ipv4_src": "10.0.0.300"}, "field ipv4_src"),
    ({"bogus": 1}, "unknown OpenFlow field 'bogus'"),
])
def test_match_rejects_with_a_message_naming_the_field(fields: dict[str, Any],
                                                       message: str) -> None:
    with pytest.raises(ValueError, match=message):
        match(**fields)


def test_flow_identity_and_text() -> None:
    m = match(reg6=5, eth_type=0x0800, ipv4_dst="10.1.0.0/16")
    a = OfFlow(10, 100, m, (SetField("eth_dst", "FA:16:3E:00:00:01"), Output(3)), goto=20,
               cookie=0x1F)
    b = OfFlow(10, 100, m, (Output(4),))
    assert a.key == b.key and a != b and hash(a) != hash(b)
    assert {a, OfFlow(10, 100, m, (SetField("eth_dst", "fa:16:3e:00:00:01"), Output(3)),
                      goto=20, cookie=0x1F)} == {a}
    assert str(a) == ("table=10,priority=100,cookie=0x1f,eth_type=0x800,"
                      "ip_dst=10.1.0.0/255.255.0.0,reg6=0x5,"
                      "actions=set_field:fa:16:3e:00:00:01->eth_dst,output:3,goto_table:20")
    assert str(OfFlow(0, 0, match())) == "table=0,priority=0,actions=drop"
    with pytest.raises(ValueError, match="priority"):
        OfFlow(0, 70000, m)
    with pytest.raises(ValueError, match="not an action"):
        OfFlow(0, 1, m, ("output:1",))  # type: ignore[arg-type]
