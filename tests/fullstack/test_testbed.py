"""The test bed fixture and the OVSDB layer, proven with real OVS and real packets.

No controller here: br-int comes from ``Ovsdb.ensure_integration_bridge`` and the flows are
written by hand with ovs-ofctl, so a failure points at the fixture or at dragonflow.ovs.ovsdb.
"""

from __future__ import annotations

import json
import queue
import subprocess
import time
from pathlib import Path

import pytest

from dragonflow.ovs.ovsdb import IfaceChange, Ovsdb, OvsdbError
from tests.fixtures.testbed import (
    BR_INT,
    Node,
    Testbed,
    new_prefix,
    require_prerequisites,
    testbed_fixture,  # noqa: F401  (the 'testbed' fixture)
)

pytestmark = [pytest.mark.fullstack, pytest.mark.ovs]

ALL_TUNNELS = ["vxlan", "geneve", "gre"]
VNI = 4242


def _ensure(db: Ovsdb, node: Node, tunnels: list[str]) -> dict[str, int]:
    return db.ensure_integration_bridge(BR_INT, "netdev", tunnels, node.controller_target,
                                        "00000000000000a1")


def _config_snapshot(node: Node) -> dict[str, object]:
    """Everything ensure_integration_bridge owns, with row uuids, as ovsdb-server has it."""
    def rows(table: str, cols: str, *records: str) -> object:
        out = node.vsctl("--format=json", f"--columns=_uuid,{cols}", "list", table, *records)
        return json.loads(out)["data"]
    return {
        "next_cfg": node.vsctl("get", "Open_vSwitch", ".", "next_cfg"),
        "bridge": rows("Bridge", "name,datapath_type,fail_mode,protocols,other_config,"
                       "controller,ports", BR_INT),
        "controller": rows("Controller", "target,connection_mode"),
        "ports": rows("Port", "name,interfaces"),
        "tunnels": rows("Interface", "name,type,options", "df-vxlan", "df-geneve", "df-gre"),
    }


def test_ensure_integration_bridge_is_idempotent_and_keeps_flows(testbed: Testbed) -> None:
    node = testbed.add_node("hv1", "10.255.0.11")
    with Ovsdb(node.db_target) as db:
        ofports = _ensure(db, node, ALL_TUNNELS)
        assert sorted(ofports) == sorted(ALL_TUNNELS)
        assert ofports == {t: node.ofport(f"df-{t}") for t in ALL_TUNNELS}
        assert db.tunnel_ofports() == ofports
        assert node.vsctl("get", "Bridge", BR_INT, "fail_mode") == "secure"
        assert node.vsctl("get", "Bridge", BR_INT, "protocols") == '[OpenFlow13, OpenFlow15]'
        assert node.vsctl("get", "Bridge", BR_INT, "other_config:disable-in-band") == '"true"'
        assert node.vsctl("get", "Bridge", BR_INT, "datapath_type") == "netdev"
        assert "dpid:00000000000000a1" in node.ofctl("show", BR_INT)
        assert node.vsctl("get-controller", BR_INT) == node.controller_target
        for t in ALL_TUNNELS:
            assert node.vsctl("get", "Interface", f"df-{t}", "type") == t
            assert node.vsctl("get", "Interface", f"df-{t}", "options") == \
                "{key=flow, remote_ip=flow}"

        node.ofctl("add-flow", BR_INT, "cookie=0x5eed,table=0,priority=7,ip,actions=drop")
        before = _config_snapshot(node)
        assert _ensure(db, node, ALL_TUNNELS) == ofports
        after = _config_snapshot(node)
        assert after == before  # nothing written: not even next_cfg moved
        assert "cookie=0x5eed" in node.ofctl("dump-flows", BR_INT)

        # A controller dials the passive target: the bridge answers over it, and hanging up
        # does not flush flows either.
        sock = Path(node.controller_target.removeprefix("punix:"))
        assert "cookie=0x5eed" in node.ofctl("dump-flows", f"unix:{sock}")

        # Changing the tunnel set only touches the tunnel ports.
        assert _ensure(db, node, ["vxlan", "geneve"]) == {
            "vxlan": ofports["vxlan"], "geneve": ofports["geneve"]}
        ports = node.vsctl("list-ports", BR_INT).split()
        assert sorted(ports) == ["df-geneve", "df-vxlan"]
        assert "cookie=0x5eed" in node.ofctl("dump-flows", BR_INT)

        # Drift made by someone else is repaired by the next call.
        node.vsctl("set", "Bridge", BR_INT, "fail_mode=standalone", "--",
                   "set", "Interface", "df-vxlan", "options:key=5")
        _ensure(db, node, ["vxlan", "geneve"])
        assert node.vsctl("get", "Bridge", BR_INT, "fail_mode") == "secure"
        assert node.vsctl("get", "Interface", "df-vxlan", "options") == \
            "{key=flow, remote_ip=flow}"

        with pytest.raises(ValueError, match="unknown tunnel types"):
            _ensure(db, node, ["stt"])
        with pytest.raises(ValueError, match="16 hex digits"):
            db.ensure_integration_bridge(BR_INT, "netdev", [], node.controller_target, "1")
    with pytest.raises(OvsdbError, match="cannot read the Open_vSwitch schema"):
        Ovsdb(f"unix:{node.rundir / 'missing.sock'}")


def _next_event(events: queue.Queue[IfaceChange], name: str, timeout: float = 10.0
                ) -> IfaceChange:
    deadline = time.monotonic() + timeout
    while True:
        ev = events.get(timeout=max(0.0, deadline - time.monotonic()))
        if ev.name == name:
            return ev


def test_interface_monitor_reports_vm_port_added_and_removed(testbed: Testbed) -> None:
    node = testbed.add_node("hv1", "10.255.0.11")
    node.ensure_br_int()
    events: queue.Queue[IfaceChange] = queue.Queue()
    with Ovsdb(node.db_target) as db:
        db.watch_interfaces(events.put)
        initial = {}
        while not events.empty():
            ev = events.get_nowait()
            initial[ev.name] = ev
        assert set(initial) == {"br-phy", "und0", "br-int", "df-vxlan", "df-geneve"}
        assert all(ev.kind == "added" for ev in initial.values())
        assert initial["df-vxlan"].ofport == node.ofport("df-vxlan")
        assert initial["df-vxlan"].type == "vxlan"
        with pytest.raises(OvsdbError, match="already registered"):
            db.watch_interfaces(events.put)

        vm = testbed.add_vm(node, "vm1", "fa:16:3e:00:00:01", "10.0.0.1/24", "lport-vm1")
        ev = _next_event(events, "tapvm1")
        assert (ev.kind, ev.iface_id, ev.mac) == ("added", "lport-vm1", "fa:16:3e:00:00:01")
        while ev.ofport is None:  # vswitchd assigns the ofport a moment after the insert
            ev = _next_event(events, "tapvm1")
            assert ev.kind == "updated"
        ofport = ev.ofport
        assert ofport == vm.ofport() > 0
        assert db.interfaces()["tapvm1"].ofport == ofport

        testbed.remove_vm(vm)
        ev = _next_event(events, "tapvm1")
        # A removed event carries the last known state, ofport included.
        assert (ev.kind, ev.iface_id, ev.ofport) == ("removed", "lport-vm1", ofport)
        assert "tapvm1" not in db.interfaces()

        assert db.get_system_id() == "hv1"
        db.set_external_id("df-test", "x y")
        assert node.vsctl("get", "Open_vSwitch", ".", "external_ids:df-test") == '"x y"'
        assert db.get_external_id("df-test") == "x y"


def test_interface_monitor_catches_up_after_ovsdb_server_restart(testbed: Testbed) -> None:
    node = testbed.add_node("hv1", "10.255.0.11")
    node.ensure_br_int()
    vm = testbed.add_vm(node, "vm1", "fa:16:3e:00:00:01", "10.0.0.1/24", "lport-vm1")
    events: queue.Queue[IfaceChange] = queue.Queue()
    with Ovsdb(node.db_target) as db:
        db.watch_interfaces(events.put)
        assert _next_event(events, "tapvm1").kind == "added"  # the initial dump
        testbed.restart_ovsdb_server(node)
        # Removed while our connection is down (vsctl connects first).
        testbed.remove_vm(vm)
        ev = _next_event(events, "tapvm1", timeout=20.0)
        assert (ev.kind, ev.iface_id) == ("removed", "lport-vm1")


def _tunnel_flows(node: Node, vm_port: int, tun_port: int, remote_ip: str) -> None:
    node.ofctl("del-flows", BR_INT)
    node.ofctl("add-flow", BR_INT,
               f"table=0,priority=100,in_port={vm_port},actions=set_field:{remote_ip}->tun_dst,"
               f"set_field:{VNI}->tun_id,output:{tun_port}")
    node.ofctl("add-flow", BR_INT,
               f"table=0,priority=100,in_port={tun_port},tun_id={VNI},actions=output:{vm_port}")


def _packets_from_tunnel(node: Node, tun_port: int, at_least: int) -> int:
    """n_packets of the flow that takes packets from the tunnel port (OpenFlow counters
    follow the datapath with a delay of up to a second or so: poll)."""
    deadline = time.monotonic() + 5.0
    while True:
        lines = node.ofctl("dump-flows", BR_INT, f"in_port={tun_port}").splitlines()
        counts = [int(ln.split("n_packets=")[1].split(",")[0]) for ln in lines
                  if "n_packets=" in ln]
        assert len(counts) == 1, lines
        if counts[0] >= at_least or time.monotonic() > deadline:
            return counts[0]
        time.sleep(0.1)


def test_two_vms_on_two_nodes_ping_over_each_tunnel_type(testbed: Testbed) -> None:
    hv1 = testbed.add_node("hv1", "10.255.0.11")
    hv2 = testbed.add_node("hv2", "10.255.0.12")
    tun1 = hv1.ensure_br_int(ALL_TUNNELS)
    tun2 = hv2.ensure_br_int(ALL_TUNNELS)
    vm1 = testbed.add_vm(hv1, "vm1", "fa:16:3e:00:00:01", "10.0.0.1/24", "lport-vm1")
    vm2 = testbed.add_vm(hv2, "vm2", "fa:16:3e:00:00:02", "10.0.0.2/24", "lport-vm2")
    assert hv1.appctl("ovs/route/show").count("10.255.0.0/24") == 1

    assert not vm1.ping(vm2.ip, timeout=1)  # fail_mode=secure and no flows: nothing passes

    for ttype in ALL_TUNNELS:
        _tunnel_flows(hv1, vm1.ofport(), tun1[ttype], hv2.underlay_ip)
        _tunnel_flows(hv2, vm2.ofport(), tun2[ttype], hv1.underlay_ip)
        assert vm1.ping(vm2.ip, count=3, timeout=5), f"vm1 -> vm2 over {ttype}"
        assert vm2.ping(vm1.ip, count=3, timeout=5), f"vm2 -> vm1 over {ttype}"
        # 3 requests + 3 replies arrived through the tunnel port on each side.
        assert _packets_from_tunnel(hv1, tun1[ttype], 6) >= 6, ttype
        assert _packets_from_tunnel(hv2, tun2[ttype], 6) >= 6, ttype

    # A restarted ovs-vswitchd comes back with br-phy addressed, and without flows.
    testbed.restart_vswitchd(hv2)
    assert "priority=100" not in hv2.ofctl("dump-flows", BR_INT)
    assert hv2.ensure_br_int(ALL_TUNNELS) == tun2
    _tunnel_flows(hv2, vm2.ofport(), tun2["vxlan"], hv1.underlay_ip)
    _tunnel_flows(hv1, vm1.ofport(), tun1["vxlan"], hv2.underlay_ip)
    assert vm1.ping(vm2.ip, count=3, timeout=10)


def test_teardown_leaves_no_namespace_process_or_directory() -> None:
    require_prerequisites()
    bed = Testbed(new_prefix())
    try:
        node = bed.add_node("hv1", "10.255.0.11")
        node.ensure_br_int(["vxlan"])
        vm = bed.add_vm(node, "vm1", "fa:16:3e:00:00:01", "10.0.0.1/24", "lport-vm1")
        sleeper = subprocess.Popen(["ip", "netns", "exec", vm.netns, "sleep", "300"])
        daemons = [int((node.rundir / f"{d}.pid").read_text())
                   for d in ("ovsdb-server", "ovs-vswitchd")]
        assert len(bed.own_namespaces()) == 3
    finally:
        bed.teardown()
    assert sleeper.wait(timeout=5) != 0
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert bed.prefix not in listed
    assert not bed.rundir.exists()
    assert all(not Path(f"/proc/{pid}").exists() or
               Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
               for pid in daemons)
    bed.teardown()  # idempotent
