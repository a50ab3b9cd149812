"""Against a real ovs-vswitchd: apps of their own (declared stages) next to the core apps.

* One flow OVS refuses among 1,000 of an app's owners: the other 999 are installed in the
  same atomic step, the refused owner is reported, other ports' traffic is unaffected, later
  changes keep converging, and the owner's next change retries it.
* Conntrack and NAT: a small stateful stage (ct in a zone from a logical field, commit
  with NAT and a ct_mark, established / invalid states) traced with ``ofproto/trace
  --ct-next`` -- the flows are accepted by OVS and the packet goes where the stage says.
"""

from __future__ import annotations

import re

import pytest

from dragonflow.apps.registry import default_apps
from dragonflow.controller.engine import Engine
from dragonflow.controller.reconciler import Reconciler
from dragonflow.model import Binding, Chassis, FixedIp, Network, Port, Subnet
from dragonflow.ovs import flows as of
from dragonflow.ovs.ofchannel import OfChannel
from dragonflow.pipeline import flow as lf
from dragonflow.pipeline.fields import CT_ESTABLISHED, CT_INVALID, CT_NEW, CT_TRACKED
from dragonflow.pipeline.stages import Pipeline, Stage, fields
from dragonflow.pipeline.topology import ChassisFacts, OwnersView, Topology, View
from tests.fixtures.ovs_bridge import OvsBridgeEnv

MACS = {"vm1": "fa:16:3e:00:00:01", "vm2": "fa:16:3e:00:00:02"}
BAD = 500  # the owner whose flow OVS refuses


class BulkApp:
    """1,000 owners, one flow each, in a stage of its own between classify and the ARP
    responder. The flows match TCP ports nobody uses (the traced traffic takes the miss);
    owner 500's sets ipv4_src on ARP frames: lowering lets it through (it checks
    declarations, not OpenFlow prerequisites of actions), OVS refuses it."""

    name = "bulk"
    stages = (Stage("bulk", after=("classify",), before=("arp_responder",),
                    matches=fields("eth_type", "ip_proto", "tcp_dst"),
                    sets=fields("ipv4_src"), miss="next"),)

    def __init__(self) -> None:
        self.fixed = False
        self.count = 1000

    def owners(self, topo: OwnersView) -> set[str]:
        topo.get(Port, "bulk-count")  # a dependency: owners() asked again when it changes
        return {f"item/{i}" for i in range(self.count)}

    def compile(self, view: View, owner: str) -> list[lf.Flow]:
        i = int(owner.split("/")[1])
        view.get(Port, f"knob-{i}")  # a dependency a test can touch
        if i == BAD and not self.fixed:
            return [lf.Flow.make("bulk", 100, {"eth_type": 0x806},
                                 (lf.SetField("ipv4_src", "192.0.2.1"),), owner)]
        return [lf.Flow.make("bulk", 100, {"eth_type": 0x800, "ip_proto": 6,
                                           "tcp_dst": 10000 + i}, (lf.Next(),), owner)]


def nb_objects() -> list:
    return [Chassis(id="hv1", ip="10.255.0.11", tunnel_types=("vxlan",)),
            Network(id="n", topic="p", network_type="vxlan", segmentation_id=100,
                    unique_key=1, version=1),
            Subnet(id="s", topic="p", network_id="n", cidr="10.0.0.0/24"),
            *[Port(id=vm, topic="p", network_id="n", mac=mac, unique_key=10 + i, version=1,
                   fixed_ips=(FixedIp(subnet_id="s", ip_address=f"10.0.0.{11 + i}"),),
                   binding=Binding(kind="chassis", chassis_id="hv1"))
              for i, (vm, mac) in enumerate(MACS.items())]]


@pytest.fixture
def env(ovs_bridge: OvsBridgeEnv) -> OvsBridgeEnv:
    return ovs_bridge


def outputs(trace: str) -> list[str]:
    return re.findall(r"^\s+output:(\d+)$", trace, re.M)


def test_one_refused_flow_among_1000_leaves_the_other_999_installed(env: OvsBridgeEnv) -> None:
    ofports = {vm: env.add_port(f"{env.prefix}{vm}") for vm in MACS}
    topo = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",)))
    topo.replace_all(nb_objects())
    for vm, p in ofports.items():
        topo.set_ofport(vm, p)
    bulk = BulkApp()
    engine = Engine([*default_apps(), bulk], topo)
    engine.full()
    assert not engine.failed  # lowering accepted all 1,000
    channel = OfChannel(env.controller_target)
    channel.connect()
    try:
        rec = Reconciler()
        rec.sync(channel, engine.table, meters=engine.meters)
        table = engine.pipeline.table("bulk")
        installed = env.dump_flows(f"table={table}")
        assert sum("tp_dst=" in f for f in installed) == 999
        assert list(engine.table.rejected) == [("bulk", f"item/{BAD}")]
        reason = engine.table.rejected[("bulk", f"item/{BAD}")]
        assert "OFPBAC" in reason and "ip_src" in reason  # OVS's error, with the flow
        # every other port's traffic goes on: vm1 -> vm2 through the whole pipeline
        t = env.trace(f"in_port={ofports['vm1']},dl_src={MACS['vm1']},dl_dst={MACS['vm2']},"
                      "tcp,nw_src=10.0.0.11,nw_dst=10.0.0.12,tp_dst=10001")
        assert outputs(t) == [str(ofports["vm2"])]
        assert f"table={table}" not in t or "tp_dst=10001" in t
        # the chassis keeps converging: a new owner goes in, the refused one stays out
        bulk.count = 1001
        engine.changed({("obj", "port", "bulk-count")})
        assert rec.sync(channel, engine.table, meters=engine.meters) == 1
        assert sum("tp_dst=" in f for f in env.dump_flows(f"table={table}")) == 1000
        # its next change retries it: fixed, it is installed and no longer reported
        bulk.fixed = True
        engine.changed({("obj", "port", f"knob-{BAD}")})
        rec.sync(channel, engine.table, meters=engine.meters)
        assert not engine.table.rejected
        assert sum("tp_dst=" in f for f in env.dump_flows(f"table={table}")) == 1001
        assert env.flow_count() == len(rec.installed)
    finally:
        channel.close()


class StatefulApp:
    """A tiny stateful firewall in two stages of its own, physical so it can output:
    ``ct_zone``: IPv4 from port 1 gets zone 5 (a logical field) and goes through conntrack,
    continuing in the next stage; ``ct_verdict``: new connections are committed with source
    NAT to 192.0.2.10 and ct_mark bit 0 set, then sent out of port 2; established ones go out
    of port 2 unless their ct_mark has the "blocked" bit 1; invalid ones are dropped."""

    name = "fw"
    stages = (
        Stage("ct_zone", physical=True, matches=fields("in_ofport", "eth_type"),
              sets=fields("zone"), miss="drop"),
        Stage("ct_verdict", physical=True, after=("ct_zone",),
              matches=fields("ct_state", "ct_mark", "eth_type", "zone"),
              masked=fields("ct_state", "ct_mark"), miss="drop"),
    )

    def __init__(self, in_port: int, out_port: int) -> None:
        self.in_port, self.out_port = in_port, out_port

    def owners(self, topo: OwnersView) -> set[str]:
        return {"fw/1"}

    def compile(self, view: View, owner: str) -> list[lf.Flow]:
        trk_new = (CT_TRACKED | CT_NEW, CT_TRACKED | CT_NEW | CT_INVALID)
        trk_est = (CT_TRACKED | CT_ESTABLISHED, CT_TRACKED | CT_ESTABLISHED | CT_INVALID)
        ip = {"eth_type": 0x800}
        return [
            lf.Flow.make("ct_zone", 100, dict(ip, in_ofport=self.in_port),
                         (lf.SetReg("zone", 5), lf.Ct(zone="zone", table=lf.NEXT)), owner),
            lf.Flow.make("ct_verdict", 100, dict(ip, ct_state=trk_new, zone=5),
                         (lf.Ct(commit=True, zone="zone", nat=of.Nat("src", "192.0.2.10"),
                                mark=(1, 1)), lf.Output(self.out_port)), owner),
            lf.Flow.make("ct_verdict", 100, dict(ip, ct_state=trk_est, zone=5),
                         (lf.Output(self.out_port),), owner),
            # a connection whose permission was withdrawn (mark bit 1, as OVN's
            # ct_label.blocked): dropped even though established
            lf.Flow.make("ct_verdict", 105, dict(ip, ct_state=trk_est, ct_mark=(2, 2)),
                         (), owner),
            lf.Flow.make("ct_verdict", 110, dict(ip, ct_state=(CT_INVALID, CT_INVALID)),
                         (), owner),
        ]


def test_conntrack_and_nat_flows_trace_through_a_stateful_stage(env: OvsBridgeEnv) -> None:
    p1, p2 = env.add_port(f"{env.prefix}c1"), env.add_port(f"{env.prefix}c2")
    app = StatefulApp(p1, p2)
    topo = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",)))
    engine = Engine([app], topo, Pipeline.assemble([app]))
    engine.full()
    assert not engine.failed, engine.failed
    channel = OfChannel(env.controller_target)
    channel.connect()
    try:
        Reconciler().sync(channel, engine.table)
        assert not engine.table.rejected, engine.table.rejected
        flows = "\n".join(env.dump_flows())
        assert "ct(commit,zone=NXM_NX_REG13[0..15],exec(load:0x1->NXM_NX_CT_MARK[0])," \
               "nat(src=192.0.2.10))" in flows or "nat(src=192.0.2.10)" in flows, flows
        pkt = f"in_port={p1},ip,nw_src=10.0.0.5,nw_dst=10.0.0.6"

        def trace(states: str) -> str:
            return env.appctl("ofproto/trace", "br-int", pkt, "--ct-next", states)

        new = trace("trk,new")
        assert outputs(new) == [str(p2)], new
        assert "nat(src=192.0.2.10)" in new and "zone=5" in new.replace("0x5", "5")
        est = trace("trk,est")
        assert outputs(est) == [str(p2)], est  # (a trace's ct_mark is 0: not blocked)
        inv = trace("trk,inv")
        assert outputs(inv) == [], inv
    finally:
        channel.close()
