"""The metadata service on every chassis, with real HTTP: df-controller and df-metadata
processes per node on a real NB, namespaced VMs running curl against 169.254.169.254.

Every VM gets its own instance's data (routed network: via its gateway; network without a
router: an on-link route, so the ARP for 169.254.169.254 is answered too); a VM that uses
another VM's address gets nothing, never the other's data; a port with no device id gets
404; with Nova configured the request reaches a Nova stand-in that checks the signature as
Nova does; the proxy outlives a controller restart; one VM's SYN flood is metered on its
own port."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from dragonflow.apps.registry import default_apps
from dragonflow.db.connect import open_nb
from dragonflow.metadata.content import instance_signature
from dragonflow.model import Port
from dragonflow.pipeline.stages import Pipeline
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import Node, Testbed, Vm, kill_pid
from tests.fixtures.deploy import two_nodes
from tests.fixtures.wait import eventually

pytestmark = pytest.mark.fullstack
URL = "http://169.254.169.254/openstack/latest"
NOVA_STUB = Path(__file__).resolve().parents[1] / "fixtures" / "nova_metadata.py"


@pytest.fixture(params=["redis", "etcd"])
def dep(request: pytest.FixtureRequest, testbed: Testbed) -> Iterator[Deployment]:
    server = request.getfixturevalue(f"{request.param}_server")
    with two_nodes(testbed, server.url, tag="md") as d:
        yield d


def curl(vm: Vm, url: str, *args: str, timeout: float = 4.0) -> tuple[int, str]:
    """(HTTP status, body) of ``curl url`` in the VM; status 0 when nothing came back."""
    proc = vm.exec(["curl", "-s", "-m", str(timeout), "-w", "\n%{http_code}", *args, url],
                   timeout=timeout + 10)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body


def meta(vm: Vm, *args: str) -> dict | None:
    code, body = curl(vm, f"{URL}/meta_data.json", *args)
    return json.loads(body) if code == 200 else None


def topology(dep: Deployment) -> dict[str, Vm]:
    """blue: routed (the VMs' default route is the router); plain: no router, the VMs
    have an on-link route to 169.254.169.254 (as DHCP gives on such a subnet)."""
    n = dep.bed.nodes
    dep.network("blue", "vxlan", 701, "10.70.0.0/24", dhcp=True, dns=("10.70.0.53",))
    dep.network("plain", "vxlan", 702, "10.71.0.0/24")
    dep.router("r", [("blue", ["10.70.0.1/24"])])
    vms = {
        "a": dep.vm(n["hv1"], "a", "blue", "fa:16:3e:70:00:11", "10.70.0.11",
                    gateway="10.70.0.1"),
        "b": dep.vm(n["hv2"], "b", "blue", "fa:16:3e:70:00:12", "10.70.0.12",
                    gateway="10.70.0.1"),
        "c": dep.vm(n["hv1"], "c", "plain", "fa:16:3e:71:00:11", "10.71.0.11"),
        "d": dep.vm(n["hv2"], "d", "plain", "fa:16:3e:71:00:12", "10.71.0.12"),
        # a port that is no instance's (no device id)
        "e": dep.vm(n["hv1"], "e", "plain", "fa:16:3e:71:00:13", "10.71.0.13", device_id=""),
    }
    for name in ("c", "d", "e"):
        vms[name].exec(["ip", "route", "add", "169.254.169.254/32", "dev", "eth0"], check=True)
    dep.wait_active([f"{v}-port" for v in vms], timeout=60)
    return vms


def test_every_vm_gets_its_own_instance_and_network(dep: Deployment) -> None:
    vms = topology(dep)
    hv1, hv2 = dep.bed.nodes["hv1"], dep.bed.nodes["hv2"]
    for node in (hv1, hv2):
        dep.start_metadata(node)
    for name in ("a", "b", "c", "d"):
        assert eventually(lambda name=name: meta(vms[name]) is not None, 20), \
            (name, curl(vms[name], f"{URL}/meta_data.json"),
             (vms[name].node.rundir / "df-metadata.log").read_text()[-2000:])
        md = meta(vms[name])
        assert md is not None
        assert (md["uuid"], md["name"], md["project_id"]) == (name, name, "demo"), md
        assert md["hostname"].startswith(f"{name}.") or md["hostname"] == name, md
    code, body = curl(vms["a"], f"{URL}/network_data.json")
    assert code == 200, body
    nd = json.loads(body)
    assert nd["links"][0]["ethernet_mac_address"] == "fa:16:3e:70:00:11"
    net = nd["networks"][0]
    assert (net["ip_address"], net["netmask"], net["network_id"]) == (
        "10.70.0.11", "255.255.255.0", "blue"), nd
    assert net["routes"] == [{"network": "0.0.0.0", "netmask": "0.0.0.0",
                              "gateway": "10.70.0.1"}], nd
    assert nd["services"] == [{"type": "dns", "address": "10.70.0.53"}], nd
    code, body = curl(vms["c"], f"{URL}/network_data.json")
    assert code == 200, body
    net = json.loads(body)["networks"][0]
    assert (net["ip_address"], net["network_id"], net["routes"]) == ("10.71.0.11", "plain", [])
    code, body = curl(vms["a"], "http://169.254.169.254/openstack")
    assert code == 200 and "latest" in body.split()
    # no instance behind the port: 404, nothing else
    code, body = curl(vms["e"], f"{URL}/meta_data.json")
    assert code == 404, (code, body)
    # spoofing: another VM's address as a second address and as the source -- its own data
    # or nothing, never the other's (same node and across nodes)
    pairs = (("a", "b"), ("d", "c"), ("e", "c"))
    for spoofer, victim in pairs:
        vms[spoofer].exec(["ip", "addr", "add", f"{vms[victim].ip}/32", "dev", "eth0"],
                          check=True)
    with ThreadPoolExecutor(len(pairs)) as pool:  # each waits out its timeout: at once
        got = list(pool.map(lambda p: curl(vms[p[0]], f"{URL}/meta_data.json", "--interface",
                                           vms[p[1]].ip, timeout=2), pairs))
    for (spoofer, victim), (code, body) in zip(pairs, got, strict=True):
        assert code != 200 or json.loads(body)["uuid"] == spoofer, (spoofer, victim, body)
        assert f'"{victim}"' not in body, (spoofer, victim, body)
        vms[spoofer].exec(["ip", "addr", "del", f"{vms[victim].ip}/32", "dev", "eth0"],
                          check=True)
    # the proxy is its own process: a killed and restarted controller does not stop it
    # (the flows stay in OVS meanwhile; the new controller replaces them in one bundle)
    proxy = dep.metadata["hv1"].proc
    dep.kill_controller(hv1)
    assert proxy.poll() is None
    assert (meta(vms["a"]) or {}).get("uuid") == "a"
    dep.start_controller(hv1)
    assert eventually(lambda: (meta(vms["a"]) or {}).get("uuid") == "a", 20)
    assert proxy.poll() is None
    # and a restarted df-metadata finds its interface and goes on
    dep.kill_metadata(hv2)
    assert curl(vms["b"], f"{URL}/meta_data.json", timeout=2)[0] != 200
    dep.start_metadata(hv2)
    assert eventually(lambda: (meta(vms["b"]) or {}).get("uuid") == "b", 20)


FLOOD = r"""
import socket, struct, sys, time
src, seconds = sys.argv[1], float(sys.argv[2])

def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

dst = "169.254.169.254"
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
sent, port, end = 0, 20000, time.monotonic() + seconds
while time.monotonic() < end:
    port = 20000 + (port - 19999) % 40000
    hdr = struct.pack("!HHIIBBHHH", port, 80, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr))
    hdr = hdr[:16] + struct.pack("!H", csum(pseudo + hdr)) + hdr[18:]
    try:
        s.sendto(hdr, (dst, 0))
        sent += 1
    except OSError:
        pass
print(sent)
"""


def meter_stats(node: Node, meter_id: int) -> tuple[int, int]:
    """(packets that reached the meter, packets its drop band dropped)."""
    out = node.ofctl("meter-stats", "br-int", f"meter={meter_id}")
    seen = re.search(r"packet_in_count:(\d+)", out)
    dropped = re.findall(r"^\s*\d+: packet_count:(\d+)", out, re.M)
    assert seen, out
    return int(seen.group(1)), sum(int(x) for x in dropped)


@pytest.mark.parametrize("dep", ["redis"], indirect=True)  # the NB: test above
def test_one_vms_syn_flood_is_metered_on_its_own_port(dep: Deployment) -> None:
    vms = topology(dep)
    hv1 = dep.bed.nodes["hv1"]
    dep.start_metadata(hv1)
    a, c = vms["a"], vms["c"]
    assert eventually(lambda: meta(a) is not None and meta(c) is not None, 20)
    p = Pipeline.assemble(default_apps())
    syn = p.meter_id("metadata", "syn")
    assert syn is not None
    keys = {v: dep.nb.get(Port, f"{v}-port").unique_key for v in ("a", "c")}  # type: ignore[union-attr]
    a_meter, c_meter = (p.port_meters(keys[v])[syn] for v in ("a", "c"))
    flood = subprocess.Popen(["ip", "netns", "exec", a.netns, sys.executable, "-c", FLOOD,
                              a.ip, "3"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        # the neighbour on the same node is served during the flood
        started = time.monotonic()
        md = meta(c)
        assert md is not None and md["uuid"] == "c"
        assert time.monotonic() - started < 3
    finally:
        out, _ = flood.communicate(timeout=30)
    sent = int(out.strip())
    seen, dropped = meter_stats(hv1, a_meter)
    # a's SYNs beyond its 20/s (burst 40) never reached the proxy; c's meter saw only c's
    assert sent > 1000 and seen > 1000 and seen - dropped <= 20 * 5 + 40, (sent, seen, dropped)
    assert meter_stats(hv1, c_meter)[1] == 0
    assert eventually(lambda: (meta(a) or {}).get("uuid") == "a", 10)  # a itself recovers


@dataclass
class Nova:
    url: str
    log: Path


@pytest.fixture
def nova(dep: Deployment) -> Iterator[Nova]:
    """The Nova stand-in beside the control plane (127.0.0.1, a free port), secret
    's3cret', instances a and b of project demo; killed by its pid at the end."""
    log = dep.bed.rundir / "nova-requests.jsonl"
    log.touch()
    proc = subprocess.Popen(
        [sys.executable, str(NOVA_STUB), "--listen", "127.0.0.1:0", "--secret", "s3cret",
         "--instances", json.dumps({"a": "demo", "b": "demo"}), "--log", str(log)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["listening"], line
        yield Nova(f"http://127.0.0.1:{line[1]}", log)
    finally:
        kill_pid(proc.pid)
        proc.wait()


@pytest.mark.parametrize("dep", ["redis"], indirect=True)  # the NB: test above
def test_nova_gets_the_signed_instance_of_the_port(dep: Deployment, nova: Nova) -> None:
    vms = topology(dep)
    hv1, hv2 = dep.bed.nodes["hv1"], dep.bed.nodes["hv2"]
    dep.start_metadata(hv1, nova_url=nova.url, secret="s3cret")
    dep.start_metadata(hv2, nova_url=nova.url, secret="not-nova's")
    a = vms["a"]
    assert eventually(lambda: meta(a) is not None, 20), curl(a, f"{URL}/meta_data.json")
    # headers a VM sends by those names are never passed on
    forged = ("-H", "X-Instance-ID: b", "-H", f"X-Instance-ID-Signature: "
              f"{instance_signature('s3cret', 'b')}", "-H", "X-Tenant-ID: demo")
    for args in ((), forged):
        md = meta(a, *args)
        assert md == {"uuid": "a", "project_id": "demo", "served_by": "nova",
                      "forwarded_for": "10.70.0.11"}, md
    seen = [json.loads(line) for line in nova.log.read_text().splitlines()]
    assert seen and all(r["headers"]["X-Instance-ID"] == "a" for r in seen), seen
    h = seen[-1]["headers"]
    assert h["X-Instance-ID-Signature"] == instance_signature("s3cret", "a")
    assert (h["X-Tenant-ID"], h["X-Forwarded-For"]) == ("demo", "10.70.0.11")
    # Nova answers for an instance it does not know (c): 404 passed back
    assert eventually(lambda: curl(vms["c"], f"{URL}/meta_data.json")[0] == 404, 10)
    # a proxy whose secret is not Nova's: Nova refuses it (403), the VM gets no data
    assert eventually(lambda: curl(vms["b"], f"{URL}/meta_data.json")[0] == 403, 20)
    assert "Invalid proxy request signature" in curl(vms["b"], f"{URL}/meta_data.json")[1]
    # Nova down: 502, not a hang
    dep.kill_metadata(hv1, signal.SIGTERM)
    dep.start_metadata(hv1, nova_url="http://127.0.0.1:9", secret="s3cret")
    assert eventually(lambda: curl(a, f"{URL}/meta_data.json")[0] == 502, 10)


def test_embedded_deployment_serves_from_a_thread(testbed: Testbed) -> None:
    """One process, memory:// NB (df demo's default): the service runs on a thread beside
    the in-process controllers, on the same NB, outlives a controller restart and repairs
    its interface after an ovs-vswitchd restart."""
    nb = open_nb(f"memory://md-{uuid.uuid4().hex[:8]}")
    d = Deployment(testbed, nb, "memory://", in_process=True)
    try:
        hv1 = d.add_node("hv1", "10.255.0.11")
        d.network("plain", "vxlan", 703, "10.72.0.0/24")
        vm = d.vm(hv1, "f", "plain", "fa:16:3e:72:00:11", "10.72.0.11")
        vm.exec(["ip", "route", "add", "169.254.169.254/32", "dev", "eth0"], check=True)
        d.wait_active(["f-port"], timeout=30)
        d.start_metadata(hv1)
        assert eventually(lambda: (meta(vm) or {}).get("uuid") == "f", 20)
        d.kill_controller(hv1)
        d.start_controller(hv1)
        d.settle()
        assert (meta(vm) or {}).get("uuid") == "f"
        # ovs-vswitchd restarted, the device's address gone: served again (the upkeep
        # repairs the interface within its period, 5 s)
        d.bed.restart_vswitchd(hv1)
        assert eventually(lambda: (meta(vm) or {}).get("uuid") == "f", 30)
        subprocess.run(["ip", "-n", hv1.netns, "addr", "flush", "dev", "df-metadata"],
                       check=True)
        assert meta(vm, "-m", "1") is None
        assert eventually(lambda: (meta(vm) or {}).get("uuid") == "f", 15)
    finally:
        d.stop()
        nb.driver.close()
