"""What only the ovsdb driver has (the conformance suites cover the shared contract):
the monitor condition moves with the watch and filters by prefix on the server; trimmed
history and a database created anew end a watch with on_compacted; the setup tooling."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from dragonflow.db.driver import AmbiguousCommit, DriverError, Put
from dragonflow.db.drivers import ovsdb
from dragonflow.db.drivers.ovsdb import OvsdbDriver, create_db_file, parse_remotes
from tests.db.helpers import Collector
from tests.fixtures.ovsdb_server import OvsdbServer, require_binary
from tests.fixtures.wait import eventually

pytestmark = pytest.mark.servers


@pytest.fixture
def server() -> OvsdbServer:
    require_binary()
    s = OvsdbServer().start()
    yield s
    s.stop()


def test_watch_moves_its_window_and_the_server_filters_by_prefix(
        server: OvsdbServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 windows' worth of commits, 1 in 4 under the watched prefix, written by 2 threads
    while a watcher follows; a second watcher starts late from the beginning. Both get every
    change of their prefix once, in order, and the server sent few rows of other prefixes.
    (Buckets of 32 revisions instead of 256: the window moves 4 times in 1,024 commits.)"""
    monkeypatch.setattr(ovsdb, "BUCKET", 32)  # writer and watcher: both in this process
    p = f"/w{uuid.uuid4().hex[:8]}/"
    writer = OvsdbDriver(server.url)
    start = writer.current_revision() + 1
    live, late = Collector(), Collector()
    watcher = OvsdbDriver(server.url)
    w1 = watcher.watch(p + "a/", start, live.on_event, live.on_compacted)
    n = ovsdb.WINDOW * ovsdb.BUCKET  # commits per thread: the window moves 4 times

    def write(t: int) -> None:
        for i in range(n):
            key = f"{p}a/{t}" if i % 4 == 0 else f"{p}b/{t}-{i % 7}"
            writer.commit([], [Put(key, b"%d" % i)])

    threads = [threading.Thread(target=write, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    w2 = watcher.watch(p + "a/", start, late.on_event, late.on_compacted)
    want = 2 * len(range(0, n, 4))
    for col in (live, late):
        events = col.wait_for(want, timeout=60)
        assert len(events) == want
        revs = [e.revision for e in events]
        assert revs == sorted(revs) and len(set(revs)) == want
        assert all(e.key.startswith(p + "a/") for e in events)
        assert col.compacted.empty()
    # the server filtered: it sent the watched prefix's rows, none of the other (3 in 4)
    assert want <= w1.rows_received <= want + ovsdb.BUCKET, w1.rows_received
    w1.cancel()
    w2.cancel()
    writer.close()
    watcher.close()


def test_trimmed_history_and_a_new_database_end_a_watch_with_on_compacted(
        server: OvsdbServer) -> None:
    drv = OvsdbDriver(server.url, log_maxlen=50, trim_every=10)
    for i in range(120):
        drv.commit([], [Put(f"/t/{i % 5}", b"%d" % i)])
    old = Collector()
    w = drv.watch("/t/", 1, old.on_event, old.on_compacted)
    assert old.compacted.get(timeout=10) >= 120 and old.events == []
    w.cancel()
    # the database is created anew behind the same address: the watch learns it
    col = Collector()
    w = drv.watch("/t/", drv.current_revision() + 1, col.on_event, col.on_compacted)
    gen = drv.generation
    server.restart_empty()
    drv.commit([], [Put("/t/x", b"1")])  # (a reconnecting write of the driver too)
    assert col.compacted.get(timeout=20) >= 0
    assert eventually(lambda: drv.generation > gen, timeout=5)
    w.cancel()
    drv.close()


def test_setup_tooling_and_urls(tmp_path: Path) -> None:
    require_binary()
    db = tmp_path / "nb.db"
    create_db_file(str(db))
    with pytest.raises(ValueError, match="already exists"):
        create_db_file(str(db))
    with pytest.raises(ValueError, match="own Raft address"):
        create_db_file(str(tmp_path / "x.db"), join=["tcp:127.0.0.1:1"])
    from dragonflow.cli.db import main as df_db

    assert df_db(["ovsdb-create", str(tmp_path / "c.db"), "--cluster", "tcp:127.0.0.1:6643"]) == 0
    assert (tmp_path / "c.db").stat().st_size > 0
    assert df_db(["ovsdb-create", str(tmp_path / "c.db")]) == 1  # exists: refused
    assert parse_remotes("ovsdb:tcp:10.0.0.1:6641,tcp:10.0.0.2:6641") == [
        "tcp:10.0.0.1:6641", "tcp:10.0.0.2:6641"]
    for bad in ("ovsdb:", "ovsdb:tcp:host", "ovsdb:unix:/x", "ovsdb://h:1"):
        with pytest.raises(ValueError, match="ovsdb"):
            parse_remotes(bad)


def test_tls_with_client_certificates(tmp_path: Path) -> None:
    """ssl: remotes: the server demands a client certificate of its CA; the driver presents
    [df] nb_db_cert_file; without one the configuration is refused before connecting, and a
    certificate of another CA is refused by the server (nothing written either way)."""
    from dragonflow.db.security import NbSecurity, SecurityConfigError
    from tests.fixtures.tls import make_pki

    require_binary()
    pki = make_pki(tmp_path / "pki")
    server = OvsdbServer(tls=pki).start()
    try:
        assert server.url.startswith("ovsdb:ssl:")
        good = NbSecurity(ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                          key_file=str(pki.client_key))
        drv = OvsdbDriver(server.url, security=good)
        col = Collector()
        w = drv.watch("/tls/", 1, col.on_event, col.on_compacted)
        drv.commit([], [Put("/tls/a", b"1")])
        assert [e.key for e in col.wait_for(1, timeout=10)] == ["/tls/a"]
        w.cancel()
        drv.close()
        with pytest.raises(SecurityConfigError, match="nb_db_cert_file"):
            OvsdbDriver(server.url, security=NbSecurity(ca_file=str(pki.ca)))
        with pytest.raises(SecurityConfigError, match="not a TLS url"):
            OvsdbDriver("ovsdb:tcp:127.0.0.1:1", security=good)
        with pytest.raises(SecurityConfigError, match="no user/password"):
            OvsdbDriver(server.url, security=NbSecurity(user="u", password="p"))
        rogue = OvsdbDriver(server.url, timeout=1.0, security=NbSecurity(
            ca_file=str(pki.ca), cert_file=str(pki.rogue_cert), key_file=str(pki.rogue_key)))
        with pytest.raises(DriverError) as err:
            rogue.commit([], [Put("/tls/b", b"1")])
        assert not isinstance(err.value, AmbiguousCommit), err.value
        assert "TLS handshake refused?" in str(err.value)
        rogue.close()
        assert OvsdbDriver(server.url, security=good).get("/tls/b") is None
    finally:
        server.stop()


def test_one_commit_deleting_and_remaking_a_key(server: OvsdbServer) -> None:
    """Rows are found by a uuid derived from their key (ovsdb-server scans a table for any
    other column): a key deleted and put again in ONE commit is one update of its row; put
    and deleted in one commit leaves nothing; the stream shows every op."""
    from dragonflow.db.driver import Delete

    drv = OvsdbDriver(server.url)
    col = Collector()
    w = drv.watch("/dp/", drv.current_revision() + 1, col.on_event, col.on_compacted)
    drv.commit([], [Put("/dp/a", b"1")])
    rev = drv.commit([], [Delete("/dp/a"), Put("/dp/a", b"2"), Put("/dp/b", b"x"),
                          Delete("/dp/b")])
    kv = drv.get("/dp/a")
    assert kv is not None and kv.value == b"2" and kv.mod_revision == rev
    assert drv.get("/dp/b") is None and [k.key for k in drv.get_prefix("/dp/")[0]] == ["/dp/a"]
    events = col.wait_for(5, timeout=10)
    assert [(e.key, e.value, e.prev_value) for e in events] == [
        ("/dp/a", b"1", None), ("/dp/a", None, b"1"), ("/dp/a", b"2", None),
        ("/dp/b", b"x", None), ("/dp/b", None, b"x")]
    w.cancel()
    drv.close()


def test_scopes_filtered_on_the_server_and_added_under_writes(server: OvsdbServer) -> None:
    """A subscription with the controller's relevance scopes makes the server send only the
    followed networks' changes (NbApi tags each change with its scopes). A network added
    while a writer keeps changing it is replayed from a snapshot and followed from there:
    the mirror ends equal to the database, having received (almost) nothing of the network
    it never followed."""
    from dragonflow.db.nbapi import NbApi
    from dragonflow.db.stream import Change, Subscription
    from dragonflow.model import Network
    from dragonflow.model.scopes import relevance_scope_id, relevance_scopes
    from tests.db.test_nb_conformance import Mirror, net

    nb = NbApi(OvsdbDriver(server.url), root=f"/s{uuid.uuid4().hex[:8]}/")
    for i in (1, 2, 3):
        nb.create(net(i))
    mirror = Mirror()
    versions: list[int] = []  # of net2, as delivered

    def on_change(ch: Change) -> None:
        if ch.id == "net2" and ch.obj is not None:
            versions.append(ch.obj.version)
        mirror.on_change(ch)

    sub = Subscription(nb, on_change, mirror.on_resync,
                       from_revision=nb.revision() + 1, topics={"net:net1"},
                       scope_of=relevance_scopes, scope_id=relevance_scope_id)
    stop = threading.Event()
    writes = {2: 0, 3: 0}

    def churn(i: int) -> None:
        writer = NbApi(OvsdbDriver(server.url), root=nb.root)
        while not stop.is_set():
            n = writer.get_or_raise(Network, f"net{i}")
            writer.update(n.replace(name=f"v{n.version}"))
            writes[i] += 1
        writer.driver.close()

    threads = [threading.Thread(target=churn, args=(i,)) for i in (2, 3)]
    try:
        for th in threads:
            th.start()
        assert eventually(lambda: min(writes.values()) >= 20, timeout=30)
        watch = sub._watch
        slow_cond = watch._update_cond  # type: ignore[union-attr]

        def late(idl: object) -> None:  # a server slow to apply the new condition:
            time.sleep(0.3)  # net2 changes go on meanwhile, not yet sent to this watch
            slow_cond(idl)

        watch._update_cond = late  # type: ignore[union-attr]
        sub.add_topics({"net:net2"})  # while net2 keeps changing
        assert eventually(lambda: min(writes.values()) >= 60, timeout=30)
        stop.set()
        for th in threads:
            th.join()
        nb.update(nb.get_or_raise(Network, "net1").replace(name="last"))
        assert mirror.wait(lambda: mirror.objs.get(("network", "net1")) is not None
                           and mirror.objs[("network", "net1")].name == "last")
        want2 = nb.get_or_raise(Network, "net2")
        assert mirror.wait(lambda: mirror.objs.get(("network", "net2")) == want2, timeout=10)
        assert ("network", "net3") not in mirror.objs
        # every update of net2 after its snapshot arrived, once, in order
        assert versions == list(range(versions[0], want2.version + 1)), versions
        received = sub._watch.rows_received  # type: ignore[union-attr]
        assert received < writes[2] + 10, (received, writes)  # net3's never sent
    finally:
        stop.set()
        sub.close()
        nb.driver.close()
