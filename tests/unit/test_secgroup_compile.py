"""The security-group app's compile output and relevance, without a switch: what a local
port and its groups compile to, how flows grow with members and rules (a sum, not a
product), and which scopes a chassis follows for remote-group rules. (What the flows DO is
proven with real traffic in tests/fullstack/test_secgroups.py.)"""

from __future__ import annotations

from dragonflow.apps.registry import default_apps
from dragonflow.apps.secgroup import conj_id, port_mask_ranges, zone_of
from dragonflow.controller.engine import Engine
from dragonflow.model import (
    AddressGroup,
    Binding,
    Chassis,
    FixedIp,
    Network,
    Port,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from dragonflow.pipeline.flow import Conjunction
from dragonflow.pipeline.topology import ChassisFacts, Topology, relevance_scopes


def rule(rid: str, direction: str, **kw: object) -> SecurityGroupRule:
    return SecurityGroupRule.from_dict({"id": rid, "direction": direction, **kw})


def world(members: int, rules: int) -> tuple[Topology, Engine]:
    """hv1 hosts port p0 in group "g" whose ``rules`` ingress rules name remote group
    "r" with ``members`` members on another chassis and another network."""
    topo = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",),
                                 tunnel_ofports={"vxlan": 1}))
    objs: list = [Chassis(id=c, ip=ip, tunnel_types=("vxlan",))
                  for c, ip in (("hv1", "10.255.0.11"), ("hv2", "10.255.0.12"))]
    objs += [SecurityGroup(id="r", topic="p"),
             SecurityGroup(id="g", topic="p", rules=tuple(
                 rule(f"in{i}", "ingress", protocol="tcp", port_range_min=1000 + i,
                      port_range_max=1000 + i, remote_group_id="r") for i in range(rules)))]
    for n in ("a", "b"):
        objs += [Network(id=n, topic="p", network_type="vxlan", segmentation_id=ord(n),
                         unique_key=ord(n)),
                 Subnet(id=f"s{n}", topic="p", network_id=n, cidr=f"10.{ord(n)}.0.0/16")]
    objs.append(Port(id="p0", topic="p", network_id="a", mac="fa:16:3e:00:00:01",
                     unique_key=10, security_groups=("g",),
                     fixed_ips=(FixedIp(subnet_id="sa", ip_address="10.97.0.10"),),
                     binding=Binding(kind="chassis", chassis_id="hv1")))
    for i in range(members):
        objs.append(Port(id=f"m{i}", topic="p", network_id="b",
                         mac=f"fa:16:3e:01:{i // 256:02x}:{i % 256:02x}", unique_key=100 + i,
                         security_groups=("r",),
                         fixed_ips=(FixedIp(subnet_id="sb",
                                            ip_address=f"10.98.{i // 250}.{i % 250 + 2}"),),
                         binding=Binding(kind="chassis", chassis_id="hv2")))
    topo.replace_all(objs)
    topo.set_ofport("p0", 5)
    engine = Engine(default_apps(), topo)
    engine.full()
    return topo, engine


def sg_flows(engine: Engine) -> list:
    return [f for (app, _), fs in engine.flows.items() if app == "secgroup" for f in fs]


def test_flows_grow_with_members_plus_rules_not_their_product() -> None:
    counts = {(m, r): len(sg_flows(world(m, r)[1])) for m in (10, 20) for r in (1, 2, 4)}
    per_member = counts[(20, 1)] - counts[(10, 1)]
    assert per_member == 10  # one remote-address flow per member address
    assert counts[(20, 4)] - counts[(10, 4)] == per_member  # ... whatever the rule count
    per_rule = counts[(10, 2)] - counts[(10, 1)]
    assert per_rule == counts[(20, 2)] - counts[(20, 1)] <= 3  # L4 clause + verdict (+1)


def test_a_member_joining_changes_one_flow() -> None:
    topo, engine = world(10, 3)
    before = engine.desired()
    new = Port(id="m-new", topic="p", network_id="b", mac="fa:16:3e:02:00:01", unique_key=999,
               security_groups=("r",), version=1,
               fixed_ips=(FixedIp(subnet_id="sb", ip_address="10.98.9.9"),),
               binding=Binding(kind="chassis", chassis_id="hv2"))
    engine.changed(topo.apply("port", new.id, new) or set())
    added = engine.desired() - before
    assert len(added) == 1 and len(before - engine.desired()) == 0, added
    (flow,) = added  # ONE flow: the new address, a clause of each of the 3 rules naming r
    assert ("ipv4_src", "10.98.9.9") in flow.match
    assert set(flow.actions) == {Conjunction(conj_id("g", f"in{i}"), 2, 3) for i in range(3)}


def test_the_port_clause_carries_every_rule_of_every_group() -> None:
    topo, engine = world(2, 3)
    port_flows = [f for f in sg_flows(engine) if f.stage == "secgroup_in"
                  and dict(f.match) == {"out_port": 10}]
    assert len(port_flows) == 1
    assert set(port_flows[0].actions) == {Conjunction(conj_id("g", f"in{i}"), 1, 3)
                                         for i in range(3)}


def test_a_chassis_follows_the_members_of_the_groups_its_rules_name() -> None:
    topo, _ = world(2, 1)
    member = topo.get(Port, "m0")
    assert member is not None
    assert "sg:r" in relevance_scopes(member)  # delivered to whoever follows sg:r
    assert {"sg:g", "sg:r"} <= topo.scopes_needed()  # hv1 hosts p0 (g, naming r)
    topo.set_ofport("p0", None)
    assert not {"sg:g", "sg:r"} & topo.scopes_needed()


def test_two_local_ports_never_share_a_zone_whatever_their_keys() -> None:
    """Unique keys 10 and 65,544 (= 10 under a 16-bit fold; a long-lived cloud has keys
    past 16 bits): their zones are their ofports, distinct; a zone is never 0 nor in the
    reserved range."""
    topo, engine = world(0, 0)
    twin = Port(id="p1", topic="p", network_id="b", mac="fa:16:3e:00:00:02",
                unique_key=65544, security_groups=("g",),
                fixed_ips=(FixedIp(subnet_id="sb", ip_address="10.98.0.10"),),
                binding=Binding(kind="chassis", chassis_id="hv1"))
    engine.changed(topo.apply("port", "p1", twin) or set())
    engine.changed(topo.set_ofport("p1", 6))

    def zones(pid: str) -> set[int]:
        return {a.value for f in engine.flows[("secgroup", f"port/{pid}")]
                if f.stage.endswith("_ct") for a in f.actions
                if type(a).__name__ == "SetReg" and a.field == "zone"}

    assert zones("p0") == {5} and zones("p1") == {6}
    assert zone_of(1) == 1 and zone_of(0xBFFF) == 0xBFFF
    for bad in (0, 0xC000, 0xFF00, 0x10000):
        try:
            zone_of(bad)
        except ValueError:
            continue
        raise AssertionError(f"zone_of({bad}) accepted")


def test_port_ranges() -> None:
    for lo, hi in ((80, 80), (1000, 1999), (1, 65535), (5000, 5003), (0, 7), (8, 65535)):
        covered = set()
        for value, mask in port_mask_ranges(lo, hi):
            covered |= {p for p in range(65536) if p & mask == value}
        assert covered == set(range(lo, hi + 1)), (lo, hi)
    assert len(port_mask_ranges(1000, 1999)) <= 16


def test_an_address_group_rule_allows_its_addresses_and_an_unknown_one_nothing() -> None:
    topo, engine = world(1, 0)
    ag = AddressGroup(id="office", topic="p", addresses=("192.0.2.0/24", "198.51.100.7/32"),
                      version=1)
    group = topo.get(SecurityGroup, "g")
    assert group is not None
    with_rule = group.replace(version=2, rules=(rule("ag", "ingress", protocol="tcp",
                                                     port_range_min=443, port_range_max=443,
                                                     remote_address_group_id="office"),))
    engine.changed(topo.apply("securitygroup", "g", with_rule) or set())
    cid = conj_id("g", "ag")
    clause2 = [f for f in sg_flows(engine) if Conjunction(cid, 2, 3) in f.actions]
    assert clause2 == []  # the address group is not known here yet: nothing is allowed
    assert Conjunction(cid, 1, 3) in next(f for f in sg_flows(engine)
                                           if dict(f.match) == {"out_port": 10}).actions
    engine.changed(topo.apply("addressgroup", "office", ag) or set())
    clause2 = sorted((dict(f.match)["ipv4_src"] for f in sg_flows(engine)
                      if Conjunction(cid, 2, 3) in f.actions), key=str)
    assert clause2 == [("192.0.2.0", "255.255.255.0"), "198.51.100.7"]
    assert "ag:office" in topo.scopes_needed()
    assert "ag:office" in relevance_scopes(ag)


def test_a_port_of_stateless_groups_gets_no_conntrack() -> None:
    topo, engine = world(2, 2)
    group = topo.get(SecurityGroup, "g")
    assert group is not None
    engine.changed(topo.apply("securitygroup", "g", group.replace(
        version=2, stateful=False)) or set())
    flows = sg_flows(engine)
    assert not [f for f in flows if f.stage.endswith("_ct") and f.owner.startswith("port/")]
    assert not [f for f in flows if any(type(a).__name__ == "Ct" for a in f.actions)]
    verdicts = [f for f in flows if "conj_id" in dict(f.match)]
    assert verdicts and all("ct_state" not in dict(f.match) for f in verdicts)
