"""The L3 service plugin ``df-l3``: Neutron routers and floating IPs into the NB.

Neutron's DB mixins do all the API and DB work (routers, interfaces by subnet and by port,
extra routes, external gateway with the SNAT flag, floating IPs); each public method here
calls them and then writes the result to the NB. A router is always written as Neutron has
it *after* the call (router + interface ports + their subnets, read fresh), since an NB
Router gathers all of those. There are no L3 agents: the local controllers route.
Floating IPs are created DOWN: their status is the NB's, written by the local controller
that installs their NAT, and applied here by status.PortStatusFollower.
Failures are logged (NbWriter) and never fail the API call; sync.py repairs them.
"""

from __future__ import annotations

from typing import Any

from neutron.api.rpc.agentnotifiers import utils as notifier_utils
from neutron.db import (
    dns_db,
    extraroute_db,
    l3_db,
    l3_fip_pools_db,
    l3_fip_port_details,
    l3_gwmode_db,
)
from neutron.db.models import l3 as l3_models
from neutron.quota import resource_registry
from neutron_lib import constants as n_const
from neutron_lib.api.definitions import extraroute as extraroute_apidef
from neutron_lib.api.definitions import (
    extraroute_atomic,
    fip_port_details,
    floatingip_pools,
    l3_ext_gw_mode,
    l3_port_ip_change_not_allowed,
)
from neutron_lib.api.definitions import l3 as l3_apidef
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.services import base as service_base
from oslo_config import cfg

from dragonflow.model import FloatingIP, Router
from dragonflow.neutron import config, source, translate
from dragonflow.neutron.writer import NbWriter, Outcome


class DfL3RouterPlugin(service_base.ServicePluginBase,
                       l3_db.L3NotifierMixin,  # first: its interface methods notify, then super
                       extraroute_db.ExtraRoute_dbonly_mixin,
                       l3_gwmode_db.L3_NAT_dbonly_mixin,
                       dns_db.DNSDbMixin,
                       l3_fip_port_details.Fip_port_details_db_mixin,
                       l3_fip_pools_db.FloatingIPPoolsMixin):
    """Distributed routers and floating IPs, implemented by the local controllers."""

    supported_extension_aliases = [
        l3_apidef.ALIAS, l3_ext_gw_mode.ALIAS, extraroute_apidef.ALIAS,
        extraroute_atomic.ALIAS, fip_port_details.ALIAS, floatingip_pools.ALIAS,
        l3_port_ip_change_not_allowed.ALIAS,
    ]
    __native_pagination_support = True
    __native_sorting_support = True

    # Neutron refuses IP changes on these ports (extension l3-port-ip-change-not-allowed).
    IP_UPDATE_NOT_ALLOWED_LIST = [
        n_const.DEVICE_OWNER_ROUTER_INTF,
        n_const.DEVICE_OWNER_ROUTER_HA_INTF,
        n_const.DEVICE_OWNER_HA_REPLICATED_INT,
        n_const.DEVICE_OWNER_ROUTER_SNAT,
        n_const.DEVICE_OWNER_DVR_INTERFACE,
    ]

    @resource_registry.tracked_resources(router=l3_models.Router,
                                         floatingip=l3_models.FloatingIP)
    def __init__(self) -> None:
        super().__init__()
        self._l3_rpc_notifier = notifier_utils.RPCNotifierHandler()  # no L3 agents to notify
        self.nb = config.nb_from_conf(cfg.CONF)
        self.writer = NbWriter(self.nb, source.fresh)

    @classmethod
    def get_plugin_type(cls) -> str:
        return plugin_constants.L3

    def get_plugin_description(self) -> str:
        return "Dragonflow distributed L3: routers and floating IPs as local flows"

    def router_supports_scheduling(self, context: Any, router_id: str) -> bool:
        return False  # nothing to schedule: every chassis routes

    # --- NB writes ---------------------------------------------------------------------------
    def write_router(self, router_id: str) -> Outcome:
        fresh = source.fresh("router", router_id)
        return self.writer.put("router", router_id, fresh, fresh)

    def write_floatingip(self, fip: dict[str, Any]) -> Outcome:
        return self.writer.put("floatingip", fip["id"], lambda: translate.floatingip(fip),
                               source.fresh("floatingip", fip["id"]), fip)

    def _refresh_referrers_and_delete(self, table: str, obj_id: str) -> None:
        self.writer.refresh_referrers(table, obj_id, source.fresh)
        self.writer.delete(table, obj_id)

    # --- routers ---------------------------------------------------------------------------
    def create_router(self, context: Any, router: dict[str, Any]) -> dict[str, Any]:
        result = super().create_router(context, router)
        self.write_router(result["id"])
        return result  # type: ignore[no-any-return]

    def update_router(self, context: Any, id: str, router: dict[str, Any]) -> dict[str, Any]:
        result = super().update_router(context, id, router)
        self.write_router(id)
        return result  # type: ignore[no-any-return]

    def delete_router(self, context: Any, id: str) -> None:
        super().delete_router(context, id)
        self._refresh_referrers_and_delete(Router.TABLE, id)

    def add_router_interface(self, context: Any, router_id: str,
                             interface_info: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().add_router_interface(context, router_id, interface_info)
        self.write_router(router_id)
        return result  # type: ignore[no-any-return]

    def remove_router_interface(self, context: Any, router_id: str,
                                interface_info: dict[str, Any]) -> dict[str, Any]:
        result = super().remove_router_interface(context, router_id, interface_info)
        self.write_router(router_id)
        return result  # type: ignore[no-any-return]

    def add_extraroutes(self, context: Any, router_id: str,
                        body: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().add_extraroutes(context, router_id, body)
        self.write_router(router_id)
        return result  # type: ignore[no-any-return]

    def remove_extraroutes(self, context: Any, router_id: str,
                           body: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().remove_extraroutes(context, router_id, body)
        self.write_router(router_id)
        return result  # type: ignore[no-any-return]

    # --- floating IPs. ML2 disassociates them from a port it deletes inside its transaction
    # (disassociate_floatingips); the mechanism driver rewrites them after the commit.
    # Status: created DOWN (as ML2/OVN does); ACTIVE only once the chassis hosting the port
    # reports its NAT installed in the NB (status.PortStatusFollower applies it here through
    # update_floatingip_status, inherited from L3_NAT_dbonly_mixin). ---
    def create_floatingip(self, context: Any, floatingip: dict[str, Any],
                          initial_status: str = n_const.FLOATINGIP_STATUS_DOWN
                          ) -> dict[str, Any]:
        result = super().create_floatingip(context, floatingip, initial_status)
        self.write_floatingip(result)
        return result  # type: ignore[no-any-return]

    def update_floatingip(self, context: Any, id: str, floatingip: dict[str, Any]
                          ) -> dict[str, Any]:
        result = super().update_floatingip(context, id, floatingip)
        self.write_floatingip(result)
        return result  # type: ignore[no-any-return]

    def delete_floatingip(self, context: Any, id: str) -> None:
        super().delete_floatingip(context, id)
        self.writer.delete(FloatingIP, id)

    def update_router_gw_ports(self, context: Any, network: Any, subnet: Any) -> None:
        """Called by the core plugin when a subnet is added to an external network: the
        routers' gateway ports get an address on it (as L3_NAT_db_mixin does)."""
        self._update_router_gateway_ports(context, network, subnet)
