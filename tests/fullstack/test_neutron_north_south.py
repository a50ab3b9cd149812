"""North-south through the real Neutron API (the all-in-one, openstacksdk) on three simulated
nodes with df-controller processes on etcd: every node maps physical network "ext" (the test
bed's physical switch, a host outside on it), hv2 and hv3 are gateway-capable.

An external flat network, a router with its gateway on it, two VMs on a project (VXLAN)
network: one reaches the outside by SNAT (the outside sees the gateway IP), the other gets a
floating IP -- the outside reaches it, Neutron reports the floating IP ACTIVE only once its
chassis installed the NAT, DOWN again when disassociated (and the outside no longer gets an
answer). A port on a VLAN provider network binds on a chassis that maps its physical network
and talks to a host on that VLAN; the router's gateway cleared: nothing leaves."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest

from dragonflow.sim import neutron_aio
from dragonflow.sim.neutron_aio import NeutronStack
from dragonflow.sim.probes import echo_source
from dragonflow.sim.testbed import Testbed
from tests.fixtures import unavailable
from tests.fixtures.wait import eventually

pytestmark = pytest.mark.fullstack

NODES = [("hv1", "10.255.0.11"), ("hv2", "10.255.0.12"), ("hv3", "10.255.0.13")]
OUTSIDE, VLAN_OUTSIDE = "172.24.4.100", "10.100.0.100"


@pytest.fixture
def stack(request: pytest.FixtureRequest, testbed: Testbed) -> Iterator[NeutronStack]:
    missing = neutron_aio.missing()
    if missing:
        unavailable(f"the Neutron all-in-one needs: {', '.join(missing)}")
    url = request.getfixturevalue("etcd_server").url
    s = NeutronStack.start(testbed, url, NODES, nb_root=f"/aio{uuid.uuid4().hex[:8]}/",
                           physnets=("ext",), gateways=("hv2", "hv3"))
    failed = request.session.testsfailed
    try:
        yield s
    finally:
        if request.session.testsfailed > failed or os.environ.get("DF_AIO_LOG"):
            print(f"--- Neutron log (tail) ---\n{s.neutron.log.read_text()[-20000:]}")
        s.stop()


def test_floating_ip_snat_and_vlan_through_the_neutron_api(stack: NeutronStack) -> None:
    net_api, bed = stack.conn.network, stack.bed
    outside = bed.add_outside("out", "ext", f"{OUTSIDE}/24")
    outside_vlan = bed.add_outside("outv", "ext", f"{VLAN_OUTSIDE}/24", vlan=150)

    public = net_api.create_network(name="public", is_router_external=True,
                                    provider_network_type="flat",
                                    provider_physical_network="ext")
    net_api.create_subnet(network_id=public.id, name="public-sub", ip_version=4,
                          cidr="172.24.4.0/24", gateway_ip="172.24.4.1",
                          is_dhcp_enabled=False,
                          allocation_pools=[{"start": "172.24.4.10", "end": "172.24.4.99"}])
    blue = net_api.create_network(name="blue")
    blue_sub = net_api.create_subnet(network_id=blue.id, name="blue-sub", ip_version=4,
                                     cidr="10.1.0.0/24")
    router = net_api.create_router(name="r1", external_gateway_info={"network_id": public.id})
    net_api.add_interface_to_router(router, subnet=blue_sub.id)
    gw_ip = router.external_gateway_info["external_fixed_ips"][0]["ip_address"]
    ports = {vm: net_api.create_port(network_id=blue.id, name=vm, binding_host_id=host,
                                     device_owner="compute:nova", device_id=f"vm-{vm}")
             for vm, host in (("a", "hv1"), ("b", "hv1"))}
    vms = {vm: stack.plug(p.id, vm) for vm, p in ports.items()}
    stack.wait_active([p.id for p in ports.values()], timeout=60)
    # the project's default security group lets in only its own members: ping from
    # anywhere, as an operator opens it for a floating IP
    default = next(net_api.security_groups(name="default", project_id=blue.project_id))
    net_api.create_security_group_rule(security_group_id=default.id, direction="ingress",
                                       ether_type="IPv4", protocol="icmp",
                                       remote_ip_prefix="0.0.0.0/0")

    # SNAT: a VM without a floating IP reaches the outside as the router's gateway IP
    assert eventually(lambda: vms["a"].ping(OUTSIDE, count=1, timeout=1), 20), "SNAT"
    assert echo_source(outside.netns, outside.dev, lambda: vms["a"].ping(OUTSIDE)) == gw_ip

    # a floating IP: DOWN until its chassis has the NAT, then the outside reaches b by it
    fip = net_api.create_ip(floating_network_id=public.id)
    assert net_api.get_ip(fip.id).status == "DOWN"
    addr = fip.floating_ip_address
    net_api.update_ip(fip, port_id=ports["b"].id)
    assert eventually(lambda: net_api.get_ip(fip.id).status == "ACTIVE", 20), \
        net_api.get_ip(fip.id)
    assert eventually(lambda: outside.ping(addr, count=1, timeout=1), 10), "outside -> FIP"
    assert echo_source(outside.netns, outside.dev, lambda: vms["b"].ping(OUTSIDE)) == addr
    net_api.update_ip(fip, port_id=None)
    assert eventually(lambda: net_api.get_ip(fip.id).status == "DOWN", 20)
    assert eventually(lambda: not outside.ping(addr, count=1, timeout=1), 10)

    # a VLAN provider network: the port binds (hv3 maps ext) and meets the host on VLAN 150
    vlan = net_api.create_network(name="v150", provider_network_type="vlan",
                                  provider_physical_network="ext",
                                  provider_segmentation_id=150)
    net_api.create_subnet(network_id=vlan.id, name="v150-sub", ip_version=4,
                          cidr="10.100.0.0/24", is_dhcp_enabled=False)
    vp = net_api.create_port(network_id=vlan.id, name="v", binding_host_id="hv3",
                             device_owner="compute:nova", device_id="vm-v")
    assert vp.binding_vif_type == "ovs", vp
    v = stack.plug(vp.id, "v")
    stack.wait_active([vp.id], timeout=60)
    assert eventually(lambda: v.ping(VLAN_OUTSIDE, count=1, timeout=1), 10)
    assert outside_vlan.ping(v.ip, count=2), "ping in: allowed by the rule above"

    # the router's gateway cleared: nothing leaves any more
    net_api.update_router(router, external_gateway_info={})
    time.sleep(0.5)
    assert eventually(lambda: not vms["a"].ping(OUTSIDE, count=1, timeout=1), 15)
