"""Fullstack through the real Neutron API: the all-in-one (Neutron under gunicorn, ML2 ``df``
+ ``df-l3``, sqlite, noauth) on an etcd NB, three simulated nodes with df-controller
processes, driven with openstacksdk.

Creates two networks (VXLAN and Geneve) with one subnet each, a router on both subnets and
ports bound to the nodes (binding:host_id); a port stays DOWN, blocked by the ``DF``
provisioning entity, until a VM is plugged with it and its chassis reports the flows
installed; then pings within and across subnets. Unplugging a VM brings its port DOWN again.
Deleting everything through Neutron leaves no object in the NB and every node's flows as
they were before the topology existed.

New security groups get Neutron's default rules, as in a real deployment: the all-in-one
fills the rule templates that the schema built from the models lacks (the data of migration
c33da356b165). This check needs only the Neutron API and the NB, no nodes.

Floating IP status, also without nodes: a floating IP is created DOWN and Neutron reports the
status written into its NB object (as the chassis that installs its NAT does); re-associating
it resets it to DOWN. A VLAN port binds only on a host whose NB chassis maps the physical
network.

Skipped when the neutron extra (neutron, gunicorn, openstacksdk) is missing, except under
CI=true, where that fails.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dragonflow.db.connect import open_nb
from dragonflow.model import (
    Chassis,
    FloatingIP,
    NbObject,
    Network,
    Port,
    Router,
    SecurityGroup,
    Subnet,
)
from dragonflow.sim import neutron_aio
from dragonflow.sim.neutron_aio import NeutronAio, NeutronStack
from dragonflow.sim.testbed import BR_INT, Node, Testbed
from tests.fixtures import unavailable

pytestmark = pytest.mark.fullstack

NODES = [("hv1", "10.255.0.11"), ("hv2", "10.255.0.12"), ("hv3", "10.255.0.13")]
NB_TABLES = ("network", "subnet", "port", "router", "securitygroup", "floatingip", "qospolicy")


def require_neutron() -> None:
    missing = neutron_aio.missing()
    if not missing:
        return
    unavailable(f"the Neutron all-in-one needs: {', '.join(missing)}")


@pytest.fixture
def stack(request: pytest.FixtureRequest, testbed: Testbed) -> Iterator[NeutronStack]:
    require_neutron()
    url = request.getfixturevalue("etcd_server").url
    s = NeutronStack.start(testbed, url, NODES, nb_root=f"/aio{uuid.uuid4().hex[:8]}/")
    failed = request.session.testsfailed
    try:
        yield s
    finally:
        if request.session.testsfailed > failed or os.environ.get("DF_AIO_LOG"):
            print(f"--- Neutron log (tail) ---\n{s.neutron.log.read_text()[-20000:]}")
        s.stop()


@pytest.fixture
def neutron(request: pytest.FixtureRequest) -> Iterator[NeutronAio]:
    """The Neutron API alone (driver df, an etcd NB), without nodes or controllers."""
    require_neutron()
    url = request.getfixturevalue("etcd_server").url
    aio = NeutronAio(url, nb_root=f"/aio{uuid.uuid4().hex[:8]}/").start()
    failed = request.session.testsfailed
    try:
        yield aio
    finally:
        if request.session.testsfailed > failed or os.environ.get("DF_AIO_LOG"):
            print(f"--- Neutron log (tail) ---\n{aio.log.read_text()[-20000:]}")
        aio.remove()


def flows_of(node: Node) -> set[str]:
    out = node.ofctl("dump-flows", "--no-stats", BR_INT)
    return {line.strip() for line in out.splitlines() if "priority=" in line}


def stable_flows(nodes: list[Node], timeout: float = 15.0) -> dict[str, set[str]]:
    """Every node's flows once they stopped changing for 0.5 s."""
    deadline = time.monotonic() + timeout
    last = {n.name: flows_of(n) for n in nodes}
    while True:
        time.sleep(0.5)
        now = {n.name: flows_of(n) for n in nodes}
        if now == last:
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"flows still changing after {timeout}s")
        last = now


def wait_flows(nodes: list[Node], expected: dict[str, set[str]], timeout: float = 20.0
               ) -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = {n.name: flows_of(n) for n in nodes}
        if now == expected:
            return
        if time.monotonic() > deadline:
            diff = {n: {"extra": sorted(now[n] - expected[n])[:10],
                        "missing": sorted(expected[n] - now[n])[:10]}
                    for n in now if now[n] != expected[n]}
            raise AssertionError(f"flows not back to the baseline after {timeout}s: {diff}")
        time.sleep(0.2)


def test_neutron_api_topology_pings_and_cleans_up(stack: NeutronStack) -> None:
    net_api, nb, bed = stack.conn.network, stack.dep.nb, stack.bed
    nodes = list(bed.nodes.values())
    assert {c.id for c in nb.list(Chassis)} == {n for n, _ in NODES}
    baseline = stable_flows(nodes)

    # --- topology through the Neutron API -------------------------------------------------
    blue = net_api.create_network(name="blue")  # project network type: vxlan
    red = net_api.create_network(name="red", provider_network_type="geneve")
    blue_sub = net_api.create_subnet(network_id=blue.id, name="blue-sub", ip_version=4,
                                     cidr="10.1.0.0/24")
    red_sub = net_api.create_subnet(network_id=red.id, name="red-sub", ip_version=4,
                                    cidr="10.2.0.0/24")
    router = net_api.create_router(name="r1")
    for sub in (blue_sub, red_sub):
        net_api.add_interface_to_router(router, subnet=sub.id)
    placement = {"b1": (blue, "hv1"), "b2": (blue, "hv2"), "r1": (red, "hv3"),
                 "r2": (red, "hv1")}
    ports = {vm: net_api.create_port(network_id=net.id, name=vm, binding_host_id=host,
                                     device_owner="compute:nova", device_id=f"vm-{vm}")
             for vm, (net, host) in placement.items()}
    for p in ports.values():
        assert (p.status, p.binding_vif_type) == ("DOWN", "ovs"), p
        assert p.binding_vif_details["datapath_type"] == "netdev"

    # --- the NB has what Neutron has --------------------------------------------------------
    for net, vni_type in ((blue, "vxlan"), (red, "geneve")):
        n = nb.get_or_raise(Network, net.id)
        assert (n.network_type, n.segmentation_id) == (vni_type, net.provider_segmentation_id)
    assert str(nb.get_or_raise(Subnet, red_sub.id).cidr) == "10.2.0.0/24"
    r = nb.get_or_raise(Router, router.id)
    assert {rp.network_id for rp in r.ports} == {blue.id, red.id}
    for vm, p in ports.items():
        nbp = nb.get_or_raise(Port, p.id)
        assert nbp.binding is not None and nbp.binding.chassis_id == placement[vm][1]
        assert (nbp.mac, str(nbp.fixed_ips[0].ip_address)) == (
            p.mac_address, p.fixed_ips[0]["ip_address"])

    # --- ACTIVE only once the chassis has the port's flows ---------------------------------
    time.sleep(1.0)  # a port without a VIF stays DOWN, held by the df provisioning block
    for p in ports.values():
        assert stack.status(p.id) == "DOWN"
        assert stack.neutron.provisioning_blocks(p.id) == {"DF"}
    vms = {vm: stack.plug(p.id, vm) for vm, p in ports.items()}
    stack.wait_active([p.id for p in ports.values()], timeout=60)
    for p in ports.values():
        assert stack.neutron.provisioning_blocks(p.id) == set()
        assert nb.get_or_raise(Port, p.id).status == "ACTIVE"

    # --- pings: same subnet across nodes, across subnets through the router ----------------
    pairs = [("b1", "b2"), ("b2", "b1"), ("r1", "r2"), ("b1", "r1"), ("r1", "b2"),
             ("r2", "b2"), ("b2", "r2")]
    for a, b in pairs:
        assert vms[a].ping(vms[b].ip, count=3, timeout=3), f"{a} -> {b}"
    assert vms["b1"].ping(blue_sub.gateway_ip, count=2), "b1 -> its router interface"
    assert vms["r1"].ping(blue_sub.gateway_ip, count=2), "r1 -> the other interface"

    # --- a VIF going away takes its port DOWN in Neutron -----------------------------------
    bed.remove_vm(vms.pop("r2"))
    stack.wait_status([ports["r2"].id], "DOWN", timeout=30)
    assert stack.neutron.provisioning_blocks(ports["r2"].id) == {"DF"}

    # --- delete everything through Neutron --------------------------------------------------
    for vm in list(vms):
        bed.remove_vm(vms.pop(vm))
    for p in ports.values():
        net_api.delete_port(p.id)
    for sub in (blue_sub, red_sub):
        net_api.remove_interface_from_router(router, subnet=sub.id)
    net_api.delete_router(router.id)
    for sub in (blue_sub, red_sub):
        net_api.delete_subnet(sub.id)
    for net in (blue, red):
        net_api.delete_network(net.id)
    for sg in net_api.security_groups():  # the project's default group, made on demand
        net_api.delete_security_group(sg.id)
    assert list(net_api.ports()) == [] and list(net_api.networks()) == []

    left: dict[str, list[str]] = {}
    for table in NB_TABLES:
        objs: list[NbObject] = nb.list(table)
        left[table] = [o.id for o in objs]
    assert left == {t: [] for t in NB_TABLES}
    wait_flows(nodes, baseline)


# --- default security group rules -------------------------------------------------------
EGRESS_ANY = {("egress", "IPv4", None), ("egress", "IPv6", None)}


def api_get(neutron: NeutronAio, path: str) -> Any:
    """``GET /v2.0/<path>`` as plain JSON (Neutron's own field names, which openstacksdk
    renames)."""
    with urllib.request.urlopen(f"{neutron.endpoint}/v2.0/{path}", timeout=30) as r:
        return json.loads(r.read())


def rule_set(rules: Any, parent: str) -> set[tuple[str, str, str | None]]:
    """(direction, ethertype, remote) of rules that allow any protocol and port; remote is
    "self" for the group ``parent`` itself, else the prefix or group; None: anywhere."""
    out = set()
    for r in rules:
        r = dict(r)
        assert (r.get("protocol"), r.get("port_range_min"), r.get("port_range_max")) == (
            None, None, None), r
        group, prefix = r.get("remote_group_id"), r.get("remote_ip_prefix")
        assert group is None or prefix is None, r
        out.add((r["direction"], r["ethertype"],
                 "self" if group == parent else group or prefix))
    return out


def test_new_security_groups_get_neutron_default_rules(neutron: NeutronAio) -> None:
    net_api = neutron.connection().network
    default_sg = EGRESS_ANY | {("ingress", "IPv4", "self"), ("ingress", "IPv6", "self")}

    # --- a new project's default group, made by Neutron on its first port ----------------
    project = uuid.uuid4().hex
    net = net_api.create_network(name="sg-net", project_id=project)
    port = net_api.create_port(network_id=net.id, project_id=project)
    sgs = list(net_api.security_groups(project_id=project))
    assert [(sg.name, sg.project_id) for sg in sgs] == [("default", project)]
    dflt = sgs[0]
    assert port.security_group_ids == [dflt.id]
    assert rule_set(dflt.security_group_rules, dflt.id) == default_sg
    rules = api_get(neutron, f"security-group-rules?security_group_id={dflt.id}")[
        "security_group_rules"]
    assert rule_set(rules, dflt.id) == default_sg
    assert {r["project_id"] for r in rules} == {project}

    # --- another project's, made on its first list -----------------------------------------
    other = uuid.uuid4().hex
    (other_sg,) = net_api.security_groups(project_id=other)
    assert (other_sg.name, other_sg.project_id) == ("default", other)
    assert other_sg.id != dflt.id
    assert rule_set(other_sg.security_group_rules, other_sg.id) == default_sg

    # --- a non-default group: the two egress rules only ------------------------------------
    web = net_api.create_security_group(name="web", project_id=project)
    assert rule_set(web.security_group_rules, web.id) == EGRESS_ANY
    assert rule_set(api_get(neutron, f"security-group-rules?security_group_id={web.id}")[
        "security_group_rules"], web.id) == EGRESS_ANY

    # --- the CLI shows them ------------------------------------------------------------------
    for sg, want in ((dflt, default_sg), (web, EGRESS_ANY)):
        rows = neutron.cli("security", "group", "rule", "list", sg.id)
        assert {(r["Direction"], r["Ethertype"], r["IP Protocol"], r["Port Range"],
                 r["Remote Security Group"]) for r in rows} == {
            (d, e, None, "", sg.id if remote == "self" else None) for d, e, remote in want}
        assert {r["IP Range"] for r in rows if r["Direction"] == "egress"} == {
            "0.0.0.0/0", "::/0"}

    # --- and Dragonflow's NB has the same rules ----------------------------------------------
    nb = open_nb(neutron.nb_url, root=neutron.nb_root)
    try:
        for sg, want in ((dflt, default_sg), (other_sg, default_sg), (web, EGRESS_ANY)):
            nb_rules = nb.get_or_raise(SecurityGroup, sg.id).rules
            assert rule_set(({"direction": r.direction, "ethertype": r.ethertype,
                              "protocol": r.protocol, "port_range_min": r.port_range_min,
                              "port_range_max": r.port_range_max,
                              "remote_group_id": r.remote_group_id,
                              "remote_ip_prefix": r.remote_ip_prefix}
                             for r in nb_rules), sg.id) == want
    finally:
        nb.driver.close()

    # --- the templates, through the default-security-group-rules API --------------------
    aliases = {e.alias for e in net_api.extensions()}
    assert "security-groups-default-rules" in aliases
    templates = api_get(neutron, "default-security-group-rules")["default_security_group_rules"]
    assert sorted((t["direction"], t["ethertype"], t["remote_group_id"],
                   t["used_in_default_sg"], t["used_in_non_default_sg"], t["description"])
                  for t in templates) == [
        ("egress", "IPv4", None, True, True, "Legacy default SG rule for egress traffic"),
        ("egress", "IPv6", None, True, True, "Legacy default SG rule for egress traffic"),
        ("ingress", "IPv4", "PARENT", True, False,
         "Legacy default SG rule for ingress traffic"),
        ("ingress", "IPv6", "PARENT", True, False,
         "Legacy default SG rule for ingress traffic"),
    ]
    cli_templates = neutron.cli("default", "security", "group", "rule", "list")
    assert {r["ID"] for r in cli_templates} == {t["id"] for t in templates}

    net_api.delete_port(port.id)
    net_api.delete_network(net.id)
    for sg in (web, dflt, other_sg):
        net_api.delete_security_group(sg.id)


# --- floating IP status and provider-network binding, through the real API ---------------
def wait_api(get: Any, want: Any, timeout: float = 20.0) -> Any:
    """``get()`` once it returns ``want`` (else the last value, for the assertion)."""
    deadline = time.monotonic() + timeout
    while (got := get()) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    return got


def test_floating_ip_status_follows_the_nb_and_physnet_binding(neutron: NeutronAio) -> None:
    """A floating IP is created DOWN; the NB status a chassis writes (ACTIVE once its NAT is
    installed, DOWN when it is gone) is what Neutron reports; re-associating resets it. A
    VLAN port binds only on a host whose chassis maps the physical network."""
    net_api = neutron.connection().network
    nb = open_nb(neutron.nb_url, root=neutron.nb_root)
    try:
        public = net_api.create_network(name="public", is_router_external=True,
                                        provider_network_type="flat",
                                        provider_physical_network="public")
        net_api.create_subnet(network_id=public.id, ip_version=4, cidr="172.24.4.0/24",
                              enable_dhcp=False)
        private = net_api.create_network(name="private")
        sub = net_api.create_subnet(network_id=private.id, ip_version=4, cidr="10.9.0.0/24")
        router = net_api.create_router(name="edge",
                                       external_gateway_info={"network_id": public.id})
        net_api.add_interface_to_router(router, subnet=sub.id)
        vm, vm2 = (net_api.create_port(network_id=private.id, name=n, binding_host_id="hv1",
                                       device_owner="compute:nova", device_id=f"vm-{n}")
                   for n in ("vm", "vm2"))
        fip = net_api.create_ip(floating_network_id=public.id, port_id=vm.id)
        assert fip.status == "DOWN"  # no chassis vouched for its NAT yet

        def nb_fip() -> FloatingIP:
            return nb.get_or_raise(FloatingIP, fip.id)

        def neutron_status() -> str:
            return str(net_api.get_ip(fip.id).status)

        assert (nb_fip().port_id, nb_fip().status) == (vm.id, "DOWN")
        time.sleep(0.5)
        assert neutron_status() == "DOWN"
        for status in ("ACTIVE", "DOWN", "ACTIVE"):  # as the chassis of hv1 writes it
            nb.update(nb_fip().replace(status=status))
            assert wait_api(neutron_status, status) == status
        assert nb_fip().status == "ACTIVE"  # Neutron's own status write left the NB alone
        net_api.update_ip(fip.id, description="web")  # a rewrite: still hv1's word
        time.sleep(0.5)
        assert (nb_fip().status, neutron_status()) == ("ACTIVE", "ACTIVE")
        net_api.update_ip(fip.id, port_id=vm2.id)  # another port: DOWN until its chassis says
        assert nb_fip().status == "DOWN"
        assert wait_api(neutron_status, "DOWN") == "DOWN"

        # --- VLAN binding: only where the chassis maps the physical network ---------------
        vlan = net_api.create_network(name="vlan", provider_network_type="vlan",
                                      provider_physical_network="physnet1",
                                      provider_segmentation_id=142)
        net_api.create_subnet(network_id=vlan.id, ip_version=4, cidr="10.10.0.0/24")
        nb.create(Chassis(id="hv-phys", ip="192.0.2.21", tunnel_types=("geneve",),
                          bridge_mappings={"physnet1": "br-phys"}))
        nb.create(Chassis(id="hv-overlay", ip="192.0.2.22", tunnel_types=("geneve",)))
        kinds = {}
        for host in ("hv-phys", "hv-overlay", "hv-unknown"):
            p = net_api.create_port(network_id=vlan.id, binding_host_id=host,
                                    device_owner="compute:nova", device_id=f"vm-{host}")
            kinds[host] = p.binding_vif_type
            net_api.delete_port(p.id)
        assert kinds == {"hv-phys": "ovs", "hv-overlay": "binding_failed",
                         "hv-unknown": "binding_failed"}
        log = neutron.log.read_text()
        assert "no Dragonflow chassis is registered for host 'hv-unknown'" in log
        assert "chassis 'hv-overlay' does not map physical network 'physnet1'" in log

        # --- clean up through Neutron ------------------------------------------------------
        net_api.delete_ip(fip.id)
        for p in (vm, vm2):
            net_api.delete_port(p.id)
        net_api.remove_interface_from_router(router, subnet=sub.id)
        net_api.delete_router(router.id)
        for n in (vlan, private, public):
            net_api.delete_network(n.id)
        for table in ("floatingip", "router", "port", "network"):
            assert nb.list(table) == [], table
    finally:
        for c in ("hv-phys", "hv-overlay"):
            if nb.get(Chassis, c) is not None:
                nb.delete(Chassis, c)
        nb.driver.close()
