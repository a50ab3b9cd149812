"""Stateful security groups with real traffic: three nodes, df-controller processes on real
etcd and redis, VMs in different groups, TCP / UDP / ICMP over IPv4 and IPv6. Every cell of
the matrix (allowed or blocked) is asserted against the rules; established connections
survive an unrelated rule being added and stop when their rule is removed; replies and
related ICMP errors come back although no ingress rule names them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial

import pytest

from dragonflow.model import AddressGroup, Port, SecurityGroup, SecurityGroupRule
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.probes import probe, serve, talk
from dragonflow.sim.testbed import Vm
from tests.fixtures.wait import at_once, eventually


def rule(rid: str, direction: str, **kw: object) -> SecurityGroupRule:
    return SecurityGroupRule.from_dict({"id": rid, "direction": direction, **kw})


@pytest.fixture(params=["etcd", "redis"])
def dep(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """The session's three-node deployment on a real etcd / redis, with df-controller
    processes (each test on networks, groups and VMs of its own, removed after it)."""
    shared = request.getfixturevalue(f"{request.param}_deployment")
    with shared.use(request) as d:
        yield d


def test_traffic_matrix_follows_the_rules_statefully(dep: Deployment) -> None:
    n = dep.bed.nodes
    dep.network("sgm", "vxlan", 970, "10.97.0.0/24")
    dep.subnet("sgm", "sgm-subnet6", "fd00:97::/64", gateway_ip="fd00:97::1")
    any4, any6 = {"ethertype": "IPv4"}, {"ethertype": "IPv6"}
    dep.nb.create(SecurityGroup(id="app", topic=dep.topic, rules=(
        rule("app-e4", "egress", **any4),
        rule("app-22", "ingress", protocol="tcp", port_range_min=22, port_range_max=22,
             remote_ip_prefix="10.97.0.0/28"),
    )))
    dep.nb.create(AddressGroup(id="office", topic=dep.topic,
                               addresses=("10.97.0.20/32", "192.0.2.0/24")))
    dep.nb.create(SecurityGroup(id="web", topic=dep.topic, rules=(
        rule("web-e4", "egress", **any4), rule("web-e6", "egress", **any6),
        rule("web-80", "ingress", protocol="tcp", port_range_min=80, port_range_max=80),
        rule("web-80v6", "ingress", ethertype="IPv6", protocol="tcp", port_range_min=80,
             port_range_max=80),
        rule("web-icmp", "ingress", protocol="icmp", remote_group_id="web"),
        rule("web-443", "ingress", protocol="tcp", port_range_min=443, port_range_max=443,
             remote_address_group_id="office"),
        # a range as masked matches, from members of another group (remote group)
        rule("web-udp", "ingress", protocol="udp", port_range_min=5000, port_range_max=5003,
             remote_group_id="app"),
    )))
    v6: dict[str, str] = {}

    def vm(node: str, name: str, last: int, **kw: object) -> Vm:
        v6[name] = f"fd00:97::{last:x}"
        return dep.vm(n[node], name, "sgm", f"fa:16:3e:97:00:{last:02x}", f"10.97.0.{last}",
                      ipv6=f"fd00:97::{last:x}/64", ipv6_subnet="sgm-subnet6", **kw)

    w1 = vm("hv1", "w1", 10, security_groups=("web",))
    w2 = vm("hv2", "w2", 11, security_groups=("web",))
    a1 = vm("hv3", "a1", 12, security_groups=("app",))
    free = vm("hv1", "free", 20)  # port security on, no groups: nothing filtered
    off = vm("hv2", "off", 21, port_security=False)
    vms = [w1, w2, a1, free, off]
    dep.wait_active([f"{v.name}-port" for v in vms], timeout=60)
    servers = [serve(v, ["80", "22", "443", "8080", "u5001", "u6000"]) for v in vms]
    try:
        # everyone reaches everyone's neighbours' link layer first (ND/ARP are not filtered)
        assert eventually(lambda: w1.ping(free.ip), timeout=30), "the network never came up"
        want = {
            # (from, proto, to, port): expected
            ("free", "tcp", "w1", 80): "open",       # rule web-80: from anywhere
            ("free", "tcp", "w1", 8080): "timeout",  # no rule: dropped, not refused
            ("free", "tcp", "w1", 22): "timeout",
            ("a1", "tcp", "w1", 80): "open",
            ("w1", "tcp", "a1", 22): "open",         # 10.97.0.10 is in app-22's 10.97.0.0/28
            ("free", "tcp", "a1", 22): "timeout",    # 10.97.0.20 is not
            ("w1", "tcp", "a1", 80): "timeout",
            ("a1", "udp", "w1", 5001): "open",       # remote group app, range 5000-5003
            ("free", "udp", "w1", 5001): "timeout",  # not a member of app
            ("a1", "udp", "w1", 6000): "timeout",    # outside the range
            ("w1", "tcp", "free", 8080): "open",     # egress allowed; free filters nothing
            ("off", "tcp", "w2", 80): "open",
            ("off", "tcp", "w2", 8080): "timeout",
            ("w2", "tcp", "off", 8080): "open",      # the reply passes w2's ingress: stateful
            ("a1", "tcp", "free", 22): "open",
            ("free", "tcp", "w1", 443): "open",      # free (10.97.0.20) is in address group
            ("a1", "tcp", "w1", 443): "timeout",     # office; a1 is not
        }
        names = {v.name: v for v in vms}
        # one connection each, side by side (every "timeout" waits out its 1.5 s)
        got = at_once({k: partial(probe, names[k[0]], k[1], names[k[2]].ip, k[3])
                       for k in want})
        assert got == want, {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        more = at_once({
            # ICMP: only from members of web
            "w2 pings w1": lambda: w2.ping(w1.ip, count=2, timeout=3),
            "free pings w1": lambda: free.ping(w1.ip, count=2, timeout=2),
            "a1 pings w1": lambda: a1.ping(w1.ip, count=2, timeout=2),
            "w1 pings free": lambda: w1.ping(free.ip, count=2, timeout=3),  # the echo reply
            # IPv6: tcp 80 open to anyone, 8080 not; ND works through all of it
            "free v6 tcp w1:80": lambda: probe(free, "tcp", v6["w1"], 80),
            "free v6 tcp w1:8080": lambda: probe(free, "tcp", v6["w1"], 8080),
            "w1 v6 tcp free:8080": lambda: probe(w1, "tcp", v6["free"], 8080),
        })
        assert more == {"w2 pings w1": True, "free pings w1": False, "a1 pings w1": False,
                        "w1 pings free": True, "free v6 tcp w1:80": "open",
                        "free v6 tcp w1:8080": "timeout", "w1 v6 tcp free:8080": "open"}, more
        # related: w1 asks free's closed UDP port; the ICMP port unreachable comes back
        assert probe(w1, "udp", free.ip, 7777) == "refused"
    finally:
        for s in servers:
            s.kill()
            s.wait()


@pytest.mark.parametrize("dep", ["etcd"], indirect=True)  # the matrix runs on both
def test_established_connections_survive_an_added_rule_and_stop_with_their_rule(
        dep: Deployment) -> None:
    n = dep.bed.nodes
    dep.network("sge", "vxlan", 971, "10.98.0.0/24")
    base = (rule("e", "egress"),)
    dep.nb.create(SecurityGroup(id="srv", topic=dep.topic, rules=(
        *base, rule("allow-80", "ingress", protocol="tcp", port_range_min=80,
                    port_range_max=80))))
    srv = dep.vm(n["hv1"], "esrv", "sge", "fa:16:3e:98:00:10", "10.98.0.10",
                 security_groups=("srv",))
    cli = dep.vm(n["hv2"], "ecli", "sge", "fa:16:3e:98:00:11", "10.98.0.11")
    dep.wait_active(["esrv-port", "ecli-port"], timeout=60)
    server = serve(srv, ["80"])
    conversation = None
    try:
        assert eventually(lambda: probe(cli, "tcp", srv.ip, 80) == "open", timeout=30)
        conversation = talk(cli, srv.ip, 80, 9)
        time.sleep(2.0)
        added = time.time()
        group = dep.nb.get(SecurityGroup, "srv")
        assert group is not None
        dep.nb.update(group.replace(rules=(*group.rules, rule(
            "other", "ingress", protocol="udp", port_range_min=53, port_range_max=53))))
        time.sleep(2.5)
        removed = time.time()
        group = dep.nb.get(SecurityGroup, "srv")
        assert group is not None
        dep.nb.update(group.replace(rules=tuple(r for r in group.rules if r.id != "allow-80")))
        out, _ = conversation.communicate(timeout=30)
        lines = [(float(t), v) for t, v in (ln.split() for ln in out.splitlines())]
        before = [v for t, v in lines if t < removed]
        after = [v for t, v in lines if t > removed + 1.5]
        assert before and all(v == "ok" for v in before), out  # the added rule disturbed nothing
        assert any(t > added + 0.5 for t, _ in lines if t < removed), out
        assert after and all(v == "fail" for v in after), out  # its rule went: it stopped
        assert probe(cli, "tcp", srv.ip, 80) == "timeout"  # and no new one starts
    finally:
        for p in (server, conversation):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize("dep", ["redis"], indirect=True)  # the matrix runs on both
def test_a_ports_groups_and_port_security_change_on_live_traffic(dep: Deployment) -> None:
    """Moving a running VM to another group, and turning its port security off, take effect
    without any restart."""
    n = dep.bed.nodes
    dep.network("sgl", "vxlan", 972, "10.99.0.0/24")
    dep.nb.create(SecurityGroup(id="open80", topic=dep.topic, rules=(
        rule("o-e", "egress"), rule("o-80", "ingress", protocol="tcp", port_range_min=80,
                                    port_range_max=80))))
    dep.nb.create(SecurityGroup(id="open22", topic=dep.topic, rules=(
        rule("t-e", "egress"), rule("t-22", "ingress", protocol="tcp", port_range_min=22,
                                    port_range_max=22))))
    srv = dep.vm(n["hv1"], "lsrv", "sgl", "fa:16:3e:99:00:10", "10.99.0.10",
                 security_groups=("open80",))
    cli = dep.vm(n["hv3"], "lcli", "sgl", "fa:16:3e:99:00:11", "10.99.0.11")
    dep.wait_active(["lsrv-port", "lcli-port"], timeout=60)
    server = serve(srv, ["80", "22"])
    try:
        assert eventually(lambda: probe(cli, "tcp", srv.ip, 80) == "open", timeout=30)
        assert probe(cli, "tcp", srv.ip, 22) == "timeout"
        port = dep.nb.get(Port, "lsrv-port")
        assert port is not None
        port = dep.nb.update(port.replace(security_groups=("open22",)))
        assert eventually(lambda: probe(cli, "tcp", srv.ip, 22) == "open", timeout=20)
        assert probe(cli, "tcp", srv.ip, 80) == "timeout"
        dep.nb.update(port.replace(security_groups=(), port_security_enabled=False))
        assert eventually(lambda: probe(cli, "tcp", srv.ip, 80) == "open", timeout=20)
        assert probe(cli, "tcp", srv.ip, 22) == "open"
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("dep", ["etcd"], indirect=True)  # the matrix runs on both
def test_a_stateless_group_needs_rules_for_replies_too(dep: Deployment) -> None:
    """stateful=False: no conntrack. What its rules allow passes, and nothing else: the
    reply to a connection the VM opens is dropped unless an ingress rule names it --
    unlike a stateful group, where it comes back."""
    n = dep.bed.nodes
    dep.network("sgs", "vxlan", 973, "10.96.0.0/24")
    dep.nb.create(SecurityGroup(id="sl", topic=dep.topic, stateful=False, rules=(
        rule("sl-e", "egress"),
        rule("sl-80", "ingress", protocol="tcp", port_range_min=80, port_range_max=80))))
    srv = dep.vm(n["hv1"], "ssrv", "sgs", "fa:16:3e:96:00:10", "10.96.0.10",
                 security_groups=("sl",))
    cli = dep.vm(n["hv2"], "scli", "sgs", "fa:16:3e:96:00:11", "10.96.0.11")
    dep.wait_active(["ssrv-port", "scli-port"], timeout=60)
    servers = [serve(srv, ["80", "8080"]), serve(cli, ["8080"])]
    try:
        assert eventually(lambda: probe(cli, "tcp", srv.ip, 80) == "open", timeout=30)
        assert probe(cli, "tcp", srv.ip, 8080) == "timeout"
        assert probe(srv, "tcp", cli.ip, 8080) == "timeout"  # its SYN-ACK has no rule
        group = dep.nb.get(SecurityGroup, "sl")
        assert group is not None
        dep.nb.update(group.replace(rules=(*group.rules, rule(
            "sl-back", "ingress", protocol="tcp", port_range_min=1024, port_range_max=65535,
            remote_ip_prefix="10.96.0.11/32"))))
        assert eventually(lambda: probe(srv, "tcp", cli.ip, 8080) == "open", timeout=20)
    finally:
        for s in servers:
            s.kill()
            s.wait()
