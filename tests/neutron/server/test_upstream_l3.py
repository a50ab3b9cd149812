"""Upstream Neutron L3 unit-test classes over ML2 (mechanism drivers ``logger, df``) with the
``df-l3`` service plugin, against a fresh in-memory NB per test: the L3 NAT tests (routers,
interfaces by subnet and by port, gateways, floating IPs), extra routes and the external
gateway SNAT mode.

Overrides name the upstream assumption they correct.
"""

from __future__ import annotations

from neutron.tests.unit.api import test_extensions
from neutron.tests.unit.extensions import test_extraroute, test_l3
from neutron.tests.unit.extensions import test_l3_ext_gw_mode as test_l3_gw
from neutron.tests.unit.plugins.ml2 import test_plugin
from neutron_lib import constants as n_const

from tests.neutron.server.base import DfNbMixin

NO_L3_AGENTS = ("Assumption: routers are served by L3 agents notified over RPC. df-l3 has "
                "no L3 agents (every chassis routes from the NB), so there is no RPC "
                "notification to count -- skipped as for ML2/OVN's L3 plugin.")


# Assumption: a floating IP is ACTIVE as soon as it exists (agents do not report). df-l3
# creates it DOWN, as ML2/OVN does (bug 1657693); it goes ACTIVE only when the chassis
# hosting its port reports its NAT installed in the NB, and these tests run no chassis.
FIP_DOWN = n_const.FLOATINGIP_STATUS_DOWN


def _ml2_fails_too(assumption: str) -> str:
    return f"Fails with upstream's own test drivers over ML2 as well: {assumption}"


class TestDfL3NatDB(DfNbMixin, test_l3.L3NatTestCaseBase,
                    test_extraroute.ExtraRouteDBTestCaseBase,
                    test_plugin.Ml2PluginV2TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ext_api = test_extensions.setup_extensions_middleware(
            test_extraroute.ExtraRouteTestExtensionManager())

    # Floating IPs are created DOWN (FIP_DOWN above); upstream parametrises these four.
    def test_create_floatingip_with_assoc(self, expected_status: str = FIP_DOWN) -> None:
        super().test_create_floatingip_with_assoc(expected_status)

    def test_floatingip_update(self, expected_status: str = FIP_DOWN) -> None:
        super().test_floatingip_update(expected_status)

    def test_floatingip_update_to_same_port_id_twice(self, expected_status: str = FIP_DOWN
                                                     ) -> None:
        super().test_floatingip_update_to_same_port_id_twice(expected_status)

    def test_floatingip_update_subnet_gateway_disabled(self, expected_status: str = FIP_DOWN
                                                       ) -> None:
        super().test_floatingip_update_subnet_gateway_disabled(expected_status)

    def test__notify_gateway_port_ip_changed(self) -> None:
        self.skipTest(NO_L3_AGENTS)

    def test__notify_gateway_port_ip_not_changed(self) -> None:
        self.skipTest(NO_L3_AGENTS)

    def test_create_floatingip_non_admin_context_agent_notification(self) -> None:
        self.skipTest(NO_L3_AGENTS)

    def test_floatingip_with_invalid_create_port(self) -> None:
        self.skipTest(_ml2_fails_too(
            "it patches create_port of NeutronDbPluginV2, which ML2 overrides (a non-ML2 "
            "core plugin is assumed)"))

    def test_router_add_interface_by_port_fails_nested(self) -> None:
        self.skipTest(_ml2_fails_too(
            "it calls the core plugin's update_port inside a transaction, which ML2 "
            "forbids (transaction_guard); a non-ML2 core plugin is assumed"))


class TestDfL3GwMode(DfNbMixin, test_l3_gw.ExtGwModeIntTestCase,
                     test_plugin.Ml2PluginV2TestCase):
    def setUp(self) -> None:
        # ExtGwModeIntTestCase.setUp loads upstream's own core plugin: run ML2's instead.
        self.df_setup()
        test_plugin.Ml2PluginV2TestCase.setUp(self)
        self.addCleanup(self._df_record)
        self.ext_api = test_extensions.setup_extensions_middleware(
            test_l3_gw.TestExtensionManager())

    def test_router_gateway_set_fail_after_port_create(self) -> None:
        self.skipTest(_ml2_fails_too(
            "it makes the gateway port's creation fail by patching the core plugin of "
            "ExtGwModeIntTestCase (TestDbIntPlugin); under ML2 the gateway port is left "
            "for the caller to clean up"))
