"""An app from another package (tests/ext_app, installed into the venv with its own
pyproject.toml and a ``dragonflow.apps`` entry point) adds a stage of its own between two
core stages, enabled by configuration alone -- and real traffic shows it: with the default
apps two VMs on different nodes ping each other over IPv4 and IPv6; with ``block_ipv6``
added to ``[controller] apps`` (df-controller processes reading their config file), the
IPv6 pings stop and IPv4 goes on."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from stevedore import ExtensionManager

from dragonflow.apps.registry import DEFAULT_APPS
from dragonflow.db.connect import open_nb
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import Testbed
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.wait import eventually


def build(dep: Deployment) -> tuple:
    a_node = dep.add_node("hv1", "10.255.0.11")
    b_node = dep.add_node("hv2", "10.255.0.12")
    dep.network("n1", "vxlan", 401, "10.4.0.0/24")
    dep.subnet("n1", "n1-subnet6", "fd00:4::/64")
    a = dep.vm(a_node, "a", "n1", "fa:16:3e:00:44:01", "10.4.0.11", ipv6="fd00:4::11/64")
    b = dep.vm(b_node, "b", "n1", "fa:16:3e:00:44:02", "10.4.0.12", ipv6="fd00:4::12/64")
    dep.wait_active(["a-port", "b-port"], timeout=60)
    return a, b


def test_extension_app_is_an_entry_point_of_another_package() -> None:
    found = {e.name: e.entry_point.value for e in ExtensionManager("dragonflow.apps")}
    assert found.get("block_ipv6") == "df_ext_block:BlockIpv6App"


def test_extension_stage_changes_real_traffic(testbed: Testbed,
                                              redis_server: RedisServer) -> None:
    nb = open_nb(redis_server.url, root=f"/ext{uuid.uuid4().hex[:8]}/")
    dep = Deployment(testbed, nb, redis_server.url, in_process=False,
                     apps=(*DEFAULT_APPS, "block_ipv6"))
    try:
        a, b = build(dep)
        assert eventually(lambda: a.ping("10.4.0.12", count=1, timeout=1), 20)
        assert not a.ping("fd00:4::12", count=2, timeout=2)  # a's IPv6 dropped at hv1
        assert not b.ping("fd00:4::11", count=2, timeout=2)  # b's dropped at hv2
        # the operator sees the stage in the status the controller writes
        status = json.loads(Path(dep.bed.nodes["hv1"].rundir / "br-int.df-status.json")
                            .read_text())
        stages = [s["stage"] for s in status["pipeline"]]
        at = stages.index("classify")
        assert stages[at:at + 3] == ["classify", "block_ipv6", "arp_responder"]
        assert status["conflicts"] == [] and status["rejected"] == []
        # the same bed with the default apps: IPv6 flows again
        for node in list(dep.processes):
            dep.kill_controller(dep.bed.nodes[node])
        dep.apps = DEFAULT_APPS
        for node in ("hv1", "hv2"):
            dep.start_controller(dep.bed.nodes[node])
        assert eventually(lambda: a.ping("fd00:4::12", count=1, timeout=1), 30)
        assert b.ping("fd00:4::11", count=3, timeout=3)
        assert a.ping("10.4.0.12", count=2, timeout=3)
    finally:
        dep.stop()
        nb.driver.close()
