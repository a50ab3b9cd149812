"""NB model: JSON round trip, strict decoding, errors, registry, REFERENCED_BY, unique keys."""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import json
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dragonflow.model import (
    REFERENCED_BY,
    TABLES,
    FixedIp,
    NbObject,
    Port,
    Router,
    ValidationError,
    obj_from_json,
)
from tests.unit.test_model_samples import expect_invalid, get, mutated, world


def roundtrip(obj: NbObject) -> NbObject:
    return obj_from_json(obj.TABLE, json.loads(json.dumps(obj.to_dict(), allow_nan=False)))


@pytest.mark.parametrize("key", sorted(world()), ids=lambda k: "/".join(k))
def test_roundtrip_every_table(key: tuple[str, str]) -> None:
    obj = world()[key]
    back = roundtrip(obj)
    assert back == obj
    assert hash(back) == hash(obj)
    assert back.to_dict() == obj.to_dict()
    assert type(obj).from_dict(obj.to_dict()) == obj


def test_every_table_in_world_and_registry() -> None:
    assert set(TABLES) == {"chassis", "network", "subnet", "port", "router", "securitygroup",
                           "floatingip", "qospolicy", "addressgroup"}
    assert {t for t, _ in world()} == set(TABLES)
    for name, cls in TABLES.items():
        assert cls.TABLE == name


def test_normalised_forms() -> None:
    port = get("port", "port1")
    assert port.mac == "fa:16:3e:00:00:01"
    assert port.fixed_ips[1] == FixedIp(subnet_id="sub6",
                                        ip_address=ipaddress.ip_address("2001:db8::5"))
    assert port.allowed_address_pairs[0].ip_address == ipaddress.ip_network("10.0.0.100/32")
    assert isinstance(port.security_groups, tuple)
    chassis = get("chassis", "hv1")
    assert chassis.bridge_mappings == (("physnet0", "br-ex"), ("physnet1", "br-phy"))
    assert chassis.to_dict()["bridge_mappings"] == {"physnet0": "br-ex", "physnet1": "br-phy"}
    assert chassis.bridge_for("physnet1") == "br-phy"
    sg = get("securitygroup", "sg1")
    assert sg.rules[2].protocol == "sctp"  # number with a name is stored as the name


def test_objects_are_immutable_and_replace_revalidates() -> None:
    port = get("port", "port1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        port.mac = "fa:16:3e:00:00:02"  # type: ignore[misc]
    renamed = port.replace(name="vm-b")
    assert (renamed.name, port.name) == ("vm-b", "vm-a")
    expect_invalid(lambda: port.replace(mac="ff:ff:ff:ff:ff:ff"), "port", "mac", "multicast")


def test_unknown_field_is_named() -> None:
    port = get("port", "port1")
    err = expect_invalid(lambda: Port.from_dict({**port.to_dict(), "colour": "red"}),
                         "port", "colour", "unknown field")
    assert err.obj_id == "port1"
    bad = mutated(port, "fixed_ips[1].bogus", 1)
    expect_invalid(lambda: Port.from_dict(bad), "port", "fixed_ips[1].bogus", "unknown field")
    bad = mutated(get("router", "r1"), "ports[0].weight", 1)
    expect_invalid(lambda: Router.from_dict(bad), "router", "ports[0].weight", "unknown field")


def test_missing_required_field_is_named() -> None:
    port = get("port", "port1")
    expect_invalid(lambda: Port.from_dict(mutated(port, "mac", delete=True)),
                   "port", "mac", "required field missing")
    expect_invalid(lambda: Port.from_dict(mutated(port, "fixed_ips[0].subnet_id", delete=True)),
                   "port", "fixed_ips[0].subnet_id", "required field missing")
    err = expect_invalid(lambda: Port.from_dict({"network_id": "n", "mac": "fa:16:3e:0:0:1"}),
                         "port", "id", "required field missing")
    assert str(err) == "port: field 'id': required field missing"


WRONG_TYPES: list[tuple[str, str, str, Any, str]] = [
    ("port", "port1", "admin_state_up", "yes", "must be a bool"),
    ("port", "port1", "admin_state_up", 1, "must be a bool"),
    ("port", "port1", "version", True, "must be an integer"),
    ("port", "port1", "version", "9", "must be an integer"),
    ("port", "port1", "version", -1, "out of range"),
    ("port", "port1", "unique_key", 2**32, "out of range"),
    ("port", "port1", "fixed_ips", "10.0.0.5", "must be a list"),
    ("port", "port1", "fixed_ips[0]", "10.0.0.5", "must be an object"),
    ("port", "port1", "fixed_ips[0].ip_address", 167772165, "must be an IP address string"),
    ("port", "port1", "binding", ["chassis", "hv1"], "must be an object"),
    ("port", "port1", "binding.kind", "host", "not one of chassis|vtep"),
    ("port", "port1", "security_groups", {"sg1": True}, "must be a list"),
    ("port", "port1", "security_groups[1]", 7, "must be a string id"),
    ("port", "port1", "mac", None, "must be a MAC address string"),
    ("port", "port1", "name", 5, "must be a string"),
    ("port", "port1", "name", "x" * 256, "longer than 255"),
    ("port", "port1", "status", "UP", "not one of DOWN|ACTIVE|BUILD|ERROR"),
    ("port", "port1", "extra_dhcp_opts[0].ip_version", 5, "not one of 4|6"),
    ("port", "port1", "extra_dhcp_opts[0].ip_version", True, "not one of 4|6"),
    ("network", "net1", "mtu", "1450", "must be an integer"),
    ("network", "net1", "external", None, "must be a bool"),
    ("chassis", "hv1", "bridge_mappings", "physnet1:br-phy", "must be a list"),
    ("chassis", "hv1", "bridge_mappings.physnet1", 5, "must be a string id"),
    ("subnet", "sub4", "dns_nameservers[0]", "8.8.8", "not an IP address"),
    ("subnet", "sub4", "cidr", ["10.0.0.0/24"], "must be a CIDR string"),
    ("router", "r1", "ports[0].cidrs[0]", 5, "must be an interface address string"),
    ("qospolicy", "qos1", "rules[0].max_kbps", 1.5, "must be an integer"),
]


@pytest.mark.parametrize("table,oid,path,value,reason", WRONG_TYPES,
                         ids=[f"{t}-{p}-{v!r}"[:60] for t, _, p, v, _ in WRONG_TYPES])
def test_wrong_json_type_or_value_is_named(table: str, oid: str, path: str, value: Any,
                                           reason: str) -> None:
    data = mutated(get(table, oid), path, value)
    expect_invalid(lambda: obj_from_json(table, data), table, path, reason)


@pytest.mark.parametrize("bad_id,reason", [
    ("", "must not be empty"), ("a/b", "must not contain '/'"), ("a b", "whitespace"),
    ("a\tb", "whitespace"), ("x" * 256, "longer than 255"), ("a\x00b", "control"),
])
def test_bad_ids(bad_id: str, reason: str) -> None:
    expect_invalid(lambda: get("port", "port1").replace(id=bad_id), "port", "id", reason)
    expect_invalid(lambda: get("port", "port1").replace(network_id=bad_id), "port",
                   "network_id", reason)


def test_topic_is_any_project_id_neutron_takes() -> None:
    net = get("network", "net1")
    assert net.replace(topic="").topic == ""
    for project in ("a b", "dept/team", "Ünïcode project", "x" * 255):
        assert net.replace(topic=project).topic == project  # Neutron takes all of these
    expect_invalid(lambda: net.replace(topic="a\nb"), "network", "topic", "control")
    expect_invalid(lambda: net.replace(topic="x" * 256), "network", "topic", "longer than 255")


def test_not_an_object_and_unknown_table() -> None:
    expect_invalid(lambda: Port.from_dict(["id", "p"]), "port", "", "must be an object")  # type: ignore[arg-type]
    err = expect_invalid(lambda: obj_from_json("switch", {"id": "x"}), "switch", "table",
                         "unknown table 'switch'")
    assert "port" in err.reason


def test_derived_ip_version_is_checked_not_stored() -> None:
    sub = get("subnet", "sub4")
    assert sub.ip_version == 4 and "ip_version" not in sub.to_dict()
    assert type(sub).from_dict({**sub.to_dict(), "ip_version": 4}) == sub
    expect_invalid(lambda: type(sub).from_dict({**sub.to_dict(), "ip_version": 6}),
                   "subnet", "ip_version", "contradicts")


def test_validation_error_format_and_pickle() -> None:
    err = ValidationError("port", "p1", "fixed_ips[1].ip_address", "bad")
    assert str(err) == "port 'p1': field 'fixed_ips[1].ip_address': bad"
    assert str(ValidationError("chassis", "", "ip", "bad")) == "chassis: field 'ip': bad"
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.table, back.obj_id, back.field, back.reason, str(back)) == (
        "port", "p1", "fixed_ips[1].ip_address", "bad", str(err))
    obj = pickle.loads(pickle.dumps(get("router", "r1")))
    assert obj == get("router", "r1")


def test_nested_record_alone_raises_with_its_own_name() -> None:
    expect_invalid(lambda: FixedIp(subnet_id="s", ip_address="nope"), "fixed_ip",
                   "ip_address", "not an IP address")


def test_referenced_by_matches_references_and_indexes() -> None:
    """Every reference an object makes is visible through an index listed in REFERENCED_BY,
    so a delete of the referenced object is refused while the reference exists."""
    objs = world()
    seen: set[tuple[str, str, str]] = set()
    for obj in objs.values():
        for table, ref_id, field in obj.references():
            via = [idx for t, idx in REFERENCED_BY[table] if t == obj.TABLE]
            assert any((idx, ref_id) in obj.index_entries() for idx in via), (obj.id, field)
            seen.add((table, obj.TABLE, field.split("[")[0].split(".")[0]))
        for index, _ in obj.index_entries():
            assert index  # every index is a non-empty name
    pairs = {(ref, t) for ref, entries in REFERENCED_BY.items() for t, _ in entries}
    assert {(ref, t) for ref, t, _ in seen} == pairs  # the world exercises every pair


def test_self_reference_does_not_pin_a_security_group() -> None:
    sg = get("securitygroup", "sg1")
    assert ("remote_group", "sg1") not in sg.index_entries()
    assert ("remote_group", "sg2") in sg.index_entries()
    assert [r[1] for r in sg.references()] == ["sg2"]


def counter() -> Any:
    counters: dict[str, itertools.count[int]] = {}
    calls: list[str] = []

    def alloc(ns: str) -> int:
        calls.append(ns)
        return next(counters.setdefault(ns, itertools.count(100)))

    alloc.calls = calls  # type: ignore[attr-defined]
    return alloc


def test_assign_unique_keys_fills_only_zero_keys() -> None:
    alloc = counter()
    router = get("router", "r1")
    fresh = router.replace(unique_key=0, ports=(
        router.ports[0],
        router.ports[0].replace(id="rp2", mac="fa:16:3e:00:01:02", network_id="ext",
                                cidrs=("172.24.4.2/24",), subnet_ids=(), unique_key=0)))
    done = fresh.assign_unique_keys(alloc)
    assert done.unique_key == 100 and [p.unique_key for p in done.ports] == [22, 100]
    assert alloc.calls == ["port", "router"]
    assert done.unique_keys() == [("router", 100), ("port", 22), ("port", 100)]
    assert done.assign_unique_keys(alloc) is done
    port = get("port", "port1").replace(unique_key=0)
    assert port.unique_keys() == []
    assert port.assign_unique_keys(alloc).unique_keys() == [("port", 101)]
    sg = get("securitygroup", "sg1")
    assert sg.assign_unique_keys(alloc) is sg and sg.unique_keys() == []
    with pytest.raises(ValueError, match="returned 0"):
        port.assign_unique_keys(lambda ns: 0)


def test_carry_unique_keys_keeps_old_keys() -> None:
    old = get("router", "r1")
    new = old.replace(unique_key=0, ports=(
        old.ports[0].replace(unique_key=0),
        old.ports[0].replace(id="rp2", mac="fa:16:3e:00:01:02", network_id="ext",
                             cidrs=("172.24.4.2/24",), subnet_ids=(), unique_key=0)))
    carried = new.carry_unique_keys(old)
    assert carried.unique_key == 3 and [p.unique_key for p in carried.ports] == [22, 0]
    net = get("network", "net1")
    assert net.replace(unique_key=55).carry_unique_keys(net).unique_key == 8
    assert net.carry_unique_keys(get("network", "ext")).unique_key == 7  # old's key wins
    with pytest.raises(TypeError):
        net.carry_unique_keys(get("port", "port1"))  # type: ignore[arg-type]


# --- property: any valid port survives JSON --------------------------------------------------
_ids = st.text(alphabet="abcdef0123456789-_", min_size=1, max_size=12)
_v4 = st.integers(min_value=1, max_value=254).map(lambda n: f"10.0.0.{n}")
_macs = st.tuples(*[st.integers(0, 255)] * 5).map(
    lambda t: "fa:" + ":".join(f"{b:02x}" for b in t))


@st.composite
def ports(draw: st.DrawFn) -> Port:
    ips = draw(st.lists(_v4, unique=True, max_size=3))
    secure = draw(st.booleans())
    return Port(
        id=draw(_ids), topic=draw(st.just("") | _ids), name=draw(st.text(max_size=20)),
        version=draw(st.integers(0, 2**40)), network_id=draw(_ids), mac=draw(_macs),
        fixed_ips=tuple(FixedIp(subnet_id=draw(_ids), ip_address=ip) for ip in ips),
        admin_state_up=draw(st.booleans()),
        binding=draw(st.none() | st.builds(dict, kind=st.sampled_from(["chassis", "vtep"]),
                                           chassis_id=_ids)),
        device_owner=draw(st.text(max_size=20)), device_id=draw(st.just("") | _ids),
        security_groups=tuple(draw(st.lists(_ids, unique=True, max_size=3))) if secure else (),
        port_security_enabled=secure,
        allowed_address_pairs=tuple(
            {"ip_address": ip, "mac": mac}
            for ip, mac in draw(st.lists(st.tuples(_v4, st.none() | _macs), max_size=2,
                                         unique_by=lambda t: t[0]))) if secure else (),
        qos_policy_id=draw(st.none() | _ids),
        status=draw(st.sampled_from(["DOWN", "ACTIVE", "BUILD", "ERROR"])),
        unique_key=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=60, deadline=None)
@given(ports())
def test_port_roundtrip_property(port: Port) -> None:
    assert roundtrip(port) == port
    assert len(port.claims()) == len(port.fixed_ips) + 1


def test_validate_refs_looks_each_object_up_once() -> None:
    objs = world()
    calls: list[tuple[str, str]] = []

    def lookup(table: str, oid: str) -> NbObject | None:
        calls.append((table, oid))
        return objs.get((table, oid))

    get("port", "port1").validate_refs(lookup)
    assert sorted(calls) == [("network", "net1"), ("qospolicy", "qos1"), ("securitygroup", "sg1"),
                             ("securitygroup", "sg2"), ("subnet", "sub4"), ("subnet", "sub6")]
