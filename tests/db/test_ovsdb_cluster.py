"""The ovsdb NB driver on a real 3-member OVSDB Raft cluster (ovsdb-tool create-cluster /
join-cluster through the driver's own tooling, three ovsdb-server processes).

The leader is killed while 4 writers make 1,000 NB writes through the cluster url (all three
remotes): every write a caller was told succeeded is in the database exactly once, nothing
else is; a watcher (an IDL that follows the leader) and a second NbApi converge on it."""

from __future__ import annotations

import uuid

import pytest

from dragonflow.db.drivers.ovsdb import OvsdbDriver
from dragonflow.db.nbapi import NbApi
from tests.db.test_ambiguous_commits import writes_through_a_leader_kill
from tests.fixtures.ovsdb_server import OvsdbCluster, require_binary

pytestmark = pytest.mark.servers


def test_killing_the_ovsdb_leader_during_1000_writes_loses_and_repeats_nothing() -> None:
    require_binary()
    cluster = OvsdbCluster(3).start()
    prefix = f"/tr{uuid.uuid4().hex[:10]}/"
    drivers = [OvsdbDriver(cluster.url), OvsdbDriver(cluster.url)]
    killed: list[int] = []

    def kill_leader() -> None:
        killed.append(cluster.leader())
        cluster.kill(killed[0])

    try:
        # 4 threads x 25 ports x (create + 8 updates + a delete or an update) = 1,000 writes
        print(writes_through_a_leader_kill(
            NbApi(drivers[0], root=prefix), NbApi(drivers[1], root=prefix), kill_leader,
            ports=25, updates=8, delete_every=5, kill_after=300))
        assert cluster.leader() != killed[0]  # another member took over
    finally:
        for d in drivers:
            d.close()
        cluster.stop()
