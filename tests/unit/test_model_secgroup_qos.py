"""NB model: one test per validation rule of security groups (and rules), address groups and
QoS policies."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from dragonflow.model import (
    REFERENCED_BY,
    TABLES,
    AddressGroup,
    QosPolicy,
    SecurityGroup,
    SecurityGroupRule,
    obj_from_json,
)
from tests.unit.test_model_samples import (
    bad,
    bad_replace,
    expect_invalid,
    get,
    lookup_in,
    refs_fail,
    world,
)


def rule(**fields: Any) -> dict[str, Any]:
    return {"id": "x", "direction": "ingress", "ethertype": "IPv4", **fields}


def bad_rule(path: str, reason: str, **fields: Any) -> None:
    """A group whose only rule has ``fields`` is rejected at ``rules[0].<path>``."""
    bad_replace("securitygroup", "sg2", f"rules[0].{path}", reason, rules=(rule(**fields),))


def sg_rule(**fields: Any) -> SecurityGroupRule:
    return SecurityGroupRule.from_dict(rule(**fields))


# --- security groups ------------------------------------------------------------------------
def test_rule_direction_and_ethertype() -> None:
    bad("securitygroup", "sg1", "rules[0].direction", "inbound", "not one of ingress|egress")
    bad("securitygroup", "sg1", "rules[0].ethertype", "ipv4", "not one of IPv4|IPv6")


def test_rule_protocol_values() -> None:
    bad_rule("protocol", "'gre' is not one of", protocol="gre")
    bad_rule("protocol", "protocol number 256 is out of range 0..255", protocol=256)
    bad_rule("protocol", "must be a protocol name or number", protocol=True)
    bad_rule("protocol", "icmpv6 needs ethertype IPv6", protocol="icmpv6")
    bad_rule("protocol", "icmpv6 needs ethertype IPv6", protocol=58)
    assert sg_rule(protocol="6").protocol == "tcp"
    assert sg_rule(protocol="UDP").protocol == "udp"
    assert sg_rule(protocol=47).protocol == 47
    assert sg_rule(protocol=0).protocol == 0
    assert sg_rule(protocol=1, ethertype="IPv6").protocol == "icmpv6"
    assert sg_rule(protocol="ipv6-icmp", ethertype="IPv6").protocol == "icmpv6"


@pytest.mark.parametrize("proto", ["tcp", "udp", "sctp", 6])
def test_rule_port_range_min_le_max(proto: str | int) -> None:
    bad_rule("port_range_min", "81 is greater than port_range_max 80", protocol=proto,
             port_range_min=81, port_range_max=80)
    assert sg_rule(protocol=proto, port_range_min=0, port_range_max=65535).port_range_max


def test_rule_port_range_needs_both_ends_and_range() -> None:
    bad_rule("port_range_max", "required when port_range_min is set", protocol="tcp",
             port_range_min=80)
    bad_rule("port_range_min", "required when port_range_max is set", protocol="tcp",
             port_range_max=80)
    bad_rule("port_range_max", "out of range 0..65535", protocol="tcp", port_range_min=1,
             port_range_max=65536)
    bad_rule("port_range_min", "out of range 0..65535", protocol="udp", port_range_min=-1,
             port_range_max=1)


@pytest.mark.parametrize("proto", [None, 47])
def test_rule_port_range_only_with_port_protocols(proto: Any) -> None:
    bad_rule("port_range_min", "port ranges need protocol tcp, udp or sctp", protocol=proto,
             port_range_min=80, port_range_max=80)
    bad_rule("port_range_max", "port ranges need protocol tcp, udp or sctp", protocol=proto,
             port_range_max=80)


def test_rule_icmp_type_and_code() -> None:
    bad_rule("port_range_min", "ICMP type 256 is out of range 0..255", protocol="icmp",
             port_range_min=256)
    bad_rule("port_range_max", "ICMP code 300 is out of range 0..255", protocol="icmp",
             port_range_min=3, port_range_max=300)
    bad_rule("port_range_max", "an ICMP code needs an ICMP type", protocol="icmp",
             port_range_max=0)
    only_type = sg_rule(protocol="icmpv6", ethertype="IPv6", port_range_min=135)
    assert (only_type.port_range_min, only_type.port_range_max) == (135, None)
    echo = sg_rule(protocol="icmp", port_range_min=8, port_range_max=0)
    assert (echo.port_range_min, echo.port_range_max) == (8, 0)  # type 8 > code 0 is fine


def test_rule_remote_ip_prefix() -> None:
    bad_rule("remote_ip_prefix", "2001:db8::/64 is IPv6 but ethertype is IPv4",
             remote_ip_prefix="2001:db8::/64")
    bad_rule("remote_ip_prefix", "host bits", remote_ip_prefix="10.0.0.1/8")
    assert str(sg_rule(remote_ip_prefix="10.0.0.1").remote_ip_prefix) == "10.0.0.1/32"


def test_rule_remote_prefix_xor_group() -> None:
    bad_rule("remote_group_id", "cannot be combined with remote_ip_prefix",
             remote_ip_prefix="10.0.0.0/8", remote_group_id="sg1")
    assert sg_rule().remote_group_id is None and sg_rule().remote_ip_prefix is None


def test_rule_at_most_one_remote() -> None:
    bad_rule("remote_address_group_id", "cannot be combined with remote_ip_prefix",
             remote_ip_prefix="10.0.0.0/8", remote_address_group_id="ag1")
    bad_rule("remote_address_group_id", "cannot be combined with remote_group_id (a rule has "
             "at most one of remote_ip_prefix, remote_group_id, remote_address_group_id)",
             remote_group_id="sg1", remote_address_group_id="ag1")
    bad_rule("remote_group_id", "cannot be combined with remote_ip_prefix",
             remote_ip_prefix="10.0.0.0/8", remote_group_id="sg1",
             remote_address_group_id="ag1")
    bad_rule("remote_address_group_id", "must not contain '/'",
             remote_address_group_id="a/b")
    bad_rule("remote_address_group_id", "must not be empty", remote_address_group_id="")
    r = sg_rule(remote_address_group_id="ag1", ethertype="IPv6")
    assert (r.remote_address_group_id, r.remote_group_id, r.remote_ip_prefix) == (
        "ag1", None, None)
    assert SecurityGroupRule.from_dict(r.to_dict()) == r
    assert sg_rule().remote_address_group_id is None


def test_rule_ids_unique() -> None:
    bad_replace("securitygroup", "sg1", "rules[1].id", "duplicate rule id 'x'",
                rules=(rule(), rule(direction="egress")))


def test_secgroup_indexes_and_refs() -> None:
    sg = get("securitygroup", "sg1")
    assert sg.index_entries() == [("remote_group", "sg2")]
    assert sg.references() == [("securitygroup", "sg2", "rules[2].remote_group_id")]
    refs_fail(sg, "rules[2].remote_group_id", "securitygroup 'sg2' does not exist",
              drop=("securitygroup", "sg2"))
    objs = world()
    del objs[("securitygroup", "sg1")]  # its own id is not looked up: self-reference is fine
    sg.validate_refs(lookup_in(objs))
    assert SecurityGroup(id="empty").index_entries() == []


# --- address groups -------------------------------------------------------------------------
AG = {"id": "ag1", "topic": "tenant-1", "name": "office", "version": 2,
      "addresses": ["10.1.0.0/24", "2001:db8:1::/48", "192.0.2.7"]}


def ag(**fields: Any) -> AddressGroup:
    return AddressGroup.from_dict(AG | fields)


def bad_ag(field: str, value: Any, *reason: str) -> None:
    expect_invalid(lambda: ag(**{field.split("[")[0]: value}), "addressgroup", field, *reason)


def test_address_group_fields() -> None:
    group = ag()
    assert group.addresses == (ipaddress.ip_network("10.1.0.0/24"),
                               ipaddress.ip_network("192.0.2.7/32"),
                               ipaddress.ip_network("2001:db8:1::/48"))
    assert [str(n) for n in group.networks(6)] == ["2001:db8:1::/48"]
    assert group.to_dict() == AG | {"addresses": ["10.1.0.0/24", "192.0.2.7/32",
                                                   "2001:db8:1::/48"]}
    assert obj_from_json("addressgroup", group.to_dict()) == group
    # a set: the order of the input does not matter
    assert ag(addresses=list(reversed(AG["addresses"]))) == group
    assert AddressGroup(id="empty").addresses == ()
    assert (group.references(), group.index_entries(), group.claims()) == ([], [], [])
    assert TABLES["addressgroup"] is AddressGroup
    assert REFERENCED_BY["addressgroup"] == [("securitygroup", "remote_address_group")]


def test_address_group_addresses() -> None:
    bad_ag("addresses[1]", ["10.0.0.0/8", "10.0.0.1/8"], "host bits set")
    bad_ag("addresses[0]", ["nonsense"], "'nonsense' is not a CIDR")
    bad_ag("addresses[1]", ["10.0.0.1", "10.0.0.1/32"], "duplicate value '10.0.0.1/32'")
    bad_ag("addresses[0]", [7], "must be a CIDR string")
    bad_ag("addresses", "10.0.0.0/8", "must be a list")
    bad_ag("id", "a b", "must not contain whitespace")
    expect_invalid(lambda: AddressGroup.from_dict(AG | {"shared": True}), "addressgroup",
                   "shared", "unknown field")


def test_secgroup_address_group_refs_and_index() -> None:
    sg = get("securitygroup", "sg1").replace(rules=(
        rule(id="a", remote_address_group_id="ag1"),
        rule(id="b", direction="egress", remote_address_group_id="ag1"),
        rule(id="c", remote_group_id="sg2"),
        rule(id="d", ethertype="IPv6", remote_address_group_id="ag2"),
    ))
    assert sg.address_groups() == ["ag1", "ag2"]
    assert sg.references() == [("addressgroup", "ag1", "rules[0].remote_address_group_id"),
                               ("addressgroup", "ag1", "rules[1].remote_address_group_id"),
                               ("securitygroup", "sg2", "rules[2].remote_group_id"),
                               ("addressgroup", "ag2", "rules[3].remote_address_group_id")]
    assert sg.index_entries() == [("remote_group", "sg2"), ("remote_address_group", "ag1"),
                                  ("remote_address_group", "ag2")]
    ag2 = ag(id="ag2", addresses=[])
    sg.validate_refs(lookup_in(world() | {(ag2.TABLE, ag2.id): ag2}))
    refs_fail(sg, "rules[3].remote_address_group_id", "addressgroup 'ag2' does not exist")
    refs_fail(sg, "rules[0].remote_address_group_id", "addressgroup 'ag1' does not exist",
              drop=("addressgroup", "ag1"), extra=(ag2,))
    assert get("securitygroup", "sg2").references() == [
        ("addressgroup", "ag1", "rules[0].remote_address_group_id")]


# --- qos ------------------------------------------------------------------------------------
def test_qos_bandwidth_rule() -> None:
    bad("qospolicy", "qos1", "rules[0].max_kbps", 0, "out of range 1..")
    bad("qospolicy", "qos1", "rules[0].max_kbps", None, "required for a bandwidth_limit rule")
    bad("qospolicy", "qos1", "rules[0].max_burst_kbps", -1, "out of range 0..")
    bad("qospolicy", "qos1", "rules[0].dscp_mark", 10, "must be null for a bandwidth_limit")
    bad("qospolicy", "qos1", "rules[0].direction", "both", "not one of egress|ingress")
    bad("qospolicy", "qos1", "rules[0].type", "minimum_bandwidth", "not one of")


@pytest.mark.parametrize("mark", [1, 7, 9, 42, 57, 58, 64, -2])
def test_qos_dscp_mark_must_be_valid(mark: int) -> None:
    bad("qospolicy", "qos1", "rules[2].dscp_mark", mark, f"{mark} is not one of 0|8|10")


def test_qos_dscp_rule() -> None:
    bad("qospolicy", "qos1", "rules[2].dscp_mark", None, "required for a dscp_marking rule")
    bad("qospolicy", "qos1", "rules[2].max_kbps", 100, "must be null for a dscp_marking rule")
    bad("qospolicy", "qos1", "rules[2].max_burst_kbps", 0, "must be null for a dscp_marking")
    bad("qospolicy", "qos1", "rules[2].direction", "ingress", "egress only")
    for mark in (0, 8, 46, 56):
        assert get("qospolicy", "qos1").replace(
            rules=({"id": "d", "type": "dscp_marking", "dscp_mark": mark},)).dscp_mark == mark


def test_qos_one_rule_per_type_and_direction() -> None:
    qos = get("qospolicy", "qos1")
    twice = (qos.rules[0], qos.rules[1].replace(direction="egress"))
    bad_replace("qospolicy", "qos1", "rules[1].type",
                "a bandwidth_limit rule for direction egress already exists", rules=twice)
    bad("qospolicy", "qos1", "rules[1].id", "r-bw", "duplicate rule id 'r-bw'")


def test_qos_accessors() -> None:
    qos = get("qospolicy", "qos1")
    assert (qos.max_kbps, qos.max_burst_kbps, qos.dscp_mark) == (10000, 800, 26)
    assert qos.rule("bandwidth_limit", "ingress").max_kbps == 5000
    empty = QosPolicy(id="q")
    assert (empty.max_kbps, empty.max_burst_kbps, empty.dscp_mark, empty.references()) == (
        None, None, None, [])
