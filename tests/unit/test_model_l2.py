"""NB model L2 tables: one test per validation rule of chassis, network, subnet and port."""

from __future__ import annotations

import ipaddress

import pytest

from dragonflow.model import Chassis, Network, Port, Subnet, ValidationError
from tests.unit.test_model_samples import (
    bad,
    bad_replace,
    expect_invalid,
    get,
    lookup_in,
    mutated,
    refs_fail,
    world,
)


# --- chassis --------------------------------------------------------------------------------
def test_chassis_ip() -> None:
    bad("chassis", "hv1", "ip", "192.0.2.300", "not an IP address")
    expect_invalid(lambda: Chassis.from_dict(mutated(get("chassis", "hv1"), "ip", delete=True)),
                   "chassis", "ip", "required")
    assert get("chassis", "hv1").replace(ip="2001:db8::11").ip.version == 6
    bad("chassis", "hv1", "external_host_ip", "host", "not an IP address")
    assert get("chassis", "hv1").replace(external_host_ip=None).external_host_ip is None
    bad("chassis", "hv1", "ip", "fe80::1%eth0", "scoped")


def test_chassis_tunnel_types() -> None:
    bad("chassis", "hv1", "tunnel_types", [], "must not be empty")
    bad("chassis", "hv1", "tunnel_types[1]", "stt", "not one of vxlan|geneve|gre")
    bad("chassis", "hv1", "tunnel_types[1]", "geneve", "duplicate")


def test_chassis_bridge_mappings() -> None:
    bad_replace("chassis", "hv1", "bridge_mappings.p", "duplicate key",
                bridge_mappings=[("p", "br-a"), ("p", "br-b")])
    bad("chassis", "hv1", "bridge_mappings.physnet1", "br phy", "whitespace")
    bad_replace("chassis", "hv1", "bridge_mappings.x y", "bad key", "whitespace",
                bridge_mappings={"x y": "br"})


def test_chassis_topic() -> None:
    bad_replace("chassis", "hv1", "topic", "must be empty for chassis", topic="tenant-1")


# --- network --------------------------------------------------------------------------------
def test_network_type() -> None:
    bad("network", "net1", "network_type", "vxlan2", "not one of")


@pytest.mark.parametrize("kind,seg,reason", [
    ("vxlan", None, "required for network_type 'vxlan'"),
    ("geneve", None, "required"),
    ("vlan", None, "required"),
    ("vxlan", 2**24, "out of range 1..16777215"),
    ("geneve", 2**24, "out of range 1..16777215"),
    ("gre", 2**32, "out of range 1..4294967295"),
    ("vlan", 4095, "out of range 1..4094"),
    ("vlan", 0, "out of range"),
    ("flat", 5, "must be null for network_type 'flat'"),
    ("local", 5, "must be null for network_type 'local'"),
])
def test_network_segmentation_id(kind: str, seg: int | None, reason: str) -> None:
    physnet = "physnet1" if kind in ("vlan", "flat") else None
    expect_invalid(lambda: Network(id="n", network_type=kind, segmentation_id=seg,
                                   physical_network=physnet), "network", "segmentation_id",
                   reason)


def test_network_segmentation_ranges_accept_limits() -> None:
    assert Network(id="n", network_type="gre", segmentation_id=2**32 - 1).segmentation_id
    assert Network(id="n", network_type="vlan", segmentation_id=4094,
                   physical_network="p").segmentation_id == 4094
    assert Network(id="n", network_type="local").segmentation_id is None


@pytest.mark.parametrize("kind,seg,physnet,reason", [
    ("vlan", 10, None, "required for network_type 'vlan'"),
    ("flat", None, None, "required for network_type 'flat'"),
    ("vxlan", 10, "physnet1", "must be null for network_type 'vxlan'"),
    ("local", None, "physnet1", "must be null for network_type 'local'"),
])
def test_network_physical_network(kind: str, seg: int | None, physnet: str | None,
                                  reason: str) -> None:
    expect_invalid(lambda: Network(id="n", network_type=kind, segmentation_id=seg,
                                   physical_network=physnet), "network", "physical_network",
                   reason)


def test_network_mtu_and_defaults() -> None:
    bad("network", "net1", "mtu", 67, "out of range 68..65535")
    bad("network", "net1", "mtu", 65536, "out of range 68..65535")
    net = Network(id="n", network_type="geneve", segmentation_id=5)
    assert (net.mtu, net.external, net.unique_key, net.topic) == (1450, False, 0, "")


def test_network_qos_reference_and_index() -> None:
    ext = get("network", "ext")
    assert ext.index_entries() == [("qos_policy_id", "qos1")]
    assert get("network", "net1").index_entries() == []
    refs_fail(ext, "qos_policy_id", "qospolicy 'qos1' does not exist", drop=("qospolicy", "qos1"))


# --- subnet ---------------------------------------------------------------------------------
def test_subnet_cidr_must_be_a_network_address() -> None:
    bad("subnet", "sub4", "cidr", "10.0.0.5/24", "'10.0.0.5/24' has host bits set", "10.0.0.0/24")
    bad("subnet", "sub6", "cidr", "2001:db8::5/64", "host bits")
    bad("subnet", "sub4", "cidr", "10.0.0.0", "no '/prefix'")
    bad("subnet", "sub4", "cidr", "10.0.0.0/33", "not a CIDR")


@pytest.mark.parametrize("oid,gateway,reason", [
    ("sub4", "10.0.1.1", "not inside 10.0.0.0/24"),
    ("sub4", "10.0.0.0", "network address"),
    ("sub4", "10.0.0.255", "broadcast address"),
    ("sub4", "2001:db8::1", "is IPv6 but 10.0.0.0/24 is IPv4"),
    ("sub6", "2001:db9::1", "not inside"),
])
def test_subnet_gateway_ip(oid: str, gateway: str, reason: str) -> None:
    bad("subnet", oid, "gateway_ip", gateway, reason)


def test_subnet_gateway_optional_and_tiny_subnets() -> None:
    assert get("subnet", "sub4").replace(gateway_ip=None).gateway_ip is None
    p2p = Subnet(id="s", network_id="n", cidr="10.9.0.0/31", gateway_ip="10.9.0.0")
    assert p2p.gateway_ip == ipaddress.ip_address("10.9.0.0")


def test_subnet_dhcp_ip_and_dns() -> None:
    bad("subnet", "sub4", "dhcp_ip", "10.0.5.2", "not inside 10.0.0.0/24")
    bad("subnet", "sub4", "dns_nameservers[1]", "8.8.8.8", "duplicate")
    bad("subnet", "sub4", "enable_dhcp", "true", "must be a bool")


def test_subnet_host_routes() -> None:
    bad_replace("subnet", "sub4", "host_routes[0].destination", "IPv6 route in an IPv4",
                host_routes=({"destination": "2001:db8::/64", "nexthop": "2001:db8::1"},))
    bad("subnet", "sub4", "host_routes[0].nexthop", "2001:db8::1", "is IPv6 but the destination")
    bad("subnet", "sub4", "host_routes[0].destination", "192.168.1.1/16", "host bits")


def test_subnet_ipv6_modes() -> None:
    bad("subnet", "sub4", "ipv6_ra_mode", "slaac", "must be null for an IPv4 subnet")
    bad("subnet", "sub4", "ipv6_address_mode", "slaac", "must be null for an IPv4 subnet")
    bad("subnet", "sub6", "ipv6_ra_mode", "auto", "not one of slaac|dhcpv6-stateful")
    bad("subnet", "sub6", "ipv6_address_mode", "dhcpv6-stateful", "must be equal")
    one = get("subnet", "sub6").replace(ipv6_ra_mode=None, ipv6_address_mode="dhcpv6-stateless")
    assert one.ipv6_address_mode == "dhcpv6-stateless"


def test_subnet_refs_and_index() -> None:
    sub = get("subnet", "sub4")
    assert sub.index_entries() == [("network_id", "net1")]
    assert sub.references() == [("network", "net1", "network_id")]
    refs_fail(sub, "network_id", "network 'net1' does not exist", drop=("network", "net1"))


# --- port -----------------------------------------------------------------------------------
def test_port_mac() -> None:
    bad("port", "port1", "mac", "fa:16:3e:00:00", "not a MAC address")
    bad("port", "port1", "mac", "fa-16-3e-00-00-01", "not a MAC address")
    bad("port", "port1", "mac", "01:00:5e:00:00:01", "multicast")
    bad("port", "port1", "mac", "ff:ff:ff:ff:ff:ff", "multicast")
    bad("port", "port1", "mac", "00:00:00:00:00:00", "all-zero")


def test_port_duplicate_fixed_ip() -> None:
    bad("port", "port1", "fixed_ips[1].ip_address", "10.0.0.5", "duplicate IP 10.0.0.5")
    bad_replace("port", "port1", "fixed_ips[1].ip_address", "duplicate IP 2001:db8::5",
                fixed_ips=({"subnet_id": "sub6", "ip_address": "2001:db8::5"},
                           {"subnet_id": "sub6", "ip_address": "2001:DB8:0::5"}))


def test_port_security_disabled_needs_no_groups_or_pairs() -> None:
    bad_replace("port", "port1", "security_groups", "port_security_enabled is false",
                port_security_enabled=False)
    bad_replace("port", "port1", "allowed_address_pairs", "port_security_enabled is false",
                port_security_enabled=False, security_groups=())
    open_port = get("port", "port1").replace(port_security_enabled=False, security_groups=(),
                                             allowed_address_pairs=())
    assert not open_port.port_security_enabled


def test_port_list_fields() -> None:
    bad("port", "port1", "security_groups[1]", "sg1", "duplicate value 'sg1'")
    bad("port", "port1", "allowed_address_pairs[1].ip_address", "10.1.0.1/24", "host bits")
    bad("port", "port1", "allowed_address_pairs[0].mac", "03:00:00:00:00:01", "multicast")
    bad("port", "port1", "allowed_address_pairs[1]", {"ip_address": "10.0.0.100/32",
                                                      "mac": "fa:16:3e:00:00:99"}, "duplicate")
    bad_replace("port", "port1", "extra_dhcp_opts[1].opt_name", "duplicate option 'x' for IPv6",
                extra_dhcp_opts=({"opt_name": "x", "opt_value": "1", "ip_version": 6},
                                 {"opt_name": "x", "opt_value": "2", "ip_version": 6}))
    bad("port", "port1", "extra_dhcp_opts[0].opt_value", 5, "must be a string")
    bad("port", "port1", "binding.chassis_id", "", "must not be empty")
    bad("port", "port1", "device_id", "a/b", "'/'")


def test_port_indexes_and_claims() -> None:
    port = get("port", "port1")
    assert port.index_entries() == [
        ("network_id", "net1"), ("subnet_id", "sub4"), ("subnet_id", "sub6"),
        ("security_group", "sg1"), ("security_group", "sg2"), ("chassis", "hv1"),
        ("qos_policy_id", "qos1"), ("device_id", "vm-a-uuid")]
    assert port.claims() == [("ip/sub4/10.0.0.5", "fixed_ips[0].ip_address"),
                             ("ip/sub6/2001:db8::5", "fixed_ips[1].ip_address"),
                             ("mac/net1/fa:16:3e:00:00:01", "mac")]
    bare = Port(id="p", network_id="n", mac="fa:16:3e:00:00:02")
    assert bare.index_entries() == [("network_id", "n")]
    assert (bare.status, bare.admin_state_up, bare.binding) == ("DOWN", True, None)


def test_port_refs_exist() -> None:
    port = get("port", "port1")
    refs_fail(port, "network_id", "network 'net1' does not exist", drop=("network", "net1"))
    refs_fail(port, "fixed_ips[1].subnet_id", "subnet 'sub6' does not exist",
              drop=("subnet", "sub6"))
    refs_fail(port, "security_groups[1]", "securitygroup 'sg2' does not exist",
              drop=("securitygroup", "sg2"))
    refs_fail(port, "qos_policy_id", "qospolicy 'qos1' does not exist",
              drop=("qospolicy", "qos1"))


def test_port_subnet_must_belong_to_network() -> None:
    port = get("port", "port1").replace(
        fixed_ips=({"subnet_id": "ext-sub", "ip_address": "172.24.4.5"},))
    refs_fail(port, "fixed_ips[0].subnet_id", "belongs to network 'ext'", "'net1'")


@pytest.mark.parametrize("ip,reason", [
    ("10.0.1.5", "not inside 10.0.0.0/24"),
    ("10.0.0.0", "network address"),
    ("10.0.0.255", "broadcast address"),
])
def test_port_ip_must_be_a_host_of_its_subnet(ip: str, reason: str) -> None:
    port = get("port", "port1")
    port = port.replace(fixed_ips=(port.fixed_ips[0].replace(ip_address=ip),))
    refs_fail(port, "fixed_ips[0].ip_address", reason, "subnet 'sub4'")


def test_port_ipv6_subnet_router_anycast_only_for_router_ports() -> None:
    port = get("port", "port1")
    port = port.replace(fixed_ips=(port.fixed_ips[1].replace(ip_address="2001:db8::"),))
    refs_fail(port, "fixed_ips[0].ip_address", "network address")
    router_port = port.replace(device_owner="network:router_interface",
                               security_groups=(), port_security_enabled=False,
                               allowed_address_pairs=())
    router_port.validate_refs(lookup_in(world()))


def test_port_lookup_of_wrong_type_is_an_error() -> None:
    objs = world()
    objs[("subnet", "sub4")] = get("network", "net1")
    expect_invalid(lambda: get("port", "port1").validate_refs(lookup_in(objs)), "port",
                   "fixed_ips[0].subnet_id", "returned a Network")


def test_ipv6_gateway_may_be_link_local_or_the_subnet_router_anycast_address() -> None:
    S = Subnet
    for gw in ("fe80::1", "2001:db8::"):
        s = S.from_dict({"id": "s6", "network_id": "n", "cidr": "2001:db8::/64",
                         "gateway_ip": gw})
        assert str(s.gateway_ip) == gw
    with pytest.raises(ValidationError) as ei:  # IPv4 keeps the strict rule
        S.from_dict({"id": "s4", "network_id": "n", "cidr": "10.0.0.0/24",
                     "gateway_ip": "10.0.0.0"})
    assert ei.value.field == "gateway_ip"
