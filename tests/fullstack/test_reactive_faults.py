"""Reactive L3 under faults: a frame OVS cannot parse, re-injected by the controller,
never comes back to it (no loop between the switch and the controller), and a learned
host flow that idled out is learned again on the next packet -- even when its
flow-removed and that packet reach the controller in one batch."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from dragonflow.db.connect import open_nb
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import BR_INT, Testbed, Vm
from tests.fixtures.deploy import hold_next_sync
from tests.fixtures.wait import eventually

RMAC = "fa:16:3e:aa:02:00"  # r1's interface on n1 (Deployment.router's MAC scheme)
RMAC2 = "fa:16:3e:aa:02:01"  # ... and on n2
IDLE = 2  # seconds a learned host flow may stay idle


class Bed:
    def __init__(self, dep: Deployment) -> None:
        n = dep.bed.nodes
        dep.network("n1", "vxlan", 811, "10.81.0.0/24")
        dep.network("n2", "vxlan", 812, "10.82.0.0/24")
        # a's port security is off: its unparsable frames must get as far as the router's
        # controller path (port security would drop them first: a test below shows it)
        self.a = dep.vm(n["hv1"], "a", "n1", "fa:16:3e:81:00:11", "10.81.0.11",
                        gateway="10.81.0.1", port_security=False)
        self.e = dep.vm(n["hv2"], "e", "n2", "fa:16:3e:82:00:11", "10.82.0.11",
                        gateway="10.82.0.1")
        dep.router("r1", [("n1", ["10.81.0.1/24"]), ("n2", ["10.82.0.1/24"])])
        dep.wait_active(["a-port", "e-port"], timeout=60)
        dep.settle()
        self.dep = dep
        self.ctl = dep.controllers["hv1"]
        self.hv1 = n["hv1"]

    def host_flows(self) -> list[str]:
        return [f for f in self.hv1.ofctl("dump-flows", BR_INT).splitlines()
                if f"nw_dst={self.e.ip} " in f or f"nw_dst={self.e.ip}," in f]


@pytest.fixture
def bed(testbed: Testbed) -> Iterator[Bed]:
    nb = open_nb(f"memory://rf-{uuid.uuid4().hex[:8]}", root="/rf/")
    dep = Deployment(testbed, nb, "memory://", in_process=True, l3_mode="reactive")
    try:
        dep.add_node("hv1", "10.255.0.11")
        dep.add_node("hv2", "10.255.0.12")
        dep.controllers["hv1"].topo.facts.reactive_idle_timeout = IDLE
        yield Bed(dep)
    finally:
        dep.stop()


MALFORMED = r"""
import socket, struct, sys
src_mac, rmac, src, dst = sys.argv[1:5]
# IPv4 with IHL=4 (a 16-byte header: invalid) and total length 10: OVS cannot parse it
ip = struct.pack("!BBHHHBBH4s4s", 0x44, 0, 10, 1, 0, 64, 1, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
frame = bytes.fromhex(rmac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) \
    + b"\x08\x00" + ip + b"\x00" * 26
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
s.send(frame)
"""


def send_malformed(vm: Vm, dst: str, rmac: str = RMAC) -> None:
    subprocess.run(["ip", "netns", "exec", vm.netns, sys.executable, "-c", MALFORMED,
                    vm.mac, rmac, vm.ip, dst], check=True, timeout=30)


def test_a_frame_ovs_cannot_parse_reaches_the_controller_a_bounded_number_of_times(
        bed: Bed) -> None:
    assert bed.a.ping(bed.e.ip, count=2, timeout=3)  # e is a known, learned host
    before = bed.ctl.pins_handled
    send_malformed(bed.a, bed.e.ip)
    time.sleep(2.0)
    seen = bed.ctl.pins_handled - before
    assert 1 <= seen <= 3, f"one malformed frame reached the controller {seen} times"
    assert bed.a.ping(bed.e.ip, count=2, timeout=3)  # and nothing else suffered


def test_a_host_flow_that_idled_out_is_learned_again(bed: Bed) -> None:
    assert bed.host_flows() == []
    assert bed.a.ping(bed.e.ip, count=1, timeout=3)
    assert len(bed.host_flows()) == 1
    held = hold_next_sync(bed.ctl, IDLE + 3.0)
    assert held.wait(5)
    # while the loop is held: the host flow idles out (its flow-removed queues) ...
    assert eventually(lambda: bed.host_flows() == [], timeout=IDLE + 2.5), \
        "the learned host flow did not idle out"
    # ... and a new packet for e punts (its packet-in queues behind the flow-removed)
    bed.a.exec(["ping", "-c", "1", "-W", "1", bed.e.ip])
    time.sleep(IDLE + 3.5)  # the held iteration is over; both were handled in one batch
    assert bed.a.ping(bed.e.ip, count=3, timeout=3), "routed traffic to e never recovered"
    assert len(bed.host_flows()) == 1


def test_port_security_drops_a_frame_ovs_cannot_parse_before_the_router(bed: Bed) -> None:
    """The same unparsable frame from a port with port security (e): no source address
    OVS can read, so it never reaches the router's controller path."""
    assert bed.e.ping(bed.a.ip, count=2, timeout=3)
    before = bed.ctl.pins_handled + bed.dep.controllers["hv2"].pins_handled
    send_malformed(bed.e, bed.a.ip, RMAC2)
    time.sleep(2.0)
    assert bed.ctl.pins_handled + bed.dep.controllers["hv2"].pins_handled == before
    assert bed.e.ping(bed.a.ip, count=2, timeout=3)
