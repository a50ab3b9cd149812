"""df-trace against real traffic: on the session's three-node deployment (df-controller
processes on a real etcd), each trace's verdict is compared with what the same packet does
between namespaced VMs -- L2 on one chassis and across a tunnel (followed onto the remote
chassis with --remote), routed through a distributed router, dropped for an unknown MAC,
by port security (a spoofed source) and by a security group, and punted to the controller
(DHCP). df-trace runs as its own process with the node's df-controller config file.

With DF_TRACE_CAPTURE=DIR the raw ofproto/trace outputs and what translating them needs
are written there (tests/unit/data/trace/ holds such a capture for the unit tests)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from dragonflow.cli import trace as trace_cli
from dragonflow.model import SecurityGroup, SecurityGroupRule
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.probes import probe, serve
from dragonflow.sim.testbed import BR_INT, Node
from tests.fixtures.wait import at_once, eventually

ROUTER_MAC = "fa:16:3e:aa:02:00"  # Deployment.router: r1's first interface (on tblue)


@pytest.fixture
def dep(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    shared = request.getfixturevalue("etcd_deployment")
    with shared.use(request) as d:
        yield d


def df_trace(node: Node, *args: str, remote: dict[str, Node] | None = None) -> dict[str, Any]:
    """df-trace --json on ``node`` (its controller's config file), following tunnels onto
    the ``remote`` nodes."""
    argv = [sys.executable, "-m", "dragonflow.cli.trace", "--config-file",
            str(node.rundir / "dragonflow.ini"), "--json", "--raw", *args]
    for name, other in (remote or {}).items():
        argv += ["--remote", "--remote-rundir", f"{name}={other.rundir}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    res: dict[str, Any] = json.loads(proc.stdout)
    return res


def df_trace_text(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dragonflow.cli.trace", "--config-file",
                           str(node.rundir / "dragonflow.ini"), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def capture(name: str, res: dict[str, Any], dep: Deployment, node: Node) -> None:
    """DF_TRACE_CAPTURE: the raw trace and its context (pipeline, NB, br-int's ofports),
    for the unit tests, and the text df-trace prints; the same for the remote parts."""
    where = os.environ.get("DF_TRACE_CAPTURE")
    if not where:
        return
    Path(where).mkdir(parents=True, exist_ok=True)
    Path(where, f"{name}.txt").write_text(trace_cli.render_text(res) + "\n")
    nb = [[o.TABLE, o.to_dict()] for o in dep.nb.snapshot()[0]]
    for suffix, part, at in [("", res, node)] + [
            (f"_{r['chassis']}", r, dep.bed.nodes[r["chassis"]])
            for r in res.get("remote", ()) if "raw" in r]:
        status = json.loads((at.rundir / f"{BR_INT}.df-status.json").read_text())
        doc = {"raw": part["raw"], "flow": part["flow"], "verdict": part["verdict"],
               "status": {k: status[k] for k in ("chassis", "pipeline", "cookie_apps")},
               "ifaces": trace_cli.interfaces(at.db_target, BR_INT), "nb": nb}
        Path(where, f"{name}{suffix}.json").write_text(
            json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")


def outputs(res: dict[str, Any]) -> list[dict[str, Any]]:
    return list(res["verdict"].get("outputs", ()))


def stages(res: dict[str, Any]) -> list[str]:
    return [s["stage"] for p in res["parts"] for s in p["steps"] if not s.get("miss")]


def test_trace_verdicts_match_real_traffic(dep: Deployment) -> None:
    n = dep.bed.nodes
    hv1, hv2 = n["hv1"], n["hv2"]
    dep.network("tblue", "vxlan", 931, "10.93.0.0/24", dhcp=True)
    dep.network("tgreen", "geneve", 932, "10.94.0.0/24")
    rules = (SecurityGroupRule.from_dict({"id": "ssh-out", "direction": "egress"}),
             SecurityGroupRule.from_dict({"id": "ssh-22", "direction": "ingress",
                                          "protocol": "tcp", "port_range_min": 22,
                                          "port_range_max": 22}))
    dep.nb.create(SecurityGroup(id="ssh-only", topic=dep.topic, name="ssh-only", rules=rules))
    gw = {"gateway": "10.93.0.1"}
    b1 = dep.vm(hv1, "tb1", "tblue", "fa:16:3e:93:00:01", "10.93.0.11", **gw)
    b3 = dep.vm(hv1, "tb3", "tblue", "fa:16:3e:93:00:03", "10.93.0.13", **gw)
    b2 = dep.vm(hv2, "tb2", "tblue", "fa:16:3e:93:00:02", "10.93.0.12", **gw)
    s1 = dep.vm(hv2, "ts1", "tblue", "fa:16:3e:93:00:04", "10.93.0.14",
                security_groups=("ssh-only",), **gw)
    d1 = dep.vm(hv1, "td1", "tblue", "fa:16:3e:93:00:05", "10.93.0.15", dhcp=True)
    g1 = dep.vm(hv2, "tg1", "tgreen", "fa:16:3e:94:00:01", "10.94.0.11", gateway="10.94.0.1")
    dep.router("r1", [("tblue", ["10.93.0.1/24"]), ("tgreen", ["10.94.0.1/24"])])
    ports = ["tb1-port", "tb2-port", "tb3-port", "ts1-port", "td1-port", "tg1-port"]
    dep.wait_active(ports, timeout=60)
    assert eventually(lambda: b1.ping(g1.ip, count=1, timeout=1), 20)  # routes in place
    # a spoofed source: tb1 sends from an address that is not its port's
    b1.exec("ip addr add 10.93.0.99/24 dev eth0")
    server = serve(s1, ["22", "80"])
    remote = {"hv2": hv2}
    try:
        traced = at_once({
            "l2_local": partial(df_trace, hv1, "--port", "tb1", "ip4.dst=10.93.0.13 icmp4"),
            "l2_remote": partial(df_trace, hv1, "--port", "tb1-port", "--dst-ip",
                                 "10.93.0.12", "--proto", "icmp", remote=remote),
            "routed": partial(df_trace, hv1, "--port", "tb1", "ip4.dst=10.94.0.11 icmp4",
                              remote=remote),
            "unknown_mac": partial(df_trace, hv1, "--port", "tb1",
                                   "eth.dst=fa:16:3e:93:00:99 ip4.dst=10.93.0.98 icmp4"),
            "spoofed": partial(df_trace, hv1, "--port", "tb1",
                               "ip4.src=10.93.0.99 ip4.dst=10.93.0.13 icmp4"),
            "secgroup_drop": partial(df_trace, hv1, "--port", "tb1",
                                     "ip4.dst=10.93.0.14 tcp.dst=80", remote=remote),
            "secgroup_pass": partial(df_trace, hv1, "--port", "tb1",
                                     "ip4.dst=10.93.0.14 tcp.dst=22 tcp.flags=syn",
                                     remote=remote),
            "arp_gateway": partial(df_trace, hv1, "--port", "tb1", "arp.tpa=10.93.0.1"),
            "dhcp": partial(df_trace, hv1, "--port", "td1",
                            "eth.dst=ff:ff:ff:ff:ff:ff ip4.src=0.0.0.0 "
                            "ip4.dst=255.255.255.255 udp.src=68 udp.dst=67"),
        })
        real = at_once({
            "l2_local": partial(b1.ping, b3.ip, count=2, timeout=3),
            "l2_remote": partial(b1.ping, b2.ip, count=2, timeout=3),
            "routed": partial(b1.ping, g1.ip, count=2, timeout=3),
            "unknown_mac": lambda: b1.exec(
                "ip neigh replace 10.93.0.98 lladdr fa:16:3e:93:00:99 dev eth0 && "
                "ping -n -q -c 2 -i 0.2 -w 2 10.93.0.98").returncode == 0,
            "spoofed": lambda: b1.exec(f"ping -n -q -c 2 -i 0.2 -w 2 -I 10.93.0.99 {b3.ip}"
                                       ).returncode == 0,
            "secgroup_drop": lambda: probe(b1, "tcp", s1.ip, 80),
            "secgroup_pass": lambda: probe(b1, "tcp", s1.ip, 22),
            "dhcp": lambda: d1.dhclient(timeout=15).returncode == 0 and d1.ip == "10.93.0.15",
        })
    finally:
        server.kill()
        server.wait()
    for name, res in traced.items():
        capture(name, res, dep, hv1)

    # L2 on one chassis: delivered to tb3's port; tb1 pings tb3
    out = outputs(traced["l2_local"])
    assert [(o["kind"], o["port_id"], o["chassis"]) for o in out] == \
        [("port", "tb3-port", "hv1")]
    assert "l2_lookup" in stages(traced["l2_local"])
    assert real["l2_local"]

    # L2 across a tunnel: to hv2, which delivers to tb2's port; tb1 pings tb2
    res = traced["l2_remote"]
    [tun] = outputs(res)
    assert (tun["kind"], tun["remote_chassis"], tun["vni"]) == ("tunnel", "hv2", 931)
    [far] = res["remote"]
    assert far["chassis"] == "hv2"
    assert [(o["kind"], o["port_id"], o["chassis"]) for o in outputs(far)] == \
        [("port", "tb2-port", "hv2")]
    assert real["l2_remote"]

    # routed: the l2 stage hands it to router r1, l3 rewrites it onto tgreen (TTL 63), the
    # tunnel takes it to hv2 with tgreen's VNI, hv2 delivers it to tg1; the ping answers
    res = traced["routed"]
    steps = {s["stage"]: s for p in res["parts"] for s in p["steps"] if not s.get("miss")}
    assert steps["l2_lookup"]["owner"] == "router/r1"
    assert steps["l2_lookup"]["changed"]["router"].startswith("r1")
    l3 = steps["l3_lookup"]
    assert l3["changed"]["network"].startswith("tgreen")
    assert l3["changed"]["out_port"].startswith("tg1-port")
    assert l3["changed"]["ip.ttl"] == "63"
    [tun] = outputs(res)
    assert (tun["kind"], tun["remote_chassis"], tun["vni"]) == ("tunnel", "hv2", 932)
    assert [o.get("port_id") for o in outputs(res["remote"][0])] == ["tg1-port"]
    assert real["routed"]

    # an unknown destination MAC: l2_lookup has no flow for it, its miss drops; no reply
    v = traced["unknown_mac"]["verdict"]
    assert (v["kind"], v["stage"], v["miss"]) == ("drop", "l2_lookup", True)
    assert not real["unknown_mac"]

    # a spoofed source address: port security's explicit drop for tb1's port; no reply
    v = traced["spoofed"]["verdict"]
    assert (v["kind"], v["stage"], v["miss"], v["by"]) == \
        ("drop", "port_security", False, "port_security port/tb1-port")
    assert not real["spoofed"]

    # security group ssh-only on ts1 (hv2): tcp 80 is dropped on hv2 by the ingress rules,
    # after a conntrack recirculation; tcp 22 is delivered; so are the real connections
    res = traced["secgroup_drop"]
    [tun] = outputs(res)
    assert tun["remote_chassis"] == "hv2"
    far = res["remote"][0]
    assert far["verdict"]["kind"] == "drop"
    assert far["verdict"]["stage"].startswith("secgroup_in")
    assert any(p.get("recirculation") for p in far["parts"])
    assert real["secgroup_drop"] == "timeout"
    far = traced["secgroup_pass"]["remote"][0]
    assert [o.get("port_id") for o in outputs(far)] == ["ts1-port"]
    assert real["secgroup_pass"] == "open"

    # ARP for the router's address: answered on the spot, back out of tb1's own port; tb1
    # learnt the router interface's MAC (its pings to tg1 went through it)
    [out] = outputs(traced["arp_gateway"])
    assert (out["kind"], out["stage"]) == ("in_port", "arp_responder")
    assert ROUTER_MAC in b1.exec("ip neigh show 10.93.0.1").stdout

    # DHCP: punted from the dhcp stage to the controller; dhclient gets its lease
    v = traced["dhcp"]["verdict"]
    assert v["kind"] == "controller"
    assert [(o["stage"], o["app"]) for o in v["outputs"]] == [("dhcp", "dhcp")]
    assert real["dhcp"]


def test_trace_errors_and_text(dep: Deployment) -> None:
    hv1, hv2 = dep.bed.nodes["hv1"], dep.bed.nodes["hv2"]
    dep.network("terr", "vxlan", 933, "10.95.0.0/24")
    dep.vm(hv2, "te2", "terr", "fa:16:3e:95:00:02", "10.95.0.12")
    dep.vm(hv1, "te1", "terr", "fa:16:3e:95:00:01", "10.95.0.11")
    dep.wait_active(["te1-port", "te2-port"], timeout=60)
    runs = at_once({
        "unknown": partial(df_trace_text, hv1, "--port", "nope", "ip4.dst=10.95.0.12"),
        "elsewhere": partial(df_trace_text, hv1, "--port", "te2", "ip4.dst=10.95.0.11"),
        "bad_field": partial(df_trace_text, hv1, "--port", "te1", "ip4.dts=10.95.0.12"),
        "bad_value": partial(df_trace_text, hv1, "--port", "te1", "ip4.dst=10.95.0.300"),
        "text": partial(df_trace_text, hv1, "--port", "te1", "ip4.dst=10.95.0.12 icmp4",
                        "--remote"),
    })
    assert runs["unknown"].returncode == 1
    assert "unknown port 'nope'" in runs["unknown"].stderr
    assert runs["elsewhere"].returncode == 1
    assert "bound to chassis hv2, not to this chassis (hv1)" in runs["elsewhere"].stderr
    assert "unknown field 'ip4.dts'" in runs["bad_field"].stderr
    assert "bad value for ip4.dst" in runs["bad_value"].stderr
    text = runs["text"]
    assert text.returncode == 0, text.stderr
    assert "TUNNEL: tunnelled (vxlan, VNI 933) to chassis hv2" in text.stdout
    # not reachable from here: the command to run on hv2, which an operator runs there
    [cmd] = [ln.split("run there: ", 1)[1] for ln in text.stdout.splitlines()
             if "run there: " in ln]
    assert cmd.startswith("df-trace --from-tunnel vxlan:933:10.255.0.11 ")
    there = df_trace(hv2, *shlex.split(cmd)[1:])
    assert [(o["kind"], o["port_id"], o["chassis"]) for o in outputs(there)] == \
        [("port", "te2-port", "hv2")]
