"""The pipeline is assembled from what the enabled apps declare, and checked: order, owners,
gotos, fields, meters -- every error names the app and the stage. Logical fields lower to
bit ranges of registers; an app cannot write into another app's stage."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dragonflow.apps.registry import default_apps
from dragonflow.ovs import flows as of
from dragonflow.pipeline import flow as lf
from dragonflow.pipeline.fields import LOGICAL_FIELDS, read_field
from dragonflow.pipeline.lower import Lowering, app_of_cookie, cookie
from dragonflow.pipeline.stages import MeterDecl, Pipeline, PipelineError, Stage, fields

CORE = ["metadata", "ext_in", "classify", "arp_responder", "dhcp", "nd_responder", "ra",
        "port_security", "secgroup_out_ct", "secgroup_out", "l2_lookup", "l3_input", "nat_in",
        "l3_lookup", "snat", "ext_out", "deliver", "secgroup_in_ct", "secgroup_in", "egress"]


@dataclass
class FakeApp:
    name: str
    stages: tuple[Stage, ...]
    meters: tuple[MeterDecl, ...] = ()


def assemble(*extra: FakeApp) -> Pipeline:
    return Pipeline.assemble([*default_apps(), *extra])


def test_core_apps_give_the_core_order_with_stable_tables() -> None:
    p = Pipeline.assemble(default_apps())
    assert list(p.order) == CORE
    assert [p.table(n) for n in CORE] == list(range(len(CORE)))
    assert p.stage("egress").app == "physical" and p.stage("l3_lookup").app == "l3"


def test_app_load_order_does_not_change_the_pipeline() -> None:
    apps = default_apps()
    assert Pipeline.assemble(apps).order == Pipeline.assemble(apps[::-1]).order


def test_extension_stage_goes_between_two_core_stages() -> None:
    ext = FakeApp("ext", (Stage("filter", after=("classify",), before=("arp_responder",),
                                matches=fields("eth_type"), miss="next"),))
    p = assemble(ext)
    assert list(p.order) == [*CORE[:3], "filter", *CORE[3:]]
    # classify's "go on" now reaches the extension, a tunnel frame still skips to l2
    low = Lowering(p)
    f = low.lower("physical", lf.Flow.make("classify", 100, {"in_ofport": 3},
                                           (lf.SetReg("in_port", 5), lf.Next()), "port/a"))
    assert f.goto == p.table("filter") == 3
    assert p.table("l2_lookup") == CORE.index("l2_lookup") + 1


@pytest.mark.parametrize("app, error", [
    (FakeApp("ext", (Stage("filter", after=("classify",), miss="next"),)),
     r"arp_responder \(app arp\), filter \(app ext\) have no declared order"),
    (FakeApp("ext", (Stage("l2_lookup", after=("classify",)),)),
     r"stage 'l2_lookup' declared by app l2 and by app ext"),
    (FakeApp("ext", (Stage("x", after=("egress",), before=("classify",)),)),
     r"cycle"),
    (FakeApp("ext", (Stage("x", after=("classify",), before=("arp_responder",),
                           goto=("nowhere",)),)),
     r"app ext, stage x: goto to 'nowhere', which no enabled app declares"),
    (FakeApp("ext", (Stage("x", after=("l2_lookup",), before=("l3_input",),
                           goto=("classify",)),)),
     r"app ext, stage x: goto 'classify' is not forward"),
    (FakeApp("ext", (Stage("x", after=("classify",), before=("arp_responder",),
                           matches=fields("vni")),)),
     r"app ext, stage x: matches unknown field\(s\) \['vni'\]"),
    (FakeApp("ext", (Stage("x", after=("classify",), before=("arp_responder",),
                           matches=fields("in_ofport")),)),
     r"app ext, stage x: matches unknown field\(s\) \['in_ofport'\]"),
    (FakeApp("ext", (Stage("x", after=("classify",), before=("arp_responder",),
                           sets=fields("ct_state")),)),
     r"app ext, stage x: sets unknown or read-only field\(s\) \['ct_state'\]"),
    (FakeApp("ext", (Stage("x", after=("classify",), before=("arp_responder",),
                           matches=fields("eth_type"), masked=fields("eth_dst")),)),
     r"masked field\(s\) \['eth_dst'\] not in matches"),
    (FakeApp("ext", (Stage("x", after=("classify",), before=("arp_responder",),
                           miss="controller"),)),
     r"app ext, stage x: miss 'controller' needs punt=True"),
    (FakeApp("ext", (Stage("x", after=("egress",), miss="next"),)),
     r"app ext, stage x: miss 'next' in the last stage"),
    (FakeApp("ext", (), (MeterDecl("m", rate=0),)), r"app ext: meter 'm': rate must be > 0"),
])
def test_bad_declarations_are_refused_naming_app_and_stage(app: FakeApp, error: str) -> None:
    with pytest.raises(PipelineError, match=error):
        assemble(app)


# --- lowering: bit ranges, ownership, declarations ---------------------------------------
@pytest.fixture
def low() -> Lowering:
    ext = FakeApp("ext", (Stage(
        "stateful", after=("classify",), before=("arp_responder",),
        matches=fields("zone", "from_tunnel", "in_port", "ct_state", "ct_mark", "eth_type",
                       "conj_id", "ip_proto", "tcp_dst"),
        masked=fields("ct_state", "tcp_dst"), sets=fields("zone", "snat_zone", "from_tunnel"),
        goto=("l2_lookup",), miss="next"),), (MeterDecl("m", rate=10),))
    return Lowering(assemble(ext))


def test_logical_fields_are_bit_ranges_and_share_registers(low: Lowering) -> None:
    f = low.lower("ext", lf.Flow.make(
        "stateful", 10, {"zone": 7, "from_tunnel": 1, "in_port": 9},
        (lf.SetReg("snat_zone", 3), lf.SetReg("from_tunnel", 0), lf.Next()), "x/1"))
    m = dict((n, (v, k)) for n, v, k in f.match)
    assert m["reg13"] == (7, 0xFFFF)           # zone = reg13[0..15]
    assert m["reg10"] == (1, 0x1)              # from_tunnel = reg10[0]
    assert m["reg6"] == (9, None)              # in_port = whole reg6
    assert of.Load("reg13", 3, 16, 16) in f.actions
    assert of.Load("reg10", 0, 0, 1) in f.actions
    assert "load:0x3->reg13[16..31]" in str(f)


def test_network_key_takes_32_bits_of_metadata_not_64() -> None:
    p = Pipeline.assemble(default_apps())
    f = Lowering(p).lower("physical", lf.Flow.make(
        "classify", 100, {"in_ofport": 3},
        (lf.SetReg("in_port", 5), lf.SetReg("network", 0xABCDEF01), lf.Next()), "port/a"))
    assert f.write_metadata == (0xABCDEF01, 0xFFFFFFFF)
    f = Lowering(p).lower("l2", lf.Flow.make(
        "l2_lookup", 100, {"network": 0xABCDEF01, "eth_dst": "fa:16:3e:00:00:01"},
        (lf.SetReg("out_port", 3), lf.Goto("deliver")), "port/a"))
    assert ("metadata", 0xABCDEF01, 0xFFFFFFFF) in f.match
    assert read_field({"metadata": (7 << 32) | 0xABCDEF01}, "network") == 0xABCDEF01
    assert LOGICAL_FIELDS["network"].mask == 0xFFFFFFFF


@pytest.mark.parametrize("app, flow, error", [
    ("l2", lf.Flow.make("l3_lookup", 1, {}, (), "x"), r"stage l3_lookup belongs to app l3"),
    ("ext", lf.Flow.make("stateful", 1, {"network": 1}, (), "x"),
     r"does not declare a match on 'network'"),
    ("ext", lf.Flow.make("stateful", 1, {"zone": (1, 3)}, (), "x"),
     r"does not declare 'zone' maskable"),
    ("ext", lf.Flow.make("stateful", 1, {"zone": 1 << 16}, (), "x"), r"does not fit 16 bits"),
    ("ext", lf.Flow.make("stateful", 1, {}, (lf.SetReg("out_port", 1),), "x"),
     r"does not declare setting 'out_port'"),
    ("ext", lf.Flow.make("stateful", 1, {}, (lf.Goto("egress"),), "x"),
     r"may not goto 'egress'"),
    ("ext", lf.Flow.make("stateful", 1, {}, (lf.ToController(),), "x"),
     r"not declared punt"),
    ("ext", lf.Flow.make("stateful", 1, {}, (lf.Meter("nope"),), "x"),
     r"declares no meter 'nope'"),
    ("ext", lf.Flow.make("stateful", 1, {}, (lf.Meter("m", port=5),), "x"),
     r"meter 'm' is not declared per_port"),
    ("nd", lf.Flow.make("nd_responder", 1, {}, (lf.Meter("punt", port=5),
                                                lf.ToController()), "x"),
     r"a punt is policed per port in the CoPP tables"),
    ("ext", lf.Flow.make("stateful", 1, {}, (lf.Output(3),), "x"), r"physical"),
    ("ext", lf.Flow.make("stateful", 1, {}, (lf.Ct(table="egress"),), "x"),
     r"may not continue ct\(\) in 'egress'"),
    ("ext", lf.Flow.make("stateful", 1, {}, (lf.Ct(zone="in_port", table=lf.NEXT),), "x"),
     r"ct zone 'in_port' is not a 16-bit logical field"),
    ("ext", lf.Flow.make("stateful", 1, {}, (lf.Ct(commit=True, mark=(5, 5)),), "x"),
     r"ct_mark: mask 0x5 is not one contiguous run"),
    ("ext", lf.Flow.make("stateful", 1, {}, (lf.Conjunction(1, 1, 2), lf.Next()), "x"),
     r"only conjunction actions"),
])
def test_flows_breaking_their_declaration_are_refused(low: Lowering, app: str, flow: lf.Flow,
                                                      error: str) -> None:
    with pytest.raises(PipelineError, match=error):
        low.lower(app, flow)


def test_stateful_vocabulary_lowers(low: Lowering) -> None:
    p = low.p
    ct = lf.Ct(commit=True, zone="zone", table=lf.NEXT,
               nat=of.Nat("src", "192.0.2.10", "192.0.2.20", 1024, 65535),
               mark=(0x10, 0xF0), label=(1 << 64, 1 << 64))
    f = low.lower("ext", lf.Flow.make(
        "stateful", 50, {"ct_state": (0x21, 0x21), "ct_mark": 3, "eth_type": 0x800},
        (lf.Meter("m"), ct), "rule/1"))
    (action,) = f.actions
    assert isinstance(action, of.Ct)
    assert action.zone_field == "reg13" and action.zone_ofs == 0
    assert action.table == p.table("arp_responder")
    assert action.exec == (of.Load("ct_mark", 1, 4, 4), of.Load("ct_label", 1, 64, 1))
    assert f.meter == p.meter_id("ext", "m") and f.meter is not None
    assert str(f).startswith(f"table={p.table('stateful')},priority=50,"
                             f"cookie={cookie('ext', 'rule/1'):#x}")
    conj = low.lower("ext", lf.Flow.make("stateful", 5, {"eth_type": 0x800, "ip_proto": 6,
                                                         "tcp_dst": (0x400, 0xFC00)},
                                         (lf.Conjunction(7, 2, 2),), "rule/2"))
    assert conj.actions == (of.Conjunction(7, 2, 2),)


def test_cookie_names_app_and_owner() -> None:
    c = cookie("l2", "port/abc")
    assert c == cookie("l2", "port/abc") != cookie("l2", "port/abd")
    assert app_of_cookie(c, ["physical", "l2", "l3"]) == "l2"
    assert c >> 48 != cookie("l3", "port/abc") >> 48


def test_a_per_port_meter_on_a_flow_that_does_not_punt() -> None:
    """Meter(name, port=key) names that port's own meter of the kind (the ids the engine
    gives the port's meters); without port, the shared one; a key too large for meter ids
    falls back to the shared meter."""
    p = Pipeline.assemble(default_apps())
    low = Lowering(p)
    syn = p.meter_id("metadata", "syn")
    assert syn is not None and syn in p.per_port_meters()
    out = (lf.Output(9),)
    f = low.lower("metadata", lf.Flow.make("metadata", 5, {"in_ofport": 3},
                                           (lf.Meter("syn", port=7), *out), "port/a"))
    assert f.meter == p.port_meters(7)[syn] != syn
    assert p.port_meters(8)[syn] != f.meter  # every port its own
    f = low.lower("metadata", lf.Flow.make("metadata", 5, {"in_ofport": 3},
                                           (lf.Meter("syn"), *out), "port/a"))
    assert f.meter == syn
    f = low.lower("metadata", lf.Flow.make("metadata", 5, {"in_ofport": 3},
                                           (lf.Meter("syn", port=2**31), *out), "port/a"))
    assert p.port_meters(2**31) == {} and f.meter == syn
