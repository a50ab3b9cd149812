"""Port status through provisioning blocks: a bound port stays DOWN in Neutron until the NB
says its chassis has it ACTIVE, goes DOWN with it, and an already-ACTIVE port is completed
when the follower starts. The NB status is written here exactly as a local controller does
(``nb.update(port.replace(status=...))``).

The follower applies status changes in the test's thread (``threaded=False``) where a test
makes Neutron calls while the follower may be busy: the in-memory sqlite database of these
tests has one connection, which cannot carry two threads' transactions at once (a real
server's database can). The threaded worker is exercised where the test thread only waits.
"""

from __future__ import annotations

from typing import Any

from neutron.objects import provisioning_blocks as pb_obj
from neutron.tests.unit.plugins.ml2 import test_plugin
from neutron_lib.api.definitions import portbindings

from dragonflow.model import Port
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
