"""df: the Dragonflow front door. ``df demo`` builds a simulated deployment and proves it.

df demo            3 simulated compute nodes (netns + their own Open vSwitch, VXLAN/Geneve
                   underlay), 2 networks with the SAME CIDR, VMs spread over the nodes, a
                   df-controller process per node on a private ovsdb-server (the NB in its
                   DF_NB database); DHCP, SLAAC, metadata, a ping matrix, security groups;
                   north-south: a physical network with a host outside, a VLAN provider
                   network, SNAT through a gateway chassis and a floating IP; two pods
                   attached by df-cni; df-trace of a routed ping; the flows per node and
                   how to look inside. Removes everything at the end.
df demo --keep     leave it running (until `df demo --clean`)
df demo --clean    remove everything a demo created (by its pid files and name prefix)
df demo --db etcd://127.0.0.1:2379   the same against that DB (--db memory://demo: the
                   embedded NB, controllers in this process; no pods or df-trace then)
df status          what a local controller reports (its status file): the pipeline its apps
                   assembled, installed flows, flow conflicts, owners that failed or whose
                   flows the switch refused
df demo --neutron  the real Neutron API (gunicorn, ML2 driver df + df-l3, sqlite, noauth) in
                   front: the `openstack` CLI creates two networks, a router and ports bound
                   to the nodes; VMs plugged with those ports ping each other. NB: a private
                   redis-server, or --db etcd://...|redis://...; --keep leaves it running.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dragonflow.apps.ra import link_local
from dragonflow.db.connect import open_nb
from dragonflow.model import Port, SecurityGroup, SecurityGroupRule
from dragonflow.pipeline.topology import gateway_rank
from dragonflow.sim import neutron_aio
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.probes import connection_source, echo_source, probe, serve
from dragonflow.sim.testbed import BR_INT, Host, Node, Testbed, Vm, kill_pid

GATEWAYS = {"hv2", "hv3"}  # gateway-capable chassis ([controller] gateway = true)
EXT_CIDR, EXT_GW, OUTSIDE = "172.24.4.0/24", "172.24.4.1", "172.24.4.100"
ROUTER_GW, FIP = "172.24.4.10", "172.24.4.20"
VLAN, VLAN_CIDR, VLAN_VM, VLAN_OUTSIDE = 100, "10.100.0.0/24", "10.100.0.11", "10.100.0.100"
DEMO_PREFIX = "dfdemo"
STATE = Path("/run/dragonflow-demo.json")

NODES = [("hv1", "10.255.0.11"), ("hv2", "10.255.0.12"), ("hv3", "10.255.0.13")]
NETWORKS = [("blue", "vxlan", 1001, "10.0.0.0/24"), ("red", "geneve", 1002, "10.0.0.0/24"),
            ("green", "vxlan", 1003, "10.1.0.0/24")]
ROUTED = {"blue", "green"}  # router r1 joins them; red (blue's CIDR) stays on its own
GREEN6 = "fd00:1::/64"  # green's IPv6 subnet: SLAAC from r1's advertisements
VMS = [  # name, node, network, mac, ip
    ("b1", "hv1", "blue", "fa:16:3e:00:01:01", "10.0.0.11"),
    ("b2", "hv2", "blue", "fa:16:3e:00:01:02", "10.0.0.12"),
    ("b3", "hv3", "blue", "fa:16:3e:00:01:03", "10.0.0.13"),
    ("r1", "hv1", "red", "fa:16:3e:00:02:01", "10.0.0.21"),
    ("r2", "hv3", "red", "fa:16:3e:00:02:02", "10.0.0.22"),
    ("g1", "hv2", "green", "fa:16:3e:00:03:01", "10.1.0.11"),
]


def say(text: str = "") -> None:
    print(text, flush=True)


def clean() -> int:
    """Remove what a kept demo left: its controllers, OVS daemons, namespaces, run dir."""
    removed = 0
    if STATE.exists():
        state = json.loads(STATE.read_text())
        for pid in state.get("pids", []):
            try:
                kill_pid(int(pid))
            except Exception as e:  # already gone is fine
                logging.debug("pid %s: %s", pid, e)
        Testbed(state["prefix"]).teardown()  # kills what runs in its namespaces, deletes them
        shutil.rmtree(state["rundir"], ignore_errors=True)
        STATE.unlink()
        removed += 1
    leftover = [ns.split()[0] for ns in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
        if ns.startswith(DEMO_PREFIX)]
    for ns in leftover:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    say(f"df demo --clean: removed {removed} kept demo(s), {len(leftover)} stray namespace(s)")
    return 0


def ping_matrix(vms: dict[str, Vm], nets: dict[str, str]) -> tuple[int, int]:
    names = list(vms)
    isolated = len(set(nets.values())) > 1
    say("Ping matrix (row pings column; 'ok' = reply, '--' = no reply"
        + ("; '*' marks what the design requires to fail):" if isolated else "):"))
    say("        " + "".join(f"{n:>7}" for n in names))
    good = bad = 0
    results: dict[tuple[str, str], bool] = {}
    jobs = []
    for a in names:
        for b in names:
            if a != b:
                def run(a: str = a, b: str = b) -> None:
                    results[(a, b)] = vms[a].ping(vms[b].ip, count=2, timeout=2)
                jobs.append(threading.Thread(target=run))
    for j in jobs:
        j.start()
    for j in jobs:
        j.join()
    for a in names:
        row = f"{a:>4}    "
        for b in names:
            if a == b:
                row += f"{'':>7}"
                continue
            ok = results[(a, b)]
            expect = (nets[a] == nets[b] or {nets[a], nets[b]} <= ROUTED) and \
                vms[a].ip != vms[b].ip
            row += f"{'ok' if ok else '--':>6}{'' if expect else '*'}"
            good += ok == expect
            bad += ok != expect
        say(row)
    return good, bad


def eui64(prefix: str, mac: str) -> str:
    """The SLAAC address Neutron computes for ``mac`` in ``prefix``."""
    iid = ipaddress.IPv6Address(link_local(mac)).packed[8:]
    net = ipaddress.IPv6Network(prefix).network_address.packed[:8]
    return str(ipaddress.IPv6Address(net + iid))


def wait_global_v6(vm: Vm, timeout: float = 10.0) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = vm.exec(["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"])
        for line in out.stdout.splitlines():
            if "tentative" not in line:
                return line.split()[3].split("/")[0]
        time.sleep(0.2)
    return None


def dhcp_all(vms: dict[str, Vm]) -> dict[str, str]:
    """dhclient in every VM at once; per VM what it was given (or why not)."""
    out: dict[str, str] = {}

    def one(name: str, vm: Vm) -> None:
        t = time.monotonic()
        got = vm.dhclient(timeout=20)
        took = (time.monotonic() - t) * 1000
        if got.returncode != 0:
            out[name] = f"NO LEASE (dhclient exit {got.returncode})"
            return
        route = vm.exec(["ip", "-4", "route", "show", "default"]).stdout.split()
        mtu = vm.exec(["cat", "/sys/class/net/eth0/mtu"]).stdout.strip()
        dns = [ln.split()[1] for ln in vm.resolv_conf().splitlines()
               if ln.startswith("nameserver")]
        gw = route[2] if len(route) > 2 else "-"
        out[name] = (f"{vm.ip:<10} gateway {gw}  dns {','.join(dns) or '-'}  mtu {mtu}  "
                     f"(bound in {took:.0f} ms)")

    threads = [threading.Thread(target=one, args=(n, v)) for n, v in vms.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def metadata_all(vms: dict[str, Vm], wait: float = 15.0) -> dict[str, str]:
    """What each VM's ``curl http://169.254.169.254/openstack/latest/meta_data.json`` got
    (asked at once; retried until ``wait`` while the flows come)."""
    out: dict[str, str] = {}
    url = "http://169.254.169.254/openstack/latest/meta_data.json"

    def one(name: str, vm: Vm) -> None:
        deadline = time.monotonic() + wait
        while True:
            got = vm.exec(["curl", "-s", "-m", "3", "-w", "\n%{http_code}", url], timeout=15)
            body, _, code = got.stdout.rpartition("\n")
            if code == "200":
                md = json.loads(body)
                out[name] = (f"uuid {md['uuid']}  name {md['name']}  hostname "
                             f"{md['hostname']}  project {md['project_id']}")
                return
            if time.monotonic() > deadline:
                out[name] = f"NO ANSWER (HTTP {code or 'none'})"
                return
            time.sleep(0.3)

    threads = [threading.Thread(target=one, args=(n, v)) for n, v in vms.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# security groups: network "sec" with a web tier, a database and a guest in no group
SEC_NET = ("sec", "vxlan", 1004, "10.2.0.0/24")
SEC_VMS = [  # name, node, mac, ip, groups
    ("web1", "hv1", "fa:16:3e:00:04:01", "10.2.0.11", ("web",)),
    ("web2", "hv2", "fa:16:3e:00:04:02", "10.2.0.12", ("web",)),
    ("db1", "hv3", "fa:16:3e:00:04:03", "10.2.0.13", ("db",)),
    ("guest", "hv1", "fa:16:3e:00:04:04", "10.2.0.14", ()),
]
SEC_MATRIX = [  # from, proto, port (0: ping), to, allowed?, why
    ("guest", "tcp", 80, "web1", True, "web: tcp 80 from anywhere"),
    ("guest", "tcp", 5432, "db1", False, "db: 5432 only from group web"),
    ("web2", "tcp", 5432, "db1", True, "db: 5432 from group web"),
    ("web1", "tcp", 22, "db1", False, "no rule"),
    ("guest", "icmp", 0, "web1", False, "web: ping only from group web"),
    ("web2", "icmp", 0, "web1", True, "web: ping from group web"),
    ("db1", "tcp", 8080, "guest", True, "db: egress any; the reply gets back in"),
]


def sg_rule(rid: str, direction: str, **kw: object) -> SecurityGroupRule:
    return SecurityGroupRule.from_dict({"id": rid, "direction": direction, **kw})


def security_groups(dep: Deployment) -> None:
    dep.nb.create(SecurityGroup(id="web", topic=dep.topic, name="web", rules=(
        sg_rule("web-out", "egress"),
        sg_rule("web-80", "ingress", protocol="tcp", port_range_min=80, port_range_max=80),
        sg_rule("web-ping", "ingress", protocol="icmp", remote_group_id="web"))))
    dep.nb.create(SecurityGroup(id="db", topic=dep.topic, name="db", rules=(
        sg_rule("db-out", "egress"),
        sg_rule("db-5432", "ingress", protocol="tcp", port_range_min=5432,
                port_range_max=5432, remote_group_id="web"))))


def security_matrix(vms: dict[str, Vm]) -> tuple[int, int]:
    """Who may reach whom (TCP connects, pings), each cell against the rules; then a guest
    that takes a web VM's address to reach the database: port security drops it."""
    servers = [serve(vms[name], ["80", "22", "5432", "8080"]) for name, *_ in SEC_VMS]
    good = bad = 0
    try:
        for src, proto, port, dst, allowed, why in SEC_MATRIX:
            if proto == "icmp":
                got = vms[src].ping(vms[dst].ip, count=2, timeout=2)
                seen = "echo reply" if got else "no reply"
            else:
                seen = probe(vms[src], proto, vms[dst].ip, port)
                got = seen == "open"
            ok = got == allowed
            good, bad = good + ok, bad + (not ok)
            what = f"{proto} {port}" if port else "ping"
            say(f"  {src:>5} -> {dst:<5} {what:<9} {'allowed' if allowed else 'blocked':<8}"
                f"({why}): {seen}  {'ok' if ok else 'NOT AS DESIGNED'}")
        guest, web2, db1 = vms["guest"], vms["web2"], vms["db1"]
        guest.exec(f"ip addr flush dev eth0 && ip addr add {web2.ip}/24 dev eth0")
        # what reaches db1 from the borrowed address (db1's answer would go to web2 anyway:
        # only db1's own capture tells whether the spoofed SYNs got through)
        sniff = subprocess.Popen(
            ["ip", "netns", "exec", db1.netns, "timeout", "5", "tcpdump", "-l", "-n", "-i",
             "eth0", f"src {web2.ip} and tcp dst port 5432"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(0.5)
        probe(guest, "tcp", db1.ip, 5432)
        heard = sum(1 for ln in sniff.communicate(timeout=15)[0].splitlines()
                    if " IP " in ln)
        ok = heard == 0
        good, bad = good + ok, bad + (not ok)
        verdict = "ok: port security dropped them" if ok else "NOT AS DESIGNED"
        say(f"  guest takes web2's address {web2.ip} to reach db1:5432 (db allows web): "
            f"db1 saw {heard} packets  {verdict}")
    finally:
        for s in servers:
            s.kill()
            s.wait()
    return good, bad


def north_south(dep: Deployment, nodes: dict[str, Node], vms: dict[str, Vm], outside: Host,
                outside_vlan: Host) -> int:
    """Provider networks, SNAT and a floating IP, against hosts outside; the failures."""
    dep.provider_network("public", "ext", EXT_CIDR, external=True, gateway_ip=EXT_GW)
    t0 = time.monotonic()
    dep.set_gateway("r1", "public", ROUTER_GW)
    dep.floating_ip("fip1", "public", FIP, "b2-port", "r1")
    dep.provider_network("vlan100", "ext", VLAN_CIDR, vlan=VLAN)
    p1 = dep.vm(nodes["hv3"], "p1", "vlan100", "fa:16:3e:00:04:01", VLAN_VM)
    dep.wait_active(["p1-port"])
    gw = max(GATEWAYS, key=lambda c: gateway_rank("r1", c))
    say(f"\nNorth-south: external network 'public' {EXT_CIDR} (flat, physical network ext); "
        f"a host outside at {OUTSIDE}; r1's gateway {ROUTER_GW} (SNAT on gateway chassis "
        f"{gw}); floating IP {FIP} -> b2 (DNAT/SNAT on b2's own node, hv2); VLAN {VLAN} "
        f"network {VLAN_CIDR} with VM p1 on hv3 and a host outside at {VLAN_OUTSIDE}:")
    deadline = t0 + 20
    while not vms["b1"].ping(OUTSIDE, count=1, timeout=0.3) and time.monotonic() < deadline:
        pass
    say(f"  (b1's first reply from the outside came {time.monotonic() - t0:.1f} s after r1's "
        "gateway was set: the gateway chassis followed the router's networks, compiled, "
        "announced its address)")
    checks = [
        ("b1 (no floating IP) pings the outside", lambda: vms["b1"].ping(OUTSIDE, count=3),
         None),
        ("  ... the outside saw it come from", None,
         lambda: echo_source(outside.netns, outside.dev, lambda: vms["b1"].ping(OUTSIDE))),
        ("the outside pings b2 by its floating IP", lambda: outside.ping(FIP, count=3), None),
        ("  ... b2 opens a TCP connection out; the outside saw it from", None,
         lambda: connection_source(outside.netns, 8080,
                                   lambda: probe(vms["b2"], "tcp", OUTSIDE, 8080))),
        ("the outside pings r1's gateway address", lambda: outside.ping(ROUTER_GW, count=2),
         None),
        (f"p1 (VLAN {VLAN}, hv3) pings the host outside on VLAN {VLAN}",
         lambda: p1.ping(VLAN_OUTSIDE, count=3), None),
        (f"the host outside on VLAN {VLAN} pings p1", lambda: outside_vlan.ping(VLAN_VM),
         None),
    ]
    failed = 0
    expect = {1: ROUTER_GW, 3: FIP}
    for i, (what, check, seen) in enumerate(checks):
        if check is not None:
            ok = check()
            say(f"  {what}: {'yes' if ok else 'NO'}")
        else:
            got = seen() if seen is not None else ""
            ok = got == expect[i]
            say(f"  {what} {got or 'nothing'} (expected {expect[i]})")
        failed += not ok
    return failed


def _tool(name: str) -> list[str]:
    """A console script of this install (next to the interpreter), else its module."""
    script = Path(sys.executable).parent / name
    module = {"df-cni": "dragonflow.cli.cni", "df-trace": "dragonflow.cli.trace"}[name]
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def containers(dep: Deployment, nodes: dict[str, Node], vms: dict[str, Vm]) -> int:
    """Two pods attached by df-cni exactly as a container runtime runs it (CNI_* environment,
    the network configuration on stdin); they ping each other, a VM, and one through r1.
    Returns the number of checks that failed."""
    say("\nContainers: df-cni, the CNI plugin a container runtime runs, attaches two pods "
        "(network namespaces) to network blue -- the NB allocates their addresses:")
    pods = [("pod1", "hv1"), ("pod2", "hv3")]
    results: dict[str, dict[str, Any]] = {}
    bad = 0

    def cni(command: str, pod: str, hv: str) -> tuple[int, dict[str, Any]]:
        node = nodes[hv]
        conf = {"cniVersion": "1.0.0", "name": "demo-pods", "type": "df-cni",
                "network": "blue",
                "dragonflow": {"config_file": str(node.rundir / "dragonflow.ini"),
                               "host_netns": node.netns}}
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": f"demo-{pod}",
               "CNI_NETNS": f"/var/run/netns/{dep.bed.prefix}{pod}", "CNI_IFNAME": "eth0"}
        proc = subprocess.run(_tool("df-cni"), input=json.dumps(conf).encode(), env=env,
                              capture_output=True, timeout=120)
        out = proc.stdout.decode().strip()
        return proc.returncode, (json.loads(out) if out else {})

    for pod, hv in pods:
        subprocess.run(["ip", "netns", "add", f"{dep.bed.prefix}{pod}"], check=True)
        t0 = time.monotonic()
        rc, res = cni("ADD", pod, hv)
        if rc != 0:
            say(f"  {pod} on {hv}: df-cni ADD failed: {res.get('msg', res)}")
            bad += 1
            continue
        results[pod] = res
        ip = res["ips"][0]
        say(f"  {pod} on {hv}: {ip['address']} via {ip.get('gateway')}, "
            f"{res['interfaces'][1]['mac']} (ADD returned after {time.monotonic() - t0:.2f} s: "
            "port ACTIVE)")
    if len(results) == 2:
        addr = {p: r["ips"][0]["address"].split("/")[0] for p, r in results.items()}

        def ping(pod: str, ip: str) -> bool:
            return subprocess.run(["ip", "netns", "exec", f"{dep.bed.prefix}{pod}", "ping",
                                   "-c", "1", "-W", "2", ip], capture_output=True
                                  ).returncode == 0
        for what, pod, ip in (("pod1 -> pod2 (hv1 -> hv3)", "pod1", addr["pod2"]),
                              ("pod1 -> VM b2 (on hv2)", "pod1", vms["b2"].ip),
                              ("pod2 -> VM g1 through router r1", "pod2", vms["g1"].ip)):
            ok = ping(pod, ip) or ping(pod, ip)
            bad += 0 if ok else 1
            say(f"  {what}: {'yes' if ok else 'NO'}")
    for pod, hv in pods:
        rc, res = cni("DEL", pod, hv)
        if rc != 0:
            bad += 1
            say(f"  {pod}: df-cni DEL failed: {res.get('msg', res)}")
    left = [p for p in dep.nb.list(Port) if p.device_owner == "df-cni"]
    say("  DEL of both: " + (f"{len(left)} NB port(s) LEFT" if left else
                             "everything removed (NB ports, OVS ports, veths)"))
    return bad + (1 if left else 0)


def trace_demo(nodes: dict[str, Node], vms: dict[str, Vm]) -> None:
    """df-trace of b1's ping to g1 (routed by r1, tunnelled to hv2), followed there."""
    n1, n2 = nodes["hv1"], nodes["hv2"]
    cmd = [*_tool("df-trace"), "--config-file", str(n1.rundir / "dragonflow.ini"),
           "--port", "b1-port", "--dst-ip", vms["g1"].ip, "--proto", "icmp", "--remote",
           "--remote-rundir", f"hv2={n2.rundir}"]
    say(f"\ndf-trace: what the pipeline does with b1's ping to g1 ({vms['g1'].ip}, routed by "
        "r1), on hv1 and on the far end of the tunnel:")
    say("$ df-trace --port b1-port --dst-ip " + vms["g1"].ip + " --proto icmp --remote")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    for line in (proc.stdout or proc.stderr).rstrip().splitlines():
        say("  " + line)


def demo(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        say("df demo needs root (network namespaces, Open vSwitch).")
        return 1
    if STATE.exists():
        say(f"A kept demo is still there ({STATE}); run `df demo --clean` first.")
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    bed = Testbed(DEMO_PREFIX + os.urandom(1).hex())
    private = None if args.db else neutron_aio.PrivateDb("ovsdb", base_dir=bed.rundir)
    args.db = args.db or private.start().url  # type: ignore[union-attr]
    in_process = args.db.startswith("memory:")
    nb = open_nb(args.db)  # default root, so `df-db --db URL` sees the demo
    dep = Deployment(bed, nb, args.db, in_process=in_process)
    kept = False
    try:
        say("== Dragonflow demo: the virtual network is flows, on every compute node ==")
        how = ("embedded, controllers in this process" if in_process
               else "one df-controller process per node")
        what = (" (a private ovsdb-server serving the DF_NB database, made by `df-db "
                "ovsdb-create`)" if private else "")
        say(f"NB database: {args.db}{what} ({how})")
        t0 = time.monotonic()
        nodes = {}
        for name, ip in NODES:
            nodes[name] = dep.add_node(name, ip, physnets=("ext",), gateway=name in GATEWAYS)
        outside = bed.add_outside("out", "ext", f"{OUTSIDE}/24")
        outside_vlan = bed.add_outside("outv", "ext", f"{VLAN_OUTSIDE}/24", vlan=VLAN)
        say(f"\n3 simulated compute nodes (each: netns + its own ovsdb-server/ovs-vswitchd, "
            f"underlay {', '.join(ip for _, ip in NODES)}), local controllers started; each "
            f"maps physical network 'ext' to its br-ext (bridge_mappings), "
            f"{' and '.join(sorted(GATEWAYS))} may host routers' gateways")
        for name, ntype, vni, cidr in NETWORKS:
            dep.network(name, ntype, vni, cidr, dhcp=True, dns=("10.0.0.53",))
        dep.subnet("green", "green-subnet6", GREEN6, gateway_ip="fd00:1::1", ipv6_mode="slaac")
        dep.network(*SEC_NET, dhcp=True)
        security_groups(dep)
        vms = {}
        for vm, hv_name, net, mac, ip in VMS:
            v6 = eui64(GREEN6, mac) if net == "green" else None
            vms[vm] = dep.vm(nodes[hv_name], vm, net, mac, ip, dhcp=True,
                             ipv6=f"{v6}/64" if v6 else None, slaac=v6 is not None)
        sec = {name: dep.vm(nodes[hv], name, SEC_NET[0], mac, ip, dhcp=True,
                            security_groups=groups) for name, hv, mac, ip, groups in SEC_VMS}
        dep.router("r1", [("blue", ["10.0.0.1/24"]), ("green", ["10.1.0.1/24", "fd00:1::1/64"])])
        up = dep.wait_active([f"{vm}-port" for vm, *_ in VMS + SEC_VMS], timeout=60)
        leases = dhcp_all(vms)
        sec_leases = dhcp_all(sec)
        g1 = vms["g1"]
        # IPv6 off and on again: the kernel solicits a router (a link bounce would also drop
        # the IPv4 routes DHCP just installed)
        g1.exec("sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1; "
                "sysctl -qw net.ipv6.conf.eth0.disable_ipv6=0")
        slaac = wait_global_v6(g1)
        for hv in nodes.values():  # its own process, or a thread here on memory://
            dep.start_metadata(hv)
        metadata = metadata_all(vms)
        say(f"\nTopology (set up in {time.monotonic() - t0:.1f} s; port ACTIVE = flows "
            "confirmed by an OpenFlow barrier on its node):")
        for name, ntype, vni, cidr in NETWORKS:
            say(f"  network {name:<5} {ntype:<6} VNI {vni}  {cidr}")
            for vm, node, net, mac, ip in VMS:
                if net == name:
                    say(f"    VM {vm}  {ip:<10} {mac}  on {node}   "
                        f"ACTIVE {up[vm + '-port'] * 1000:.0f} ms after its NB port was created")
        say("  (blue and red use the SAME CIDR: they must stay isolated; router r1 joins "
            "blue and green, on every node)")
        say("\nThe VMs booted with no address and asked DHCP (ISC dhclient); each chassis "
            "answered its own VMs from the NB:")
        for vm in vms:
            say(f"  {vm}: {leases[vm]}")
        say(f"  g1 formed {slaac or 'NO ADDRESS'} by SLAAC from r1's router advertisements "
            f"(Neutron's address: {eui64(GREEN6, g1.mac)})")
        say("\nEach VM asked the metadata service (curl http://169.254.169.254/openstack/"
            "latest/meta_data.json); its own chassis' df-metadata answered from the NB:")
        for vm in vms:
            say(f"  {vm}: {metadata[vm]}")
        say("")
        good, bad = ping_matrix(vms, {vm: net for vm, _, net, _, _ in VMS})
        say(f"\n{good} pairs behaved as designed, {bad} did not.")
        say(f"\nSecurity groups on network {SEC_NET[0]} ({SEC_NET[3]}), enforced on each VM's "
            "own node by conntrack flows: web (tcp 80 from anywhere, ping from web), db (tcp "
            "5432 from web); guest is in no group (port security still on):")
        for name, hv_name, _, _ip, groups in SEC_VMS:
            say(f"  {name:<5} {sec_leases[name]:<28} on {hv_name}  groups: "
                f"{', '.join(groups) or '-'}")
        sec_good, sec_bad = security_matrix(sec)
        say(f"{sec_good} cells behaved as designed, {sec_bad} did not.")
        bad += sec_bad
        bad += north_south(dep, nodes, vms, outside, outside_vlan)
        if not in_process:  # df-cni and df-trace are processes of their own: they need a
            bad += containers(dep, nodes, vms)  # database server, not the embedded NB
            trace_demo(nodes, vms)
        say("\nFlows per node:")
        for name, hv in nodes.items():
            say(f"  {name}: {dep.flow_count(hv)} flows in {BR_INT}")
        n1 = nodes["hv1"]
        status_file = n1.rundir / f"{BR_INT}.df-status.json"
        if status_file.exists():
            say(f"\nThe pipeline hv1's apps declared (`df status --file {status_file}`):")
            say(format_status(json.loads(status_file.read_text())))
        env = f"OVS_RUNDIR={n1.rundir}"
        say("\nLook inside (while it runs, e.g. with --keep):")
        say(f"  {env} ovs-ofctl -O OpenFlow13 dump-flows {BR_INT}")
        say(f"  {env} ovs-appctl ofproto/trace {BR_INT} "
            f"in_port={vms['b1'].ofport()},dl_src={VMS[0][3]},dl_dst={VMS[1][3]}")
        say(f"  ip netns exec {vms['b1'].netns} ping {VMS[1][4]}")
        if not in_process:
            say(f"  df-db --db {args.db} ls port   (and: dump, watch)")
        if args.keep:
            kept = True
            pids = [cp.pid for cp in [*dep.processes.values(), *dep.metadata.values()]]
            STATE.write_text(json.dumps({"prefix": bed.prefix, "rundir": str(bed.rundir),
                                         "pids": pids}))
            if in_process:
                say("\n--keep: controllers run in this process; Ctrl-C stops them "
                    "(flows stay), then `df demo --clean` removes everything.")
                done = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: done.set())
                try:
                    done.wait()
                except KeyboardInterrupt:
                    pass
            else:
                say("\n--keep: left running. `df demo --clean` removes everything.")
        unserved = [vm for vm, got in metadata.items() if got.startswith("NO ANSWER")]
        return 0 if bad == 0 and not unserved else 2
    finally:
        if not kept or in_process:
            dep.stop()
        if not kept:
            if private is not None:
                private.stop()
            bed.teardown()
            say("\nDemo removed (namespaces, OVS daemons, controllers).")

# --- df demo --neutron ---------------------------------------------------------------------
N_NETWORKS = [  # name, extra `network create` options, subnet, CIDR
    ("blue", [], "blue-sub", "10.1.0.0/24"),
    ("red", ["--provider-network-type", "geneve"], "red-sub", "10.2.0.0/24"),
]
N_PORTS = [("b1", "blue", "hv1"), ("b2", "blue", "hv2"), ("r1", "red", "hv3"),
           ("r2", "red", "hv1")]  # VM / port name, network, host


def demo_neutron(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        say("df demo needs root (network namespaces, Open vSwitch).")
        return 1
    if STATE.exists():
        say(f"A kept demo is still there ({STATE}); run `df demo --clean` first.")
        return 1
    missing = neutron_aio.missing() + ([] if neutron_aio.openstack_cli() else
                                       ["python-openstackclient"])
    if missing:
        say(f"df demo --neutron needs: {', '.join(missing)}\n"
            "  EXTRAS=test,neutron bash scripts/setup.sh   (the pinned Neutron extra)")
        return 1
    if args.db and args.db.startswith("memory:"):
        say("--neutron: the Neutron server is its own process; use --db etcd://... or "
            "redis://... (or no --db: a private redis-server)")
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    bed = Testbed(DEMO_PREFIX + os.urandom(1).hex())
    db = None if args.db else neutron_aio.PrivateDb(base_dir=bed.rundir)
    stack: neutron_aio.NeutronStack | None = None
    kept = False
    try:
        say("== Dragonflow behind the real Neutron API: openstack CLI -> Neutron (ML2 df, "
            "df-l3) -> NB -> local controllers ==")
        url = args.db or db.start().url  # type: ignore[union-attr]
        say(f"NB database: {url}" + (" (a private redis-server for this demo)" if db else ""))
        t0 = time.monotonic()
        stack = neutron_aio.NeutronStack.start(bed, url, NODES)
        aio = stack.neutron
        say(f"Neutron API: {aio.endpoint} (gunicorn, sqlite, noauth; log {aio.log}); "
            f"3 simulated nodes with df-controller processes; up in "
            f"{time.monotonic() - t0:.1f} s\n")
        ports = run_openstack_creates(aio)
        vms: dict[str, Vm] = {}
        for name, _, host in N_PORTS:
            vms[name] = stack.plug(ports[name], name)
            say(f"plug VM {name} on {host}: {vms[name].mac} {vms[name].ip}, "
                f"iface-id={ports[name]}")
        up = stack.wait_active([ports[n] for n, *_ in N_PORTS], timeout=60)
        say(f"\nAll VM ports ACTIVE in Neutron {max(up.values()) * 1000:.0f} ms after the "
            "last plug: the df provisioning block is released once the port's chassis "
            "confirmed its flows (router interfaces have no VIF: DOWN):")
        listing = ("port", "list", "-c", "Name", "-c", "Status", "-c", "Fixed IP Addresses")
        say("$ " + shown(aio, *listing))
        say(aio.cli(*listing, parse=False).rstrip())
        good, bad = ping_matrix(vms, {vm: "routed" for vm in vms})
        say(f"\n{good} pairs answered (same network, and across networks through the "
            f"distributed router), {bad} did not.")
        say("\nFlows per node: " + ", ".join(
            f"{name} {stack.dep.flow_count(node)}" for name, node in bed.nodes.items()))
        say("\nLook inside (while it runs, e.g. with --keep):")
        say("  " + shown(aio, "network", "list"))
        say(f"  df-db --db {url} ls port")
        say(f"  ip netns exec {vms['b1'].netns} ping {vms['r1'].ip}")
        if args.keep:
            kept = True
            pids = [*aio.pids, *(cp.pid for cp in stack.dep.processes.values()),
                    *([db.proc.pid] if db and db.proc else [])]
            STATE.write_text(json.dumps({"prefix": bed.prefix, "rundir": str(bed.rundir),
                                         "pids": pids}))
            say(f"\n--keep: left running (Neutron API {aio.endpoint}). "
                "`df demo --clean` removes everything.")
        return 0 if bad == 0 else 2
    finally:
        if not kept:
            if stack is not None:
                stack.stop()
            if db is not None:
                db.stop()
            bed.teardown()
            say("\nDemo removed (Neutron API, controllers, namespaces, OVS daemons"
                + (", redis-server)." if db else ")."))


def shown(aio: neutron_aio.NeutronAio, *cmd: str) -> str:
    """An openstack command line as a user would type it ('openstack' if on PATH)."""
    argv = aio.cli_args(*cmd)
    if shutil.which("openstack") == argv[0]:
        argv[0] = "openstack"
    return shlex.join(argv)


def run_openstack_creates(aio: neutron_aio.NeutronAio) -> dict[str, str]:
    """The demo's topology through the openstack CLI (each command printed); port ids."""
    def run(*cmd: str) -> dict[str, Any]:
        say("$ " + shown(aio, *cmd))
        out = aio.cli(*cmd)
        return out if isinstance(out, dict) else {}

    for net, opts, sub, cidr in N_NETWORKS:
        n = run("network", "create", *opts, net)
        say(f"    -> {n['id']} {n['provider:network_type']} VNI "
            f"{n['provider:segmentation_id']}, MTU {n['mtu']}")
        s = run("subnet", "create", "--network", net, "--subnet-range", cidr, sub)
        say(f"    -> {s['id']} gateway {s['gateway_ip']}")
    r = run("router", "create", "router1")
    say(f"    -> {r['id']}")
    for _, _, sub, _ in N_NETWORKS:
        say("$ " + shown(aio, "router", "add", "subnet", "router1", sub))
        aio.cli("router", "add", "subnet", "router1", sub, parse=False)
    ports = {}
    for name, net, host in N_PORTS:
        p = run("port", "create", "--network", net, "--host", host, name)
        ports[name] = p["id"]
        ips = ", ".join(ip["ip_address"] for ip in p.get("fixed_ips") or ())
        say(f"    -> {p['id']} {p['mac_address']} {ips} status {p['status']}, "
            f"vif {p['binding_vif_type']}")
    return ports


DEFAULT_STATUS = f"/var/run/openvswitch/{BR_INT}.df-status.json"


def format_status(st: dict[str, Any]) -> str:
    lines = ["  table  stage                app         miss"]
    lines += [f"  {s['table']:>5}  {s['stage']:<20} {s['app']:<11} {s['miss']}"
              for s in st.get("pipeline", ())]
    lines.append(f"  chassis {st.get('chassis')}: {st.get('flows_installed')} flows installed "
                 f"for {st.get('owners')} owners; {len(st.get('conflicts', ()))} flow "
                 f"conflicts ({st.get('conflicts_total', 0)} since start), "
                 f"{len(st.get('failed', ()))} failed owners, "
                 f"{len(st.get('rejected', ()))} owners with refused flows")
    for c in st.get("conflicts", ()):
        lines.append(f"  CONFLICT {c['flow']}\n    wanted by: {', '.join(c['owners'])}")
    for kind in ("failed", "rejected"):
        for f in st.get(kind, ()):
            lines.append(f"  {kind.upper()} {f['app']} {f['owner']}: {f['reason']}")
    apps = st.get("cookie_apps", {})
    if apps:
        lines.append("  flow cookies: top 16 bits name the app ("
                     + ", ".join(f"{v} {a}" for a, v in sorted(apps.items())) + ")")
    return "\n".join(lines)


def status(args: argparse.Namespace) -> int:
    try:
        st = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as e:
        say(f"no controller status at {args.file}: {e}")
        return 1
    say(json.dumps(st, indent=1) if args.json else format_status(st))
    bad = st.get("conflicts") or st.get("failed") or st.get("rejected")
    return 3 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="df", description="Dragonflow command line.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="run the simulated multi-node demo",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default=None,
                   help="NB database url (default: a private ovsdb-server; memory://demo: "
                        "the embedded NB, controllers in this process; with --neutron the "
                        "default is a private redis-server)")
    p.add_argument("--neutron", action="store_true",
                   help="drive it through the real Neutron API and the openstack CLI")
    p.add_argument("--keep", action="store_true", help="leave the demo running")
    p.add_argument("--clean", action="store_true", help="remove a kept demo")
    st = sub.add_parser("status", help="print a local controller's status file",
                        description="Print what the local controller of this node reports: "
                                    "the assembled pipeline, flow conflicts, failed owners, "
                                    "refused flows. Exit status 3 if any of those exist.")
    st.add_argument("--file", default=DEFAULT_STATUS,
                    help=f"the controller's [controller] status_file (default {DEFAULT_STATUS})")
    st.add_argument("--json", action="store_true", help="print the raw JSON")
    args = parser.parse_args(argv)
    if args.cmd == "status":
        return status(args)
    if args.cmd == "demo":
        if args.clean:
            return clean()
        if shutil.which("ovs-vswitchd") is None:
            say("Open vSwitch is not installed: run scripts/setup.sh (README) first.")
            return 1
        return demo_neutron(args) if args.neutron else demo(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
