"""NB model L3 tables: one test per validation rule of router and floating IP."""

from __future__ import annotations

import ipaddress
from typing import Any

from dragonflow.model import FloatingIP, Router, RouterPort
from tests.unit.test_model_samples import (
    bad,
    bad_replace,
    expect_invalid,
    get,
    lookup_in,
    refs_fail,
    world,
)


def second_port(**changes: Any) -> RouterPort:
    base = RouterPort(id="rp2", mac="fa:16:3e:00:01:02", network_id="ext",
                      cidrs=("172.24.4.2/24",))
    return base.replace(**changes)


def with_ports(*extra: RouterPort) -> dict[str, Any]:
    return {"ports": (get("router", "r1").ports[0], *extra)}


# --- router ---------------------------------------------------------------------------------
def test_router_port_ids_unique() -> None:
    bad_replace("router", "r1", "ports[1].id", "duplicate router port id 'rp1'",
                **with_ports(second_port(id="rp1")))


def test_router_ports_may_not_overlap() -> None:
    bad_replace("router", "r1", "ports[1].cidrs[0]", "10.0.0.129/25 overlaps 10.0.0.1/24",
                "router port 'rp1'", **with_ports(second_port(cidrs=("10.0.0.129/25",))))
    bad("router", "r1", "ports[0].cidrs[1]", "10.0.0.2/25", "overlaps 10.0.0.1/24")
    ok = get("router", "r1").replace(**with_ports(second_port()))
    assert [p.id for p in ok.ports] == ["rp1", "rp2"] and ok.port("rp2") == second_port()


def test_router_port_addresses() -> None:
    bad("router", "r1", "ports[0].cidrs[0]", "10.0.0.0/24", "network address")
    bad("router", "r1", "ports[0].cidrs[0]", "10.0.0.255/24", "broadcast address")
    bad("router", "r1", "ports[0].cidrs[0]", "10.0.0.1", "no '/prefix'")
    bad("router", "r1", "ports[0].cidrs[1]", "2001:db8::/64", "network address")
    bad("router", "r1", "ports[0].cidrs", [], "must not be empty")
    bad("router", "r1", "ports[0].cidrs[1]", "10.0.0.1/24", "duplicate")
    bad("router", "r1", "ports[0].mac", "01:00:00:00:00:01", "multicast")
    bad("router", "r1", "ports[0].subnet_ids[1]", "sub4", "duplicate")
    iface = get("router", "r1").ports[0].cidrs[0]
    assert iface == ipaddress.ip_interface("10.0.0.1/24")


def test_router_port_mac_unique_per_network() -> None:
    bad_replace("router", "r1", "ports[1].mac", "duplicate MAC fa:16:3e:00:01:01",
                **with_ports(second_port(mac="fa:16:3e:00:01:01", network_id="net1",
                                         cidrs=("10.5.0.1/24",))))
    same_mac_other_net = second_port(mac="fa:16:3e:00:01:01")
    assert get("router", "r1").replace(**with_ports(same_mac_other_net)).ports[1].mac


def test_router_routes() -> None:
    bad("router", "r1", "routes[0].nexthop", "10.9.0.1", "not inside any router port's CIDR")
    bad("router", "r1", "routes[0].destination", "10.20.0.1/16", "host bits")
    bad("router", "r1", "routes[0].nexthop", "2001:db8::9", "is IPv6 but the destination")
    bad_replace("router", "r1", "routes[1]", "duplicate",
                routes=({"destination": "10.20.0.0/16", "nexthop": "10.0.0.254"},) * 2)
    v6 = get("router", "r1").replace(
        routes=({"destination": "2001:db8:aa::/48", "nexthop": "2001:db8::fe"},))
    assert v6.routes[0].nexthop.version == 6


def test_router_gateway_fields() -> None:
    bad("router", "r1", "gateway.ip_address", "172.24.4", "not an IP address")
    bad("router", "r1", "gateway.enable_snat", "no", "must be a bool")
    bad("router", "r1", "gateway", "ext", "must be an object")
    gw = get("router", "r1").replace(gateway={"network_id": "ext", "ip_address": "172.24.4.9"})
    assert gw.gateway is not None and gw.gateway.enable_snat is True


def test_router_indexes_and_claims() -> None:
    router = get("router", "r1")
    assert router.index_entries() == [("network_id", "net1"), ("network_id", "ext"),
                                      ("subnet_id", "sub4"), ("subnet_id", "sub6")]
    assert router.claims() == [("mac/net1/fa:16:3e:00:01:01", "ports[0].mac")]
    bare = Router(id="r")
    assert (bare.index_entries(), bare.claims(), bare.distributed) == ([], [], True)


def test_router_refs() -> None:
    router = get("router", "r1")
    refs_fail(router, "ports[0].network_id", "network 'net1' does not exist",
              drop=("network", "net1"))
    refs_fail(router, "ports[0].subnet_ids[1]", "subnet 'sub6' does not exist",
              drop=("subnet", "sub6"))
    refs_fail(router, "gateway.network_id", "network 'ext' does not exist",
              drop=("network", "ext"))
    wrong_subnet = router.replace(ports=(router.ports[0].replace(subnet_ids=("ext-sub",)),))
    refs_fail(wrong_subnet, "ports[0].subnet_ids[0]", "belongs to network 'ext'")


def test_router_gateway_network_must_be_external() -> None:
    router = get("router", "r1")
    refs_fail(router, "gateway.network_id", "network 'ext' is not external",
              extra=(get("network", "ext").replace(external=False),))


# --- floating ip ----------------------------------------------------------------------------
def test_fip_fields() -> None:
    bad("floatingip", "fip1", "floating_ip_address", "172.24.4.300", "not an IP address")
    bad("floatingip", "fip1", "fixed_ip_address", "2001:db8::5", "is IPv6",
        "floating_ip_address 172.24.4.100 is IPv4")
    bad_replace("floatingip", "fip1", "fixed_ip_address", "requires port_id", port_id=None)
    bad("floatingip", "fip1", "status", "BUILD", "not one of DOWN|ACTIVE|ERROR")
    bad("floatingip", "fip1", "status", True, "not one of")
    unbound = get("floatingip", "fip1").replace(port_id=None, fixed_ip_address=None,
                                                router_id=None)
    assert unbound.index_entries() == [("floating_network_id", "ext")]
    unbound.validate_refs(lookup_in(world()))


def test_fip_status_defaults_to_down_and_round_trips() -> None:
    bare = FloatingIP(id="f2", floating_ip_address="172.24.4.101", floating_network_id="ext")
    assert bare.status == "DOWN"
    assert FloatingIP.from_dict(bare.to_dict()) == bare
    active = get("floatingip", "fip1")
    assert active.status == "ACTIVE"
    assert active.to_dict()["status"] == "ACTIVE"
    assert FloatingIP.from_dict(active.to_dict()) == active


def test_fip_indexes_and_claims() -> None:
    fip = get("floatingip", "fip1")
    assert fip.index_entries() == [("floating_network_id", "ext"), ("port_id", "port1"),
                                   ("router_id", "r1")]
    assert fip.claims() == [("fip/ext/172.24.4.100", "floating_ip_address")]


def test_fip_refs_exist() -> None:
    fip = get("floatingip", "fip1")
    refs_fail(fip, "floating_network_id", "network 'ext' does not exist",
              drop=("network", "ext"))
    refs_fail(fip, "port_id", "port 'port1' does not exist", drop=("port", "port1"))
    refs_fail(fip, "router_id", "router 'r1' does not exist", drop=("router", "r1"))


def test_fip_network_must_be_external() -> None:
    refs_fail(get("floatingip", "fip1").replace(floating_network_id="net1"),
              "floating_network_id", "network 'net1' is not external")


def test_fip_fixed_ip_must_be_the_ports() -> None:
    fip = get("floatingip", "fip1")
    refs_fail(fip.replace(fixed_ip_address="10.0.0.6"), "fixed_ip_address",
              "10.0.0.6 is not a fixed IP of port 'port1'", "10.0.0.5")
    refs_fail(fip.replace(fixed_ip_address=None), "fixed_ip_address",
              "required: port 'port1' has 2 fixed IPs")


def test_fip_fixed_ip_may_be_derived_from_a_single_ip_port() -> None:
    objs = world()
    port = objs[("port", "port1")]
    single = port.replace(fixed_ips=port.fixed_ips[:1])  # type: ignore[attr-defined]
    objs[("port", "port1")] = single
    fip = FloatingIP(id="f2", floating_ip_address="172.24.4.101", floating_network_id="ext",
                     port_id="port1")
    fip.validate_refs(lookup_in(objs))
    assert fip.mapped_ip(single) == ipaddress.ip_address("10.0.0.5")
    expect_invalid(lambda: fip.validate_refs(lookup_in(world())), "floatingip",
                   "fixed_ip_address", "has 2 fixed IPs")
