"""The built-in metadata responder's documents, from the NB (no Nova).

The OpenStack metadata format as Nova serves it (cloud-init's OpenStack data source reads
these): ``openstack`` lists the versions, ``openstack/<version>/`` the files;
``meta_data.json`` names the instance (uuid = the port's device id, name, hostname,
project) and ``network_data.json`` describes its network (links, networks, routes, DNS) the
way nova/virt/netutils.py builds it, from the port, its network and subnets.

And the EC2 tree as nova/api/metadata/base.py serves it (cloud-init's Ec2 data source reads
it, and its OpenStack one too, for ``ec2-metadata``): ``/`` lists the EC2 versions, ``latest`` and
``openstack`` (Nova leaves that last one out; the responder always listed it);
``<version>/`` (or ``ec2/<version>/``) lists ``meta-data/`` (``user-data`` would follow, but
the NB has none: 404, as Nova without user data); ``<version>/meta-data/`` lists the keys
that version has, sorted, a directory with a trailing ``/``; each leaf is plain text, a list
one item a line. Values come from what the NB has: instance-id is the port's device id (Nova
gives an ``i-xxxxxxxx`` EC2 id, which only Nova's database maps to the instance: there is
none here, and cloud-init takes any string), hostname / local-hostname / public-hostname the
meta_data.json hostname, local-ipv4 the address asked from, security-groups the port's
groups by name when the caller knows the names (else by id), availability-zone ``nova``.
What only Nova knows is empty: ami-id, reservation-id, instance-type, public-ipv4 (no
floating address here); ami-manifest-path is ``FIXME`` and instance-action ``none``, Nova's
constants; block-device-mapping names the libvirt root disk (ami ``vda``, root
``/dev/vda``). No key pair in the NB: no public-keys, as Nova for an instance without one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping

from dragonflow.model import Network, Port, Subnet

# the OpenStack metadata versions cloud-init knows, newest last; all served alike
VERSIONS = ("2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30",
            "2016-10-06", "2017-02-22", "2018-08-27", "latest")
FILES = ("meta_data.json", "network_data.json", "vendor_data.json", "vendor_data2.json")
# the EC2 metadata versions Nova serves, oldest first ("latest" is the last)
EC2_VERSIONS = ("1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15",
                "2008-02-01", "2008-09-01", "2009-04-04")
# the version that brought each meta-data key (the others are in 1.0)
EC2_SINCE = {"local-hostname": "2007-01-19", "public-hostname": "2007-01-19",
             "public-ipv4": "2007-01-19", "instance-type": "2007-08-29",
             "block-device-mapping": "2007-12-15", "placement": "2008-02-01",
             "instance-action": "2008-09-01"}
NOT_FOUND = (404, "text/plain", "404 Not Found")


def instance_signature(secret: str, instance_id: str) -> str:
    """X-Instance-ID-Signature: what Nova's metadata handler recomputes and compares
    (HMAC-SHA256 of the instance id, keyed with the shared secret, hex)."""
    return hmac.new(secret.encode(), instance_id.encode(), hashlib.sha256).hexdigest()


def hostname_of(name: str, fallback: str, domain: str = "") -> str:
    """A host name from an instance name, as Nova sanitizes display names (lower case,
    spaces and underscores to '-', other characters out, at most 63 characters)."""
    host = re.sub(r"[ _]", "-", name.lower())
    host = re.sub(r"[^\w.-]+", "", host, flags=re.ASCII).strip(".-")[:63]
    host = host or fallback
    return f"{host}.{domain}" if domain else host


def meta_data(port: Port, ip: str, domain: str = "") -> dict[str, object]:
    name = port.name or port.device_id
    return {
        "uuid": port.device_id,
        "name": name,
        "hostname": hostname_of(name, "host-" + ip.replace(".", "-").replace(":", "-"),
                                domain),
        "project_id": port.topic,
        "launch_index": 0,
        "public_keys": {},
        "keys": [],
        "meta": {},
        "devices": [],
    }


def ec2_meta_data(port: Port, ip: str, version: str, domain: str = "",
                  group_names: Mapping[str, str] | None = None) -> dict[str, object]:
    """The ``meta-data`` tree of EC2 ``version`` (see the module docstring)."""
    names = group_names or {}
    hostname = str(meta_data(port, ip, domain)["hostname"])
    tree: dict[str, object] = {
        "ami-id": "", "ami-launch-index": "0", "ami-manifest-path": "FIXME",
        "block-device-mapping": {"ami": "vda", "root": "/dev/vda"},
        "hostname": hostname, "instance-action": "none", "instance-id": port.device_id,
        "instance-type": "", "local-hostname": hostname, "local-ipv4": ip,
        "placement": {"availability-zone": "nova"}, "public-hostname": hostname,
        "public-ipv4": "", "reservation-id": "",
        "security-groups": [names.get(g) or g for g in port.security_groups],
    }
    have = EC2_VERSIONS.index(version)
    return {k: v for k, v in tree.items()
            if EC2_VERSIONS.index(EC2_SINCE.get(k, "1.0")) <= have}


def _ec2(parts: list[str], port: Port, ip: str, domain: str,
         group_names: Mapping[str, str] | None) -> tuple[int, str, str]:
    if not parts:
        return 200, "text/plain", "\n".join((*EC2_VERSIONS, "latest"))
    version = EC2_VERSIONS[-1] if parts[0] == "latest" else parts[0]
    if version not in EC2_VERSIONS:
        return NOT_FOUND
    node: object = {"meta-data": ec2_meta_data(port, ip, version, domain, group_names)}
    for part in parts[1:]:
        if not isinstance(node, dict) or part not in node:
            return NOT_FOUND
        node = node[part]
    if isinstance(node, dict):
        body = "\n".join(k + "/" if isinstance(v, dict) else k for k, v in sorted(node.items()))
    elif isinstance(node, list):
        body = "\n".join(node)
    else:
        body = str(node)
    return 200, "text/plain", body


def _routes(sub: Subnet) -> list[dict[str, str]]:
    out = []
    if sub.gateway_ip is not None:
        zero = "0.0.0.0" if sub.ip_version == 4 else "::"
        out.append({"network": zero, "netmask": zero, "gateway": str(sub.gateway_ip)})
    for r in sub.host_routes:
        if r.destination.version == sub.ip_version:
            out.append({"network": str(r.destination.network_address),
                        "netmask": str(r.destination.netmask), "gateway": str(r.nexthop)})
    return out


def network_data(port: Port, network: Network | None,
                 subnets: Mapping[str, Subnet]) -> dict[str, object]:
    link = f"tap{port.id[:11]}"
    links = [{"id": link, "vif_id": port.id, "type": "ovs",
              "mtu": network.mtu if network is not None else None,
              "ethernet_mac_address": port.mac}]
    networks: list[dict[str, object]] = []
    dns: list[str] = []
    for i, f in enumerate(port.fixed_ips):
        sub = subnets.get(f.subnet_id)
        if sub is None:
            continue
        net_type = f"ipv{sub.ip_version}"
        mode = sub.ipv6_address_mode if sub.ip_version == 6 else None
        if mode in ("slaac", "dhcpv6-stateless", "dhcpv6-stateful"):
            net_type = f"ipv6_{mode}"
        entry: dict[str, object] = {"id": f"network{i}", "type": net_type, "link": link,
                                    "network_id": port.network_id}
        if not net_type.startswith("ipv6_"):  # static: the address Neutron allocated
            entry["ip_address"] = str(f.ip_address)
            entry["netmask"] = str(sub.cidr.netmask)
        entry["routes"] = _routes(sub)
        servers = [str(d) for d in sub.dns_nameservers]
        entry["services"] = [{"type": "dns", "address": d} for d in servers]
        dns += [d for d in servers if d not in dns]
        networks.append(entry)
    return {"links": links, "networks": networks,
            "services": [{"type": "dns", "address": d} for d in dns]}


def respond(path: str, port: Port, ip: str, network: Network | None,
            subnets: Mapping[str, Subnet], domain: str = "", *,
            group_names: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of the built-in responder for ``path``
    (``group_names``: security group id -> name, for the EC2 security-groups)."""
    parts = [p for p in path.split("/") if p]
    text, js = "text/plain", "application/json"
    if parts == []:
        return 200, text, "\n".join((*EC2_VERSIONS, "latest", "openstack"))
    if parts[0] != "openstack":
        return _ec2(parts[1:] if parts[0] == "ec2" else parts, port, ip, domain, group_names)
    if parts == ["openstack"]:
        return 200, text, "\n".join(VERSIONS)
    if parts[1] not in VERSIONS or len(parts) > 3:
        return 404, text, "404 Not Found"
    if len(parts) == 2:
        return 200, text, "\n".join(FILES)
    doc = parts[2]
    if doc == "meta_data.json":
        return 200, js, json.dumps(meta_data(port, ip, domain))
    if doc == "network_data.json":
        return 200, js, json.dumps(network_data(port, network, subnets))
    if doc in ("vendor_data.json", "vendor_data2.json"):
        return 200, js, "{}"
    return 404, text, "404 Not Found"  # user_data: none, as Nova says when there is none
