"""etcd wiped and restarted EMPTY at the same address (a lost disk, a re-provisioned node).

With the same name, peer URL and cluster token etcd comes back with the same cluster id and
member id; only its revision starts again from 1. A watch that resumed at its old revision
+ 1 would wait silently until the new database overtook the old revision, skipping every
write until then. These tests restart a private etcd and prove that: watches are told to
resync (``on_compacted``) and a Subscription converges to exactly the new database, including
writes made right after the restart; the driver itself keeps working; a replaced etcd whose
revision has already overtaken the old one is caught too (by the watch's history check, or
by the cluster id when it differs); an NbApi does not hand out unique keys reserved from the
old database's counter. And (memory driver) a resync whose snapshot fails is tried again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from dragonflow.db.driver import KV, DriverError, Put
from dragonflow.db.drivers.etcd import EtcdDriver
from dragonflow.db.drivers.memory import MemoryDriver
from dragonflow.db.nbapi import NbApi
from dragonflow.db.stream import Subscription
from dragonflow.model import Network, Port
from tests.db.helpers import Collector
from tests.db.test_nb_conformance import Mirror, net, port, state, subnet
from tests.fixtures.etcd_server import EtcdServer, require_binary
from tests.fixtures.tcpproxy import TcpProxy
from tests.fixtures.wait import eventually

pytestmark = pytest.mark.servers


@pytest.fixture
def own_etcd() -> Iterator[EtcdServer]:
    """A private etcd: these tests wipe it, which must not disturb anyone else."""
    require_binary()
    server = EtcdServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def drivers() -> Iterator[list[EtcdDriver]]:
    made: list[EtcdDriver] = []
    try:
        yield made
    finally:
        for d in made:
            d.close()


def driver(made: list[EtcdDriver], url: str) -> EtcdDriver:
    d = EtcdDriver(url)
    made.append(d)
    return d


def test_watch_is_told_to_resync_when_etcd_comes_back_empty(
    own_etcd: EtcdServer, drivers: list[EtcdDriver]
) -> None:
    db = driver(drivers, own_etcd.url)
    col = Collector()
    w = db.watch("/k/", db.current_revision() + 1, col.on_event, col.on_compacted)
    for i in range(20):
        db.commit([], [Put(f"/k/{i}", str(i).encode())])
    assert len(col.wait_for(20)) == 20
    old_cluster = cluster_id(own_etcd)
    own_etcd.restart_empty()
    writer = driver(drivers, own_etcd.url)  # a fresh client: it never saw the old database
    revs = [writer.commit([], [Put(f"/k/new{i}", b"n")]) for i in range(3)]
    assert revs[-1] < 20  # behind what the watch already delivered
    assert col.compacted.get(timeout=20) <= revs[-1]
    assert len(col.events) == 20  # nothing of the new database was passed off as history
    w._thread.join(10)
    assert not w._thread.is_alive()  # one on_compacted, then the watch is over
    assert cluster_id(own_etcd) == old_cluster  # same id: only the revision told
    assert db.generation == 1


def test_subscription_converges_to_the_new_database(
    own_etcd: EtcdServer, drivers: list[EtcdDriver]
) -> None:
    nb = NbApi(driver(drivers, own_etcd.url))
    for i in range(1, 4):
        nb.create(net(i))
    s1 = nb.create(subnet(1, "net1"))
    for i in range(5):
        nb.create(port(i, "net1", s1))
    n1 = nb.get_or_raise(Network, "net1")
    for i in range(10):
        n1 = nb.update(n1.replace(name=f"v{i}"))
    old_rev = nb.revision()
    mirror = Mirror()
    sub = Subscription(NbApi(driver(drivers, own_etcd.url)), mirror.on_change,
                       mirror.on_resync, from_revision=1)
    try:
        assert mirror.wait(lambda: mirror.objs == state(nb))
        assert mirror.resyncs == 0
        own_etcd.restart_empty()
        # written right after the restart: revisions far below the ones the watch delivered
        writer = NbApi(driver(drivers, own_etcd.url))
        writer.create(net(7))
        s7 = writer.create(subnet(7, "net7"))
        writer.create(port(70, "net7", s7))
        assert writer.revision() < old_rev
        assert mirror.wait(lambda: mirror.resyncs >= 1, timeout=30)
        assert mirror.wait(lambda: mirror.objs == state(writer), timeout=30), mirror.objs.keys()
        assert ("network", "net1") not in mirror.objs  # nothing of the old database is left
        writer.create(port(71, "net7", s7))  # and the stream is followed after the resync
        assert mirror.wait(lambda: ("port", "port71") in mirror.objs)
        assert mirror.objs == state(writer)
    finally:
        sub.close()


def test_driver_keeps_working_after_etcd_came_back_empty(
    own_etcd: EtcdServer, drivers: list[EtcdDriver]
) -> None:
    db = driver(drivers, own_etcd.url)
    for i in range(30):
        last = db.commit([], [Put(f"/a/{i}", b"old")])
    own_etcd.restart_empty()
    assert eventually(lambda: _answers(db), timeout=20)
    assert db.current_revision() < last  # the new database's, not a cached one
    assert db.get("/a/1") is None
    rev = db.commit([], [Put("/a/new", b"new")])
    assert rev < last and db.get("/a/new") is not None
    assert db.get_prefix("/a/") == ([db.get("/a/new")], rev)
    # a watch from the old history (its caller applied up to `last`) resyncs, never waits
    stale = Collector()
    w1 = db.watch("/a/", last + 1, stale.on_event, stale.on_compacted)
    assert stale.compacted.get(timeout=10) == rev
    w1.cancel()
    # a watch from the new history works as usual
    fresh = Collector()
    w2 = db.watch("/a/", rev + 1, fresh.on_event, fresh.on_compacted)
    r2 = db.commit([], [Put("/a/after", b"x")])
    assert [(e.revision, e.value) for e in fresh.wait_for(1, timeout=10)] == [(r2, b"x")]
    assert fresh.compacted.empty() and db.generation == 1
    w2.cancel()


def cluster_id(server: EtcdServer) -> int:
    out = server.etcdctl("endpoint", "status", "-w", "json").stdout
    return int(json.loads(out)[0]["Status"]["header"]["cluster_id"])


def _answers(db: EtcdDriver) -> bool:
    try:
        db.current_revision()
        return True
    except Exception:
        return False


@pytest.mark.parametrize("new_cluster_id", [False, True], ids=["same-cluster-id", "new-id"])
def test_replaced_etcd_that_overtook_the_old_revision_is_detected(
    own_etcd: EtcdServer, drivers: list[EtcdDriver], new_cluster_id: bool
) -> None:
    """The watcher's link is down while etcd is wiped and the new database gets MORE writes
    than the old one had: revisions alone look fine when it reconnects."""
    proxy = TcpProxy("127.0.0.1", own_etcd.port).start()
    try:
        reader = driver(drivers, f"etcd://127.0.0.1:{proxy.port}")
        db = driver(drivers, own_etcd.url)
        col = Collector()
        w = reader.watch("/k/", 1, col.on_event, col.on_compacted)
        for i in range(10):
            db.commit([], [Put(f"/k/{i}", b"old")])
        assert len(col.wait_for(10)) == 10
        old = db.current_revision()
        proxy.pause()
        own_etcd.restart_empty(new_cluster_id=new_cluster_id)
        writer = driver(drivers, own_etcd.url)
        for i in range(3 * old):
            last = writer.commit([], [Put(f"/k/{i % 12}", f"new{i}".encode())])
        assert last > old
        proxy.resume()
        assert col.compacted.get(timeout=30) >= old
        assert [e.value for e in col.events] == [b"old"] * 10  # no event of the new database
        w._thread.join(10)
        assert not w._thread.is_alive()
        assert reader.generation == 1
        assert (reader.cluster_id != db.cluster_id) == new_cluster_id
    finally:
        proxy.stop()


def test_unique_keys_after_a_restart_come_from_the_new_counter(
    own_etcd: EtcdServer, drivers: list[EtcdDriver]
) -> None:
    nb = NbApi(driver(drivers, own_etcd.url))
    nb.create(net(1))
    s1 = nb.create(subnet(1, "net1"))
    for i in range(5):
        nb.create(port(i, "net1", s1))  # reserves a block of the port counter: 1..32
    for i in range(20):
        nb.driver.commit([], [Put(f"/pad/{i}", b"")])  # the old revision is well ahead
    own_etcd.restart_empty()
    other = NbApi(driver(drivers, own_etcd.url))
    other.create(net(1))
    s1 = other.create(subnet(1, "net1"))
    theirs = other.create(port(1, "net1", s1))  # the new counter: block 1..32
    assert eventually(lambda: nb.get(Network, "net1") is not None, timeout=20)
    mine = nb.create(port(2, "net1", s1))
    # not 6 (the rest of the block reserved from the old database): a new block, 33..64
    assert (theirs.unique_key, mine.unique_key) == (1, 33)
    assert sorted(p.unique_key for p in other.list(Port)) == [1, 33]


class _SnapshotFailsOnce(MemoryDriver):
    """The first full snapshot fails (the database is not fully back yet)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = threading.Event()

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        if prefix.endswith("/obj/") and not self.failed.is_set():
            self.failed.set()
            raise DriverError("memory: not there yet")
        return super().get_prefix(prefix)


def test_a_resync_whose_snapshot_fails_is_tried_again() -> None:
    """History gone -> resync; its snapshot failing once must not end the subscription."""
    drv = _SnapshotFailsOnce()
    nb = NbApi(drv)
    for i in range(1, 4):
        nb.create(net(i))
    drv.compact(nb.revision())
    mirror = Mirror()
    sub = Subscription(nb, mirror.on_change, mirror.on_resync, from_revision=1)
    try:
        assert mirror.wait(lambda: mirror.resyncs == 1, timeout=10)
        assert drv.failed.is_set() and mirror.objs == state(nb)
        nb.create(net(4))
        assert mirror.wait(lambda: ("network", "net4") in mirror.objs)
    finally:
        sub.close()
