"""IPAM (dragonflow/db/ipam.py) on the embedded NB: free addresses skip what is reserved
and used, an exhausted subnet says so, racing allocations never share an address or a MAC,
and a lost race is retried with another address."""

from __future__ import annotations

import ipaddress
import threading
import uuid

import pytest

from dragonflow.db import ipam
from dragonflow.db.connect import open_nb
from dragonflow.db.nbapi import NbApi
from dragonflow.model import FixedIp, Network, Port, Router, Subnet, ValidationError


def _nb(url: str | None = None) -> NbApi:
    return open_nb(url or f"memory://ipam-{uuid.uuid4().hex[:8]}", root="/ipam/")


def _net(nb: NbApi, cidr: str, gateway: str | None = None, dhcp_ip: str | None = None
         ) -> Subnet:
    nb.create(Network(id="n1", topic="p", network_type="vxlan", segmentation_id=5))
    return nb.create(Subnet.from_dict({"id": "s1", "topic": "p", "network_id": "n1",
                                       "cidr": cidr, "gateway_ip": gateway,
                                       "dhcp_ip": dhcp_ip}))


def _maker(port_id: str):
    def make(fip: FixedIp, mac: str) -> Port:
        return Port(id=port_id, topic="p", network_id="n1", mac=mac, fixed_ips=(fip,))
    return make


def test_first_free_address_skips_reserved_used_and_router_addresses() -> None:
    nb = _nb()
    sub = _net(nb, "10.0.0.0/29", gateway="10.0.0.1", dhcp_ip="10.0.0.2")
    nb.create(Port(id="taken", topic="p", network_id="n1", mac="fa:16:3e:00:00:01",
                   fixed_ips=(FixedIp.from_dict({"subnet_id": "s1",
                                                 "ip_address": "10.0.0.3"}),)))
    nb.create(Router.from_dict({"id": "r1", "topic": "p", "ports": [
        {"id": "r1-if0", "mac": "fa:16:3e:aa:00:01", "network_id": "n1",
         "cidrs": ["10.0.0.4/29"], "subnet_ids": ["s1"]}]}))
    free = [str(ip) for ip in ipam.free_addresses(nb, sub)]
    assert free == ["10.0.0.5", "10.0.0.6"]  # .0 network, .7 broadcast
    port = ipam.create_port(nb, sub, _maker("p1"))
    assert str(port.fixed_ips[0].ip_address) == "10.0.0.5"
    assert port.mac.startswith("fa:16:3e:")
    assert nb.get(Port, "p1") == port


def test_exhausted_subnet_raises_a_clear_error_and_creates_nothing() -> None:
    nb = _nb()
    sub = _net(nb, "10.0.1.0/29", gateway="10.0.1.1")  # 5 usable: .2 .. .6
    got = [ipam.create_port(nb, sub, _maker(f"p{i}")) for i in range(5)]
    assert sorted(str(p.fixed_ips[0].ip_address) for p in got) == [
        f"10.0.1.{i}" for i in range(2, 7)]
    with pytest.raises(ipam.AddressExhausted) as exc:
        ipam.create_port(nb, sub, _maker("p-last"))
    msg = str(exc.value)
    assert "subnet 's1'" in msg and "no free address in 10.0.1.0/29" in msg
    assert "5 usable" in msg and "5 in use" in msg
    assert nb.get(Port, "p-last") is None
    # a deleted port's address is free again
    nb.delete(Port, "p2")
    again = ipam.create_port(nb, sub, _maker("p-again"))
    assert again.fixed_ips[0].ip_address == got[2].fixed_ips[0].ip_address


def test_other_port_faults_are_raised_not_retried() -> None:
    nb = _nb()
    sub = _net(nb, "10.0.2.0/24")

    def bad(fip: FixedIp, mac: str) -> Port:
        return Port(id="bad", topic="p", network_id="n1", mac=mac, fixed_ips=(fip,),
                    security_groups=("no-such-group",))
    with pytest.raises(ValidationError, match="security_groups"):
        ipam.create_port(nb, sub, bad)
    nb.create(Port(id="m", topic="p", network_id="n1", mac="fa:16:3e:00:00:09"))
    with pytest.raises(ValidationError, match="mac"):  # a MAC chosen by the caller is taken
        ipam.create_port(nb, sub, _maker("m2"), mac="fa:16:3e:00:00:09")


def test_random_macs_are_unicast_openstack_macs() -> None:
    macs = {ipam.random_mac() for _ in range(200)}
    assert len(macs) > 190
    for mac in macs:
        Port(id="x", network_id="n", mac=mac)  # validates: unicast, well formed
        assert mac.startswith("fa:16:3e:")


def test_ipv6_subnet_is_allocated_lazily() -> None:
    nb = _nb()
    sub = _net(nb, "fd00:1::/64", gateway="fd00:1::1")
    p = ipam.create_port(nb, sub, _maker("v6"))
    assert p.fixed_ips[0].ip_address == ipaddress.ip_address("fd00:1::2")


def test_concurrent_allocations_get_unique_addresses() -> None:
    """Racing allocators (each its own NbApi on one database, as separate df-cni processes
    are) all succeed until the subnet is full, never twice the same address; the ones that
    find it full raise AddressExhausted."""
    url = f"memory://ipam-race-{uuid.uuid4().hex[:8]}"
    sub = _net(_nb(url), "10.0.3.0/27", gateway="10.0.3.1")  # 29 usable
    n = 36
    start = threading.Barrier(n)
    got: dict[int, Port] = {}
    failed: dict[int, Exception] = {}

    def run(i: int) -> None:
        nb = _nb(url)
        start.wait()
        try:
            got[i] = ipam.create_port(nb, sub, _maker(f"race{i}"))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            failed[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 29, failed
    assert all(isinstance(e, ipam.AddressExhausted) for e in failed.values()), failed
    ips = [p.fixed_ips[0].ip_address for p in got.values()]
    assert len(set(ips)) == len(ips)
    assert len({p.mac for p in got.values()}) == len(got)
    stored = _nb(url).by_index(Port, "subnet_id", "s1")
    assert sorted(p.id for p in stored) == sorted(p.id for p in got.values())
