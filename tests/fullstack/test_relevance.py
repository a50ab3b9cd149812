"""A chassis follows the networks of its ports, whoever owns them -- not its ports'
projects: project B's VM on project A's shared network, and on an admin-owned network,
comes up and talks; two projects' networks routed by one router; a chassis whose last port
on a network goes away stops following that network and loses its flows. Controllers are
df-controller processes on a real redis and a real etcd."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from dragonflow.model import Port
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import BR_INT, Node
from tests.fixtures.wait import eventually


def vni_flows(node: Node, vni: int) -> int:
    """Flows of ``node`` that carry the network's VNI (tunnel in/out)."""
    out = node.ofctl("dump-flows", "--no-stats", BR_INT)
    return len(re.findall(rf"tun_id={vni:#x}\b|set_field:{vni:#x}->tun_id", out))


def status(node: Node) -> dict:
    return json.loads((node.rundir / f"{BR_INT}.df-status.json").read_text())


@pytest.fixture(params=["redis", "etcd"])
def dep(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """hv1, hv2, hv3: the session's deployment on a real redis / etcd (each test's objects
    carry their projects explicitly; its networks and VMs are removed after it)."""
    shared = request.getfixturevalue(f"{request.param}_deployment")
    with shared.use(request) as d:
        yield d


def test_other_projects_ports_on_shared_and_admin_networks(dep: Deployment) -> None:
    n = dep.bed.nodes
    # project A's network, shared with project B; and an admin-owned (provider-like) one
    dep.network("shared-a", "vxlan", 701, "10.7.0.0/24", topic="proj-a")
    dep.network("admin-net", "geneve", 702, "10.8.0.0/24", topic="admin")
    a1 = dep.vm(n["hv1"], "a1", "shared-a", "fa:16:3e:07:00:01", "10.7.0.11", topic="proj-a")
    b1 = dep.vm(n["hv2"], "b1", "shared-a", "fa:16:3e:07:00:02", "10.7.0.12", topic="proj-b")
    c1 = dep.vm(n["hv2"], "c1", "admin-net", "fa:16:3e:08:00:01", "10.8.0.11", topic="proj-c")
    c2 = dep.vm(n["hv3"], "c2", "admin-net", "fa:16:3e:08:00:02", "10.8.0.12", topic="proj-b")
    dep.wait_active(["a1-port", "b1-port", "c1-port", "c2-port"], timeout=60)
    assert eventually(lambda: b1.ping("10.7.0.11", count=1, timeout=1), 20)
    assert a1.ping("10.7.0.12", count=2, timeout=3)
    assert eventually(lambda: c1.ping("10.8.0.12", count=1, timeout=1), 20)
    assert c2.ping("10.8.0.11", count=2, timeout=3)
    assert not a1.ping("10.8.0.11", count=1, timeout=1)  # different networks stay apart


def test_router_between_two_projects_networks(dep: Deployment) -> None:
    n = dep.bed.nodes
    dep.network("net-a", "vxlan", 711, "10.11.0.0/24", topic="proj-a")
    dep.network("net-b", "vxlan", 712, "10.12.0.0/24", topic="proj-b")
    a = dep.vm(n["hv1"], "ra", "net-a", "fa:16:3e:11:00:01", "10.11.0.11",
               gateway="10.11.0.1", topic="proj-a")
    b = dep.vm(n["hv3"], "rb", "net-b", "fa:16:3e:12:00:01", "10.12.0.11",
               gateway="10.12.0.1", topic="proj-b")
    dep.router("r-ab", [("net-a", ["10.11.0.1/24"]), ("net-b", ["10.12.0.1/24"])],
               topic="admin")
    dep.wait_active(["ra-port", "rb-port"], timeout=60)
    assert eventually(lambda: a.ping("10.12.0.11", count=1, timeout=1), 20)
    assert b.ping("10.11.0.11", count=2, timeout=3)


def test_chassis_stops_following_a_network_it_no_longer_hosts(dep: Deployment) -> None:
    n = dep.bed.nodes
    dep.network("net-x", "vxlan", 721, "10.21.0.0/24", topic="proj-x")
    dep.network("net-y", "vxlan", 722, "10.22.0.0/24", topic="proj-x")
    x1 = dep.vm(n["hv1"], "x1", "net-x", "fa:16:3e:21:00:01", "10.21.0.11", topic="proj-x")
    dep.vm(n["hv2"], "x2", "net-x", "fa:16:3e:21:00:02", "10.21.0.12", topic="proj-x")
    dep.vm(n["hv2"], "y2", "net-y", "fa:16:3e:22:00:02", "10.22.0.12", topic="proj-x")
    dep.vm(n["hv3"], "y3", "net-y", "fa:16:3e:22:00:03", "10.22.0.13", topic="proj-x")
    dep.wait_active(["x1-port", "x2-port", "y2-port", "y3-port"], timeout=60)
    assert eventually(lambda: x1.ping("10.21.0.12", count=1, timeout=1), 20)
    hv1, hv2 = n["hv1"], n["hv2"]
    assert vni_flows(hv1, 721) > 0 and vni_flows(hv1, 722) == 0  # hv1 never hosted net-y
    assert vni_flows(hv2, 722) > 0
    assert eventually(lambda: "net:net-y" in status(hv2)["following"], 10)
    # the last port of net-y on hv2 goes away: hv2 stops following net-y
    dep.nb.delete(Port, "y2-port")
    assert eventually(lambda: vni_flows(hv2, 722) == 0, 20), hv2.ofctl("dump-flows", BR_INT)
    # (the status file is written after the flows are in: read it until it has caught up)
    assert eventually(lambda: "net:net-y" not in status(hv2)["following"], 10)
    assert "net:net-x" in status(hv2)["following"]
    assert vni_flows(hv2, 721) > 0  # net-x still hosted there
    # and a later change on net-y (a new port on hv3) reaches nothing on hv2
    dep.vm(n["hv3"], "y4", "net-y", "fa:16:3e:22:00:04", "10.22.0.14", topic="proj-x")
    dep.wait_active(["y4-port"], timeout=30)
    time.sleep(1)
    assert vni_flows(hv2, 722) == 0
    assert "fa:16:3e:22:00:04" not in hv2.ofctl("dump-flows", BR_INT)
