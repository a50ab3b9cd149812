"""The ovsdb NB driver on a real 3-member OVSDB Raft cluster (ovsdb-tool create-cluster /
join-cluster through the driver's own tooling, three ovsdb-server processes).

The leader is killed while 4 writers make 1,000 NB writes through the cluster url (all three
remotes): every write a caller was told succeeded is in the database exactly once, nothing
else is; a watcher (an IDL that follows the leader) and a second NbApi converge on it."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest

from dragonflow.db.driver import AmbiguousCommit, DriverError
from dragonflow.db.drivers.ovsdb import OvsdbDriver
from dragonflow.db.nbapi import NbApi
from dragonflow.model import Port
from tests.db.helpers import Collector
from tests.db.test_ambiguous_commits import _owned, _stored_entries, _version
from tests.db.test_nb_conformance import net, port, subnet
from tests.fixtures.ovsdb_server import OvsdbCluster, require_binary
from tests.fixtures.wait import eventually

pytestmark = pytest.mark.servers
T = TypeVar("T")


def test_killing_the_ovsdb_leader_during_1000_writes_loses_and_repeats_nothing(
    caplog: pytest.LogCaptureFixture
) -> None:
    require_binary()
    cluster = OvsdbCluster(3).start()
    prefix = f"/tr{uuid.uuid4().hex[:10]}/"
    drivers = [OvsdbDriver(cluster.url), OvsdbDriver(cluster.url)]
    try:
        nb, watcher = NbApi(drivers[0], root=prefix), NbApi(drivers[1], root=prefix)
        nb.resolve_timeout = 30.0
        nb.create(net(1))
        s1 = nb.create(subnet(1, "net1"))
        col = Collector()
        w = watcher.driver.watch(watcher.obj_prefix + "port/", watcher.revision() + 1,
                                 col.on_event, col.on_compacted)
        live: dict[str, Port] = {}
        writes = [0]
        failures: list[BaseException] = []
        lock = threading.Lock()
        started = threading.Barrier(5)

        def call(fn: Callable[[], T]) -> T:
            deadline = time.monotonic() + 60
            while True:
                try:
                    return fn()
                except DriverError as e:
                    if isinstance(e, AmbiguousCommit) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)  # nothing was written: safe to ask again

        def work(t: int) -> None:
            started.wait()
            try:
                for j in range(25):  # 25 ports x 10 writes
                    p = call(lambda n=t * 25 + j + 1: nb.create(port(n, "net1", s1)))
                    for k in range(8):
                        p = call(lambda p=p, k=k: nb.update(p.replace(name=f"n{k}")))
                    if j % 5 == 0:
                        call(lambda p=p: nb.delete(Port, p.id))
                    else:
                        p = call(lambda p=p: nb.update(p.replace(name="last")))
                        with lock:
                            live[p.id] = p
                    with lock:
                        writes[0] += 10
            except BaseException as e:  # reported below
                failures.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        with caplog.at_level(logging.WARNING, logger="dragonflow.db.nbapi"):
            started.wait()
            assert eventually(lambda: writes[0] >= 300, timeout=120, poll=0.005)
            leader = cluster.leader()
            cluster.kill(leader)  # with commits in flight on it
            for th in threads:
                th.join(300)
        assert failures == []
        assert writes[0] == 1000
        assert cluster.leader() != leader  # another member took over
        assert {p.id: p for p in watcher.list(Port)} == live
        assert _owned(watcher, [watcher.get_or_raise("network", "net1"), s1, *live.values()]) \
            == _stored_entries(watcher)
        events = col.wait_for(1000, timeout=60)
        time.sleep(0.5)
        seen = [(e.key.rsplit("/", 1)[1], _version(e.value)) for e in col.events]
        assert len(events) == len(seen) == len(set(seen)) == 1000  # each write once
        assert col.compacted.empty()
        w.cancel()
        lost = caplog.text.count("NB commit answer lost")
        applied = caplog.text.count("it was applied")
        print(f"commits whose answer was lost: {lost}, of which applied: {applied}")
    finally:
        for d in drivers:
            d.close()
        cluster.stop()
