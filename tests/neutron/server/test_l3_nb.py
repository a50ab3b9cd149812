"""The NB after each Neutron L3 call through ``df-l3``, field by field: routers, interfaces
by subnet and by port, extra routes, external gateway with SNAT, floating IPs."""

from __future__ import annotations

import ipaddress
from typing import Any

from neutron.tests.unit.api import test_extensions
from neutron.tests.unit.extensions import test_extraroute, test_l3
from neutron.tests.unit.plugins.ml2 import test_plugin

from dragonflow.model import FloatingIP, Gateway, Port, Route, Router, RouterPort
from dragonflow.neutron import sync
from tests.neutron.server.base import DfNbMixin


class TestL3Nb(DfNbMixin, test_l3.L3NatTestCaseMixin, test_plugin.Ml2PluginV2TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ext_api = test_extensions.setup_extensions_middleware(
            test_extraroute.ExtraRouteTestExtensionManager())

    # --- Neutron calls -----------------------------------------------------------------------
    def net_and_subnet(self, cidr: str, external: bool = False) -> tuple[str, dict[str, Any]]:
        net = self._make_network(self.fmt, f"net-{cidr}", True)["network"]
        if external:
            self._set_net_external(net["id"])
        gw = str(ipaddress.ip_network(cidr)[1])
        sub = self._make_subnet(self.fmt, {"network": net}, gw, cidr)["subnet"]
        return net["id"], sub

    def router(self, name: str = "r1") -> dict[str, Any]:
        return self._make_router(self.fmt, self._project_id, name)["router"]  # type: ignore[no-any-return]

    def nb_router(self, router_id: str) -> Router:
        return self.nb.get_or_raise(Router, router_id)

    def version(self, router_id: str) -> int:
        return self.l3.get_router(self.admin(), router_id)["revision_number"] + 1  # type: ignore[no-any-return]

    def assert_synced(self) -> None:
        d = sync.diff(self.nb, self.admin())
        self.assertTrue(d.empty, f"NB != Neutron: {d}")
        self.assertEqual({}, dict(self.df_failures()))

    # --- tests -------------------------------------------------------------------------------
    def test_router_interfaces_by_subnet_and_by_port(self) -> None:
        r = self.router()
        nb = self.nb_router(r["id"])
        self.assertEqual((r["name"], r["tenant_id"], (), (), None, True),
                         (nb.name, nb.topic, nb.ports, nb.routes, nb.gateway, nb.distributed))
        net1, sub1 = self.net_and_subnet("10.1.0.0/24")
        by_subnet = self._router_interface_action("add", r["id"], sub1["id"], None)
        net2, sub2 = self.net_and_subnet("10.2.0.0/24")
        port = self._make_port(self.fmt, net2, fixed_ips=[
            {"subnet_id": sub2["id"], "ip_address": "10.2.0.9"}])["port"]
        self.assertIsNotNone(self.nb.get(Port, port["id"]))  # a plain port, for now
        self._router_interface_action("add", r["id"], None, port["id"])
        self.assertIsNone(self.nb.get(Port, port["id"]))  # now a router interface
        p1 = self.core.get_port(self.admin(), by_subnet["port_id"])
        nb = self.nb_router(r["id"])
        self.assertEqual(sorted([
            RouterPort(id=p1["id"], mac=p1["mac_address"], network_id=net1,
                       cidrs=("10.1.0.1/24",), subnet_ids=(sub1["id"],)),
            RouterPort(id=port["id"], mac=port["mac_address"], network_id=net2,
                       cidrs=("10.2.0.9/24",), subnet_ids=(sub2["id"],)),
        ], key=lambda p: p.id), [p.replace(unique_key=0) for p in nb.ports])
        self.assertTrue(all(p.unique_key for p in nb.ports))
        self.assertEqual(self.version(r["id"]), nb.version)
        self.assert_synced()
        self._router_interface_action("remove", r["id"], sub1["id"], None)
        self.assertEqual([port["id"]], [p.id for p in self.nb_router(r["id"]).ports])
        self._router_interface_action("remove", r["id"], None, port["id"])
        self.assertEqual((), self.nb_router(r["id"]).ports)
        self.assert_synced()
        self._delete("routers", r["id"])
        self.assertIsNone(self.nb.get(Router, r["id"]))

    def test_extra_routes_and_gateway_with_snat(self) -> None:
        r = self.router()
        _, sub = self.net_and_subnet("10.1.0.0/24")
        self._router_interface_action("add", r["id"], sub["id"], None)
        ext, ext_sub = self.net_and_subnet("172.24.4.0/24", external=True)
        self._add_external_gateway_to_router(r["id"], ext)
        gw_ip = self.l3.get_router(self.admin(), r["id"])["external_gateway_info"][
            "external_fixed_ips"][0]["ip_address"]
        self.assertEqual(Gateway(network_id=ext, ip_address=gw_ip, enable_snat=True),
                         self.nb_router(r["id"]).gateway)
        self._update("routers", r["id"], {"router": {"external_gateway_info": {
            "network_id": ext, "enable_snat": False}}}, as_admin=True)
        self.assertFalse(self.nb_router(r["id"]).gateway.enable_snat)  # type: ignore[union-attr]
        routes = [{"destination": "192.168.0.0/16", "nexthop": "10.1.0.254"}]
        self._update("routers", r["id"], {"router": {"routes": routes}})
        nb = self.nb_router(r["id"])
        self.assertEqual((Route(destination="192.168.0.0/16", nexthop="10.1.0.254"),),
                         nb.routes)
        self.assertEqual(self.version(r["id"]), nb.version)
        self.assert_synced()
        self._update("routers", r["id"], {"router": {"routes": []}})
        self._remove_external_gateway_from_router(r["id"], ext)
        nb = self.nb_router(r["id"])
        self.assertEqual(((), None), (nb.routes, nb.gateway))
        self.assert_synced()

    def test_floating_ip_lifecycle(self) -> None:
        r = self.router()
        net, sub = self.net_and_subnet("10.1.0.0/24")
        self._router_interface_action("add", r["id"], sub["id"], None)
        ext, _ = self.net_and_subnet("172.24.4.0/24", external=True)
        self._add_external_gateway_to_router(r["id"], ext)
        vm = self._make_port(self.fmt, net)["port"]
        fip = self._make_floatingip(self.fmt, ext)["floatingip"]
        nb = self.nb.get_or_raise(FloatingIP, fip["id"])
        self.assertEqual((ipaddress.ip_address(fip["floating_ip_address"]), ext, None, None),
                         (nb.floating_ip_address, nb.floating_network_id, nb.port_id,
                          nb.router_id))
        self._update("floatingips", fip["id"], {"floatingip": {"port_id": vm["id"]}})
        nb = self.nb.get_or_raise(FloatingIP, fip["id"])
        fixed = vm["fixed_ips"][0]["ip_address"]
        self.assertEqual((vm["id"], ipaddress.ip_address(fixed), r["id"]),
                         (nb.port_id, nb.fixed_ip_address, nb.router_id))
        self.assertEqual(self.l3.get_floatingip(self.admin(), fip["id"])["revision_number"]
                         + 1, nb.version)
        self.assert_synced()
        # deleting the port disassociates the floating IP (inside ML2's transaction)
        self._delete("ports", vm["id"])
        nb = self.nb.get_or_raise(FloatingIP, fip["id"])
        self.assertEqual((None, None, None), (nb.port_id, nb.fixed_ip_address, nb.router_id))
        self.assertIsNone(self.nb.get(Port, vm["id"]))
        self.assert_synced()
        self._delete("floatingips", fip["id"])
        self.assertIsNone(self.nb.get(FloatingIP, fip["id"]))
