"""Metadata without I/O: the address that names a port, the flows (present only with the
metadata interface, incremental == full, keys that do not fit), the configured SYN meter,
the built-in documents, the signature Nova checks, and the proxy's port lookup on the
embedded NB."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from dragonflow.apps.registry import default_apps
from dragonflow.controller.engine import Engine
from dragonflow.db.connect import open_nb
from dragonflow.metadata import content
from dragonflow.metadata.datapath import (
    INTERFACE_MAC,
    MAX_KEY,
    decode_address,
    port_address,
)
from dragonflow.metadata.proxy import PortDirectory
from dragonflow.model import NbObject, Network, Port, Subnet
from dragonflow.pipeline.flow import Flow
from dragonflow.pipeline.topology import ChassisFacts, Topology


def test_the_address_names_the_port_and_which_of_its_addresses() -> None:
    assert port_address(1, 0) == "100.64.0.4"
    assert port_address(11, 1) == "100.64.0.45"
    assert port_address(MAX_KEY, 3) == "100.127.255.255"
    for key, index in ((1, 0), (11, 1), (0x12345, 2), (MAX_KEY, 3)):
        addr = port_address(key, index)
        assert addr is not None and decode_address(addr) == (key, index)
    assert port_address(0) is None and port_address(MAX_KEY + 1) is None
    assert port_address(5, 4) is None
    for other in ("10.0.0.4", "100.63.255.255", "100.128.0.0", "100.64.0.3", "::1", "x"):
        assert decode_address(other) is None, other


def objects(key: int = 11, ips: tuple[str, ...] = ("10.1.0.11", "10.1.1.11")
            ) -> list[NbObject]:
    return [
        Network.from_dict({"id": "net1", "topic": "p", "network_type": "vxlan",
                           "segmentation_id": 101, "unique_key": 1, "mtu": 1400}),
        Subnet.from_dict({"id": "s1", "topic": "p", "network_id": "net1", "cidr": "10.1.0.0/24",
                          "gateway_ip": "10.1.0.1", "dns_nameservers": ["10.1.0.53"],
                          "host_routes": [{"destination": "192.168.7.0/24",
                                           "nexthop": "10.1.0.254"}]}),
        Subnet.from_dict({"id": "s1b", "topic": "p", "network_id": "net1",
                          "cidr": "10.1.1.0/24"}),
        Subnet.from_dict({"id": "s6", "topic": "p", "network_id": "net1",
                          "cidr": "fd00:1::/64", "gateway_ip": "fd00:1::1",
                          "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"}),
        Port.from_dict({"id": "vm1", "topic": "p", "network_id": "net1", "name": "Web Server_1",
                        "mac": "fa:16:3e:00:00:11", "unique_key": key, "device_id": "inst-1",
                        "device_owner": "compute:nova",
                        "fixed_ips": [{"subnet_id": "s1" if ip.startswith("10.1.0.") else "s1b",
                                       "ip_address": ip} for ip in ips]
                        + [{"subnet_id": "s6", "ip_address": "fd00:1::11"}]}),
    ]


def topology(key: int = 11, metadata: bool = True, **facts: int) -> Topology:
    t = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",), **facts))  # type: ignore[arg-type]
    t.replace_all(objects(key))
    t.set_ofport("vm1", 5)
    if metadata:
        t.set_metadata_port(9, INTERFACE_MAC)
    return t


def metadata_flows(e: Engine) -> set[Flow]:
    return {f for f in e.desired() if f.stage == "metadata"}


def test_no_flows_without_the_metadata_interface_and_incremental_equals_full() -> None:
    t = topology(metadata=False)
    e = Engine(default_apps(), t)
    e.full()
    assert metadata_flows(e) == set()  # 169.254.169.254 is an address like any other
    e.changed(t.set_metadata_port(9, INTERFACE_MAC))
    flows = metadata_flows(e)
    full = Engine(default_apps(), t)
    full.full()
    assert flows == metadata_flows(full)
    # per port: steer (SYN metered + rest) and return per IPv4 address, spoofed drop, ARP;
    # the interface: ARP for the encoded addresses, everything else dropped
    assert len({f for f in flows if f.owner == "port/vm1"}) == 2 * 3 + 2
    assert len({f for f in flows if f.owner == "metadata/interface"}) == 2
    e.changed(t.set_metadata_port(None, None))
    assert metadata_flows(e) == set()


def test_a_key_that_does_not_fit_is_not_served(caplog: pytest.LogCaptureFixture) -> None:
    e = Engine(default_apps(), topology(key=MAX_KEY + 1))
    with caplog.at_level(logging.WARNING):
        e.full()
    assert {f.owner for f in metadata_flows(e)} == {"metadata/interface"}
    assert "does not fit the metadata addresses" in caplog.text


def test_the_configured_syn_rate_is_each_ports_meter() -> None:
    e = Engine(default_apps(), topology(metadata_syn_rate=5, metadata_syn_burst=2))
    e.full()
    syn = e.pipeline.meter_id("metadata", "syn")
    assert syn is not None
    own = e._port_meters["vm1"][syn]
    assert (e.meters[own].rate, e.meters[own].burst) == (5, 2)


def test_built_in_documents() -> None:
    by_id = {o.id: o for o in objects()}
    port, net = by_id["vm1"], by_id["net1"]
    assert isinstance(port, Port) and isinstance(net, Network)
    subnets = {i: s for i, s in by_id.items() if isinstance(s, Subnet)}
    status, ctype, body = content.respond("/openstack/latest/meta_data.json", port,
                                          "10.1.0.11", net, subnets, "openstacklocal")
    md = json.loads(body)
    assert (status, ctype) == (200, "application/json")
    assert (md["uuid"], md["name"], md["project_id"]) == ("inst-1", "Web Server_1", "p")
    assert md["hostname"] == "web-server-1.openstacklocal"
    status, _, body = content.respond("/openstack/2018-08-27/network_data.json", port,
                                      "10.1.0.11", net, subnets)
    nd = json.loads(body)
    assert nd["links"] == [{"id": "tapvm1", "vif_id": "vm1", "type": "ovs", "mtu": 1400,
                            "ethernet_mac_address": "fa:16:3e:00:00:11"}]
    v4, v4b, v6 = nd["networks"]
    assert v4 == {"id": "network0", "type": "ipv4", "link": "tapvm1", "network_id": "net1",
                  "ip_address": "10.1.0.11", "netmask": "255.255.255.0",
                  "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0",
                              "gateway": "10.1.0.1"},
                             {"network": "192.168.7.0", "netmask": "255.255.255.0",
                              "gateway": "10.1.0.254"}],
                  "services": [{"type": "dns", "address": "10.1.0.53"}]}
    assert (v4b["ip_address"], v4b["routes"]) == ("10.1.1.11", [])
    assert v6["type"] == "ipv6_slaac" and "ip_address" not in v6
    assert v6["routes"] == [{"network": "::", "netmask": "::", "gateway": "fd00:1::1"}]
    assert nd["services"] == [{"type": "dns", "address": "10.1.0.53"}]
    assert content.respond("/openstack", port, "", net, subnets)[2].split()[-1] == "latest"
    assert "meta_data.json" in content.respond("/openstack/latest/", port, "", net,
                                               subnets)[2].split()
    for missing in ("/openstack/latest/user_data", "/openstack/1999-01-01/meta_data.json",
                    "/latest/user-data", "/openstack/latest/meta_data.json/x"):
        assert content.respond(missing, port, "", net, subnets)[0] == 404, missing


def test_the_signature_is_the_one_nova_computes() -> None:
    # printf instance-a | openssl dgst -sha256 -hmac s3cret
    assert content.instance_signature("s3cret", "instance-a") == (
        "9a35276ca24f4971f47f99272b0eaa5af9bd193c9c111a2a4223f8160f31225d")


def test_the_proxy_finds_local_ports_by_key_and_only_those() -> None:
    nb = open_nb(f"memory://md-{uuid.uuid4().hex}")
    try:
        for o in objects()[:3]:
            nb.create(o.replace(unique_key=0) if hasattr(o, "unique_key") else o)
        base = objects()[4]
        assert isinstance(base, Port)
        a = nb.create(base.replace(id="a", mac="fa:16:3e:00:00:0a", unique_key=0,
                                   fixed_ips=base.fixed_ips[:1]))
        b = nb.create(base.replace(id="b", mac="fa:16:3e:00:00:0b", unique_key=0,
                                   fixed_ips=()))
        local = ["a"]
        ports = PortDirectory(nb, lambda: local)
        found = ports.lookup(a.unique_key)
        assert found is not None and found.id == "a"
        assert ports.lookup(b.unique_key) is None  # not plugged here
        local.append("b")
        found = ports.lookup(b.unique_key)
        assert found is not None and found.id == "b"
        nb.update(found.replace(device_id=""))  # a change counts at once
        again = ports.lookup(b.unique_key)
        assert again is not None and again.device_id == ""
        nb.delete(Port, "b")
        assert ports.lookup(b.unique_key) is None
        c = nb.create(base.replace(id="b", mac="fa:16:3e:00:00:0c", unique_key=0,
                                   fixed_ips=()))  # same id, a new key
        assert c.unique_key != b.unique_key
        assert ports.lookup(b.unique_key) is None
        found = ports.lookup(c.unique_key)
        assert found is not None and found.mac == "fa:16:3e:00:00:0c"
    finally:
        nb.driver.close()


def ec2(path: str, group_names: dict[str, str] | None = None) -> tuple[int, str, str]:
    by_id = {o.id: o for o in objects()}
    port, net = by_id["vm1"], by_id["net1"]
    assert isinstance(port, Port) and isinstance(net, Network)
    port = port.replace(security_groups=("sg-a", "sg-b"))
    return content.respond(path, port, "10.1.0.11", net, {}, "openstacklocal",
                           group_names=group_names)


def test_the_ec2_tree_lists_what_nova_lists() -> None:
    versions = ["1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15",
                "2008-02-01", "2008-09-01", "2009-04-04", "latest"]
    assert ec2("/") == (200, "text/plain", "\n".join([*versions, "openstack"]))
    for path in ("/ec2", "/ec2/"):
        assert ec2(path) == (200, "text/plain", "\n".join(versions)), path
    for path in ("/latest", "/latest/", "/2009-04-04/", "/1.0", "/ec2/latest/"):
        assert ec2(path) == (200, "text/plain", "meta-data/"), path  # no user-data
    listing = ["ami-id", "ami-launch-index", "ami-manifest-path", "block-device-mapping/",
               "hostname", "instance-action", "instance-id", "instance-type",
               "local-hostname", "local-ipv4", "placement/", "public-hostname",
               "public-ipv4", "reservation-id", "security-groups"]
    for path in ("/latest/meta-data/", "/latest/meta-data", "/2009-04-04/meta-data//",
                 "/ec2/2008-09-01/meta-data/"):
        assert ec2(path) == (200, "text/plain", "\n".join(listing)), path
    # older versions have fewer keys, as in Nova
    assert ec2("/1.0/meta-data/")[2].split("\n") == [
        "ami-id", "ami-launch-index", "ami-manifest-path", "hostname", "instance-id",
        "local-ipv4", "reservation-id", "security-groups"]
    assert "placement/" not in ec2("/2007-12-15/meta-data/")[2].split("\n")
    assert ec2("/latest/meta-data/placement/")[2] == "availability-zone"
    assert ec2("/latest/meta-data/block-device-mapping")[2] == "ami\nroot"


def test_every_ec2_leaf() -> None:
    leaves = {
        "ami-id": "", "ami-launch-index": "0", "ami-manifest-path": "FIXME",
        "block-device-mapping/ami": "vda", "block-device-mapping/root": "/dev/vda",
        "hostname": "web-server-1.openstacklocal", "instance-action": "none",
        "instance-id": "inst-1", "instance-type": "",
        "local-hostname": "web-server-1.openstacklocal", "local-ipv4": "10.1.0.11",
        "placement/availability-zone": "nova",
        "public-hostname": "web-server-1.openstacklocal", "public-ipv4": "",
        "reservation-id": "", "security-groups": "sg-a\nsg-b",
    }
    for key, value in leaves.items():
        for path in (f"/latest/meta-data/{key}", f"/2009-04-04/meta-data/{key}/",
                     f"/ec2/latest/meta-data/{key}"):
            assert ec2(path) == (200, "text/plain", value), path
    names = {"sg-a": "default", "sg-b": ""}  # a group without a name: its id
    assert ec2("/latest/meta-data/security-groups",
               group_names=names)[2] == "default\nsg-b"


def test_unknown_ec2_paths_are_not_found() -> None:
    for path in ("/latest/user-data", "/2010-01-01/meta-data/", "/openstack2/",
                 "/latest/meta-data/nope", "/latest/nope", "/latest/meta-data/hostname/x",
                 "/latest/meta-data/placement/x", "/latest/meta-data/security-groups/sg-a",
                 "/latest/meta-data/placement/availability-zone/nova", "/ec2/openstack",
                 "/ec2/ec2/latest/meta-data/", "/1.0/meta-data/placement/",
                 "/1.0/meta-data/local-hostname", "/meta-data/"):
        assert ec2(path) == (404, "text/plain", "404 Not Found"), path
