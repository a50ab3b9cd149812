"""Fullstack through the real Neutron API: the all-in-one (Neutron under gunicorn, ML2 ``df``
+ ``df-l3``, sqlite, noauth) on an etcd NB, three simulated nodes with df-controller
processes, driven with openstacksdk.

Creates two networks (VXLAN and Geneve) with one subnet each, a router on both subnets and
ports bound to the nodes (binding:host_id); a port stays DOWN, blocked by the ``DF``
provisioning entity, until a VM is plugged with it and its chassis reports the flows
installed; then pings within and across subnets. Unplugging a VM brings its port DOWN again.
Deleting everything through Neutron leaves no object in the NB and every node's flows as
they were before the topology existed.

Skipped when the neutron extra (neutron, gunicorn, openstacksdk) is missing, except under
CI=true, where that fails.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest

from dragonflow.model import Chassis, NbObject, Network, Port, Router, Subnet
from dragonflow.sim import neutron_aio
from dragonflow.sim.neutron_aio import NeutronStack
from dragonflow.sim.testbed import BR_INT, Node, Testbed
from tests.fixtures import unavailable

pytestmark = pytest.mark.fullstack

NODES = [("hv1", "10.255.0.11"), ("hv2", "10.255.0.12"), ("hv3", "10.255.0.13")]
NB_TABLES = ("network", "subnet", "port", "router", "securitygroup", "floatingip", "qospolicy")


def require_neutron() -> None:
    missing = neutron_aio.missing()
    if not missing:
        return
    unavailable(f"the Neutron all-in-one needs: {', '.join(missing)}")


@pytest.fixture
def stack(request: pytest.FixtureRequest, testbed: Testbed) -> Iterator[NeutronStack]:
    require_neutron()
    url = request.getfixturevalue("etcd_server").url
    s = NeutronStack.start(testbed, url, NODES, nb_root=f"/aio{uuid.uuid4().hex[:8]}/")
    failed = request.session.testsfailed
    try:
        yield s
    finally:
        if request.session.testsfailed > failed or os.environ.get("DF_AIO_LOG"):
            print(f"--- Neutron log (tail) ---\n{s.neutron.log.read_text()[-20000:]}")
        s.stop()


def flows_of(node: Node) -> set[str]:
    out = node.ofctl("dump-flows", "--no-stats", BR_INT)
    return {line.strip() for line in out.splitlines() if "priority=" in line}


def stable_flows(nodes: list[Node], timeout: float = 15.0) -> dict[str, set[str]]:
    """Every node's flows once they stopped changing for 0.5 s."""
    deadline = time.monotonic() + timeout
    last = {n.name: flows_of(n) for n in nodes}
    while True:
        time.sleep(0.5)
        now = {n.name: flows_of(n) for n in nodes}
        if now == last:
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"flows still changing after {timeout}s")
        last = now


def wait_flows(nodes: list[Node], expected: dict[str, set[str]], timeout: float = 20.0
               ) -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = {n.name: flows_of(n) for n in nodes}
        if now == expected:
            return
        if time.monotonic() > deadline:
            diff = {n: {"extra": sorted(now[n] - expected[n])[:10],
                        "missing": sorted(expected[n] - now[n])[:10]}
                    for n in now if now[n] != expected[n]}
            raise AssertionError(f"flows not back to the baseline after {timeout}s: {diff}")
        time.sleep(0.2)


def test_neutron_api_topology_pings_and_cleans_up(stack: NeutronStack) -> None:
    net_api, nb, bed = stack.conn.network, stack.dep.nb, stack.bed
    nodes = list(bed.nodes.values())
    assert {c.id for c in nb.list(Chassis)} == {n for n, _ in NODES}
    baseline = stable_flows(nodes)

    # --- topology through the Neutron API -------------------------------------------------
    blue = net_api.create_network(name="blue")  # project network type: vxlan
    red = net_api.create_network(name="red", provider_network_type="geneve")
    blue_sub = net_api.create_subnet(network_id=blue.id, name="blue-sub", ip_version=4,
                                     cidr="10.1.0.0/24")
    red_sub = net_api.create_subnet(network_id=red.id, name="red-sub", ip_version=4,
                                    cidr="10.2.0.0/24")
    router = net_api.create_router(name="r1")
    for sub in (blue_sub, red_sub):
        net_api.add_interface_to_router(router, subnet=sub.id)
    placement = {"b1": (blue, "hv1"), "b2": (blue, "hv2"), "r1": (red, "hv3"),
                 "r2": (red, "hv1")}
    ports = {vm: net_api.create_port(network_id=net.id, name=vm, binding_host_id=host,
                                     device_owner="compute:nova", device_id=f"vm-{vm}")
             for vm, (net, host) in placement.items()}
    for p in ports.values():
        assert (p.status, p.binding_vif_type) == ("DOWN", "ovs"), p
        assert p.binding_vif_details["datapath_type"] == "netdev"

    # --- the NB has what Neutron has --------------------------------------------------------
    for net, vni_type in ((blue, "vxlan"), (red, "geneve")):
        n = nb.get_or_raise(Network, net.id)
        assert (n.network_type, n.segmentation_id) == (vni_type, net.provider_segmentation_id)
    assert str(nb.get_or_raise(Subnet, red_sub.id).cidr) == "10.2.0.0/24"
    r = nb.get_or_raise(Router, router.id)
    assert {rp.network_id for rp in r.ports} == {blue.id, red.id}
    for vm, p in ports.items():
        nbp = nb.get_or_raise(Port, p.id)
        assert nbp.binding is not None and nbp.binding.chassis_id == placement[vm][1]
        assert (nbp.mac, str(nbp.fixed_ips[0].ip_address)) == (
            p.mac_address, p.fixed_ips[0]["ip_address"])

    # --- ACTIVE only once the chassis has the port's flows ---------------------------------
    time.sleep(1.0)  # a port without a VIF stays DOWN, held by the df provisioning block
    for p in ports.values():
        assert stack.status(p.id) == "DOWN"
        assert stack.neutron.provisioning_blocks(p.id) == {"DF"}
    vms = {vm: stack.plug(p.id, vm) for vm, p in ports.items()}
    stack.wait_active([p.id for p in ports.values()], timeout=60)
    for p in ports.values():
        assert stack.neutron.provisioning_blocks(p.id) == set()
        assert nb.get_or_raise(Port, p.id).status == "ACTIVE"

    # --- pings: same subnet across nodes, across subnets through the router ----------------
    pairs = [("b1", "b2"), ("b2", "b1"), ("r1", "r2"), ("b1", "r1"), ("r1", "b2"),
             ("r2", "b2"), ("b2", "r2")]
    for a, b in pairs:
        assert vms[a].ping(vms[b].ip, count=3, timeout=3), f"{a} -> {b}"
    assert vms["b1"].ping(blue_sub.gateway_ip, count=2), "b1 -> its router interface"
    assert vms["r1"].ping(blue_sub.gateway_ip, count=2), "r1 -> the other interface"

    # --- a VIF going away takes its port DOWN in Neutron -----------------------------------
    bed.remove_vm(vms.pop("r2"))
    stack.wait_status([ports["r2"].id], "DOWN", timeout=30)
    assert stack.neutron.provisioning_blocks(ports["r2"].id) == {"DF"}

    # --- delete everything through Neutron --------------------------------------------------
    for vm in list(vms):
        bed.remove_vm(vms.pop(vm))
    for p in ports.values():
        net_api.delete_port(p.id)
    for sub in (blue_sub, red_sub):
        net_api.remove_interface_from_router(router, subnet=sub.id)
    net_api.delete_router(router.id)
    for sub in (blue_sub, red_sub):
        net_api.delete_subnet(sub.id)
    for net in (blue, red):
        net_api.delete_network(net.id)
    for sg in net_api.security_groups():  # the project's default group, made on demand
        net_api.delete_security_group(sg.id)
    assert list(net_api.ports()) == [] and list(net_api.networks()) == []

    left: dict[str, list[str]] = {}
    for table in NB_TABLES:
        objs: list[NbObject] = nb.list(table)
        left[table] = [o.id for o in objs]
    assert left == {t: [] for t in NB_TABLES}
    wait_flows(nodes, baseline)
