"""Consistency: break the NB on purpose behind Neutron's back, then dragonflow.neutron.sync
finds every difference and repairs it (missing, differing and stray objects), keeping what
the NB owns (port status, chassis) and restoring security groups that name each other."""

from __future__ import annotations

import ipaddress
from typing import Any

from neutron.tests.unit.api import test_extensions
from neutron.tests.unit.extensions import test_extraroute, test_l3
from neutron.tests.unit.plugins.ml2 import test_plugin

from dragonflow.model import (
    Chassis,
    FloatingIP,
    Network,
    Port,
    Router,
    SecurityGroup,
    Subnet,
)
from dragonflow.neutron import source, sync
from tests.neutron.server.base import DfNbMixin

STRAY_NET = "99999999-0000-0000-0000-000000000001"
STRAY_SUB = "99999999-0000-0000-0000-000000000002"
STRAY_PORT = "99999999-0000-0000-0000-000000000003"


class TestSync(DfNbMixin, test_l3.L3NatTestCaseMixin, test_plugin.Ml2PluginV2TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ext_api = test_extensions.setup_extensions_middleware(
            test_extraroute.ExtraRouteTestExtensionManager())

    def topology(self) -> dict[str, Any]:
        """A network with two ports, a router with an interface and a gateway, a floating
        IP on one port, and two security groups whose rules name each other."""
        ctx = self.admin()
        net = self._make_network(self.fmt, "net", True)["network"]
        sub = self._make_subnet(self.fmt, {"network": net}, "10.0.0.1", "10.0.0.0/24")
        ext = self._make_network(self.fmt, "ext", True)["network"]
        self._set_net_external(ext["id"])
        self._make_subnet(self.fmt, {"network": ext}, "172.24.4.1", "172.24.4.0/24")
        router = self._make_router(self.fmt, self._project_id, "r1")["router"]
        self._router_interface_action("add", router["id"], sub["subnet"]["id"], None)
        self._add_external_gateway_to_router(router["id"], ext["id"])
        groups = [self.core.create_security_group(ctx, {"security_group": {
            "name": n, "description": "", "project_id": self._project_id}}) for n in "ab"]
        for me, other in ((groups[0], groups[1]), (groups[1], groups[0])):
            self.core.create_security_group_rule(ctx, {"security_group_rule": {
                "security_group_id": me["id"], "direction": "ingress", "ethertype": "IPv4",
                "protocol": "tcp", "port_range_min": 80, "port_range_max": 80,
                "remote_ip_prefix": None, "remote_group_id": other["id"],
                "remote_address_group_id": None, "project_id": self._project_id}})
        ports = [self._make_port(self.fmt, net["id"], arg_list=("security_groups",),
                                 security_groups=[g["id"]])["port"] for g in groups]
        fip = self._make_floatingip(self.fmt, ext["id"], port_id=ports[0]["id"])["floatingip"]
        return {"net": net, "ext": ext, "router": router, "groups": groups, "ports": ports,
                "fip": fip}

    def expected(self, table: str, obj_id: str) -> Any:
        return source.fresh(table, obj_id)()

    def test_repairs_missing_differing_and_stray(self) -> None:
        t = self.topology()
        self.assertTrue(sync.diff(self.nb, self.admin()).empty)
        port_a, port_b = t["ports"]
        sg_a, sg_b = t["groups"]
        # --- break the NB -------------------------------------------------------------------
        self.nb.update(self.nb.get_or_raise(Port, port_a["id"]).replace(status="ACTIVE"))
        self.nb.delete(FloatingIP, t["fip"]["id"])
        self.nb.delete(Port, port_a["id"])  # a port is lost
        net = self.nb.get_or_raise(Network, t["net"]["id"])
        self.nb.update(net.replace(name="tampered", mtu=1280))  # a network changed
        pb = self.nb.get_or_raise(Port, port_b["id"])
        self.nb.update(pb.replace(name="tampered", status="ACTIVE"))
        self.nb.update(pb.replace(name="tampered", status="ACTIVE", security_groups=(),
                                  version=pb.version + 1))
        nb_sg_b = self.nb.get_or_raise(SecurityGroup, sg_b["id"])
        self.nb.update(nb_sg_b.replace(rules=()))  # both groups, which name each other, lost
        self.nb.delete(SecurityGroup, sg_a["id"])
        self.nb.delete(SecurityGroup, sg_b["id"])
        self.nb.delete(Router, t["router"]["id"])
        self.nb.create(Network(id=STRAY_NET, topic="gone", network_type="local"))
        self.nb.create(Subnet(id=STRAY_SUB, network_id=STRAY_NET, cidr="192.0.2.0/24"))
        self.nb.create(Port(id=STRAY_PORT, network_id=STRAY_NET, mac="fa:16:3e:99:99:99",
                            fixed_ips=[{"subnet_id": STRAY_SUB, "ip_address": "192.0.2.5"}]))
        self.nb.create(Chassis(id="hv9", ip="10.255.0.9", tunnel_types=("vxlan",)))
        d = sync.diff(self.nb, self.admin())
        self.assertEqual({"port": [port_a["id"]], "securitygroup": sorted([sg_a["id"],
                                                                           sg_b["id"]]),
                          "router": [t["router"]["id"]], "floatingip": [t["fip"]["id"]]},
                         {k: sorted(v) for k, v in d.missing.items() if v})
        self.assertEqual({"network": [t["net"]["id"]], "port": [port_b["id"]]},
                         {k: sorted(v) for k, v in d.differing.items() if v})
        self.assertEqual({"network": [STRAY_NET], "subnet": [STRAY_SUB],
                          "port": [STRAY_PORT]}, {k: v for k, v in d.stray.items() if v})
        # --- repair --------------------------------------------------------------------------
        report = sync.run(self.nb, self.admin())
        self.assertEqual([], report.failed)
        self.assertEqual([], report.untranslatable)
        self.assertEqual(sorted([("port", port_a["id"]), ("securitygroup", sg_a["id"]),
                                 ("securitygroup", sg_b["id"]), ("router", t["router"]["id"]),
                                 ("floatingip", t["fip"]["id"])]), sorted(report.created))
        self.assertEqual(sorted([("network", t["net"]["id"]), ("port", port_b["id"])]),
                         sorted(report.updated))
        self.assertEqual(sorted([("network", STRAY_NET), ("subnet", STRAY_SUB),
                                 ("port", STRAY_PORT)]), sorted(report.deleted))
        self.assertTrue(sync.diff(self.nb, self.admin()).empty)
        # --- what the NB holds now ----------------------------------------------------------
        net = self.nb.get_or_raise(Network, t["net"]["id"])
        self.assertEqual(("net", t["net"]["mtu"]), (net.name, net.mtu))
        restored_b = self.nb.get_or_raise(Port, port_b["id"])
        self.assertEqual(("", (sg_b["id"],), "ACTIVE"),  # the controller's status is kept
                         (restored_b.name, restored_b.security_groups, restored_b.status))
        self.assertEqual("DOWN", self.nb.get_or_raise(Port, port_a["id"]).status)
        for sg, other in ((sg_a, sg_b), (sg_b, sg_a)):
            rules = self.nb.get_or_raise(SecurityGroup, sg["id"]).rules
            self.assertIn(other["id"], [r.remote_group_id for r in rules])
            self.assertEqual(self.expected("securitygroup", sg["id"]).rules, rules)
        fip = self.nb.get_or_raise(FloatingIP, t["fip"]["id"])
        self.assertEqual((port_a["id"], t["router"]["id"],
                          ipaddress.ip_address(port_a["fixed_ips"][0]["ip_address"])),
                         (fip.port_id, fip.router_id, fip.fixed_ip_address))
        router = self.nb.get_or_raise(Router, t["router"]["id"])
        self.assertEqual(1, len(router.ports))
        self.assertIsNotNone(router.gateway)
        self.assertIsNotNone(self.nb.get(Chassis, "hv9"))  # not Neutron's: left alone
        self.assertEqual(0, sync.run(self.nb, self.admin()).repaired)  # nothing left to do

    def test_sync_does_not_undo_a_newer_change(self) -> None:
        net = self._make_network(self.fmt, "net", True)["network"]
        self.nb.update(self.nb.get_or_raise(Network, net["id"]).replace(name="tampered"))
        d = sync.diff(self.nb, self.admin())  # the listing, taken before the next call
        self._update("networks", net["id"], {"network": {"name": "newest"}})
        self.assertEqual("newest", self.nb.get_or_raise(Network, net["id"]).name)
        writer_report = sync.Report()
        self.assertEqual([net["id"]], list(d.differing["network"]))
        sync._write(sync.NbWriter(self.nb, source.fresh), d, writer_report)
        self.assertEqual("newest", self.nb.get_or_raise(Network, net["id"]).name)
        self.assertEqual([], writer_report.updated)  # re-read: nothing to repair any more
