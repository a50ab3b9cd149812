"""Read Neutron's current state (the source of truth) and translate it into NB objects.

Used where an event's own dict is not enough: the writer's "fresh" re-read after a version
conflict, routers (whose NB object gathers the router, its interface ports and their
subnets), objects Neutron changed behind the drivers' back, and the consistency sync.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from neutron_lib import context as n_context
from neutron_lib import exceptions as n_exc
from neutron_lib.exceptions import l3 as l3_exc
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory

from dragonflow.model import NbObject
from dragonflow.neutron import translate

NOT_FOUND = (n_exc.NotFound,)  # every Neutron "... could not be found" derives from it

# NB table -> how the sync lists Neutron's objects of it, in creation order.
SYNC_TABLES = ("network", "subnet", "addressgroup", "securitygroup", "port", "router",
               "floatingip")


def admin_context() -> Any:
    return n_context.get_admin_context()


def core_plugin() -> Any:
    return directory.get_plugin()


def l3_plugin() -> Any:
    """The L3 plugin if it is ours (routers and floating IPs are only ours to write then)."""
    from dragonflow.neutron.l3.plugin import DfL3RouterPlugin

    plugin = directory.get_plugin(plugin_constants.L3)
    return plugin if isinstance(plugin, DfL3RouterPlugin) else None


def _one(read: Callable[[], Mapping[str, Any]],
         build: Callable[[Mapping[str, Any]], NbObject | None]) -> NbObject | None:
    try:
        obj = read()
    except NOT_FOUND:
        return None
    return build(obj)


def network(ctx: Any, obj_id: str) -> NbObject | None:
    return _one(lambda: core_plugin().get_network(ctx, obj_id), translate.network)


def subnet(ctx: Any, obj_id: str) -> NbObject | None:
    return _one(lambda: core_plugin().get_subnet(ctx, obj_id), translate.subnet)


def port(ctx: Any, obj_id: str) -> NbObject | None:
    return _one(lambda: core_plugin().get_port(ctx, obj_id), translate.port)


def security_group(ctx: Any, obj_id: str) -> NbObject | None:
    return _one(lambda: core_plugin().get_security_group(ctx, obj_id),
                translate.security_group)


def address_group(ctx: Any, obj_id: str) -> NbObject | None:
    return _one(lambda: core_plugin().get_address_group(ctx, obj_id), translate.address_group)


def floatingip(ctx: Any, obj_id: str) -> NbObject | None:
    l3 = l3_plugin()
    if l3 is None:
        return None
    return _one(lambda: l3.get_floatingip(ctx, obj_id), translate.floatingip)


def _router_parts(ctx: Any, router_ids: Iterable[str]
                  ) -> tuple[dict[str, list[Mapping[str, Any]]], dict[str, Mapping[str, Any]]]:
    """Interface ports by router id, and every subnet they use by id."""
    ids = list(router_ids)
    by_router: dict[str, list[Mapping[str, Any]]] = {rid: [] for rid in ids}
    if not ids:
        return by_router, {}
    ports = core_plugin().get_ports(ctx, filters={
        "device_id": ids, "device_owner": sorted(translate.ROUTER_INTERFACE_OWNERS)})
    for p in ports:
        by_router.setdefault(p["device_id"], []).append(p)
    subnet_ids = sorted({f["subnet_id"] for p in ports for f in p.get("fixed_ips") or ()})
    subnets = core_plugin().get_subnets(ctx, filters={"id": subnet_ids}) if subnet_ids else []
    return by_router, {s["id"]: s for s in subnets}


def router(ctx: Any, obj_id: str) -> NbObject | None:
    l3 = l3_plugin()
    if l3 is None:
        return None
    try:
        r = l3.get_router(ctx, obj_id)
    except (l3_exc.RouterNotFound, *NOT_FOUND):
        return None
    ports, subnets = _router_parts(ctx, [obj_id])
    return translate.router(r, ports[obj_id], subnets)


READERS: dict[str, Callable[[Any, str], NbObject | None]] = {
    "network": network, "subnet": subnet, "port": port, "securitygroup": security_group,
    "addressgroup": address_group, "router": router, "floatingip": floatingip,
}


def fresh(table: str, obj_id: str) -> Callable[[], NbObject | None]:
    """A re-reader for NbWriter.put: the object as Neutron has it now (admin context)."""
    return lambda: READERS[table](admin_context(), obj_id)


# --- everything, for the sync ----------------------------------------------------------
def list_all(ctx: Any, on_error: Callable[[str, str, Exception], None]
             ) -> dict[str, dict[str, NbObject]]:
    """Every Neutron object of the synced tables, translated; ``on_error(table, id, exc)``
    for the ones that cannot be. Router interface ports are not listed as ports."""
    core, l3 = core_plugin(), l3_plugin()
    raw: dict[str, list[Mapping[str, Any]]] = {
        "network": core.get_networks(ctx),
        "subnet": core.get_subnets(ctx),
        "addressgroup": core.get_address_groups(ctx),
        "securitygroup": core.get_security_groups(ctx),
        "port": core.get_ports(ctx),
    }
    builders: dict[str, Callable[[Mapping[str, Any]], NbObject | None]] = {
        "network": translate.network, "subnet": translate.subnet,
        "addressgroup": translate.address_group,
        "securitygroup": translate.security_group, "port": translate.port,
        "floatingip": translate.floatingip,
    }
    out: dict[str, dict[str, NbObject]] = {t: {} for t in SYNC_TABLES}
    if l3 is not None:
        raw["floatingip"] = l3.get_floatingips(ctx)
        routers = l3.get_routers(ctx)
        ports, subnets = _router_parts(ctx, [r["id"] for r in routers])
        for r in routers:
            _add(out, "router", r, lambda d: translate.router(d, ports[d["id"]], subnets),
                 on_error)
    for table, objs in raw.items():
        for o in objs:
            _add(out, table, o, builders[table], on_error)
    return out


def _add(out: dict[str, dict[str, NbObject]], table: str, obj: Mapping[str, Any],
         build: Callable[[Mapping[str, Any]], NbObject | None],
         on_error: Callable[[str, str, Exception], None]) -> None:
    try:
        nb_obj = build(obj)
    except Exception as e:  # noqa: BLE001 -- reported to the caller, which logs it
        on_error(table, obj["id"], e)
        return
    if nb_obj is not None:
        out[table][obj["id"]] = nb_obj
