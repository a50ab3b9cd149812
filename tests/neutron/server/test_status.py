"""Port status through provisioning blocks: a bound port stays DOWN in Neutron until the NB
says its chassis has it ACTIVE, goes DOWN with it, and an already-ACTIVE port is completed
when the follower starts. Floating IP status: created DOWN through df-l3, ACTIVE in Neutron
only once the NB says the chassis installed its NAT, DOWN again with it (and when Neutron
re-associates it), and applied for every floating IP when the follower starts. The NB
status is written here exactly as a local controller does
(``nb.update(obj.replace(status=...))``).

The follower applies status changes in the test's thread (``threaded=False``) where a test
makes Neutron calls while the follower may be busy: the in-memory sqlite database of these
tests has one connection, which cannot carry two threads' transactions at once (a real
server's database can). The threaded worker is exercised where the test thread only waits.
"""

from __future__ import annotations

from typing import Any

from neutron.objects import provisioning_blocks as pb_obj
from neutron.tests.unit.api import test_extensions
from neutron.tests.unit.extensions import test_extraroute, test_l3
from neutron.tests.unit.plugins.ml2 import test_plugin
from neutron_lib import constants as n_const
from neutron_lib.api.definitions import portbindings

from dragonflow.model import FloatingIP, Port
from dragonflow.neutron import sync
from dragonflow.neutron.status import DF_ENTITY
from tests.neutron.server.base import DfNbMixin

WAIT = 10.0  # seconds; the follower normally takes milliseconds


class TestPortStatus(DfNbMixin, test_plugin.Ml2PluginV2TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.follower = self.mech.start_status_follower(threaded=False)
        self.addCleanup(self.mech.stop_status_follower)
        net = self._make_network(self.fmt, "net", True)["network"]
        self._make_subnet(self.fmt, {"network": net}, "10.0.0.1", "10.0.0.0/24")
        self.net_id = net["id"]

    def bound_port(self, host: str = "hv1") -> dict[str, Any]:
        return self._make_port(self.fmt, self.net_id, as_admin=True,  # type: ignore[no-any-return]
                               arg_list=(portbindings.HOST_ID, "device_owner"),
                               device_owner="compute:nova",
                               **{portbindings.HOST_ID: host})["port"]

    def controller_reports(self, port_id: str, status: str) -> None:
        cur = self.nb.get_or_raise(Port, port_id)
        self.nb.update(cur.replace(status=status))
        self.assertTrue(self.follower.wait_for(self.nb.revision(), WAIT),
                        "the status follower did not catch up")
        self.assertEqual(0, self.follower.errors)

    def neutron_status(self, port_id: str) -> str:
        return self.core.get_port(self.admin(), port_id)["status"]  # type: ignore[no-any-return]

    def blocks(self, port_id: str) -> set[str]:
        attr = self.core.get_port(self.admin(), port_id)["standard_attr_id"]
        return {b.entity for b in pb_obj.ProvisioningBlock.get_objects(
            self.admin(), standard_attr_id=attr)}

    def threaded(self) -> None:
        self.mech.stop_status_follower()
        self.follower = self.mech.start_status_follower(threaded=True)

    def test_active_only_after_the_chassis_reports_it(self) -> None:
        port = self.bound_port()
        self.threaded()
        self.assertEqual(("DOWN", {DF_ENTITY}), (self.neutron_status(port["id"]),
                                                 self.blocks(port["id"])))
        self.controller_reports(port["id"], "ACTIVE")
        self.assertEqual(("ACTIVE", set()), (self.neutron_status(port["id"]),
                                             self.blocks(port["id"])))
        # the status change in Neutron does not disturb the NB's status
        self.assertEqual("ACTIVE", self.nb.get_or_raise(Port, port["id"]).status)

    def test_down_when_the_vif_goes_and_up_again(self) -> None:
        port = self.bound_port()
        self.controller_reports(port["id"], "ACTIVE")
        self.controller_reports(port["id"], "DOWN")
        self.assertEqual(("DOWN", {DF_ENTITY}), (self.neutron_status(port["id"]),
                                                 self.blocks(port["id"])))
        self.controller_reports(port["id"], "ACTIVE")
        self.assertEqual("ACTIVE", self.neutron_status(port["id"]))

    def test_move_to_another_host_waits_for_that_host(self) -> None:
        port = self.bound_port("hv1")
        self.controller_reports(port["id"], "ACTIVE")
        self._update("ports", port["id"], {"port": {portbindings.HOST_ID: "hv2"}},
                     as_admin=True)
        # The driver reset the NB status (not up on hv2 yet); the follower saw ACTIVE->DOWN.
        self.assertTrue(self.follower.wait_for(self.nb.revision(), WAIT))
        self.assertEqual(("DOWN", "DOWN"), (self.nb.get_or_raise(Port, port["id"]).status,
                                            self.neutron_status(port["id"])))
        self.controller_reports(port["id"], "ACTIVE")  # hv2's controller
        self.assertEqual("ACTIVE", self.neutron_status(port["id"]))

    def test_ports_already_active_are_completed_at_start(self) -> None:
        self.mech.stop_status_follower()
        port = self.bound_port()
        cur = self.nb.get_or_raise(Port, port["id"])
        self.nb.update(cur.replace(status="ACTIVE"))  # reported while the server was down
        self.assertEqual("DOWN", self.neutron_status(port["id"]))
        self.follower = self.mech.start_status_follower(threaded=True)
        self.assertTrue(self.follower.wait_for(self.nb.revision(), WAIT))
        self.assertEqual("ACTIVE", self.neutron_status(port["id"]))

    def test_unbound_port_is_not_blocked(self) -> None:
        port = self._make_port(self.fmt, self.net_id)["port"]
        self.assertEqual(set(), self.blocks(port["id"]))


class TestFloatingIpStatus(DfNbMixin, test_l3.L3NatTestCaseMixin,
                           test_plugin.Ml2PluginV2TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ext_api = test_extensions.setup_extensions_middleware(
            test_extraroute.ExtraRouteTestExtensionManager())
        self.follower = self.mech.start_status_follower(threaded=False)
        self.addCleanup(self.mech.stop_status_follower)
        router = self._make_router(self.fmt, self._project_id, "r1")["router"]
        net = self._make_network(self.fmt, "private", True)["network"]
        sub = self._make_subnet(self.fmt, {"network": net}, "10.0.0.1", "10.0.0.0/24")
        self._router_interface_action("add", router["id"], sub["subnet"]["id"], None)
        ext = self._make_network(self.fmt, "public", True)["network"]
        self._set_net_external(ext["id"])
        self._make_subnet(self.fmt, {"network": ext}, "172.24.4.1", "172.24.4.0/24")
        self._add_external_gateway_to_router(router["id"], ext["id"])
        self.net_id, self.ext_id = net["id"], ext["id"]

    def vm_port(self) -> dict[str, Any]:
        return self._make_port(self.fmt, self.net_id, as_admin=True,  # type: ignore[no-any-return]
                               arg_list=(portbindings.HOST_ID, "device_owner"),
                               device_owner="compute:nova",
                               **{portbindings.HOST_ID: "hv1"})["port"]

    def fip(self, port_id: str | None) -> dict[str, Any]:
        return self._make_floatingip(self.fmt, self.ext_id,  # type: ignore[no-any-return]
                                     port_id=port_id)["floatingip"]

    def controller_reports(self, fip_id: str, status: str) -> None:
        cur = self.nb.get_or_raise(FloatingIP, fip_id)
        self.nb.update(cur.replace(status=status))
        self.caught_up()

    def caught_up(self) -> None:
        self.assertTrue(self.follower.wait_for(self.nb.revision(), WAIT),
                        "the status follower did not catch up")
        self.assertEqual(0, self.follower.errors)

    def neutron_status(self, fip_id: str) -> str:
        body = self._show("floatingips", fip_id)  # through the API, as a user sees it
        return body["floatingip"]["status"]  # type: ignore[no-any-return]

    def nb_status(self, fip_id: str) -> str:
        return self.nb.get_or_raise(FloatingIP, fip_id).status

    def assert_synced(self) -> None:
        d = sync.diff(self.nb, self.admin())
        self.assertTrue(d.empty, f"NB != Neutron: {d}")
        self.assertEqual({}, dict(self.df_failures()))

    def threaded(self) -> None:
        self.mech.stop_status_follower()
        self.follower = self.mech.start_status_follower(threaded=True)

    def test_created_down_active_only_after_the_chassis_reports_it(self) -> None:
        port = self.vm_port()
        fip = self.fip(port["id"])
        self.assertEqual(n_const.FLOATINGIP_STATUS_DOWN, fip["status"])
        self.caught_up()  # the NB's new floating IP (DOWN) changes nothing in Neutron
        self.assertEqual(("DOWN", "DOWN"), (self.neutron_status(fip["id"]),
                                            self.nb_status(fip["id"])))
        self.threaded()
        self.controller_reports(fip["id"], "ACTIVE")
        self.assertEqual("ACTIVE", self.neutron_status(fip["id"]))
        self.assertEqual("ACTIVE", self.nb_status(fip["id"]))  # Neutron's write left it
        self.assert_synced()  # the NB-owned status is no difference: sync leaves it
        self.assertEqual(sync.Report().summary(), sync.run(self.nb, self.admin()).summary())
        self.assertEqual("ACTIVE", self.nb_status(fip["id"]))
        self.controller_reports(fip["id"], "DOWN")  # the chassis lost the NAT
        self.assertEqual("DOWN", self.neutron_status(fip["id"]))
        self.controller_reports(fip["id"], "ACTIVE")
        self.assertEqual("ACTIVE", self.neutron_status(fip["id"]))

    def test_error_is_reported_too(self) -> None:
        fip = self.fip(self.vm_port()["id"])
        self.controller_reports(fip["id"], "ERROR")
        self.assertEqual("ERROR", self.neutron_status(fip["id"]))

    def test_rewrite_keeps_the_status_reassociation_resets_it(self) -> None:
        port, other = self.vm_port(), self.vm_port()
        fip = self.fip(port["id"])
        self.controller_reports(fip["id"], "ACTIVE")
        # a rewrite that keeps the association: still the chassis' word
        self._update("floatingips", fip["id"], {"floatingip": {"description": "web"}})
        self._update("floatingips", fip["id"], {"floatingip": {"port_id": port["id"]}})
        self.caught_up()
        self.assertEqual(("ACTIVE", "ACTIVE"), (self.nb_status(fip["id"]),
                                                self.neutron_status(fip["id"])))
        # associated with another port: DOWN until that port's chassis says otherwise
        self._update("floatingips", fip["id"], {"floatingip": {"port_id": other["id"]}})
        self.caught_up()
        self.assertEqual(("DOWN", "DOWN"), (self.nb_status(fip["id"]),
                                            self.neutron_status(fip["id"])))
        self.controller_reports(fip["id"], "ACTIVE")
        # disassociated: nothing to vouch for
        self._update("floatingips", fip["id"], {"floatingip": {"port_id": None}})
        self.caught_up()
        self.assertEqual(("DOWN", "DOWN"), (self.nb_status(fip["id"]),
                                            self.neutron_status(fip["id"])))
        self.assert_synced()

    def test_every_floating_ip_gets_its_nb_status_at_start(self) -> None:
        self.mech.stop_status_follower()
        fips = [self.fip(self.vm_port()["id"]) for _ in range(3)]
        for f, status in zip(fips, ("ACTIVE", "ERROR", "DOWN"), strict=True):
            cur = self.nb.get_or_raise(FloatingIP, f["id"])
            if cur.status != status:
                self.nb.update(cur.replace(status=status))  # while the server was down
        # Neutron's status drifted while the server was away too (e.g. a lost update)
        self.l3.update_floatingip_status(self.admin(), fips[2]["id"], "ACTIVE")
        self.assertEqual(["DOWN", "DOWN", "ACTIVE"],
                         [self.neutron_status(f["id"]) for f in fips])
        self.follower = self.mech.start_status_follower(threaded=True)
        self.assertTrue(self.follower.wait_for(self.nb.revision(), WAIT))
        self.assertEqual(["ACTIVE", "ERROR", "DOWN"],
                         [self.neutron_status(f["id"]) for f in fips])
        self.assertEqual(0, self.follower.errors)

    def test_a_floating_ip_deleted_meanwhile_is_skipped(self) -> None:
        fip = self.fip(self.vm_port()["id"])
        cur = self.nb.get_or_raise(FloatingIP, fip["id"])
        self.nb.update(cur.replace(status="ACTIVE"))  # queued, not applied yet
        self._delete("floatingips", fip["id"])
        self.caught_up()  # applied after the delete: nothing to do, no error
        self.assertIsNone(self.nb.get(FloatingIP, fip["id"]))
