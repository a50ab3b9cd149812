"""The NB after each Neutron call through the ML2 driver ``df``, field by field: networks of
every type, subnets, ports (binding, security groups, port security, allowed address pairs,
extra DHCP options), security groups and rules, versions, failures that must not break the
API call, and the agentless binding Nova sees."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from unittest import mock

from neutron.objects import provisioning_blocks as pb_obj
from neutron.tests.unit.plugins.ml2 import test_plugin
from neutron_lib.api.definitions import portbindings
from oslo_config import cfg

from dragonflow.db.drivers.redis import RedisDriver
from dragonflow.db.nbapi import NbApi
from dragonflow.model import (
    AddressGroup,
    AddressPair,
    Binding,
    Chassis,
    DhcpOpt,
    FixedIp,
    HostRoute,
    Network,
    Port,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from dragonflow.neutron import source, sync, translate
from dragonflow.neutron.status import DF_ENTITY
from dragonflow.neutron.writer import NbWriter, Outcome
from tests.fixtures.wait import eventually
from tests.neutron.server.base import DfNbMixin

PROVIDER = ("provider:network_type", "provider:physical_network", "provider:segmentation_id")
PORT_ARGS = (portbindings.HOST_ID, "security_groups", "allowed_address_pairs",
             "extra_dhcp_opts", "device_owner", "device_id", "port_security_enabled", "name",
             "mac_address")



class DfMl2Case(DfNbMixin, test_plugin.Ml2PluginV2TestCase):
    def setUp(self) -> None:
        cfg.CONF.set_override("extension_drivers", ["port_security"], group="ml2")
        super().setUp()

    # --- Neutron calls -----------------------------------------------------------------------
    def network(self, name: str = "net", **attrs: Any) -> dict[str, Any]:
        body = self._make_network(self.fmt, name, True, as_admin=True,
                                  arg_list=(*PROVIDER, "router:external"), **attrs)
        return body["network"]  # type: ignore[no-any-return]

    def subnet(self, net: dict[str, Any], cidr: str = "10.0.0.0/24",
               **kw: Any) -> dict[str, Any]:
        body = self._make_subnet(self.fmt, {"network": net}, kw.pop("gateway", None) or
                                 str(ipaddress.ip_network(cidr)[1]), cidr, **kw)
        return body["subnet"]  # type: ignore[no-any-return]

    def port(self, net: dict[str, Any], **attrs: Any) -> dict[str, Any]:
        body = self._make_port(self.fmt, net["id"], as_admin=True,
                               arg_list=tuple(a for a in PORT_ARGS if a in attrs), **attrs)
        return body["port"]  # type: ignore[no-any-return]

    def neutron(self, kind: str, obj_id: str) -> dict[str, Any]:
        return getattr(self.core, f"get_{kind}")(self.admin(), obj_id)  # type: ignore[no-any-return]

    def version(self, kind: str, obj_id: str) -> int:
        """The NB version Neutron's current revision maps to."""
        return self.neutron(kind, obj_id)["revision_number"] + 1  # type: ignore[no-any-return]

    def assert_synced(self) -> None:
        d = sync.diff(self.nb, self.admin())
        self.assertTrue(d.empty, f"NB != Neutron: {d}")
        self.assertEqual({}, dict(self.df_failures()))


class TestNetworks(DfMl2Case):
    def test_every_network_type(self) -> None:
        cases = [("vxlan", None, 1001), ("geneve", None, 70000), ("gre", None, 4000000000),
                 ("vlan", "physnet1", 42), ("flat", "physnet2", None), ("local", None, None)]
        for kind, physnet, seg in cases:
            attrs = {"provider:network_type": kind}
            if physnet:
                attrs["provider:physical_network"] = physnet
            if seg:
                attrs["provider:segmentation_id"] = seg
            net = self.network(f"net-{kind}", **attrs)
            nb = self.nb.get_or_raise(Network, net["id"])
            self.assertEqual((kind, seg, physnet),
                             (nb.network_type, nb.segmentation_id, nb.physical_network))
            self.assertEqual((net["name"], net["project_id"], net["mtu"], False),
                             (nb.name, nb.topic, nb.mtu, nb.external))
            self.assertEqual(self.version("network", net["id"]), nb.version)
        self.assertEqual(6, len(self.nb.list(Network)))
        self.assert_synced()

    def test_project_ids_neutron_takes_reach_the_nb(self) -> None:
        for project in ("my project", "dept/team-1"):
            net = self._make_network(self.fmt, f"net of {project}", True,
                                     project_id=project, as_admin=True)["network"]
            self.assertEqual(project, net["project_id"])
            nb = self.nb.get_or_raise(Network, net["id"])
            self.assertEqual(project, nb.topic)
        self.assert_synced()

    def test_rbac_external_and_shared_policies_reach_the_nb(self) -> None:
        net = self.network("rbac-net")
        self.assertFalse(self.nb.get_or_raise(Network, net["id"]).external)
        req = self.new_create_request("rbac-policies", {"rbac_policy": {
            "object_type": "network", "object_id": net["id"],
            "action": "access_as_external", "target_tenant": "*"}},
            self.fmt, as_admin=True)
        res = req.get_response(self.api)
        self.assertEqual(201, res.status_int, res.body)
        policy = self.deserialize(self.fmt, res)["rbac_policy"]
        self.assertTrue(self.neutron("network", net["id"])["router:external"])
        self.assertTrue(eventually(
            lambda: self.nb.get_or_raise(Network, net["id"]).external, 5, 0.05))
        req = self.new_delete_request("rbac-policies", policy["id"], as_admin=True)
        self.assertEqual(204, req.get_response(self.api).status_int)
        self.assertFalse(self.neutron("network", net["id"])["router:external"])
        self.assertTrue(eventually(
            lambda: not self.nb.get_or_raise(Network, net["id"]).external, 5, 0.05))
        self.assert_synced()

    def test_project_network_default_type_update_and_delete(self) -> None:
        net = self._make_network(self.fmt, "plain", True)["network"]
        nb = self.nb.get_or_raise(Network, net["id"])
        self.assertEqual(("local", None, None),
                         (nb.network_type, nb.segmentation_id, nb.physical_network))
        self._update("networks", net["id"], {"network": {"name": "renamed",
                                                         "router:external": True}},
                     as_admin=True)
        nb2 = self.nb.get_or_raise(Network, net["id"])
        self.assertEqual(("renamed", True), (nb2.name, nb2.external))
        self.assertEqual(self.version("network", net["id"]), nb2.version)
        self.assertGreater(nb2.version, nb.version)
        self.assertEqual(nb.unique_key, nb2.unique_key)
        self._delete("networks", net["id"])
        self.assertIsNone(self.nb.get(Network, net["id"]))


class TestSubnets(DfMl2Case):
    def test_subnet_fields_update_delete(self) -> None:
        net = self.network()
        sub = self.subnet(net, "10.0.0.0/24", dns_nameservers=["8.8.8.8"],
                          allocation_pools=[{"start": "10.0.0.10", "end": "10.0.0.100"}],
                          host_routes=[{"destination": "10.9.0.0/16",
                                        "nexthop": "10.0.0.254"}])
        nb = self.nb.get_or_raise(Subnet, sub["id"])
        self.assertEqual((net["id"], ipaddress.ip_network("10.0.0.0/24"),
                          ipaddress.ip_address("10.0.0.1"), True),
                         (nb.network_id, nb.cidr, nb.gateway_ip, nb.enable_dhcp))
        self.assertEqual((ipaddress.ip_address("8.8.8.8"),), nb.dns_nameservers)
        self.assertEqual((HostRoute(destination="10.9.0.0/16", nexthop="10.0.0.254"),),
                         nb.host_routes)
        self.assertEqual((sub["project_id"], sub["name"]), (nb.topic, nb.name))
        self._update("subnets", sub["id"], {"subnet": {"enable_dhcp": False,
                                                       "gateway_ip": "10.0.0.254",
                                                       "host_routes": []}})
        nb2 = self.nb.get_or_raise(Subnet, sub["id"])
        self.assertEqual((False, ipaddress.ip_address("10.0.0.254"), ()),
                         (nb2.enable_dhcp, nb2.gateway_ip, nb2.host_routes))
        self.assertEqual(self.version("subnet", sub["id"]), nb2.version)
        v6 = self.subnet(net, "fd00:1::/64", ip_version=6, ipv6_ra_mode="slaac",
                         ipv6_address_mode="slaac")
        nb6 = self.nb.get_or_raise(Subnet, v6["id"])
        self.assertEqual(("slaac", "slaac", ipaddress.ip_address("fd00:1::1")),
                         (nb6.ipv6_ra_mode, nb6.ipv6_address_mode, nb6.gateway_ip))
        self.assert_synced()
        self._delete("subnets", sub["id"])
        self.assertIsNone(self.nb.get(Subnet, sub["id"]))

    def test_slaac_subnet_adds_addresses_to_existing_ports(self) -> None:
        # Neutron updates the ports before the subnet's postcommit: the driver redoes them.
        net = self.network()
        self.subnet(net, "10.0.0.0/24")
        port = self.port(net)
        v6 = self.subnet(net, "fd00:2::/64", ip_version=6, ipv6_ra_mode="slaac",
                         ipv6_address_mode="slaac")
        nb = self.nb.get_or_raise(Port, port["id"])
        self.assertIn(v6["id"], [f.subnet_id for f in nb.fixed_ips])
        self.assert_synced()


class TestPorts(DfMl2Case):
    def test_port_fields(self) -> None:
        net = self.network()
        sub = self.subnet(net)
        sg = self.core.create_security_group(self.admin(), {"security_group": {
            "name": "web", "description": "", "project_id": net["project_id"]}})
        port = self.port(net, **{
            portbindings.HOST_ID: "hv1", "name": "vm-a", "device_owner": "compute:nova",
            "device_id": "vm-a-uuid", "security_groups": [sg["id"]],
            "allowed_address_pairs": [{"ip_address": "10.0.0.200"},
                                      {"ip_address": "10.8.0.0/24",
                                       "mac_address": "fa:16:3e:11:22:33"}],
            "extra_dhcp_opts": [{"opt_name": "tftp-server", "opt_value": "10.0.0.9"},
                                {"opt_name": "bootfile-name", "opt_value": "pxe.0",
                                 "ip_version": 6}]})
        nb = self.nb.get_or_raise(Port, port["id"])
        ip = port["fixed_ips"][0]["ip_address"]
        self.assertEqual((net["id"], port["mac_address"], "vm-a", net["project_id"]),
                         (nb.network_id, nb.mac, nb.name, nb.topic))
        self.assertEqual((FixedIp(subnet_id=sub["id"], ip_address=ip),), nb.fixed_ips)
        self.assertEqual(Binding(kind="chassis", chassis_id="hv1"), nb.binding)
        self.assertEqual(("compute:nova", "vm-a-uuid", True),
                         (nb.device_owner, nb.device_id, nb.admin_state_up))
        self.assertEqual((sg["id"],), nb.security_groups)
        self.assertTrue(nb.port_security_enabled)
        self.assertEqual((AddressPair(ip_address="10.0.0.200/32", mac=port["mac_address"]),
                          AddressPair(ip_address="10.8.0.0/24", mac="fa:16:3e:11:22:33")),
                         nb.allowed_address_pairs)
        self.assertEqual({DhcpOpt(opt_name="tftp-server", opt_value="10.0.0.9"),
                          DhcpOpt(opt_name="bootfile-name", opt_value="pxe.0",
                                  ip_version=6)}, set(nb.extra_dhcp_opts))
        self.assertEqual("DOWN", nb.status)
        self.assertEqual(self.version("port", port["id"]), nb.version)
        self.assertIsNotNone(self.nb.get(SecurityGroup, sg["id"]))
        self.assert_synced()

    def test_agentless_binding_and_provisioning_block(self) -> None:
        net = self.network("vx", **{"provider:network_type": "vxlan",
                                    "provider:segmentation_id": 5})
        self.subnet(net)
        port = self.port(net, **{portbindings.HOST_ID: "any-host-at-all"})
        got = self.neutron("port", port["id"])
        self.assertEqual(portbindings.VIF_TYPE_OVS, got[portbindings.VIF_TYPE])
        details = got[portbindings.VIF_DETAILS]
        self.assertEqual((True, False, "br-int", "system"),  # SGs enforced by the chassis
                         (details[portbindings.CAP_PORT_FILTER],
                          details[portbindings.OVS_HYBRID_PLUG],
                          details[portbindings.VIF_DETAILS_BRIDGE_NAME],
                          details[portbindings.OVS_DATAPATH_TYPE]))
        self.assertEqual("DOWN", got["status"])
        blocks = pb_obj.ProvisioningBlock.get_objects(
            self.admin(), standard_attr_id=got["standard_attr_id"])
        self.assertEqual([DF_ENTITY], [b.entity for b in blocks])

    def refused(self, net: dict[str, Any], host: str, *why: str) -> dict[str, Any]:
        """A port on ``net`` bound to ``host``: refused, with ``why`` in the log line."""
        with self.assertLogs("dragonflow.neutron.ml2.mech_driver", "WARNING") as logs:
            port = self.port(net, **{portbindings.HOST_ID: host})
        got = self.neutron("port", port["id"])
        self.assertEqual(portbindings.VIF_TYPE_BINDING_FAILED, got[portbindings.VIF_TYPE])
        self.assertTrue(any(all(w in line for w in why) for line in logs.output),
                        (why, logs.output))
        self.assertNotEqual("ACTIVE", got["status"])
        return got

    def bound(self, net: dict[str, Any], host: str) -> dict[str, Any]:
        port = self.port(net, **{portbindings.HOST_ID: host})
        got = self.neutron("port", port["id"])
        self.assertEqual(portbindings.VIF_TYPE_OVS, got[portbindings.VIF_TYPE])
        self.assertEqual(("DOWN", [DF_ENTITY]), (got["status"], [
            b.entity for b in pb_obj.ProvisioningBlock.get_objects(
                self.admin(), standard_attr_id=got["standard_attr_id"])]))
        self.assertEqual(Binding(kind="chassis", chassis_id=host),
                         self.nb.get_or_raise(Port, port["id"]).binding)
        return got

    def test_vlan_and_flat_ports_bind_only_where_the_chassis_maps_the_physnet(self) -> None:
        vlan = self.network("net-vlan", **{"provider:network_type": "vlan",
                                           "provider:physical_network": "physnet1",
                                           "provider:segmentation_id": 42})
        self.subnet(vlan, cidr="10.42.0.0/24")
        flat = self.network("net-flat", **{"provider:network_type": "flat",
                                           "provider:physical_network": "physnet2"})
        self.subnet(flat, cidr="10.43.0.0/24")
        # no chassis registered for the host: nothing there would carry the traffic
        for net, kind, physnet in ((vlan, "vlan", "physnet1"), (flat, "flat", "physnet2")):
            self.refused(net, "hv1", "on host hv1", f"{kind} segment on physical "
                         f"network '{physnet}'", "no Dragonflow chassis is registered for "
                         "host 'hv1'")
        # a chassis that maps physnet1 only: its VLAN ports bind, its flat ports do not
        self.nb.create(Chassis(id="hv2", ip="192.0.2.12", tunnel_types=("geneve",),
                               bridge_mappings={"physnet1": "br-vlan"}))
        self.bound(vlan, "hv2")
        self.refused(flat, "hv2", "flat segment on physical network 'physnet2'",
                     "chassis 'hv2' does not map physical network 'physnet2'",
                     "its bridge_mappings: physnet1:br-vlan")
        bare = Chassis(id="hv3", ip="192.0.2.13", tunnel_types=("vxlan",))
        self.nb.create(bare)
        self.refused(vlan, "hv3", "chassis 'hv3' does not map physical network 'physnet1'",
                     "its bridge_mappings: none")
        # once hv3's controller maps physnet2 (it re-registers), its flat ports bind
        self.nb.update(self.nb.get_or_raise(Chassis, "hv3").replace(
            bridge_mappings={"physnet2": "br-ex", "physnet1": "br-vlan"}))
        self.bound(flat, "hv3")
        self.bound(vlan, "hv3")
        # overlays still bind on any host, chassis or not
        vx = self.network("vx", **{"provider:network_type": "vxlan",
                                   "provider:segmentation_id": 77})
        self.subnet(vx, cidr="10.44.0.0/24")
        self.bound(vx, "no-chassis-here")
        self.assert_synced()

    def test_physnet_binding_refused_when_the_nb_cannot_be_read(self) -> None:
        flat = self.network("net-flat", **{"provider:network_type": "flat",
                                           "provider:physical_network": "physnet2"})
        self.subnet(flat, cidr="10.43.0.0/24")
        self.nb.create(Chassis(id="hv1", ip="192.0.2.11", tunnel_types=("geneve",),
                               bridge_mappings={"physnet2": "br-ex"}))

        real_get = self.mech.nb.get

        def get(table: Any, obj_id: str) -> Any:  # the binding's read fails, not the writes
            if table is Chassis:
                raise OSError("NB unreachable")
            return real_get(table, obj_id)

        with mock.patch.object(self.mech.nb, "get", side_effect=get):
            self.refused(flat, "hv1", "the NB chassis of host 'hv1' could not be read",
                         "NB unreachable")

    def test_move_unbind_port_security_off_and_delete(self) -> None:
        net = self.network()
        self.subnet(net)
        port = self.port(net, **{portbindings.HOST_ID: "hv1"})
        # a controller on hv1 reports the port up
        cur = self.nb.get_or_raise(Port, port["id"])
        self.nb.update(cur.replace(status="ACTIVE"))
        self._update("ports", port["id"], {"port": {"name": "renamed"}})
        nb = self.nb.get_or_raise(Port, port["id"])
        self.assertEqual(("renamed", "ACTIVE"), (nb.name, nb.status))  # status kept
        self._update("ports", port["id"], {"port": {portbindings.HOST_ID: "hv2"}},
                     as_admin=True)
        nb = self.nb.get_or_raise(Port, port["id"])
        self.assertEqual((Binding(kind="chassis", chassis_id="hv2"), "DOWN"),
                         (nb.binding, nb.status))  # not up on hv2 until hv2 says so
        self._update("ports", port["id"], {"port": {
            "security_groups": [], "port_security_enabled": False}})
        nb = self.nb.get_or_raise(Port, port["id"])
        self.assertEqual((False, ()), (nb.port_security_enabled, nb.security_groups))
        self.assert_synced()
        self._delete("ports", port["id"])
        self.assertIsNone(self.nb.get(Port, port["id"]))


class TestSecurityGroups(DfMl2Case):
    def sg(self, name: str) -> dict[str, Any]:
        return self.core.create_security_group(self.admin(), {"security_group": {  # type: ignore[no-any-return]
            "name": name, "description": "", "project_id": "proj"}})

    def rule(self, sg_id: str, **kw: Any) -> dict[str, Any]:
        body = {"security_group_id": sg_id, "direction": "ingress", "ethertype": "IPv4",
                "protocol": None, "port_range_min": None, "port_range_max": None,
                "remote_ip_prefix": None, "remote_group_id": None,
                "remote_address_group_id": None, "project_id": "proj"} | kw
        return self.core.create_security_group_rule(  # type: ignore[no-any-return]
            self.admin(), {"security_group_rule": body})

    def test_rules_follow_neutron(self) -> None:
        web, db = self.sg("web"), self.sg("db")
        ssh = self.rule(web["id"], protocol="tcp", port_range_min=22, port_range_max=22,
                        remote_ip_prefix="192.168.1.0/24")
        ping = self.rule(web["id"], protocol="icmp", port_range_min=8, port_range_max=0)
        from_web = self.rule(db["id"], protocol="tcp", port_range_min=5432,
                             port_range_max=5432, remote_group_id=web["id"])
        nb_web = self.nb.get_or_raise(SecurityGroup, web["id"])
        self.assertEqual(self.version("security_group", web["id"]), nb_web.version)
        by_id = {r.id: r for r in nb_web.rules}
        self.assertEqual(SecurityGroupRule(id=ssh["id"], direction="ingress", protocol="tcp",
                                           port_range_min=22, port_range_max=22,
                                           remote_ip_prefix="192.168.1.0/24"), by_id[ssh["id"]])
        self.assertEqual(SecurityGroupRule(id=ping["id"], direction="ingress", protocol="icmp",
                                           port_range_min=8, port_range_max=0),
                         by_id[ping["id"]])
        self.assertEqual(len(web["security_group_rules"]) + 2, len(nb_web.rules))
        nb_db = self.nb.get_or_raise(SecurityGroup, db["id"])
        self.assertIn(SecurityGroupRule(id=from_web["id"], direction="ingress", protocol="tcp",
                                        port_range_min=5432, port_range_max=5432,
                                        remote_group_id=web["id"]), nb_db.rules)
        self.core.delete_security_group_rule(self.admin(), ssh["id"])
        self.assertNotIn(ssh["id"], [r.id for r in
                                     self.nb.get_or_raise(SecurityGroup, web["id"]).rules])
        # Deleting a group another group's rule names: Neutron drops that rule by cascade
        self.core.delete_security_group(self.admin(), web["id"])
        self.assertIsNone(self.nb.get(SecurityGroup, web["id"]))
        self.assertNotIn(from_web["id"],
                         [r.id for r in self.nb.get_or_raise(SecurityGroup, db["id"]).rules])
        self.assert_synced()

    # --- address groups ----------------------------------------------------------------------
    def ag(self, name: str, addresses: list[str]) -> dict[str, Any]:
        return self.core.create_address_group(self.admin(), {"address_group": {  # type: ignore[no-any-return]
            "name": name, "description": "", "project_id": "proj", "addresses": addresses}})

    def nb_ag(self, ag_id: str) -> AddressGroup:
        return self.nb.get_or_raise(AddressGroup, ag_id)

    def test_address_groups_follow_neutron(self) -> None:
        office = self.ag("office", ["192.0.2.0/24", "10.0.0.5", "2001:db8::/64"])
        nb_office = self.nb_ag(office["id"])
        self.assertEqual(AddressGroup(id=office["id"], topic="proj", name="office",
                                      version=self.version("address_group", office["id"]),
                                      addresses=("10.0.0.5/32", "192.0.2.0/24",
                                                 "2001:db8::/64")), nb_office)
        web = self.sg("web")
        https = self.rule(web["id"], protocol="tcp", port_range_min=443, port_range_max=443,
                          remote_address_group_id=office["id"])
        v6 = self.rule(web["id"], ethertype="IPv6", remote_address_group_id=office["id"])
        nb_web = self.nb.get_or_raise(SecurityGroup, web["id"])
        self.assertEqual(self.version("security_group", web["id"]), nb_web.version)
        self.assertIn(SecurityGroupRule(id=https["id"], direction="ingress", protocol="tcp",
                                        port_range_min=443, port_range_max=443,
                                        remote_address_group_id=office["id"]), nb_web.rules)
        self.assertIn(SecurityGroupRule(id=v6["id"], direction="ingress", ethertype="IPv6",
                                        remote_address_group_id=office["id"]), nb_web.rules)
        self.assertEqual([office["id"]], nb_web.address_groups())
        self.assertEqual([web["id"]], [g.id for g in self.nb.by_index(
            SecurityGroup, "remote_address_group", office["id"])])
        self.assert_synced()

        # add / remove addresses (Neutron's add_addresses / remove_addresses actions)
        self.core.add_addresses(self.admin(), office["id"],
                                {"addresses": ["198.51.100.7/32", "2001:db8:1::/48"]})
        self.assertEqual(["10.0.0.5/32", "192.0.2.0/24", "198.51.100.7/32", "2001:db8::/64",
                          "2001:db8:1::/48"],
                         [str(a) for a in self.nb_ag(office["id"]).addresses])
        self.core.remove_addresses(self.admin(), office["id"],
                                   {"addresses": ["192.0.2.0/24", "10.0.0.5"]})
        self.core.update_address_group(self.admin(), office["id"],
                                       {"address_group": {"name": "branch"}})
        nb_office = self.nb_ag(office["id"])
        self.assertEqual(["198.51.100.7/32", "2001:db8::/64", "2001:db8:1::/48"],
                         [str(a) for a in nb_office.addresses])
        self.assertEqual("branch", nb_office.name)
        self.assertEqual(self.version("address_group", office["id"]), nb_office.version)
        self.assert_synced()

        # Neutron refuses to delete a group a rule names; once the rules are gone it goes
        self.core.delete_security_group_rule(self.admin(), https["id"])
        self.core.delete_security_group_rule(self.admin(), v6["id"])
        self.assertEqual([], self.nb.get_or_raise(SecurityGroup, web["id"]).address_groups())
        self.core.delete_address_group(self.admin(), office["id"])
        self.assertIsNone(self.nb.get(AddressGroup, office["id"]))
        self.assert_synced()

    def test_rule_naming_an_address_group_the_nb_lacks(self) -> None:
        office = self.ag("office", ["192.0.2.0/24"])
        self.nb.delete(AddressGroup, office["id"])  # e.g. its write failed: NB was down
        web = self.sg("web")
        rule = self.rule(web["id"], remote_address_group_id=office["id"])
        # the group's write first wrote the address group from Neutron
        self.assertEqual(("192.0.2.0/24",),
                         tuple(str(a) for a in self.nb_ag(office["id"]).addresses))
        self.assertIn(rule["id"], [r.id for r in
                                   self.nb.get_or_raise(SecurityGroup, web["id"]).rules])
        self.assert_synced()

    def test_sync_repairs_address_groups(self) -> None:
        office = self.ag("office", ["192.0.2.0/24"])
        stray = self.ag("stray", [])
        web = self.sg("web")
        self.rule(web["id"], remote_address_group_id=office["id"])
        # lost writes: the group and its address group missing, a stray left behind
        self.nb.delete(SecurityGroup, web["id"])
        self.nb.delete(AddressGroup, office["id"])
        self.core.delete_address_group(self.admin(), stray["id"])
        self.nb.create(AddressGroup(id=stray["id"], topic="proj", addresses=("10.0.0.0/8",)))
        report = sync.run(self.nb, self.admin())
        self.assertEqual([("addressgroup", stray["id"])], report.deleted)
        self.assertEqual([("addressgroup", office["id"]), ("securitygroup", web["id"])],
                         report.created)
        self.assert_synced()


class TestVersionsAndFailures(DfMl2Case):
    def test_stale_event_is_ignored(self) -> None:
        net = self.network()
        old = dict(self.neutron("network", net["id"]))
        self._update("networks", net["id"], {"network": {"name": "newer"}})
        writer = NbWriter(self.nb)
        outcome = writer.put("network", net["id"], lambda: translate.network(old),
                             source.fresh("network", net["id"]), old)
        self.assertEqual(Outcome.UNCHANGED, outcome)  # re-read: NB already has "newer"
        self.assertEqual(Outcome.STALE, writer.put(
            "network", net["id"], lambda: translate.network(old)))
        self.assertEqual("newer", self.nb.get_or_raise(Network, net["id"]).name)

    def test_nb_down_does_not_fail_the_api_call(self) -> None:
        net = self.network("before")
        with socket.socket() as s:  # a port nothing listens on: the NB is down
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        up = self.mech.writer
        self.mech.writer = NbWriter(NbApi(RedisDriver(f"redis://127.0.0.1:{dead}",
                                                      timeout=0.3)), source.fresh)
        try:
            sub = self.subnet(net)
            port = self.port(net, name="while-down")
            self.assertEqual("while-down", self.neutron("port", port["id"])["name"])
            self.assertEqual({"subnet": 1, "port": 1}, dict(self.mech.writer.failures))
            self.assertIn("port", self.mech.writer.errors[-1])
        finally:
            self.mech.writer = up
        self.assertIsNone(self.nb.get(Port, port["id"]))
        report = sync.run(self.nb, self.admin())  # the repair once the NB is back
        self.assertEqual([("subnet", sub["id"]), ("port", port["id"])], report.created)
        self.assert_synced()

    def test_value_the_nb_model_rejects_is_logged_not_raised(self) -> None:
        net = self.network()
        self.subnet(net)
        port = self.port(net, mac_address="11:22:33:44:55:66")  # Neutron allows multicast
        self.assertEqual("11:22:33:44:55:66", self.neutron("port", port["id"])["mac_address"])
        self.assertIsNone(self.nb.get(Port, port["id"]))
        self.assertEqual(1, self.mech.writer.failures["port"])
        self.assertIn("multicast MAC", self.mech.writer.errors[-1])
        report = sync.run(self.nb, self.admin())
        self.assertEqual([("port", port["id"])], [(t, i) for t, i, _ in report.untranslatable])
        self.mech.writer.failures.clear()


