"""df-trace's pieces without OVS: the microflow expression, the packet it becomes, and the
translation of ofproto/trace output -- real output captured from OVS by
tests/fullstack/test_trace.py (tests/unit/data/trace_captures.json, with the pipelines,
br-int interfaces and NB of that run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from dragonflow.cli import trace as t

DATA = json.loads((Path(__file__).parent / "data" / "trace_captures.json").read_text())


def translated(name: str) -> dict[str, Any]:
    cap = DATA["traces"][name]
    chassis = DATA["chassis"][cap["chassis"]]
    ctx = t.Context()
    ctx.set_nb_dicts((table, d) for table, d in DATA["nb"])
    ctx.set_pipeline(chassis["status"])
    ctx.ifaces = {int(k): v for k, v in chassis["ifaces"].items()}
    res = t.translate(t.parse_trace(cap["raw"]), ctx)
    res.update(flow=cap["flow"], command="ovs-appctl ofproto/trace ...")
    return res


def steps(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["stage"]: s for p in res["parts"] for s in p["steps"] if not s.get("miss")}


# --- the expression ------------------------------------------------------------------------

def test_expression_fields_and_protocols() -> None:
    p = t.parse_expr("eth.src=FA:16:3E:00:00:01 ip4.dst=10.0.0.5, tcp.dst=80 && ip.ttl=3")
    assert p.fields == {"dl_src": "fa:16:3e:00:00:01", "nw_dst": "10.0.0.5",
                        "tcp_dst": "80", "nw_ttl": "3"}
    assert (p.l3(), p.l4()) == ("ip4", "tcp")
    assert t.parse_expr("ip6.dst=fd00::1 udp").l3() == "ip6"
    assert t.parse_expr("icmp6").l3() == "ip6"
    assert t.parse_expr("arp.tpa=10.0.0.1").l3() == "arp"
    assert t.parse_expr("tcp.flags=syn|ack").fields["tcp_flags"] == "0x12"
    assert t.parse_expr("ip4.dst==10.0.0.1").fields["nw_dst"] == "10.0.0.1"  # OVN's ==


@pytest.mark.parametrize("expr, error", [
    ("ip4.dts=10.0.0.1", "unknown field 'ip4.dts'"),
    ("ip4.dst=10.0.0.300", "bad value for ip4.dst: '10.0.0.300'"),
    ("ip4.dst=fd00::1", "bad value for ip4.dst"),
    ("eth.src=fa:16:3e", "bad value for eth.src"),
    ("tcp.dst=70000", "bad value for tcp.dst: '70000' (out of range 0..65535)"),
    ("tcp.flags=syn|foo", "bad value for tcp.flags"),
    ("ip4.dst=", "field 'ip4.dst' has no value"),
    ("frobnicate", "unknown term 'frobnicate'"),
    ("tcp.dst=1 udp.dst=2", "more than one transport"),
    ("arp.op=1 ip4.dst=10.0.0.1", "mixes arp"),
    ("ip4.src=10.0.0.1 ip6.dst=fd00::1", "mixes IPv4 and IPv6"),
])
def test_expression_errors_name_the_bad_term(expr: str, error: str) -> None:
    with pytest.raises(t.TraceError, match=None) as e:
        t.parse_expr(expr)
    assert error in str(e.value)


PORT = t.PortInfo("b1-port", "b1", "fa:16:3e:00:00:01", ["10.0.0.11", "fd00::11"], "blue",
                  "hv1")
NEIGH = {"10.0.0.12": "fa:16:3e:00:00:02", "10.0.0.1": "fa:16:3e:aa:00:01"}


def test_flow_defaults_come_from_the_port_and_network() -> None:
    flow = t.ovs_flow(t.parse_expr("ip4.dst=10.0.0.12 icmp4"), "4", PORT, NEIGH,
                      "fa:16:3e:aa:00:01")
    assert flow == ("icmp,in_port=4,dl_src=fa:16:3e:00:00:01,dl_dst=fa:16:3e:00:00:02,"
                    "nw_src=10.0.0.11,nw_dst=10.0.0.12,nw_ttl=64,icmp_code=0,icmp_type=8")
    # off the network: to its router interface; udp ports by OVS's udp_* names (tp_* with
    # IP addresses is refused by ofproto/trace's parser)
    flow = t.ovs_flow(t.parse_expr("ip4.dst=8.8.8.8 udp.dst=53"), "4", PORT, NEIGH,
                      "fa:16:3e:aa:00:01")
    assert flow.startswith("udp,in_port=4,dl_src=fa:16:3e:00:00:01,dl_dst=fa:16:3e:aa:00:01,")
    assert "udp_dst=53" in flow and "tp_dst" not in flow
    flow = t.ovs_flow(t.parse_expr("arp.tpa=10.0.0.12"), "4", PORT, NEIGH, None)
    assert flow == ("arp,in_port=4,dl_src=fa:16:3e:00:00:01,dl_dst=ff:ff:ff:ff:ff:ff,"
                    "arp_op=1,arp_spa=10.0.0.11,arp_tpa=10.0.0.12,arp_sha=fa:16:3e:00:00:01")
    flow = t.ovs_flow(t.parse_expr("ip6.dst=fd00::12 tcp.dst=22"), "4", PORT, {}, None)
    assert flow.startswith("tcp6,in_port=4,dl_src=fa:16:3e:00:00:01,ipv6_src=fd00::11,")
    # what the expression says wins over the defaults
    flow = t.ovs_flow(t.parse_expr("eth.src=fa:16:3e:00:00:09 ip4.src=10.0.0.99 "
                                   "ip4.dst=10.0.0.12 ip.ttl=1"), "4", PORT, NEIGH, None)
    assert "dl_src=fa:16:3e:00:00:09" in flow and "nw_src=10.0.0.99" in flow
    assert "nw_ttl=1" in flow
    with pytest.raises(t.TraceError, match="nothing to trace"):
        t.ovs_flow(t.parse_expr(""), "4")


def test_flags_are_the_expression() -> None:
    parser = t.build_parser()

    def packet(*argv: str) -> t.Packet:
        return t._expression(parser.parse_args(list(argv)))

    p = packet("--port", "b1", "--dst-ip", "10.0.0.12", "--proto", "tcp", "--dst-port", "80",
               "--ttl", "5")
    assert p.fields == {"nw_dst": "10.0.0.12", "tcp_dst": "80", "nw_ttl": "5"}
    assert packet("--dst-ip", "fd00::1", "--proto", "icmp").l4() == "icmp6"
    with pytest.raises(t.TraceError, match="--dst-port needs --proto"):
        packet("--dst-ip", "10.0.0.1", "--dst-port", "80")
    assert "Expression fields: eth.src" in parser.format_help()


# --- the translation of real ofproto/trace output -----------------------------------------

def test_parse_sections_steps_and_cookies() -> None:
    secs = t.parse_trace(DATA["traces"]["routed"]["raw"])
    assert len(secs) == 1
    tables = [s.table for s in secs[0].steps]
    assert tables == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17, 18, 19]
    egress = secs[0].steps[-1]
    assert egress.cookie is not None and egress.priority == 100
    ifaces = DATA["chassis"]["hv1"]["ifaces"]
    # one output: df-geneve (what br-phy does with the encapsulated packet is not counted)
    assert [ifaces[o["ofport"]]["name"] for o in egress.outputs] == ["df-geneve"]
    assert secs[0].datapath_actions.startswith("set(eth(")
    # conntrack: the recirculation is a section of its own, resumed with trk|new
    secs = t.parse_trace(DATA["traces"]["secgroup_drop_hv2"]["raw"])
    assert len(secs) == 2
    assert secs[1].header.startswith("recirc(0x")
    assert "ct_state=new|trk" in secs[1].flow
    assert secs[1].steps[0].table == 18


def test_l2_local_delivers_to_the_port() -> None:
    res = translated("l2_local")
    assert res["verdict"]["kind"] == "output"
    [out] = res["verdict"]["outputs"]
    assert (out["kind"], out["port_id"], out["iface"], out["chassis"]) == \
        ("port", "tb3-port", "taptb3", "hv1")
    s = steps(res)
    assert s["classify"]["owner"] == "port/tb1-port"
    assert s["classify"]["changed"] == {"network": "tblue (key 1)",
                                        "in_port": "tb1-port (key 1)"}
    assert s["l2_lookup"]["app"] == "l2" and s["l2_lookup"]["owner"] == "port/tb3-port"


def test_routed_through_the_router_into_a_tunnel() -> None:
    res = translated("routed")
    s = steps(res)
    assert s["l2_lookup"]["object"] == "router r1"
    assert s["l2_lookup"]["changed"] == {"router": "r1 (key 1)"}
    assert s["l3_lookup"]["changed"] == {
        "network": "tgreen (key 2)", "out_port": "tg1-port (key 6)", "ip.ttl": "63",
        "eth.src": "fa:16:3e:aa:02:01", "eth.dst": "fa:16:3e:94:00:01"}
    [out] = res["verdict"]["outputs"]
    assert (out["kind"], out["tunnel_type"], out["vni"], out["remote_ip"],
            out["remote_chassis"]) == ("tunnel", "geneve", 932, "10.255.0.12", "hv2")
    assert res["final_logical"]["network"] == "tgreen (key 2)"
    text = t.render_text(res)
    assert "TUNNEL: tunnelled (geneve, VNI 932) to chassis hv2 (10.255.0.12)" in text
    # what the far end delivers (the remote part of the same run)
    far = translated("routed_hv2")
    assert steps(far)["classify"]["changed"] == {"network": "tgreen (key 2)",
                                                 "from_tunnel": "yes"}
    assert [o["port_id"] for o in far["verdict"]["outputs"]] == ["tg1-port"]


def test_drops_say_which_stage_and_why() -> None:
    v = translated("unknown_mac")["verdict"]
    assert (v["kind"], v["stage"], v["app"], v["miss"], v["by"]) == \
        ("drop", "l2_lookup", "l2", True, None)
    assert "miss is drop" in v["why"] and "unknown MAC" in v["hint"]
    v = translated("spoofed")["verdict"]
    assert (v["kind"], v["stage"], v["miss"], v["by"]) == \
        ("drop", "port_security", False, "port_security port/tb1-port")
    assert "explicit drop in stage port_security by app port_security for port tb1-port" \
        in v["why"]
    far = translated("secgroup_drop_hv2")
    v = far["verdict"]
    assert (v["kind"], v["stage"], v["by"]) == ("drop", "secgroup_in", "secgroup port/ts1-port")
    ct = steps(far)["secgroup_in_ct"]
    assert ct["conntrack"] == ["ct(table=18,zone=NXM_NX_REG13[0..15])"]
    assert ct["changed"] == {"zone": "5"}
    assert far["parts"][1]["ct_state"] == "new|trk"
    # the same connection to an allowed port is delivered
    far = translated("secgroup_pass_hv2")
    assert [o["port_id"] for o in far["verdict"]["outputs"]] == ["ts1-port"]


def test_punt_names_the_stage_that_punted() -> None:
    res = translated("dhcp")
    v = res["verdict"]
    assert v["kind"] == "controller"
    [out] = v["outputs"]
    assert (out["stage"], out["app"], out["table"], out["from_table"]) == \
        ("dhcp", "dhcp", 4, t.COPP_KIND_TABLE)
    s = steps(res)
    assert s["dhcp"]["changed"] == {"punt_table": "4 (dhcp)", "punt_meter": "1"}
    assert s["copp_port"]["object"] == "control-plane policing of port td1-port (td1)"
    assert s["copp_kind"]["owner"] == "copp"


def test_a_responder_answers_out_of_the_in_port() -> None:
    res = translated("arp_gateway")
    [out] = res["verdict"]["outputs"]
    assert (out["kind"], out["stage"]) == ("in_port", "arp_responder")
    changed = steps(res)["arp_responder"]["changed"]  # the request turned into the reply
    assert (changed["arp.op"], changed["arp.spa"], changed["arp.tpa"],
            changed["eth.src"]) == ("2", "10.93.0.1", "10.93.0.11", "fa:16:3e:aa:02:00")


def test_the_translation_is_what_the_real_run_reported() -> None:
    for name, cap in DATA["traces"].items():
        assert json.loads(json.dumps(translated(name)["verdict"], default=str)) == \
            cap["verdict"], name


# --- registers, the remote flow ------------------------------------------------------------

def test_state_applies_actions_in_order() -> None:
    st = t.State("ip,reg6=0x1,metadata=0x5")
    assert st.apply("load:0x4->NXM_NX_REG10[16..23]") == [("reg10", 0xFF0000)]
    assert st.apply("set_field:0x3->reg7") == [("reg7", t.ALL)]
    st.apply("write_metadata:0x2/0xffffffff")
    st.apply("move:NXM_NX_REG6[]->NXM_NX_REG0[]")
    st.apply("set_field:0x100/0xff00->reg5")
    st.apply("set_field:fa:16:3e:00:00:09->eth_dst")
    st.f["nw_ttl"] = "64"
    st.apply("dec_ttl")
    assert (st.reg("reg10"), st.reg("reg7"), st.reg("metadata"), st.reg("reg0"),
            st.reg("reg5")) == (0x40000, 3, 2, 1, 0x100)
    assert (st.f["dl_dst"], st.f["nw_ttl"]) == ("fa:16:3e:00:00:09", "63")


def test_tunnel_flow_is_the_packet_as_it_left() -> None:
    final = ("tcp,reg6=0x1,reg7=0x4,tun_src=0.0.0.0,tun_dst=10.255.0.12,metadata=0x1,"
             "in_port=4,dl_src=fa:16:3e:00:00:01,dl_dst=fa:16:3e:00:00:04,nw_src=10.0.0.11,"
             "nw_dst=10.0.0.14,nw_ttl=64,tp_src=0,tp_dst=80,tcp_flags=0")
    assert t.tunnel_flow(final, "vxlan", 931, "10.255.0.11", "10.255.0.12") == (
        "tcp,in_port=df-vxlan,tun_id=0x3a3,tun_src=10.255.0.11,tun_dst=10.255.0.12,"
        "dl_src=fa:16:3e:00:00:01,dl_dst=fa:16:3e:00:00:04,nw_src=10.0.0.11,"
        "nw_dst=10.0.0.14,nw_ttl=64,tcp_src=0,tcp_dst=80,tcp_flags=0")


def test_main_reports_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert t.main(["--db", "memory://df-trace-unit", "--status-file", "/nonexistent",
                   "--port", "x", "ip4.dst=10.0.0.1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("df-trace: error: no controller status file at /nonexistent")
    with pytest.raises(SystemExit):
        t.build_parser().parse_args(["--bogus"])
    assert isinstance(t.build_parser().parse_args([]), argparse.Namespace)
