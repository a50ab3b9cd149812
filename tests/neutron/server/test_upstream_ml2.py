"""Upstream Neutron ML2 unit-test classes, run with mechanism drivers ``logger, df`` (and the
``df-l3`` plugin) against a fresh in-memory NB per test.

The classes run unchanged except where a test encodes an assumption about upstream's own
test drivers; each such override says which assumption it corrects. What the NB made of each
test (failed NB writes, NB != Neutron at the end) is summarised after the run
(tests/neutron/conftest.py).
"""

from __future__ import annotations

from typing import Any

from neutron.objects import provisioning_blocks as pb_obj
from neutron.tests.unit.plugins.ml2 import test_plugin
from neutron.tests.unit.plugins.ml2 import test_security_group as test_ml2_sg
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins import directory
from webob import exc

from dragonflow.neutron.status import DF_ENTITY
from tests.neutron.server.base import DfNbMixin


class TestDfMl2NetworksV2(DfNbMixin, test_plugin.TestMl2NetworksV2):
    pass


class TestDfMl2SubnetsV2(DfNbMixin, test_plugin.TestMl2SubnetsV2):
    # Assumption: no revisions plugin. The test inserts and deletes a Router row directly;
    # with the revisions plugin (loaded by every real server) the delete of its standard
    # attributes fails with StaleDataError, with upstream's own drivers as well.
    WITHOUT_REVISIONS = frozenset({"test_update_subnet_gw_ip_in_use_by_router_returns_409"})


class TestDfMl2PortsV2(DfNbMixin, test_plugin.TestMl2PortsV2):
    def test_update_port_mac(self) -> None:
        # Assumption: a port on host 'fake_host' stays unbound (upstream's test driver binds
        # only a few magic host names). df binds on any host, and ML2 refuses a MAC change
        # of a bound port with 409 PortBound -- the same override as ML2/OVN's tests.
        self.check_update_port_mac(
            host_arg={portbindings.HOST_ID: "fake-host"},
            arg_list=(portbindings.HOST_ID,),
            expected_status=exc.HTTPConflict.code,
            expected_error="PortBound")

    def test_dhcp_provisioning_blocks_not_inserted_on_no_addr_change(self) -> None:
        # Assumption: no mechanism driver adds a provisioning block when a port moves to a
        # new host. df does (entity 'DF': the port is not ACTIVE until the new host's
        # controller reports it). What the test is about still holds: no DHCP block.
        ctx = self.admin()
        plugin: Any = directory.get_plugin()
        self._add_fake_dhcp_agent()
        with self.port(device_owner="fake:test") as port:
            attr_id = plugin.get_port(ctx, port["port"]["id"])["standard_attr_id"]

            def entities() -> set[str]:
                return {b.entity for b in pb_obj.ProvisioningBlock.get_objects(
                    ctx, standard_attr_id=attr_id)}

            before = entities()
            port["port"].update({"binding:host_id": "newhost"})
            plugin.update_port(ctx, port["port"]["id"], port)
            self.assertEqual({DF_ENTITY}, entities() - before)


class TestDfMl2SecurityGroups(DfNbMixin, test_ml2_sg.TestMl2SecurityGroups):
    pass


class TestDfMl2AllowedAddressPairs(DfNbMixin, test_plugin.TestMl2AllowedAddressPairs):
    pass


class TestDfMl2PortSecurity(DfNbMixin, test_plugin.TestMl2PortSecurity):
    pass


class TestDfMl2ExtraDhcpOpts(DfNbMixin, test_plugin.DHCPOptsTestCase):
    pass
