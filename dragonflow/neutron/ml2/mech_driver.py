"""The ML2 mechanism driver ``df``: Neutron networks, subnets, ports and security groups
into the Dragonflow NB, agentless OVS port binding, and port status via provisioning blocks.

Configuration (Neutron's ml2_conf.ini): ``[ml2] mechanism_drivers = df`` (with
``service_plugins = df-l3`` in neutron.conf), ``[df] nb_db_url``, ``[controller]
integration_bridge`` / ``datapath_type`` (the VIF details Nova plugs with).

* postcommit hooks translate ``context.current`` and write it with NbWriter (NB version =
  Neutron revision_number + 1); failures are logged, never raised into the API call, and
  repaired by dragonflow.neutron.sync.
* Security groups, their rules and address groups arrive through the callback registry (ML2
  has no hooks for them).
* Binding is agentless (VIF type ovs on the integration bridge): overlay and local segments
  on any host; flat and VLAN segments only on a host whose NB Chassis (registered by its
  df-controller, id = the Neutron host name) maps the segment's physical network in its
  ``bridge_mappings``. Anything else is refused, with the reason logged.
* A port created or moved to a host gets a provisioning block of entity ``DF``; the
  :class:`~dragonflow.neutron.status.PortStatusFollower` (started with the API process)
  completes it when the local controller of that host reports the port ACTIVE in the NB
  (and applies the floating IPs' NB status to Neutron).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from neutron.db import provisioning_blocks
from neutron_lib import constants as n_const
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg

from dragonflow.model import AddressGroup, Chassis, Network, Port, SecurityGroup, Subnet
from dragonflow.neutron import config, source, translate
from dragonflow.neutron.status import DF_ENTITY, PortStatusFollower
from dragonflow.neutron.writer import NbWriter

LOG = logging.getLogger(__name__)

SUPPORTED_VNIC_TYPES = (portbindings.VNIC_NORMAL,)
RBAC_REREAD_DELAY = 0.3  # seconds after an RBAC policy request: the policy is written
# Network types whose ports the datapath carries on any chassis: the overlays (tunnels
# between chassis), and "local" (a network on one host: local delivery is all it promises).
DATAPATH_NETWORK_TYPES = ("vxlan", "geneve", "gre", "local")
# Provider network types, carried only by a chassis that maps the segment's physical network
# to a bridge (its NB Chassis' bridge_mappings, from [controller] bridge_mappings): a port
# bound anywhere else would go ACTIVE with no uplink behind it -- a lie to Nova and the user.
PHYSNET_NETWORK_TYPES = ("flat", "vlan")
# The apps that enforce port security and security groups on every chassis: the driver
# tells Nova "port_filter" only when the deployment's [controller] apps has both.
FILTER_APPS = ("port_security", "secgroup")


class DfMechanismDriver(api.MechanismDriver):
    """Mechanism driver ``df``; one instance per Neutron process."""

    def initialize(self) -> None:
        conf = config.register_opts(cfg.CONF)
        self.nb = config.nb_from_conf(conf)
        self.writer = NbWriter(self.nb, source.fresh)
        self.vif_type = portbindings.VIF_TYPE_OVS
        self.vif_details = {
            portbindings.CAP_PORT_FILTER: all(a in conf.controller.apps for a in FILTER_APPS),
            portbindings.OVS_HYBRID_PLUG: False,
            portbindings.VIF_DETAILS_BRIDGE_NAME: conf.controller.integration_bridge,
            portbindings.OVS_DATAPATH_TYPE: conf.controller.datapath_type,
            portbindings.VIF_DETAILS_CONNECTIVITY: self.connectivity,
        }
        self.status: PortStatusFollower | None = None
        self._subscribe()

    @property
    def connectivity(self) -> str:
        return portbindings.CONNECTIVITY_L2

    def _subscribe(self) -> None:
        registry.subscribe(self._on_process_init, resources.PROCESS, events.AFTER_INIT)
        for event in (events.AFTER_CREATE, events.AFTER_UPDATE):
            registry.subscribe(self._on_security_group, resources.SECURITY_GROUP, event)
        registry.subscribe(self._on_security_group_deleted, resources.SECURITY_GROUP,
                           events.AFTER_DELETE)
        for event in (events.AFTER_CREATE, events.AFTER_DELETE):
            registry.subscribe(self._on_security_group_rule, resources.SECURITY_GROUP_RULE,
                               event)
        # Neutron 29 (neutron.db.address_group_db) publishes AFTER_CREATE (without the
        # addresses), AFTER_UPDATE (name, and each add_addresses / remove_addresses) and
        # AFTER_DELETE (refused by Neutron while a rule names the group).
        for event in (events.AFTER_CREATE, events.AFTER_UPDATE):
            registry.subscribe(self._on_address_group, resources.ADDRESS_GROUP, event)
        registry.subscribe(self._on_address_group_deleted, resources.ADDRESS_GROUP,
                           events.AFTER_DELETE)
        # An RBAC policy makes a network shared with / external to other projects without
        # a network update (router:external follows access_as_external policies). Neutron
        # 29 publishes only BEFORE_CREATE / BEFORE_UPDATE / BEFORE_DELETE / AFTER_DELETE
        # for policies: re-read the network once the policy is written.
        for event in (events.BEFORE_CREATE, events.BEFORE_UPDATE, events.BEFORE_DELETE,
                      events.AFTER_DELETE):
            registry.subscribe(self._on_rbac_policy, resources.RBAC_POLICY, event)

    def _on_rbac_policy(self, resource: str, event: str, trigger: Any,
                        payload: Any = None) -> None:
        if payload is None or payload.metadata.get("object_type") != "network":
            return
        policy = payload.request_body if event == events.BEFORE_CREATE else (
            payload.states[0] if payload.states else None)
        net_id = (policy.get("object_id") if isinstance(policy, dict)
                  else getattr(policy, "object_id", None))
        if not net_id:
            return
        if event == events.AFTER_DELETE:
            self._refresh_network(net_id)
        else:  # the policy is not written yet: re-read when it is
            threading.Timer(RBAC_REREAD_DELAY, self._refresh_network, (net_id,)).start()

    def _refresh_network(self, net_id: str) -> None:
        try:
            fresh = source.fresh("network", net_id)
            self.writer.put("network", net_id, fresh, fresh)
        except Exception:  # a deleted network, the NB down: sync repairs it
            LOG.exception("network %s: re-read after an RBAC change failed", net_id)

    # --- port status -------------------------------------------------------------------
    def _on_process_init(self, resource: str, event: str, trigger: Any,
                         payload: Any = None) -> None:
        self.start_status_follower()

    def start_status_follower(self, threaded: bool = True) -> PortStatusFollower:
        """Follow the NB port status (idempotent). Runs in the API process after init."""
        if self.status is None:
            self.status = PortStatusFollower(self.nb)
            self.status.start(threaded)
        return self.status

    def stop_status_follower(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def _maybe_block(self, context: Any, original_host: str | None) -> None:
        """A port bound to a (new) host is not ACTIVE until that host's controller says so."""
        port = context.current
        host = context.host
        if (not host or host == original_host or translate.is_router_interface(port)
                or port.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL)
                not in SUPPORTED_VNIC_TYPES):
            return
        provisioning_blocks.add_provisioning_component(
            context.plugin_context, port["id"], resources.PORT, DF_ENTITY)

    # --- networks ----------------------------------------------------------------------
    def _put_network(self, net: dict[str, Any]) -> None:
        self.writer.put("network", net["id"], lambda: translate.network(net),
                        source.fresh("network", net["id"]), net)

    def create_network_postcommit(self, context: Any) -> None:
        self._put_network(context.current)

    def update_network_postcommit(self, context: Any) -> None:
        self._put_network(context.current)

    def delete_network_postcommit(self, context: Any) -> None:
        self.refresh_referrers(Network.TABLE, context.current["id"])
        self.writer.delete(Network, context.current["id"])

    # --- subnets -----------------------------------------------------------------------
    def _put_subnet(self, sub: dict[str, Any]) -> None:
        self.writer.put("subnet", sub["id"], lambda: translate.subnet(sub),
                        source.fresh("subnet", sub["id"]), sub)
        self._refresh_ports_on_subnet(sub["id"])

    def _refresh_ports_on_subnet(self, subnet_id: str) -> None:
        """Neutron changes ports' addresses for a subnet *before* the subnet's postcommit
        (IPv6 auto-addresses on create, prefix delegation on update, router gateway ports
        on a new external subnet), so those port writes found no NB subnet: redo them."""
        try:
            ports = source.core_plugin().get_ports(
                source.admin_context(), filters={"fixed_ips": {"subnet_id": [subnet_id]}})
        except Exception:  # noqa: BLE001 -- logged; sync repairs
            LOG.exception("subnet %s: listing its ports failed", subnet_id)
            return
        for port in ports:
            self._put_port(port, None)

    def create_subnet_postcommit(self, context: Any) -> None:
        self._put_subnet(context.current)

    def update_subnet_postcommit(self, context: Any) -> None:
        self._put_subnet(context.current)

    def delete_subnet_postcommit(self, context: Any) -> None:
        self.refresh_referrers(Subnet.TABLE, context.current["id"])
        self.writer.delete(Subnet, context.current["id"])

    # --- ports -------------------------------------------------------------------------
    def create_port_precommit(self, context: Any) -> None:
        self._maybe_block(context, None)

    def update_port_precommit(self, context: Any) -> None:
        self._maybe_block(context, context.original_host)

    def _put_port(self, port: dict[str, Any], original: dict[str, Any] | None) -> None:
        was_rif = original is not None and translate.is_router_interface(original)
        is_rif = translate.is_router_interface(port)
        if was_rif and original is not None and (
                not is_rif or original.get("device_id") != port.get("device_id")):
            # Left its router (e.g. a failed add-interface reverted): the router releases
            # the port's MAC and addresses before the port is written again.
            self._refresh_router(original.get("device_id"))
        if is_rif:
            if original is not None and not was_rif:
                self.writer.delete(Port, port["id"])  # became a router interface (by port)
            self._refresh_router(port.get("device_id"))
            return
        self.writer.put("port", port["id"], lambda: translate.port(port),
                        source.fresh("port", port["id"]), port)
        if port.get("device_owner") == n_const.DEVICE_OWNER_ROUTER_GW:
            self._refresh_router(port.get("device_id"))  # its address is the gateway's

    def create_port_postcommit(self, context: Any) -> None:
        self._put_port(context.current, None)

    def update_port_postcommit(self, context: Any) -> None:
        self._put_port(context.current, context.original)

    def delete_port_postcommit(self, context: Any) -> None:
        port = context.current
        if translate.is_router_interface(port):
            self._refresh_router(port.get("device_id"))
            return
        self.refresh_referrers(Port.TABLE, port["id"])
        self.writer.delete(Port, port["id"])

    def _refresh_router(self, router_id: str | None) -> None:
        if router_id and source.l3_plugin() is not None:
            fresh = source.fresh("router", router_id)
            self.writer.put("router", router_id, fresh, fresh)

    def refresh_referrers(self, table: str, obj_id: str) -> None:
        """Neutron dropped references to ``table/obj_id`` without a driver hook (floating
        IPs of a deleted port, rules naming a deleted group): rewrite the referrers."""
        self.writer.refresh_referrers(table, obj_id, source.fresh)

    # --- binding -----------------------------------------------------------------------
    def bind_port(self, context: Any) -> None:
        """Agentless: bind to the first segment the host's datapath carries -- an overlay or
        local segment on any host; a flat or VLAN segment only on a host whose NB Chassis
        (id = the Neutron host) maps the segment's physical network to a bridge. Otherwise
        refuse with the reasons (Neutron marks the binding failed)."""
        port = context.current
        vnic = port.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL)
        if vnic not in SUPPORTED_VNIC_TYPES:
            LOG.warning("port %s: not bound by df: vnic_type %r is not supported (only %s)",
                        port["id"], vnic, ", ".join(SUPPORTED_VNIC_TYPES))
            return
        host = context.host
        reasons: list[str] = []
        for segment in context.segments_to_bind:
            kind = segment[api.NETWORK_TYPE]
            if kind in DATAPATH_NETWORK_TYPES:
                context.set_binding(segment[api.ID], self.vif_type, dict(self.vif_details))
                return
            if kind in PHYSNET_NETWORK_TYPES:
                why = self._unmapped(host, segment.get(api.PHYSICAL_NETWORK))
                if why is None:
                    context.set_binding(segment[api.ID], self.vif_type,
                                        dict(self.vif_details))
                    return
                reasons.append(f"{kind} segment on physical network "
                               f"{segment.get(api.PHYSICAL_NETWORK)!r}: {why}")
            else:
                reasons.append(f"network type {kind} not carried by the Dragonflow datapath "
                               f"(it carries {', '.join(DATAPATH_NETWORK_TYPES)} on any host, "
                               f"{', '.join(PHYSNET_NETWORK_TYPES)} on hosts whose chassis "
                               "maps the physical network)")
        LOG.warning("port %s on host %s: not bound by df: %s", port["id"], host,
                    "; ".join(reasons) or "no segment to bind")

    def _unmapped(self, host: str, physnet: str | None) -> str | None:
        """Why ``host`` cannot carry a segment on ``physnet`` (None: it can)."""
        if not physnet:
            return "the segment names no physical network"
        try:
            chassis = self.nb.get(Chassis, host) if host else None
        except Exception as e:  # noqa: BLE001 -- the NB unreachable: refuse, say why
            return f"the NB chassis of host {host!r} could not be read ({e})"
        if chassis is None:
            return (f"no Dragonflow chassis is registered for host {host!r} (a df-controller "
                    "with this host name registers it, with its bridge_mappings)")
        if chassis.bridge_for(physnet) is not None:
            return None
        have = ", ".join(f"{p}:{b}" for p, b in chassis.bridge_mappings) or "none"
        return (f"chassis {host!r} does not map physical network {physnet!r} to a bridge "
                f"(its bridge_mappings: {have})")

    # --- security groups (callback registry) --------------------------------------------
    def _put_security_group(self, sg_id: str, sg: dict[str, Any] | None) -> None:
        fresh = source.fresh("securitygroup", sg_id)
        if sg is None or "security_group_rules" not in sg:
            self.writer.put("securitygroup", sg_id, fresh, fresh)
        else:
            self.writer.put("securitygroup", sg_id, lambda: translate.security_group(sg),
                            fresh, sg)

    def _on_security_group(self, resource: str, event: str, trigger: Any,
                           payload: Any) -> None:
        self._put_security_group(payload.resource_id or payload.latest_state["id"],
                                 payload.latest_state)

    def _on_security_group_deleted(self, resource: str, event: str, trigger: Any,
                                   payload: Any) -> None:
        self.refresh_referrers(SecurityGroup.TABLE, payload.resource_id)
        self.writer.delete(SecurityGroup, payload.resource_id)

    def _on_security_group_rule(self, resource: str, event: str, trigger: Any,
                                payload: Any) -> None:
        if event == events.AFTER_CREATE:
            sg_id = payload.latest_state["security_group_id"]
        else:
            sg_id = payload.metadata["security_group_id"]
        self._put_security_group(sg_id, None)  # the group, with all its rules, as it is now

    # --- address groups (callback registry) ----------------------------------------------
    # A rule naming an address group the NB lacks (its write failed, or an event was lost)
    # makes the NB refuse the group's write; NbWriter then writes the address group from
    # Neutron (source.fresh) and retries, as for a rule's remote group.
    def _on_address_group(self, resource: str, event: str, trigger: Any,
                          payload: Any) -> None:
        ag = payload.latest_state
        ag_id = payload.resource_id or ag["id"]
        fresh = source.fresh(AddressGroup.TABLE, ag_id)
        if isinstance(ag, dict) and "addresses" in ag:
            self.writer.put(AddressGroup.TABLE, ag_id, lambda: translate.address_group(ag),
                            fresh, ag)
        else:
            self.writer.put(AddressGroup.TABLE, ag_id, fresh, fresh)

    def _on_address_group_deleted(self, resource: str, event: str, trigger: Any,
                                  payload: Any) -> None:
        self.refresh_referrers(AddressGroup.TABLE, payload.resource_id)
        self.writer.delete(AddressGroup, payload.resource_id)
