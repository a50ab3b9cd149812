"""df-cni driven exactly as a container runtime drives a CNI plugin: the real binary, the
CNI_* environment, the network configuration on stdin, the result or error JSON on stdout
-- no mocks. Pods are network namespaces on the nodes of the session's etcd deployment
(df-controller processes); df-cni reaches the node's NB and OVSDB through the node's
dragonflow.ini, as df-controller does, and makes the host side of the veth in the node's
namespace (``dragonflow.host_netns``: the test bed's OVS runs in one).

Two pods on two nodes get their addresses from the NB and ping each other and a VM; CHECK
passes, then fails once the veth is gone; DEL twice is fine and leaves nothing; an adopted
port is only unbound; bad configurations give the CNI error JSON with the right code and a
message naming the field, and leave nothing behind."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dragonflow.model import FixedIp, Port
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import BR_INT, Node, sh
from tests.fixtures.wait import eventually

DF_CNI = Path(sys.executable).parent / "df-cni"
CMD = [str(DF_CNI)] if DF_CNI.exists() else [sys.executable, "-m", "dragonflow.cli.cni"]


@dataclass
class Pod:
    netns: str  # `ip netns` name
    node: Node
    container_id: str
    ifname: str = "eth0"

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    def exec(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return sh(["ip", "netns", "exec", self.netns, *cmd], check=False)

    def ping(self, ip: str) -> bool:
        return self.exec("ping", "-c", "1", "-W", "1", ip).returncode == 0

    def links(self) -> list[str]:
        out = sh(["ip", "-n", self.netns, "-o", "link"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


class Pods:
    """Pods (namespaces) of one test, and the CNI network name of its configurations;
    everything removed in the finalizer, whatever df-cni did or did not do."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.name = f"pods-{uuid.uuid4().hex[:6]}"  # the CNI network name of this test
        self.pods: list[Pod] = []

    def new(self, node: Node) -> Pod:
        tag = uuid.uuid4().hex[:6]
        pod = Pod(f"{self.dep.bed.prefix}k{tag}", node, f"ctr-{tag}{uuid.uuid4().hex}")
        sh(["ip", "netns", "add", pod.netns])
        self.pods.append(pod)
        return pod

    def conf(self, node: Node, version: str = "1.0.0", **keys: Any) -> dict[str, Any]:
        df = {"config_file": str(node.rundir / "dragonflow.ini"), "host_netns": node.netns,
              **keys.pop("dragonflow", {})}
        return {"cniVersion": version, "name": self.name, "type": "df-cni", **keys,
                "dragonflow": df}

    def cni(self, command: str, pod: Pod, conf: dict[str, Any] | bytes,
            **env: str | None) -> tuple[int, Any]:
        """Run df-cni as a runtime does: (exit code, stdout decoded as JSON or None)."""
        e = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
             "CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id,
             "CNI_NETNS": pod.path, "CNI_IFNAME": pod.ifname, "CNI_PATH": "/opt/cni/bin",
             "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME=" + pod.netns}
        for k, v in env.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        proc = subprocess.run(CMD, input=stdin, env=e, capture_output=True, timeout=120)
        out = proc.stdout.decode().strip()
        return proc.returncode, (json.loads(out) if out else None)

    def add(self, pod: Pod, conf: dict[str, Any]) -> dict[str, Any]:
        rc, out = self.cni("ADD", pod, conf)
        assert rc == 0, out
        assert isinstance(out, dict)
        return out

    def cleanup(self) -> None:
        for pod in self.pods:
            try:
                self.cni("DEL", pod, self.conf(pod.node))
            except Exception:  # noqa: BLE001 - the rest below removes it anyway
                pass
            sh(["ip", "netns", "del", pod.netns], check=False)
        for node in self.dep.bed.nodes.values():
            for name in ovs_ports(node, self.name):
                node.vsctl("--if-exists", "del-port", name)
            for link in host_links(node):
                sh(["ip", "-n", node.netns, "link", "del", link], check=False)


def ovs_ports(node: Node, cni_name: str | None = None) -> list[str]:
    """df-cni's OVS interfaces on ``node`` (of the CNI network ``cni_name`` if given)."""
    out = json.loads(node.vsctl("--format=json", "--columns=name,external_ids", "find",
                                "Interface"))
    names = []
    for name, ids in out["data"]:
        ext = dict(ids[1])
        if name.startswith("dfc") or "df-cni-network" in ext:
            if cni_name is None or ext.get("df-cni-network") == cni_name:
                names.append(name)
    return names


def host_links(node: Node) -> list[str]:
    out = sh(["ip", "-n", node.netns, "-o", "link"]).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith("dfc")]


def cni_ports(dep: Deployment) -> list[Port]:
    return [p for p in dep.nb.list(Port) if p.device_owner == "df-cni"]


@pytest.fixture
def dep(etcd_deployment: Any, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    with etcd_deployment.use(request) as d:
        yield d


@pytest.fixture
def pods(dep: Deployment) -> Iterator[Pods]:
    p = Pods(dep)
    try:
        yield p
    finally:
        p.cleanup()


def assert_result_shape(res: dict[str, Any], pod: Pod, version: str) -> None:
    """The ADD result as the CNI spec defines it."""
    assert res["cniVersion"] == version
    assert set(res) <= {"cniVersion", "interfaces", "ips", "routes", "dns"}
    host, inner = res["interfaces"]
    assert host["name"].startswith("dfc") and "sandbox" not in host
    assert inner == {"name": pod.ifname, "mac": inner["mac"], "sandbox": pod.path}
    for itf in res["interfaces"]:
        assert set(itf) <= {"name", "mac", "sandbox"}
        assert len(itf["mac"].split(":")) == 6
    assert inner["mac"].startswith("fa:16:3e:")
    assert len(res["ips"]) == 1
    ip = res["ips"][0]
    ipaddress.ip_interface(ip["address"])
    assert ip["interface"] == 1  # index into interfaces: the container's
    assert ("version" in ip) == (version == "0.4.0")
    if version == "0.4.0":
        assert ip["version"] == "4"
    for r in res["routes"]:
        assert set(r) <= {"dst", "gw"}
        ipaddress.ip_network(r["dst"])
    assert isinstance(res["dns"], dict)


def test_version_and_help() -> None:
    e = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": "VERSION"}
    for asked in ("0.4.0", "1.0.0"):
        proc = subprocess.run(CMD, input=json.dumps({"cniVersion": asked}).encode(), env=e,
                              capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"cniVersion": asked,
                                           "supportedVersions": ["0.4.0", "1.0.0"]}
    usage = subprocess.run([*CMD, "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "CNI_COMMAND" in usage.stdout
    assert '"network"' in usage.stdout


def test_two_pods_on_two_nodes_ping_each_other_and_a_vm(dep: Deployment, pods: Pods) -> None:
    n = dep.bed.nodes
    dep.network("cninet", "vxlan", 741, "10.41.0.0/24", dhcp=True, dns=("10.41.0.53",))
    vm = dep.vm(n["hv3"], "cvm", "cninet", "fa:16:3e:41:00:99", "10.41.0.99")
    p1, p2 = pods.new(n["hv1"]), pods.new(n["hv2"])
    r1 = pods.add(p1, pods.conf(n["hv1"], network="cninet"))
    r2 = pods.add(p2, pods.conf(n["hv2"], "0.4.0", network="cninet",
                                subnet="cninet-subnet", mtu=1400))
    assert_result_shape(r1, p1, "1.0.0")
    assert_result_shape(r2, p2, "0.4.0")
    a1, a2 = r1["ips"][0]["address"], r2["ips"][0]["address"]
    assert {a1, a2} == {"10.41.0.2/24", "10.41.0.3/24"}  # .1 gateway, .99 the VM's
    assert r1["ips"][0]["gateway"] == "10.41.0.1"
    assert r1["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.41.0.1"}]
    assert r1["dns"] == {"nameservers": ["10.41.0.53"]}
    ip1, ip2 = a1.split("/")[0], a2.split("/")[0]

    # the NB ports: allocated, bound to the pods' nodes, ACTIVE (ADD returned after it)
    by_ip = {str(p.fixed_ips[0].ip_address): p for p in cni_ports(dep)}
    assert set(by_ip) == {ip1, ip2}
    for pod, ip, res in ((p1, ip1, r1), (p2, ip2, r2)):
        port = by_ip[ip]
        assert port.status == "ACTIVE" and port.binding is not None
        assert port.binding.chassis_id == pod.node.name
        assert port.mac == res["interfaces"][1]["mac"]
        assert port.device_id == pod.container_id and port.topic == dep.topic
        assert port.name == f"test/{pod.netns}/eth0"
        host_if = res["interfaces"][0]["name"]
        assert pod.node.vsctl("get", "Interface", host_if, "external_ids:iface-id") \
            == f'"{port.id}"'
        assert pod.node.vsctl("port-to-br", host_if) == BR_INT
    # inside the pods: static address, MAC, MTU, default route, lo up
    link = json.loads(p2.exec("ip", "-j", "addr", "show", "dev", "eth0").stdout)[0]
    assert link["mtu"] == 1400 and link["address"] == r2["interfaces"][1]["mac"]
    assert "default via 10.41.0.1 dev eth0" in p1.exec("ip", "route").stdout
    assert "UP" in p1.exec("ip", "link", "show", "lo").stdout

    assert eventually(lambda: p1.ping(ip2), 20), "pod on hv1 cannot reach the pod on hv2"
    assert p2.ping(ip1)
    assert eventually(lambda: p1.ping(vm.ip), 10), "pod on hv1 cannot reach the VM on hv3"
    assert vm.ping(ip2, count=2, timeout=3)

    # CHECK: fine with the previous result; fails once someone deletes the veth
    rc, out = pods.cni("CHECK", p1, {**pods.conf(n["hv1"], network="cninet"),
                                     "prevResult": r1})
    assert (rc, out) == (0, None), out
    sh(["ip", "-n", n["hv2"].netns, "link", "del", r2["interfaces"][0]["name"]])
    rc, out = pods.cni("CHECK", p2, {**pods.conf(n["hv2"], "0.4.0", network="cninet",
                                                 mtu=1400), "prevResult": r2})
    assert rc != 0 and out["code"] == 103 and out["cniVersion"] == "0.4.0"
    assert "interface eth0 does not exist" in out["msg"]
    assert f"the host side {r2['interfaces'][0]['name']} of the veth does not exist" \
        in out["msg"]

    # DEL twice: fine, and nothing is left (OVS port, veth, NB port)
    for pod, node in ((p1, n["hv1"]), (p2, n["hv2"])):
        for _ in range(2):
            rc, out = pods.cni("DEL", pod, pods.conf(node, network="cninet"))
            assert (rc, out) == (0, None), out
        assert ovs_ports(node, pods.name) == [] and host_links(node) == []
        assert pod.links() == ["lo"]
    assert cni_ports(dep) == []
    # DEL of a pod whose namespace is gone, without CNI_NETNS (as the spec allows)
    rc, out = pods.cni("DEL", p1, pods.conf(n["hv1"], network="cninet"), CNI_NETNS=None)
    assert (rc, out) == (0, None), out


def test_adopted_port_is_bound_then_given_back_unbound(dep: Deployment, pods: Pods) -> None:
    n = dep.bed.nodes
    dep.network("cniadopt", "vxlan", 742, "10.42.0.0/24")  # no gateway
    dep.nb.create(Port(id="adopt-port", topic=dep.topic, name="adopt-me",
                       network_id="cniadopt", mac="fa:16:3e:42:00:20",
                       fixed_ips=(FixedIp.from_dict({"subnet_id": "cniadopt-subnet",
                                                     "ip_address": "10.42.0.20"}),)))
    p1, p2 = pods.new(n["hv1"]), pods.new(n["hv2"])
    conf1 = pods.conf(n["hv1"], network="cniadopt", port="adopt-me")
    res = pods.add(p1, conf1)
    assert res["ips"] == [{"address": "10.42.0.20/24", "interface": 1}]
    assert res["routes"] == [] and res["interfaces"][1]["mac"] == "fa:16:3e:42:00:20"
    port = dep.nb.get(Port, "adopt-port")
    assert port is not None and port.binding is not None
    assert port.binding.chassis_id == "hv1" and port.status == "ACTIVE"
    assert cni_ports(dep) == []  # no port of its own

    # the same port on another node: refused, nothing made there
    rc, out = pods.cni("ADD", p2, pods.conf(n["hv2"], port="adopt-port"))
    assert rc != 0 and out["code"] == 102 and "bound to chassis 'hv1'" in out["msg"]
    assert ovs_ports(n["hv2"]) == [] and host_links(n["hv2"]) == [] and p2.links() == ["lo"]

    rc, out = pods.cni("CHECK", p1, conf1)
    assert (rc, out) == (0, None), out
    for _ in range(2):
        rc, out = pods.cni("DEL", p1, conf1)
        assert (rc, out) == (0, None), out
    port = dep.nb.get(Port, "adopt-port")
    assert port is not None and port.binding is None  # the NB port stays, unbound
    assert ovs_ports(n["hv1"]) == [] and host_links(n["hv1"]) == [] and p1.links() == ["lo"]


def test_bad_configurations_give_cni_errors_and_leave_nothing(dep: Deployment,
                                                              pods: Pods) -> None:
    n = dep.bed.nodes
    hv1 = n["hv1"]
    dep.network("cnibad", "vxlan", 743, "10.43.0.0/24")
    dep.network("cnifull", "vxlan", 744, "10.44.0.0/30", dhcp=True)  # one address: .2
    dep.nb.create(Port(id="full-port", topic=dep.topic, network_id="cnifull",
                       mac="fa:16:3e:44:00:02",
                       fixed_ips=(FixedIp.from_dict({"subnet_id": "cnifull-subnet",
                                                     "ip_address": "10.44.0.2"}),)))
    pod = pods.new(hv1)
    good = pods.conf(hv1, network="cnibad")
    cases: list[tuple[str, dict[str, Any] | bytes, dict[str, str | None], int, str]] = [
        ("missing network", pods.conf(hv1), {}, 7, "network: required field missing"),
        ("unknown network", pods.conf(hv1, network="no-such-net"), {}, 7,
         "network: no NB network with id or name 'no-such-net'"),
        ("bad JSON", b'{"cniVersion": "1.0.0", "name": ', {}, 6, "not valid JSON"),
        ("bad cniVersion", {**good, "cniVersion": "0.2.0"}, {}, 1,
         "cniVersion: '0.2.0' is not supported"),
        ("missing CNI_NETNS", good, {"CNI_NETNS": None}, 4, "CNI_NETNS is not set"),
        ("unknown netns", good, {"CNI_NETNS": "/var/run/netns/no-such-pod"}, 3,
         "/var/run/netns/no-such-pod does not exist"),
        ("misspelt key", {**good, "netwrok": "cnibad"}, {}, 2, "netwrok: unsupported field"),
        ("mtu too large", {**good, "mtu": 9000}, {}, 7, "mtu: 9000 is larger than"),
        ("unknown subnet", {**good, "subnet": "nope"}, {}, 7, "subnet: network 'cnibad' has "
                                                               "no subnet"),
        ("no free address", pods.conf(hv1, network="cnifull"), {}, 101,
         "no free address in 10.44.0.0/30"),
        # bound to hv2 but plugged on hv1: no controller makes it ACTIVE
        ("never ACTIVE in time", pods.conf(hv1, network="cnibad", dragonflow={
            "active_timeout": 1, "chassis_id": "hv2"}), {}, 11, "not ACTIVE after 1s"),
    ]
    for what, conf, env, code, text in cases:
        rc, out = pods.cni("ADD", pod, conf, **env)
        assert rc != 0, what
        assert isinstance(out, dict) and set(out) == {"cniVersion", "code", "msg", "details"}
        assert out["code"] == code and text in out["msg"], (what, out)
        # nothing left behind: no NB port, no OVS port, no veth, nothing in the pod
        assert cni_ports(dep) == [], what
        assert ovs_ports(hv1) == [] and host_links(hv1) == [], what
        assert pod.links() == ["lo"], what
    # and after all that the pod still comes up -- named as runtimes without `ip netns`
    # name it, by a process in it: /proc/<pid>/ns/net
    holder = subprocess.Popen(["ip", "netns", "exec", pod.netns, "sleep", "120"])
    try:
        path = f"/proc/{holder.pid}/ns/net"
        assert eventually(lambda: os.path.realpath(path) != os.path.realpath(
            "/proc/self/ns/net"), 5)
        rc, res = pods.cni("ADD", pod, good, CNI_NETNS=path)
        assert rc == 0, res
        assert res["ips"][0]["address"] == "10.43.0.1/24"  # no gateway: .1 is free
        assert res["interfaces"][1]["sandbox"] == path
        rc, out = pods.cni("CHECK", pod, good, CNI_NETNS=path)
        assert (rc, out) == (0, None), out
        rc, out = pods.cni("DEL", pod, good, CNI_NETNS=path)
        assert rc == 0 and cni_ports(dep) == [] and ovs_ports(hv1) == []
        assert pod.links() == ["lo"]
    finally:
        holder.kill()
        holder.wait()
