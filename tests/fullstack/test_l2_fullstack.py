"""Fullstack L2: 3 simulated nodes (netns + own OVS), real local controllers, real DB
servers, real pings between namespaced VMs over VXLAN, Geneve and GRE."""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from functools import partial

import pytest

from dragonflow.db.connect import open_nb
from dragonflow.model import Port
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import BR_INT, Node, Testbed
from tests.fixtures.wait import at_once, eventually

NODES = [("hv1", "10.255.0.11"), ("hv2", "10.255.0.12"), ("hv3", "10.255.0.13")]
TAG = {"vxlan": "v", "geneve": "g", "gre": "e"}


def make_deployment(bed: Testbed, url: str, in_process: bool) -> Deployment:
    nb = open_nb(url, root=f"/fs{uuid.uuid4().hex[:8]}/")
    dep = Deployment(bed, nb, url, in_process=in_process)
    for name, ip in NODES:
        dep.add_node(name, ip)
    return dep


@pytest.fixture(params=["etcd", "redis", "ovsdb"])
def dep(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """One df-controller PROCESS per node against a real etcd / redis server: the session's
    deployment on it (the test's networks and VMs are removed after it)."""
    shared = request.getfixturevalue(f"{request.param}_deployment")
    with shared.use(request) as d:
        yield d


@pytest.fixture(params=["etcd", "redis"])
def fresh_dep(request: pytest.FixtureRequest, testbed: Testbed) -> Iterator[Deployment]:
    """The same, built for the test alone: for a test that kills a controller or restarts
    ovs-vswitchd."""
    server = request.getfixturevalue(f"{request.param}_server")
    d = make_deployment(testbed, server.url, in_process=False)
    try:
        yield d
    finally:
        d.stop()
        d.nb.driver.close()



def flows_of(node: Node) -> set[str]:
    """The installed flows without their counters (comparable across reinstalls)."""
    out = node.ofctl("dump-flows", "--no-stats", BR_INT)
    return {line.strip() for line in out.splitlines() if "priority=" in line}


def test_ping_over_vxlan_geneve_gre_and_isolation(dep: Deployment) -> None:
    n = dep.bed.nodes
    vms = {}
    for i, ntype in enumerate(("vxlan", "geneve", "gre")):
        dep.network(f"net-{ntype}", ntype, 500 + i, "10.1.0.0/24")
        for j, (node, _) in enumerate(NODES):
            name = f"{TAG[ntype]}{j}"
            vms[name] = dep.vm(n[node], name, f"net-{ntype}", f"fa:16:3e:0{i}:00:0{j}",
                               f"10.1.0.{10 + j}")
    dep.wait_active([f"{v}-port" for v in vms], timeout=60)
    # every pair, across every node, in every network type (side by side)
    pairs = [(f"{ntype}{a}", f"{ntype}{b}") for ntype in TAG.values()
             for a in range(3) for b in range(3) if a != b]
    pinged = at_once({(src, dst): partial(vms[src].ping, vms[dst].ip, count=2, timeout=3)
                      for src, dst in pairs})
    assert [f"{src} -> {dst}" for (src, dst), ok in pinged.items() if not ok] == []
    # same CIDR, same IPs, other networks: never reachable (MACs differ per network)
    vms["v0"].exec("ip neigh flush dev eth0")
    for other in ("g1", "g2"):
        vms["v0"].exec(f"ip neigh replace {vms[other].ip} lladdr {vms[other].mac} dev eth0")
    reached = at_once({  # side by side: each waits out its timeout
        "10.1.0.99": partial(vms["v0"].ping, vms["g1"].ip.replace("11", "99"), timeout=1),
        "g1": partial(vms["v0"].ping, vms["g1"].ip, count=2, timeout=1.5),
        "g2": partial(vms["v0"].ping, vms["g2"].ip, count=2, timeout=1.5)})
    assert reached == {"10.1.0.99": False, "g1": False, "g2": False}, f"v0 reached {reached}"


def test_port_delete_stops_traffic_and_removes_flows(dep: Deployment) -> None:
    n = dep.bed.nodes
    dep.network("blue", "vxlan", 700, "10.2.0.0/24")
    a = dep.vm(n["hv1"], "a", "blue", "fa:16:3e:10:00:01", "10.2.0.11")
    b = dep.vm(n["hv2"], "b", "blue", "fa:16:3e:10:00:02", "10.2.0.12")
    dep.wait_active(["a-port", "b-port"])
    assert a.ping(b.ip, count=2)
    dep.nb.delete(Port, "b-port")
    eventually(lambda: not any(b.mac in f for f in flows_of(n["hv1"]) | flows_of(n["hv2"])),
               15)
    for node in ("hv1", "hv2"):
        assert not [f for f in flows_of(n[node]) if b.mac in f], f"flows of b left on {node}"
    a.exec(f"ip neigh replace {b.ip} lladdr {b.mac} dev eth0")
    assert not a.ping(b.ip, count=2, timeout=1.5)



def test_controller_kill9_loses_no_ping_and_restores_identical_flows(
        fresh_dep: Deployment) -> None:
    dep = fresh_dep  # its own: the test kills a controller
    n = dep.bed.nodes
    dep.network("blue", "geneve", 800, "10.3.0.0/24")
    a = dep.vm(n["hv1"], "a", "blue", "fa:16:3e:20:00:01", "10.3.0.11")
    b = dep.vm(n["hv2"], "b", "blue", "fa:16:3e:20:00:02", "10.3.0.12")
    dep.wait_active(["a-port", "b-port"])
    assert a.ping(b.ip, count=2)
    before = flows_of(n["hv1"])
    ping = subprocess.Popen(
        ["ip", "netns", "exec", a.netns, "ping", "-n", "-i", "0.02", "-c", "200", "-W", "1",
         b.ip], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)
        dep.kill_controller(n["hv1"], signal.SIGKILL)
        time.sleep(0.5)
        dep.start_controller(n["hv1"])
        out, _ = ping.communicate(timeout=60)
    finally:
        if ping.poll() is None:
            ping.kill()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    assert m.group(1) == m.group(2) == "200", out
    eventually(lambda: flows_of(n["hv1"]) == before, 20, poll=0.2)
    assert flows_of(n["hv1"]) == before


def test_vswitchd_restart_restores_flows_and_pings_resume(fresh_dep: Deployment) -> None:
    dep = fresh_dep  # its own: the test restarts an ovs-vswitchd
    n = dep.bed.nodes
    dep.network("blue", "vxlan", 900, "10.4.0.0/24")
    a = dep.vm(n["hv1"], "a", "blue", "fa:16:3e:30:00:01", "10.4.0.11")
    b = dep.vm(n["hv3"], "b", "blue", "fa:16:3e:30:00:02", "10.4.0.12")
    dep.wait_active(["a-port", "b-port"])
    before = flows_of(n["hv3"])
    dep.bed.restart_vswitchd(n["hv3"])
    eventually(lambda: flows_of(n["hv3"]) == before, 30, poll=0.2)
    assert flows_of(n["hv3"]) == before
    assert a.ping(b.ip, count=3, timeout=5)
