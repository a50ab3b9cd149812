"""Neutron dicts -> NB objects, field by field (pure: runs without neutron installed)."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import pytest

from dragonflow.model import (
    AddressGroup,
    AddressPair,
    Binding,
    DhcpOpt,
    FixedIp,
    Gateway,
    HostRoute,
    Network,
    Port,
    Route,
    RouterPort,
    SecurityGroupRule,
    ValidationError,
)
from dragonflow.neutron import translate
from dragonflow.neutron.translate import Untranslatable

NET = "11111111-1111-1111-1111-111111111111"
SUB = "22222222-2222-2222-2222-222222222222"
SUB6 = "23232323-2323-2323-2323-232323232323"
PORT = "33333333-3333-3333-3333-333333333333"
SG = "44444444-4444-4444-4444-444444444444"
SG2 = "45454545-4545-4545-4545-454545454545"
ROUTER = "55555555-5555-5555-5555-555555555555"
EXT = "66666666-6666-6666-6666-666666666666"
AG = "77777777-7777-7777-7777-777777777777"


def net(**kw: Any) -> dict[str, Any]:
    return {"id": NET, "project_id": "proj", "name": "n1", "revision_number": 4, "mtu": 1450,
            "router:external": False, "provider:network_type": "vxlan",
            "provider:physical_network": None, "provider:segmentation_id": 77} | kw


@pytest.mark.parametrize(("kind", "seg", "physnet"), [
    ("vxlan", 77, None), ("geneve", 5000, None), ("gre", 2**32 - 1, None),
    ("vlan", 100, "physnet1"), ("flat", None, "physnet1"), ("local", None, None)])
def test_network_every_type(kind: str, seg: int | None, physnet: str | None) -> None:
    n = translate.network(net(**{"provider:network_type": kind, "provider:segmentation_id": seg,
                                 "provider:physical_network": physnet, "mtu": 1500,
                                 "router:external": True}))
    assert n == Network(id=NET, topic="proj", name="n1", version=5, network_type=kind,
                        segmentation_id=seg, physical_network=physnet, mtu=1500, external=True)


def test_network_multi_segment_keeps_first_supported(caplog: pytest.LogCaptureFixture) -> None:
    segments = [{"provider:network_type": "opflex", "provider:segmentation_id": None,
                 "provider:physical_network": None},
                {"provider:network_type": "vlan", "provider:segmentation_id": 9,
                 "provider:physical_network": "physnet2"}]
    with caplog.at_level(logging.WARNING):
        n = translate.network(net(segments=segments))
    assert (n.network_type, n.segmentation_id, n.physical_network) == ("vlan", 9, "physnet2")
    assert "2 segments" in caplog.text


def test_network_unsupported_type_names_the_field() -> None:
    with pytest.raises(Untranslatable, match="provider:network_type.*'opflex'"):
        translate.network(net(**{"provider:network_type": "opflex"}))
    with pytest.raises(Untranslatable, match="no segment of a supported type"):
        translate.network(net(segments=[{"provider:network_type": "opflex"}]))


def test_version_is_revision_plus_one() -> None:
    assert translate.network(net(revision_number=0)).version == 1  # NB versions start at 1
    d = net()
    del d["revision_number"]  # no revisions plugin: no order known
    assert translate.network(d).version == 0


def test_subnet_fields() -> None:
    s = translate.subnet({
        "id": SUB, "project_id": "proj", "name": "s1", "revision_number": 2,
        "network_id": NET, "cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.1",
        "enable_dhcp": False, "dns_nameservers": ["8.8.8.8", "1.1.1.1"],
        "host_routes": [{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}],
        "ipv6_ra_mode": None, "ipv6_address_mode": None, "ip_version": 4})
    assert (s.id, s.topic, s.name, s.version, s.network_id) == (SUB, "proj", "s1", 3, NET)
    assert s.cidr == ipaddress.ip_network("10.0.0.0/24")
    assert s.gateway_ip == ipaddress.ip_address("10.0.0.1")
    assert s.enable_dhcp is False
    assert s.dns_nameservers == (ipaddress.ip_address("8.8.8.8"),
                                 ipaddress.ip_address("1.1.1.1"))
    assert s.host_routes == (HostRoute(destination="192.168.0.0/16", nexthop="10.0.0.254"),)
    v6 = translate.subnet({"id": SUB6, "network_id": NET, "cidr": "fd00::/64",
                           "gateway_ip": "fd00::1", "ipv6_ra_mode": "slaac",
                           "ipv6_address_mode": "slaac", "project_id": "proj"})
    assert (v6.ipv6_ra_mode, v6.ipv6_address_mode, v6.ip_version) == ("slaac", "slaac", 6)


def neutron_port(**kw: Any) -> dict[str, Any]:
    return {
        "id": PORT, "project_id": "proj", "name": "vm-a", "revision_number": 7,
        "network_id": NET, "mac_address": "FA:16:3E:00:00:01", "admin_state_up": True,
        "status": "DOWN", "device_owner": "compute:nova", "device_id": "vm-uuid",
        "fixed_ips": [{"subnet_id": SUB, "ip_address": "10.0.0.5"},
                      {"subnet_id": SUB6, "ip_address": "fd00::5"}],
        "binding:host_id": "hv1", "security_groups": [SG, SG2],
        "port_security_enabled": True,
        "allowed_address_pairs": [
            {"ip_address": "10.0.0.100", "mac_address": "fa:16:3e:00:00:01"},
            {"ip_address": "10.1.0.0/24", "mac_address": "fa:16:3e:aa:00:01"}],
        "extra_dhcp_opts": [
            {"opt_name": "tftp-server", "opt_value": "10.0.0.9", "ip_version": 4},
            {"opt_name": "bootfile-name", "opt_value": "pxe.0", "ip_version": 6}],
    } | kw


def test_port_fields() -> None:
    p = translate.port(neutron_port())
    assert isinstance(p, Port)
    assert (p.id, p.topic, p.name, p.version, p.network_id) == (PORT, "proj", "vm-a", 8, NET)
    assert p.mac == "fa:16:3e:00:00:01"
    assert p.fixed_ips == (FixedIp(subnet_id=SUB, ip_address="10.0.0.5"),
                           FixedIp(subnet_id=SUB6, ip_address="fd00::5"))
    assert p.binding == Binding(kind="chassis", chassis_id="hv1")
    assert (p.device_owner, p.device_id, p.admin_state_up) == ("compute:nova", "vm-uuid", True)
    assert p.security_groups == (SG, SG2)
    assert p.port_security_enabled is True
    assert p.allowed_address_pairs == (
        AddressPair(ip_address="10.0.0.100/32", mac="fa:16:3e:00:00:01"),
        AddressPair(ip_address="10.1.0.0/24", mac="fa:16:3e:aa:00:01"))
    assert p.extra_dhcp_opts == (DhcpOpt(opt_name="tftp-server", opt_value="10.0.0.9"),
                                 DhcpOpt(opt_name="bootfile-name", opt_value="pxe.0",
                                         ip_version=6))
    assert p.status == "DOWN"  # Neutron's status is not copied: controllers own it


def test_port_unbound_and_without_port_security() -> None:
    p = translate.port(neutron_port(**{"binding:host_id": "", "port_security_enabled": False,
                                       "security_groups": [], "allowed_address_pairs": []}))
    assert p is not None and p.binding is None and p.port_security_enabled is False
    assert p.security_groups == () and p.allowed_address_pairs == ()


def test_router_interface_ports_are_not_nb_ports() -> None:
    for owner in translate.ROUTER_INTERFACE_OWNERS:
        assert translate.port(neutron_port(device_owner=owner)) is None
    gw = translate.port(neutron_port(device_owner="network:router_gateway"))
    assert gw is not None and gw.is_router_port


def test_port_bad_value_names_the_field() -> None:
    with pytest.raises(ValidationError, match="fixed_ips"):
        translate.port(neutron_port(fixed_ips=[{"subnet_id": SUB, "ip_address": "10.0.0.5"},
                                               {"subnet_id": SUB, "ip_address": "10.0.0.5"}]))


def rule(**kw: Any) -> dict[str, Any]:
    return {"id": "r1", "direction": "ingress", "ethertype": "IPv4", "protocol": None,
            "port_range_min": None, "port_range_max": None, "remote_ip_prefix": None,
            "remote_group_id": None, "remote_address_group_id": None,
            "normalized_cidr": None} | kw


def test_security_group_rules() -> None:
    rules = [
        rule(id="a", protocol="tcp", port_range_min=22, port_range_max=22,
             remote_ip_prefix="10.0.0.7/24", normalized_cidr="10.0.0.0/24"),
        rule(id="b", protocol="icmp", port_range_min=8, port_range_max=0,
             remote_group_id=SG2),
        rule(id="c", ethertype="IPv6", protocol="ipv6-icmp", direction="egress"),
        rule(id="d", protocol="17"),
        rule(id="e", protocol="vrrp"),
        rule(id="f", remote_address_group_id=AG),
        rule(id="g", protocol="any", remote_group_id=SG),
    ]
    sg = translate.security_group({"id": SG, "project_id": "proj", "name": "web",
                                   "revision_number": 3, "security_group_rules": rules})
    assert (sg.id, sg.topic, sg.name, sg.version) == (SG, "proj", "web", 4)
    assert sg.rules == (
        SecurityGroupRule(id="a", direction="ingress", protocol="tcp", port_range_min=22,
                          port_range_max=22, remote_ip_prefix="10.0.0.0/24"),
        SecurityGroupRule(id="b", direction="ingress", protocol="icmp", port_range_min=8,
                          port_range_max=0, remote_group_id=SG2),
        SecurityGroupRule(id="c", direction="egress", ethertype="IPv6", protocol="icmpv6"),
        SecurityGroupRule(id="d", direction="ingress", protocol="udp"),
        SecurityGroupRule(id="e", direction="ingress", protocol=112),
        SecurityGroupRule(id="f", direction="ingress", remote_address_group_id=AG),
        SecurityGroupRule(id="g", direction="ingress", remote_group_id=SG),
    )
    assert sg.remote_groups() == [SG2]
    assert sg.address_groups() == [AG]
    assert ("addressgroup", AG, "rules[5].remote_address_group_id") in sg.references()
    assert sg.stateful  # Neutron's default
    stateless = translate.security_group({"id": SG, "project_id": "proj", "stateful": False,
                                          "revision_number": 1, "security_group_rules": []})
    assert stateless.stateful is False


def test_security_group_rule_remote_address_group() -> None:
    r = translate.sg_rule(rule(ethertype="IPv6", protocol="tcp", port_range_min=443,
                               port_range_max=443, remote_address_group_id=AG))
    assert r == SecurityGroupRule(id="r1", direction="ingress", ethertype="IPv6",
                                  protocol="tcp", port_range_min=443, port_range_max=443,
                                  remote_address_group_id=AG)
    with pytest.raises(ValidationError, match="remote_address_group_id"):
        translate.sg_rule(rule(remote_group_id=SG, remote_address_group_id=AG))


def address_group(**kw: Any) -> dict[str, Any]:
    """As Neutron's get_address_group returns it (addresses normalised to CIDRs)."""
    return {"id": AG, "project_id": "proj", "tenant_id": "proj", "name": "office",
            "description": "the office", "shared": False, "revision_number": 2,
            "standard_attr_id": 9, "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z",
            "addresses": ["192.0.2.0/24", "2001:db8::5/128", "10.0.0.5/32"]} | kw


def test_address_group() -> None:
    group = translate.address_group(address_group())
    assert group == AddressGroup(id=AG, topic="proj", name="office", version=3,
                                 addresses=("10.0.0.5/32", "192.0.2.0/24", "2001:db8::5/128"))
    assert [str(a) for a in group.addresses] == ["10.0.0.5/32", "192.0.2.0/24",
                                                 "2001:db8::5/128"]
    empty = translate.address_group(address_group(addresses=[], name=None,
                                                   revision_number=0))
    assert (empty.addresses, empty.name, empty.version) == ((), "", 1)
    assert translate.address_group(address_group(addresses=["10.0.0.5"])).addresses == (
        ipaddress.ip_network("10.0.0.5/32"),)


def test_address_group_bad_address_names_the_field() -> None:
    with pytest.raises(ValidationError, match=r"addressgroup .*field 'addresses\[1\]'.*host bits"):
        translate.address_group(address_group(addresses=["10.0.0.0/8", "10.0.0.1/8"]))


def test_security_group_rule_unknown_protocol() -> None:
    with pytest.raises(Untranslatable, match="protocol"):
        translate.sg_rule(rule(protocol="bogus"))


def iface(port_id: str, mac: str, ips: list[tuple[str, str]]) -> dict[str, Any]:
    return {"id": port_id, "mac_address": mac, "network_id": NET,
            "device_owner": "network:router_interface", "device_id": ROUTER,
            "fixed_ips": [{"subnet_id": s, "ip_address": ip} for s, ip in ips]}


def test_router_ports_routes_gateway(caplog: pytest.LogCaptureFixture) -> None:
    subnets = {SUB: {"id": SUB, "cidr": "10.0.0.0/24"}, SUB6: {"id": SUB6, "cidr": "fd00::/64"}}
    r = {"id": ROUTER, "project_id": "proj", "name": "r1", "revision_number": 9,
         "routes": [{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"},
                    {"destination": "0.0.0.0/0", "nexthop": "172.24.4.1"}],
         "external_gateway_info": {"network_id": EXT, "enable_snat": False,
                                   "external_fixed_ips": [
                                       {"subnet_id": "s6", "ip_address": "2001:db8::5"},
                                       {"subnet_id": "s4", "ip_address": "172.24.4.10"}]}}
    ports = [iface("p2", "fa:16:3e:00:00:02", [(SUB6, "fd00::1")]),
             iface("p1", "fa:16:3e:00:00:01", [(SUB, "10.0.0.1")])]
    with caplog.at_level(logging.WARNING):
        router = translate.router(r, ports, subnets)
    assert (router.id, router.topic, router.name, router.version) == (ROUTER, "proj", "r1", 10)
    assert router.ports == (
        RouterPort(id="p1", mac="fa:16:3e:00:00:01", network_id=NET, cidrs=("10.0.0.1/24",),
                   subnet_ids=(SUB,)),
        RouterPort(id="p2", mac="fa:16:3e:00:00:02", network_id=NET, cidrs=("fd00::1/64",),
                   subnet_ids=(SUB6,)))
    assert router.routes == (Route(destination="192.168.0.0/16", nexthop="10.0.0.254"),)
    assert "0.0.0.0/0 via 172.24.4.1" in caplog.text
    assert router.gateway == Gateway(network_id=EXT, ip_address="172.24.4.10",
                                     enable_snat=False)
    assert router.distributed is True
    bare = translate.router({"id": ROUTER, "project_id": "proj"}, [], {})
    assert (bare.ports, bare.routes, bare.gateway) == ((), (), None)


def test_floatingip() -> None:
    f = {"id": "f1", "project_id": "proj", "revision_number": 2,
         "floating_ip_address": "172.24.4.20", "floating_network_id": EXT,
         "port_id": PORT, "fixed_ip_address": "10.0.0.5", "router_id": ROUTER}
    fip = translate.floatingip(f)
    assert (fip.id, fip.topic, fip.version, fip.floating_network_id) == ("f1", "proj", 3, EXT)
    assert fip.floating_ip_address == ipaddress.ip_address("172.24.4.20")
    assert (fip.port_id, fip.router_id) == (PORT, ROUTER)
    assert fip.fixed_ip_address == ipaddress.ip_address("10.0.0.5")
    free = translate.floatingip(f | {"port_id": None, "fixed_ip_address": None,
                                     "router_id": None})
    assert (free.port_id, free.fixed_ip_address, free.router_id) == (None, None, None)


def test_merge_keeps_controller_status_unless_the_port_moved() -> None:
    new = translate.port(neutron_port())
    assert new is not None
    stored = new.replace(status="ACTIVE", unique_key=12, version=3)
    kept = translate.merge(stored, new)
    assert kept.status == "ACTIVE"  # type: ignore[attr-defined]
    assert translate.same(stored, kept)
    moved = translate.merge(stored, new.replace(binding=Binding(kind="chassis",
                                                                chassis_id="hv2")))
    assert moved.status == "DOWN"  # type: ignore[attr-defined]
    assert not translate.same(stored, moved)


def test_fip_status_is_the_nbs_kept_unless_the_association_changed() -> None:
    f = {"id": "f1", "project_id": "proj", "revision_number": 2, "status": "ACTIVE",
         "floating_ip_address": "172.24.4.20", "floating_network_id": EXT,
         "port_id": PORT, "fixed_ip_address": "10.0.0.5", "router_id": ROUTER}
    new = translate.floatingip(f)
    assert new.status == "DOWN"  # Neutron's status is never taken: it follows the NB's
    stored = new.replace(status="ACTIVE", version=5)
    # a rewrite by the plugin (a new name, Neutron's revision bumped by its status update)
    renamed = translate.floatingip(f | {"name": "web", "revision_number": 7})
    kept = translate.merge(stored, renamed)
    assert kept.status == "ACTIVE"  # type: ignore[attr-defined]
    assert not translate.same(stored, kept)  # the name changed
    assert translate.same(stored, translate.merge(stored, new))
    # sync compares Neutron's object, which never carries the NB status: no flapping
    assert translate.same(stored, new)
    assert translate.same(stored.replace(status="ERROR"), new)
    for change in ({"port_id": "88888888-8888-8888-8888-888888888888"},
                   {"fixed_ip_address": "10.0.0.6"},
                   {"port_id": None, "fixed_ip_address": None, "router_id": None}):
        moved = translate.merge(stored, translate.floatingip(f | change))
        assert moved.status == "DOWN", change  # type: ignore[attr-defined]
        assert not translate.same(stored, moved)
    # a FIP never stored as ACTIVE stays DOWN
    assert translate.merge(new, renamed).status == "DOWN"  # type: ignore[attr-defined]


def test_same_ignores_the_nb_owned_port_status() -> None:
    new = translate.port(neutron_port())
    assert new is not None
    assert translate.same(new.replace(status="ACTIVE", version=9), new)
