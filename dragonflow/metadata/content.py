"""The built-in metadata responder's documents, from the NB (no Nova).

The OpenStack metadata format as Nova serves it (cloud-init's OpenStack data source reads
these): ``openstack`` lists the versions, ``openstack/<version>/`` the files;
``meta_data.json`` names the instance (uuid = the port's device id, name, hostname,
project) and ``network_data.json`` describes its network (links, networks, routes, DNS) the
way nova/virt/netutils.py builds it, from the port, its network and subnets.
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
            subnets: Mapping[str, Subnet], domain: str = "") -> tuple[int, str, str]:
    """(status, content type, body) of the built-in responder for ``path``."""
    parts = [p for p in path.split("/") if p]
    text, js = "text/plain", "application/json"
    if parts == [] or parts == ["openstack"]:
        return 200, text, "\n".join(VERSIONS if parts else ("openstack",))
    if parts[0] != "openstack" or parts[1] not in VERSIONS or len(parts) > 3:
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
