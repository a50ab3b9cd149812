"""IPAM: the NB allocates a port's address from its subnet, and its MAC.

There is no allocation table: the NB's claims are the allocation. Every port holds the claim
``claim/ip/<subnet id>/<address>`` for each fixed IP and ``claim/mac/<network id>/<mac>``
for its MAC (see dragonflow/db/nbapi.py), checked absent by the commit that creates the port.
So :func:`create_port` picks an address that looks free (the subnet's CIDR minus its network
and broadcast addresses, its gateway and DHCP addresses, the addresses claimed by ports and
those of router interfaces on the subnet), builds the port and creates it; if another writer
took that address (or the random MAC) between the read and the commit, the commit fails,
NbApi raises the precise ValidationError, and the allocation is tried again with another
candidate. Two allocations can never get the same address; an exhausted subnet raises
:class:`AddressExhausted`.

Subnets have no allocation pools in the NB model: the whole CIDR is the pool.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterator

from dragonflow.db import errors
from dragonflow.db.nbapi import NbApi
from dragonflow.model import FixedIp, IPAddress, Port, Router, Subnet, ValidationError

MAC_PREFIX = "fa:16:3e"  # OpenStack's locally administered OUI
DEFAULT_ATTEMPTS = 64
_CANDIDATES = 32  # free addresses looked at per attempt (the first is tried; after a lost
#                   race a random one of them, so racing allocators spread out)


class AddressExhausted(errors.NbError):
    """No free address is left in the subnet."""

    def __init__(self, subnet: Subnet, usable: int, used: int) -> None:
        super().__init__("subnet", subnet.id, "cidr",
                         f"no free address in {subnet.cidr} ({usable} usable addresses, "
                         f"{used} in use by ports and routers; gateway and DHCP "
                         "addresses excluded)")


class AllocationFailed(errors.NbError):
    """Every attempt lost a race (or MACs kept colliding): nothing was created."""


def random_mac(rng: random.Random | None = None) -> str:
    """``fa:16:3e:xx:xx:xx`` with three random bytes (unique in its network only by the
    claim that the create checks)."""
    r = rng or random.SystemRandom()
    return f"{MAC_PREFIX}:{r.randrange(256):02x}:{r.randrange(256):02x}:{r.randrange(256):02x}"


def reserved_addresses(subnet: Subnet) -> set[IPAddress]:
    """Addresses of the subnet that are never handed out: network address (and IPv4
    broadcast) of subnets larger than two addresses, the gateway and the DHCP address."""
    net = subnet.cidr
    out: set[IPAddress] = set()
    if net.num_addresses > 2:
        out.add(net.network_address)
        if net.version == 4:
            out.add(net.broadcast_address)
    for ip in (subnet.gateway_ip, subnet.dhcp_ip):
        if ip is not None:
            out.add(ip)
    return out


def used_addresses(nb: NbApi, subnet: Subnet) -> set[IPAddress]:
    """Addresses of the subnet in use now: claimed by ports (the claims, one prefix read)
    and held by router interfaces on the subnet (those claim no address)."""
    prefix = f"{nb.root}claim/ip/{subnet.id}/"
    kvs, _ = nb.driver.get_prefix(prefix)
    out: set[IPAddress] = set()
    for kv in kvs:
        try:
            out.add(ipaddress.ip_address(kv.key[len(prefix):]))
        except ValueError:
            continue
    for router in nb.by_index(Router, "subnet_id", subnet.id):
        for port in router.ports:
            out.update(iface.ip for iface in port.cidrs if iface.ip in subnet.cidr)
    return out


def _usable_count(subnet: Subnet) -> int:
    net = subnet.cidr
    reserved = {ip for ip in reserved_addresses(subnet) if ip in net}
    return net.num_addresses - len(reserved)


def free_addresses(nb: NbApi, subnet: Subnet, taken: set[IPAddress] | None = None
                   ) -> Iterator[IPAddress]:
    """Free addresses of the subnet in ascending order (lazily: an IPv6 /64 is never
    listed), skipping ``taken`` too."""
    skip = reserved_addresses(subnet) | used_addresses(nb, subnet) | (taken or set())
    net = subnet.cidr
    first, last = int(net.network_address), int(net.broadcast_address)
    for n in range(first, last + 1):
        ip = ipaddress.ip_address(n) if net.version == 4 else ipaddress.IPv6Address(n)
        if ip not in skip:
            yield ip


def _claim_field(e: ValidationError) -> str | None:
    """'ip' or 'mac' if ``e`` says a claim of the port was held by another object."""
    if "is already used by" not in e.reason:
        return None
    if e.field == "mac":
        return "mac"
    if e.field.startswith("fixed_ips[") and e.field.endswith(".ip_address"):
        return "ip"
    return None


def create_port(nb: NbApi, subnet: Subnet, make: Callable[[FixedIp, str], Port], *,
                mac: str | None = None, attempts: int = DEFAULT_ATTEMPTS,
                rng: random.Random | None = None) -> Port:
    """Create the port ``make(fixed_ip, mac)`` returns, with a free address of ``subnet``
    and ``mac`` (default: a random ``fa:16:3e`` MAC), retrying with another address (or
    MAC) when a racing writer took it first. Raises AddressExhausted when the subnet is
    full, AllocationFailed after ``attempts`` lost races, and whatever NbApi raises for
    any other fault of the port (nothing is created then)."""
    r = rng or random.Random()
    lost: set[IPAddress] = set()
    last = ""
    for attempt in range(attempts):
        candidates: list[IPAddress] = []
        for ip in free_addresses(nb, subnet, lost):
            candidates.append(ip)
            if len(candidates) >= _CANDIDATES:
                break
        if not candidates:
            raise AddressExhausted(subnet, _usable_count(subnet),
                                   len(used_addresses(nb, subnet)))
        ip = candidates[0] if attempt == 0 else r.choice(candidates)
        port = make(FixedIp(subnet_id=subnet.id, ip_address=ip), mac or random_mac(r))
        try:
            return nb.create(port)
        except ValidationError as e:
            kind = _claim_field(e)
            if kind is None:
                raise
            last = str(e)
            if kind == "ip":
                lost.add(ip)
            elif mac is not None:  # a MAC the caller chose is taken: no retry helps
                raise
    raise AllocationFailed("subnet", subnet.id, "cidr",
                           f"no address could be allocated in {attempts} attempts "
                           f"(racing writers); last: {last}")
