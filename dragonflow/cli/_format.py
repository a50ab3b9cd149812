"""Plain-text rendering for df-db: per-table column choices and an aligned table writer.

Columns read the object's JSON form (``to_dict()``), so what ``ls`` shows is exactly what
``get`` and ``dump`` print, only condensed: lists become comma-separated, nested records a
short summary, ``None`` a dash.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], str]]

# Tables in dependency order: an object only refers to tables listed before its own (security
# groups may also refer to other security groups; the loader orders those among themselves).
TABLE_ORDER = (
    "chassis", "qospolicy", "addressgroup", "securitygroup", "network", "subnet", "port",
    "router", "floatingip",
)


def table_rank(table: str) -> int:
    return TABLE_ORDER.index(table) if table in TABLE_ORDER else len(TABLE_ORDER)


def ordered_tables(tables: Iterable[str]) -> list[str]:
    return sorted(tables, key=lambda t: (table_rank(t), t))


def cell(value: Any) -> str:
    """One value as a short, readable table cell."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={cell(v)}" for k, v in value.items())
    return str(value)


def field(name: str) -> Callable[[Row], str]:
    return lambda row: cell(row[name])


def _beat_age(row: Row) -> str:
    """How long ago the chassis' controller last beat (liveness is kept beside the object)."""
    at = row.get("heartbeat")
    return "never" if at is None else f"{max(0.0, time.time() - at):.0f}s ago"


def _ips(row: Row) -> str:
    return cell([ip["ip_address"] for ip in row["fixed_ips"]])


def _binding(row: Row) -> str:
    b = row["binding"]
    return "-" if b is None else f"{b['kind']}:{b['chassis_id']}"


def _router_ports(row: Row) -> str:
    return cell([",".join(p["cidrs"]) or p["id"] for p in row["ports"]])


def _gateway(row: Row) -> str:
    gw = row["gateway"]
    if gw is None:
        return "-"
    return f"{gw['network_id']}/{gw['ip_address']}" + ("" if gw["enable_snat"] else " nosnat")


def _count(name: str) -> Callable[[Row], str]:
    return lambda row: str(len(row[name]))


def _qos_rule(rule: Row) -> str:
    if rule["type"] == "dscp_marking":
        return f"dscp={rule['dscp_mark']}"
    burst = "" if rule["max_burst_kbps"] is None else f"/{rule['max_burst_kbps']}"
    return f"{rule['direction']}={rule['max_kbps']}{burst}kbps"


def _qos_rules(row: Row) -> str:
    return cell([_qos_rule(r) for r in row["rules"]])


COLUMNS: dict[str, list[Column]] = {
    "chassis": [("IP", field("ip")), ("TUNNELS", field("tunnel_types")),
                ("EXT_IP", field("external_host_ip")),
                ("BRIDGES", field("bridge_mappings")), ("LAST_BEAT", _beat_age)],
    "network": [("TYPE", field("network_type")), ("SEGID", field("segmentation_id")),
                ("PHYSNET", field("physical_network")), ("MTU", field("mtu")),
                ("EXTERNAL", field("external")), ("KEY", field("unique_key"))],
    "subnet": [("NETWORK", field("network_id")), ("CIDR", field("cidr")),
               ("GATEWAY", field("gateway_ip")), ("DHCP", field("enable_dhcp"))],
    "port": [("NETWORK", field("network_id")), ("MAC", field("mac")), ("IPS", _ips),
             ("BINDING", _binding), ("STATUS", field("status")),
             ("OWNER", field("device_owner")), ("KEY", field("unique_key"))],
    "router": [("PORTS", _router_ports), ("ROUTES", _count("routes")),
               ("GATEWAY", _gateway), ("KEY", field("unique_key"))],
    "securitygroup": [("RULES", _count("rules"))],
    "floatingip": [("ADDRESS", field("floating_ip_address")),
                   ("NETWORK", field("floating_network_id")), ("PORT", field("port_id")),
                   ("FIXED_IP", field("fixed_ip_address")), ("ROUTER", field("router_id")),
                   ("STATUS", field("status"))],
    "qospolicy": [("RULES", _qos_rules)],
    "addressgroup": [("ADDRESSES", field("addresses"))],
}

BASE_COLUMNS: list[Column] = [
    ("ID", field("id")), ("NAME", field("name")), ("TOPIC", field("topic")),
    ("VERSION", field("version")),
]


def columns_for(table: str) -> list[Column]:
    return BASE_COLUMNS + COLUMNS.get(table, [])


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def render_objects(table: str, rows: Sequence[Row]) -> str:
    cols = columns_for(table)
    return render([h for h, _ in cols], [[get(r) for _, get in cols] for r in rows])
