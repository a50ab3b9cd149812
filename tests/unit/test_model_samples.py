"""A consistent sample NB world (every field of every table populated) and assertion helpers
shared by the test_model_* modules. Also checks that the world itself is valid."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest

from dragonflow.model import (
    AddressGroup,
    Chassis,
    FloatingIP,
    NbObject,
    Network,
    Port,
    QosPolicy,
    Router,
    SecurityGroup,
    Subnet,
    ValidationError,
)

T1 = "tenant-1"


def world() -> dict[tuple[str, str], NbObject]:
    """Every table, all fields set, all references resolvable."""
    objs: list[NbObject] = [
        QosPolicy(id="qos1", topic=T1, name="gold", version=3, rules=(
            {"id": "r-bw", "type": "bandwidth_limit", "max_kbps": 10000, "max_burst_kbps": 800},
            {"id": "r-bw-in", "type": "bandwidth_limit", "direction": "ingress",
             "max_kbps": 5000, "max_burst_kbps": 0},
            {"id": "r-dscp", "type": "dscp_marking", "dscp_mark": 26},
        )),
        Chassis(id="hv1", name="compute-1", version=2, ip="192.0.2.11",
                tunnel_types=("geneve", "vxlan"), external_host_ip="198.51.100.11",
                bridge_mappings={"physnet1": "br-phy", "physnet0": "br-ex"}),
        Network(id="ext", topic="admin", name="public", version=1, network_type="flat",
                physical_network="physnet1", mtu=1500, external=True, qos_policy_id="qos1",
                unique_key=7),
        Network(id="net1", topic=T1, name="private", version=4, network_type="vxlan",
                segmentation_id=100, mtu=1450, external=False, unique_key=8),
        Subnet(id="ext-sub", topic="admin", network_id="ext", cidr="172.24.4.0/24",
               gateway_ip="172.24.4.1", enable_dhcp=False),
        Subnet(id="sub4", topic=T1, name="v4", version=2, network_id="net1",
               cidr="10.0.0.0/24", gateway_ip="10.0.0.1", enable_dhcp=True, dhcp_ip="10.0.0.2",
               dns_nameservers=("8.8.8.8", "2001:4860:4860::8888"),
               host_routes=({"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"},)),
        Subnet(id="sub6", topic=T1, network_id="net1", cidr="2001:db8::/64",
               gateway_ip="2001:db8::1", ipv6_ra_mode="slaac", ipv6_address_mode="slaac",
               host_routes=({"destination": "2001:db8:ff::/48", "nexthop": "2001:db8::fe"},)),
        SecurityGroup(id="sg1", topic=T1, name="web", version=5, rules=(
            {"id": "sr1", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
             "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "192.0.2.0/24"},
            {"id": "sr2", "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp",
             "port_range_min": 8, "port_range_max": 0},
            {"id": "sr3", "direction": "ingress", "ethertype": "IPv6", "protocol": 132,
             "remote_group_id": "sg2"},
            {"id": "sr4", "direction": "egress", "ethertype": "IPv4",
             "remote_group_id": "sg1"},
        )),
        AddressGroup(id="ag1", topic=T1, name="office", version=2,
                     addresses=("192.0.2.0/24", "2001:db8:1::/48", "198.51.100.7")),
        SecurityGroup(id="sg2", topic=T1, name="db", rules=(
            {"id": "sr5", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
             "port_range_min": 5432, "port_range_max": 5432, "remote_address_group_id": "ag1"},
        )),
        Port(id="port1", topic=T1, name="vm-a", version=9, network_id="net1",
             mac="FA:16:3E:00:00:01",
             fixed_ips=({"subnet_id": "sub4", "ip_address": "10.0.0.5"},
                        {"subnet_id": "sub6", "ip_address": "2001:DB8::5"}),
             admin_state_up=True, binding={"kind": "chassis", "chassis_id": "hv1"},
             device_owner="compute:nova", device_id="vm-a-uuid",
             security_groups=("sg1", "sg2"), port_security_enabled=True,
             allowed_address_pairs=({"ip_address": "10.0.0.100", "mac": "fa:16:3e:00:00:99"},
                                    {"ip_address": "10.1.0.0/24"}),
             extra_dhcp_opts=({"opt_name": "tftp-server", "opt_value": "10.0.0.9"},
                              {"opt_name": "dns-server", "opt_value": "2001:db8::53",
                               "ip_version": 6}),
             qos_policy_id="qos1", status="ACTIVE", unique_key=21),
        Router(id="r1", topic=T1, name="router", version=2, distributed=True, unique_key=3,
               ports=({"id": "rp1", "mac": "fa:16:3e:00:01:01", "network_id": "net1",
                       "cidrs": ["10.0.0.1/24", "2001:db8::1/64"],
                       "subnet_ids": ["sub4", "sub6"], "unique_key": 22},),
               routes=({"destination": "10.20.0.0/16", "nexthop": "10.0.0.254"},),
               gateway={"network_id": "ext", "ip_address": "172.24.4.10",
                        "enable_snat": False}),
        FloatingIP(id="fip1", topic=T1, name="fip", version=1,
                   floating_ip_address="172.24.4.100", floating_network_id="ext",
                   port_id="port1", fixed_ip_address="10.0.0.5", router_id="r1",
                   status="ACTIVE"),
    ]
    return {(o.TABLE, o.id): o for o in objs}


def lookup_in(objs: dict[tuple[str, str], NbObject]) -> Callable[[str, str], NbObject | None]:
    return lambda table, oid: objs.get((table, oid))


def get(table: str, oid: str) -> Any:
    return world()[(table, oid)]


def expect_invalid(fn: Callable[[], object], table: str, field: str, *reason_parts: str
                   ) -> ValidationError:
    """``fn`` raises ValidationError for exactly ``field`` of ``table``; the message names
    the table, the field and a reason containing every ``reason_parts``."""
    with pytest.raises(ValidationError) as info:
        fn()
    err = info.value
    assert (err.table, err.field) == (table, field), str(err)
    for part in reason_parts:
        assert part in err.reason, f"{part!r} not in {err.reason!r}"
    msg = str(err)
    assert msg.startswith(table) and f"field '{field}': " in msg and msg.endswith(err.reason)
    return err


_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def mutated(obj: NbObject, path: str, value: Any = None, *, delete: bool = False
            ) -> dict[str, Any]:
    """``obj.to_dict()`` with the JSON value at ``path`` (``fixed_ips[1].ip_address``)
    replaced (or deleted)."""
    data = copy.deepcopy(obj.to_dict())
    steps: list[str | int] = [m[0] if m[0] else int(m[1]) for m in _STEP.findall(path)]
    node: Any = data
    for step in steps[:-1]:
        node = node[step]
    if delete:
        del node[steps[-1]]
    else:
        node[steps[-1]] = value
    return data


def bad(table: str, oid: str, path: str, value: Any, *reason: str) -> None:
    """Setting JSON ``path`` of the sample object to ``value`` is rejected at ``path``."""
    obj = get(table, oid)
    expect_invalid(lambda: type(obj).from_dict(mutated(obj, path, value)), table, path, *reason)


def bad_replace(table: str, oid: str, field: str, *reason: str, **changes: Any) -> None:
    obj = get(table, oid)
    expect_invalid(lambda: obj.replace(**changes), table, field, *reason)


def refs_fail(obj: Any, field: str, *reason: str, drop: tuple[str, str] | None = None,
              extra: tuple[Any, ...] = ()) -> None:
    objs = world()
    if drop:
        del objs[drop]
    for o in extra:
        objs[(o.TABLE, o.id)] = o
    expect_invalid(lambda: obj.validate_refs(lookup_in(objs)), obj.TABLE, field, *reason)


def test_sample_world_is_valid() -> None:
    objs = world()
    for obj in objs.values():
        obj.validate_refs(lookup_in(objs))
    assert len({o.TABLE for o in objs.values()}) == 9


def test_mutated_helper_edits_nested_paths() -> None:
    port = get("port", "port1")
    data = mutated(port, "fixed_ips[1].ip_address", "x")
    assert data["fixed_ips"][1]["ip_address"] == "x"
    assert port.to_dict()["fixed_ips"][1]["ip_address"] == "2001:db8::5"
    assert "mac" not in mutated(port, "mac", delete=True)
