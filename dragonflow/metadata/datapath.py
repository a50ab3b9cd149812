"""What the metadata flows and the metadata proxy agree on.

A local VM's request to 169.254.169.254:80 is steered by flows to one OVS internal port per
chassis (``[metadata] interface``, default ``df-metadata``), where ``df-metadata`` listens on
169.254.169.254:80 in the chassis' own network namespace. On the way the flows rewrite the
request's IPv4 source to an address that encodes WHICH PORT SENT IT -- taken from the ofport
the frame came in on, never from anything the VM wrote -- and which of that port's IPv4
addresses it came from::

    source = 100.64.0.0 + 4 * <port unique key> + <index of the fixed IPv4, 0..3>

(100.64.0.0/10: 2**20 - 1 port keys). The answer goes back through the same flows, which
restore the VM's own address. A port whose key does not fit gets no steering (logged); a
source address that is not one of the port's first four fixed IPv4 addresses is dropped, so
a VM that spoofs another VM's address gets nothing, never the other VM's data.

On the chassis the encoded addresses are routed to the interface by a policy rule (replies
from 169.254.169.254 look up their own table), so the host's main routing table is never
touched, and the interface's ARP for them is answered by a flow.
"""

from __future__ import annotations

import ipaddress

METADATA_IP = "169.254.169.254"
METADATA_TCP_PORT = 80
KEY_NET = ipaddress.IPv4Network("100.64.0.0/10")
ADDRS_PER_PORT = 4  # a port's first four fixed IPv4 addresses each have their own address
MAX_KEY = KEY_NET.num_addresses // ADDRS_PER_PORT - 1
DEFAULT_INTERFACE = "df-metadata"
INTERFACE_MAC = "fa:16:3e:a9:fe:fe"  # the metadata interface's own MAC (df-metadata sets it)
# the MAC the VMs see for 169.254.169.254, and the interface sees for the encoded addresses
SERVICE_MAC = "fa:16:3e:a9:fe:01"
ROUTE_TABLE = 0xDF  # the policy routing table of replies from 169.254.169.254
RULE_PRIORITY = 0xDF


def port_address(key: int, index: int = 0) -> str | None:
    """The source address standing for port ``key``'s ``index``-th IPv4 address (None if
    the key or the index does not fit)."""
    if not 0 < key <= MAX_KEY or not 0 <= index < ADDRS_PER_PORT:
        return None
    return str(KEY_NET.network_address + key * ADDRS_PER_PORT + index)


def decode_address(address: str) -> tuple[int, int] | None:
    """(port key, address index) of an encoded source address; None for anything else."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if not isinstance(ip, ipaddress.IPv4Address) or ip not in KEY_NET:
        return None
    offset = int(ip) - int(KEY_NET.network_address)
    key, index = divmod(offset, ADDRS_PER_PORT)
    return (key, index) if key > 0 else None
