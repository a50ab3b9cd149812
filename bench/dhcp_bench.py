"""Benchmark: VM plug -> bound DHCP lease (ISC dhclient), ours and OVN's native DHCP in the
same run. Prints figures, asserts nothing. Needs root.

Two simulated nodes (netns + own OVS each); a DHCP-enabled network; ``--vms`` VMs are
created one after the other on hv2, each booting with no address: the NB port is created,
the VM plugged, and dhclient started at once (as a booting VM does) -- the time from the
NB create to dhclient's "bound" is what a tenant waits for. Then the throughput: all VMs
release and ask again at the same time (``--burst``): leases answered per second by the one
controller of their chassis.

OVN (23.03, bench/ovn_peer.py): the same sequence with ``dhcp-options`` on the logical
switch (lease_time, router, server_id, server_mac) and ``lsp-set-dhcpv4-options`` per port,
ovn-controller answering in its pinctrl thread.

    bench/dhcp_bench.py [--vms 50] [--peer ovn|none]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

from common import pct
from ovn_peer import INSTALL, OvnPeer, ovn_missing, ovn_version, print_table

from dragonflow.db.connect import open_nb
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import Testbed, Vm, new_prefix


def mac_of(i: int) -> str:
    return f"fa:16:3e:77:{i // 256:02x}:{i % 256:02x}"


def burst(vms: list[Vm]) -> float:
    """Every VM asks again at once: leases bound per second."""
    for vm in vms:
        vm.exec(["sh", "-c", "dhclient -4 -r -pf /dev/null eth0 2>/dev/null; "
                             "ip -4 addr flush dev eth0"])
    done: list[bool] = []
    t0 = time.monotonic()

    def one(vm: Vm) -> None:
        done.append(vm.dhclient(timeout=30).returncode == 0)

    threads = [threading.Thread(target=one, args=(v,)) for v in vms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - t0)


def run_ours(n: int) -> tuple[list[float], float]:
    bed = Testbed(new_prefix())
    nb = open_nb(f"memory://dhcpb-{uuid.uuid4().hex[:6]}", root="/dhcpb/")
    dep = Deployment(bed, nb, "memory://", in_process=True)
    try:
        dep.add_node("hv1", "10.255.0.11")
        hv2 = dep.add_node("hv2", "10.255.0.12")
        dep.network("net", "vxlan", 4343, "10.9.0.0/16", dhcp=True)
        bound, vms = [], []
        for i in range(n):
            t0 = time.monotonic()
            vm = dep.vm(hv2, f"d{i}", "net", mac_of(i), f"10.9.1.{i + 10}", dhcp=True)
            got = vm.dhclient(timeout=30)
            if got.returncode == 0:
                bound.append((time.monotonic() - t0) * 1000)
            vms.append(vm)
        return bound, burst(vms)
    finally:
        dep.stop()
        bed.teardown()


def run_ovn(n: int) -> tuple[list[float], float]:
    bed = Testbed(new_prefix())
    ovn = OvnPeer(bed)
    try:
        ovn.add_chassis("hv1", "10.255.0.11")
        hv2 = ovn.add_chassis("hv2", "10.255.0.12")
        ovn.nbctl("ls-add", "net")
        opts = ovn.nbctl("dhcp-options-create", "10.9.0.0/16").strip()
        if not opts:
            opts = ovn.nbctl("--bare", "--columns=_uuid", "find", "DHCP_Options",
                             "cidr=10.9.0.0/16").strip()
        ovn.nbctl("dhcp-options-set-options", opts, "lease_time=86400", "router=10.9.0.1",
                  "server_id=10.9.0.1", "server_mac=fa:16:3e:d4:c9:01", "mtu=1442",
                  "dns_server={10.9.0.53}")
        bound, vms = [], []
        for i in range(n):
            name, mac, ip = f"d{i}", mac_of(i), f"10.9.1.{i + 10}"
            t0 = time.monotonic()
            ovn.nbctl("--", "lsp-add", "net", name, "--", "lsp-set-addresses", name,
                      f"{mac} {ip}", "--", "lsp-set-dhcpv4-options", name, opts)
            vm = bed.add_vm(hv2, name, mac, None, name, mtu=1500)
            got = vm.dhclient(timeout=30)
            if got.returncode == 0:
                bound.append((time.monotonic() - t0) * 1000)
            vms.append(vm)
        return bound, burst(vms)
    finally:
        try:
            ovn.stop()
        finally:
            bed.teardown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--peer", choices=["ovn", "none"], default=None)
    args = ap.parse_args()
    peer = args.peer or ("none" if ovn_missing() else "ovn")
    ours, ours_rate = run_ours(args.vms)
    theirs: list[float] = []
    their_rate: float | str = "-"
    if peer == "ovn":
        theirs, their_rate = run_ovn(args.vms)
        title = f"DHCP, {args.vms} VMs on one chassis (ours vs OVN {ovn_version()})"
    else:
        title = f"DHCP, {args.vms} VMs on one chassis (OVN not run: {INSTALL})"

    def fig(v: list[float], f):  # type: ignore[no-untyped-def]
        return f(v) if v else "-"

    print_table(title, [
        ("leases bound", float(len(ours)), float(len(theirs)) if theirs else "-"),
        ("NB create + plug -> bound, p50 (ms)", fig(ours, statistics.median),
         fig(theirs, statistics.median)),
        ("NB create + plug -> bound, p99 (ms)", fig(ours, lambda v: pct(v, 99)),
         fig(theirs, lambda v: pct(v, 99))),
        ("all VMs ask at once: leases/s", ours_rate, their_rate),
    ])


if __name__ == "__main__":
    main()
