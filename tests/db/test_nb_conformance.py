"""Driver conformance, NB level: NbApi + Subscription behave the same on every driver.

CRUD, stale writes rejected, unique keys unique under concurrent allocation, list by index,
referential integrity, topic filtering, and the loss test (subscriber cut off during 1,000
writes resumes and applies exactly all of them; after compaction it resyncs and converges).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from dragonflow.db import errors
from dragonflow.db.driver import Put
from dragonflow.db.nbapi import NbApi
from dragonflow.db.stream import Change, Subscription
from dragonflow.model import (
    Chassis,
    FixedIp,
    NbObject,
    Network,
    Port,
    Router,
    Subnet,
    ValidationError,
)
from dragonflow.pipeline.topology import relevance_scope_id, relevance_scopes
from tests.db.conftest import Backend


def nb_for(backend: Backend, proxied: bool = False) -> NbApi:
    drv = backend.proxied_driver() if proxied else backend.driver()
    return NbApi(drv, root=backend.prefix)


def net(i: int, topic: str = "p1") -> Network:
    return Network(id=f"net{i}", topic=topic, name=f"n{i}", network_type="vxlan",
                   segmentation_id=100 + i)


def subnet(i: int, net_id: str, topic: str = "p1") -> Subnet:
    return Subnet(id=f"sub{i}", topic=topic, network_id=net_id, cidr=f"10.{i}.0.0/24",
                  gateway_ip=f"10.{i}.0.1")


def port(i: int, net_id: str, sub: Subnet | None = None, topic: str = "p1") -> Port:
    ips = (FixedIp(subnet_id=sub.id, ip_address=str(_nth_ip(sub, i))),) if sub else ()
    return Port(id=f"port{i}", topic=topic, network_id=net_id,
                mac=f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}", fixed_ips=ips)


def _nth_ip(sub: Subnet, i: int) -> str:
    import ipaddress

    return str(ipaddress.ip_network(sub.cidr)[10 + i])


class Mirror:
    """A subscriber's state: applies changes and resyncs, like a local controller's cache."""

    def __init__(self) -> None:
        self.objs: dict[tuple[str, str], NbObject] = {}
        self.revisions: list[int] = []
        self.resyncs = 0
        self.cond = threading.Condition()

    def on_change(self, ch: Change) -> None:
        with self.cond:
            self.revisions.append(ch.revision)
            if ch.obj is None:
                self.objs.pop((ch.table, ch.id), None)
            else:
                self.objs[(ch.table, ch.id)] = ch.obj
            self.cond.notify_all()

    def on_resync(self, objs: list[NbObject], rev: int) -> None:
        with self.cond:
            self.resyncs += 1
            self.objs = {(o.TABLE, o.id): o for o in objs}
            self.cond.notify_all()

    def wait(self, pred: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True


def state(nb: NbApi) -> dict[tuple[str, str], NbObject]:
    objs, _ = nb.snapshot()
    return {(o.TABLE, o.id): o for o in objs}


def test_crud_roundtrip(backend: Backend) -> None:
    nb = nb_for(backend)
    n = nb.create(net(1))
    assert n.version == 1 and n.unique_key > 0
    assert nb.get(Network, "net1") == n
    s = nb.create(subnet(1, "net1"))
    p = nb.create(port(1, "net1", s))
    assert nb.get(Port, "port1") == p
    p2 = nb.update(p.replace(name="renamed"))
    assert p2.version == 2 and p2.unique_key == p.unique_key
    assert nb.get_or_raise(Port, "port1").name == "renamed"
    assert [x.id for x in nb.list(Port)] == ["port1"]
    nb.delete(Port, "port1")
    assert nb.get(Port, "port1") is None
    with pytest.raises(errors.NotFound, match="port 'port1'"):
        nb.delete(Port, "port1")
    with pytest.raises(errors.AlreadyExists):
        nb.create(net(1))


def test_stale_write_rejected_and_nothing_changes(backend: Backend) -> None:
    nb = nb_for(backend)
    n = nb.create(net(1))
    nb.update(n.replace(name="first writer"))
    before = state(nb)
    rev = nb.revision()
    with pytest.raises(errors.StaleVersion) as ei:
        nb.update(n.replace(name="second writer, stale"))
    assert ei.value.field == "version" and "network 'net1'" in str(ei.value)
    with pytest.raises(errors.StaleVersion):
        nb.delete(Network, "net1", expect_version=1)
    assert state(nb) == before
    assert nb.revision() == rev
    # an external version source (Neutron revision_number) must move forward
    n3 = nb.update(n.replace(name="neutron"), force_version=7)
    assert n3.version == 7
    with pytest.raises(errors.StaleVersion):
        nb.update(n.replace(name="old neutron event"), force_version=5)
    # a forced version merged into version 7 must not overwrite a concurrent change (v8)
    nb.update(n3.replace(name="controller"))
    with pytest.raises(errors.StaleVersion):
        nb.update(n3.replace(name="merged into v7"), force_version=9, expect_version=7)
    assert nb.get_or_raise(Network, "net1").name == "controller"


def test_unique_keys_unique_under_concurrent_allocation(backend: Backend) -> None:
    nbs = [nb_for(backend) for _ in range(4)]
    nbs[0].create(net(0))
    keys: list[int] = []
    lock = threading.Lock()
    failures: list[Exception] = []

    def work(t: int) -> None:
        nb = nbs[t % len(nbs)]
        for j in range(25):
            try:
                p = nb.create(port(t * 100 + j, "net0"))
            except Exception as e:  # surfaced below
                failures.append(e)
                return
            with lock:
                keys.append(p.unique_key)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []
    assert len(keys) == 200 and len(set(keys)) == 200
    stored = [p.unique_key for p in nbs[0].list(Port)]
    assert sorted(stored) == sorted(keys)


def test_list_by_index_and_topic(backend: Backend) -> None:
    nb = nb_for(backend)
    nb.create(net(1))
    nb.create(net(2, topic="p2"))
    s1 = nb.create(subnet(1, "net1"))
    for i in range(3):
        nb.create(port(i, "net1", s1))
    nb.create(port(9, "net2", topic="p2"))
    assert sorted(p.id for p in nb.by_index(Port, "network_id", "net1")) == [
        "port0", "port1", "port2"]
    assert [p.id for p in nb.by_index(Port, "network_id", "net2")] == ["port9"]
    assert [p.id for p in nb.by_index(Port, "subnet_id", "sub1")] == ["port0", "port1", "port2"]
    assert [n.id for n in nb.list(Network, topic="p2")] == ["net2"]
    nb.update(nb.get_or_raise(Port, "port1").replace(fixed_ips=()))
    assert [p.id for p in nb.by_index(Port, "subnet_id", "sub1")] == ["port0", "port2"]


def test_references_checked_on_write_and_delete(backend: Backend) -> None:
    nb = nb_for(backend)
    with pytest.raises(ValidationError) as ei:
        nb.create(port(1, "missing-net"))
    assert ei.value.field == "network_id" and "missing-net" in str(ei.value)
    nb.create(net(1))
    s = nb.create(subnet(1, "net1"))
    nb.create(port(1, "net1", s))
    before = state(nb)
    with pytest.raises(errors.InUse) as ei2:
        nb.delete(Network, "net1")
    assert "port 'port1'" in str(ei2.value) and "subnet 'sub1'" in str(ei2.value)
    # duplicate IP in a subnet is refused and names the field
    dup = port(2, "net1", s).replace(fixed_ips=nb.get_or_raise(Port, "port1").fixed_ips)
    with pytest.raises(ValidationError) as ei3:
        nb.create(dup)
    assert ei3.value.field == "fixed_ips[0].ip_address" and "already used" in str(ei3.value)
    assert state(nb) == before
    nb.delete(Port, "port1")
    nb.delete(Subnet, "sub1")
    nb.delete(Network, "net1")
    assert state(nb) == {}
    # the released IP can be used again
    nb.create(net(1))
    nb.create(subnet(1, "net1"))
    nb.create(dup)


def test_subscription_topic_filtering(backend: Backend) -> None:
    nb = nb_for(backend)
    mirror = Mirror()
    sub = Subscription(nb, mirror.on_change, mirror.on_resync,
                       from_revision=nb.revision() + 1, topics={"p1"})
    try:
        nb.create(net(1, "p1"))
        nb.create(net(2, "p2"))
        nb.create(net(3, "p1"))
        assert mirror.wait(lambda: ("network", "net3") in mirror.objs)
        assert ("network", "net2") not in mirror.objs
        nb.update(nb.get_or_raise(Network, "net2").replace(name="changed while unsubscribed"))
        sub.add_topics({"p2"})  # delivers the current p2 objects, then their later changes
        assert mirror.objs[("network", "net2")].name == "changed while unsubscribed"
        nb.delete(Network, "net2")
        assert mirror.wait(lambda: ("network", "net2") not in mirror.objs)
        nb.create(net(4, "p3"))
        nb.create(net(5, "p2"))
        assert mirror.wait(lambda: ("network", "net5") in mirror.objs)
        assert ("network", "net4") not in mirror.objs
        assert mirror.revisions == sorted(mirror.revisions)
    finally:
        sub.close()


def test_subscription_follows_networks_not_projects(backend: Backend) -> None:
    """With the controller's relevance scopes, another project's port, subnet and router
    on a followed network are delivered; the same project's other network is not; a scope
    added later replays its objects; a removed scope stops delivering."""
    nb = nb_for(backend)
    mirror = Mirror()
    sub = Subscription(nb, mirror.on_change, mirror.on_resync,
                       from_revision=nb.revision() + 1, topics={"net:net1"},
                       scope_of=relevance_scopes, scope_id=relevance_scope_id)
    try:
        nb.create(net(1, "p1"))
        s1 = nb.create(subnet(1, "net1", "p1"))
        nb.create(net(2, "p2"))
        s2 = nb.create(subnet(2, "net2", "p2"))
        nb.create(port(1, "net1", s1, topic="p2"))  # project p2's port on p1's network
        nb.create(port(2, "net2", s2, topic="p2"))
        nb.create(Router.from_dict({"id": "r1", "topic": "p3", "ports": [{
            "id": "rp1", "mac": "fa:16:3e:00:00:99", "network_id": "net1",
            "cidrs": [str(_nth_ip(s1, 200)) + "/24"]}]}))
        assert mirror.wait(lambda: ("router", "r1") in mirror.objs)
        assert {k for k in mirror.objs} == {("network", "net1"), ("subnet", "sub1"),
                                            ("port", "port1"), ("router", "r1")}
        sub.add_topics({"net:net2"})  # replayed: net2, its subnet, its port
        assert {("network", "net2"), ("subnet", "sub2"), ("port", "port2")} <= set(mirror.objs)
        sub.remove_topics({"net:net2"})
        nb.update(nb.get_or_raise(Network, "net2").replace(name="unseen"))
        nb.update(nb.get_or_raise(Network, "net1").replace(name="seen"))
        assert mirror.wait(lambda: mirror.objs[("network", "net1")].name == "seen")
        assert mirror.objs[("network", "net2")].name != "unseen"
        assert not sub.wanted(nb.get_or_raise(Network, "net2"))
    finally:
        sub.close()


def test_a_filtered_snapshot_finds_every_object_naming_an_id(backend: Backend) -> None:
    """snapshot(must_contain=...) decodes only objects whose JSON names one of the ids --
    including ids JSON escapes (quotes, non-ASCII) -- and misses none of them."""
    nb = nb_for(backend)
    odd = 'proj "ü" 1'
    nb.create(net(1, odd))
    s1 = nb.create(subnet(1, "net1", odd))
    nb.create(net(2, "p2"))
    nb.create(port(1, "net1", s1, topic="p2"))
    objs, rev = nb.snapshot(must_contain={"net1"})
    assert {(o.TABLE, o.id) for o in objs} == {("network", "net1"), ("subnet", "sub1"),
                                               ("port", "port1")}
    assert rev == nb.revision()
    objs, _ = nb.snapshot(must_contain={odd})
    assert {(o.TABLE, o.id) for o in objs} == {("network", "net1"), ("subnet", "sub1")}


def test_heartbeats_reach_no_subscriber(backend: Backend) -> None:
    """Liveness lives beside the objects: a subscriber following everything sees the
    chassis record once, none of its heartbeats; ``liveness()`` has the last beat; deleting
    the chassis forgets it."""
    nb = nb_for(backend)
    mirror = Mirror()
    sub = Subscription(nb, mirror.on_change, mirror.on_resync,
                       from_revision=nb.revision() + 1)
    try:
        nb.create(Chassis(id="hv-live", ip="192.0.2.7", tunnel_types=("vxlan",)))
        for i in range(20):
            nb.beat("hv-live", 1000.0 + i)
        nb.create(net(1))
        assert mirror.wait(lambda: ("network", "net1") in mirror.objs)
        assert len(mirror.revisions) == 2  # the chassis and the network: no heartbeat
        assert nb.liveness()["hv-live"] == 1019.0
        with pytest.raises(errors.NbError, match="field 'id'"):
            nb.beat("a/b", 1.0)
        nb.delete(Chassis, "hv-live")
        assert "hv-live" not in nb.liveness()
    finally:
        sub.close()


def test_subscriber_cut_off_applies_every_write_in_order(backend: Backend) -> None:
    """The loss test at NB level: connection cut during 1,000 writes."""
    writer = nb_for(backend)
    reader = nb_for(backend, proxied=True)
    writer.create(net(1))
    mirror = Mirror()
    sub = Subscription(reader, mirror.on_change, mirror.on_resync,
                       from_revision=writer.revision() + 1)
    try:
        n = writer.get_or_raise(Network, "net1")
        expected_revs = []
        for i in range(1000):
            n = writer.update(n.replace(name=f"v{i}"))
            expected_revs.append(writer.revision())
            if backend.can_sever and i in (10, 500, 501, 900):
                backend.sever()
        assert mirror.wait(lambda: len(mirror.revisions) >= 1000, timeout=60)
        assert mirror.resyncs == 0
        assert len(mirror.revisions) == 1000
        assert mirror.revisions == sorted(set(mirror.revisions))
        assert mirror.objs[("network", "net1")].name == "v999"
        assert mirror.objs == state(writer)
    finally:
        sub.close()


def test_compaction_forces_resync_that_converges(backend: Backend) -> None:
    nb = nb_for(backend)
    nb.create(net(1))
    nb.create(net(2))
    start = nb.revision() + 1
    n1 = nb.get_or_raise(Network, "net1")
    for i in range(20):
        n1 = nb.update(n1.replace(name=f"v{i}"))
    nb.delete(Network, "net2")
    nb.create(net(3))
    nb.driver.compact(nb.revision())
    mirror = Mirror()
    # the subscriber believes it applied everything before `start` (it knows net1 and net2)
    mirror.objs = {("network", "net2"): net(2)}
    sub = Subscription(nb, mirror.on_change, mirror.on_resync, from_revision=start)
    try:
        assert mirror.wait(lambda: mirror.resyncs == 1)
        assert mirror.objs == state(nb)
        nb.create(net(4))  # and it follows the stream after the resync
        assert mirror.wait(lambda: ("network", "net4") in mirror.objs)
        assert mirror.objs == state(nb)
    finally:
        sub.close()


def test_unique_key_counter_behind_restored_objects(backend: Backend) -> None:
    """Objects restored with their keys (e.g. from a dump) while the counter starts at 0:
    new objects must get free keys, never a key a live object holds."""
    nb = nb_for(backend)
    restored = [nb.create(net(i).replace(unique_key=i)) for i in (1, 2, 3)]
    fresh = nb.create(net(9))
    assert fresh.unique_key not in {n.unique_key for n in restored}
    assert sorted(n.unique_key for n in nb.list(Network)) == [1, 2, 3, fresh.unique_key]


def test_a_writer_with_a_stale_cache_neither_writes_wrong_nor_reports_wrong(
        backend: Backend) -> None:
    """Two NbApi instances: B's write-path cache goes stale behind A's back."""
    a, b = nb_for(backend), nb_for(backend)
    a.create(net(1))
    s = a.create(subnet(1, "net1"))
    b.create(port(1, "net1", s))  # B has now cached net1 and sub1
    a.update(a.get_or_raise(Network, "net1").replace(name="renamed by A"))
    n = b.get_or_raise(Network, "net1")  # fresh read: version 2
    assert b.update(n.replace(name="B")).version == 3  # B's cached copy (v1) is not used
    a.delete(Port, "port1")
    a.delete(Subnet, "sub1")
    with pytest.raises(ValidationError) as ei:  # B's cache still has sub1: re-decided fresh
        b.create(port(2, "net1", s))
    assert "sub1" in str(ei.value)
    assert [p.id for p in a.list(Port)] == []
    a.create(subnet(1, "net1"))
    assert b.create(port(3, "net1", s)).id == "port3"  # B's cached "absent" is not trusted


def test_an_invalid_object_in_the_db_does_not_stop_subscribers(backend: Backend) -> None:
    """Written behind NbApi's back (another tool, a hand edit): logged, seen as absent, and
    the stream and snapshots go on."""
    nb = nb_for(backend)
    nb.create(net(1))
    mirror = Mirror()
    sub = Subscription(nb, mirror.on_change, mirror.on_resync, from_revision=nb.revision() + 1)
    try:
        nb.driver.commit([], [Put(nb.obj_key("network", "net1"), b'{"id": "net1", "bogus": 1}')])
        nb.driver.commit([], [Put(nb.obj_key("nosuchtable", "x"), b"{}")])
        nb.create(net(2))
        assert mirror.wait(lambda: ("network", "net2") in mirror.objs)
        assert ("network", "net1") not in mirror.objs
        assert [o.id for o in nb.snapshot()[0]] == ["net2"]
    finally:
        sub.close()


def test_an_invalid_object_is_absent_to_every_reader_and_can_be_listed_and_removed(
        backend: Backend) -> None:
    """One rule everywhere: get/list/by_index see an invalid stored value as absent (logged
    once), invalid() names it with the reason, delete removes it with the index entries
    and claims it held, and a create over it replaces it."""
    nb = nb_for(backend)
    nb.create(net(1))
    s1 = nb.create(subnet(1, "net1"))
    good = nb.create(port(1, "net1", s1))
    bad = nb.create(port(2, "net1", s1))
    key = nb.obj_key("port", bad.id)
    nb.driver.commit([], [Put(key, b'{"id": "port2", "network_id": 5')])  # truncated JSON
    assert nb.get(Port, bad.id) is None
    assert [p.id for p in nb.list(Port)] == [good.id]
    assert [p.id for p in nb.by_index(Port, "network_id", "net1")] == [good.id]
    assert [(i, why.split(":")[0]) for i, why in nb.invalid(Port)] == [(bad.id, "JSONDecodeError")]
    # the network is still referenced by the invalid port's index entry: not deletable yet
    with pytest.raises(errors.InUse):
        nb.delete(Network, "net1")
    nb.delete(Port, bad.id)
    assert nb.driver.get(key) is None and nb.invalid(Port) == []
    held = [kv.key for kv in nb.driver.get_prefix(nb.root)[0] if bad.id in kv.key
            or kv.value == f"port/{bad.id}".encode()]
    assert held == []  # its index entries and its IP / MAC / unique-key claims went too
    # a create over an invalid value replaces it (the value was absent to every reader)
    nb.driver.commit([], [Put(key, b"garbage")])
    again = nb.create(port(2, "net1", s1))
    assert nb.get(Port, bad.id) == again and nb.invalid(Port) == []
    nb.delete(Port, good.id)
    nb.delete(Port, again.id)
    nb.delete(Subnet, s1.id)
    nb.delete(Network, "net1")  # nothing left behind that pins it
