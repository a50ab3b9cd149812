"""Driver conformance, key-value level: every driver honours dragonflow/db/driver.py.

Runs against the memory driver and real etcd and redis servers (fixtures in tests/fixtures).
"""

from __future__ import annotations

import threading
import time

import pytest

from dragonflow.db.driver import (
    Delete,
    Exists,
    PrefixEmpty,
    Put,
    Revision,
    TxnFailed,
)
from tests.db.conftest import Backend
from tests.db.helpers import Collector


def test_put_get_delete_and_prefix(backend: Backend) -> None:
    db, p = backend.driver(), backend.prefix
    r1 = db.commit([], [Put(p + "a/1", b"one"), Put(p + "a/2", b"two"), Put(p + "b/1", b"x")])
    kv = db.get(p + "a/1")
    assert kv is not None and kv.value == b"one" and kv.mod_revision == r1
    kvs, rev = db.get_prefix(p + "a/")
    assert [(k.key, k.value) for k in kvs] == [(p + "a/1", b"one"), (p + "a/2", b"two")]
    assert rev >= r1
    r2 = db.commit([], [Delete(p + "a/1")])
    assert r2 > r1
    assert db.get(p + "a/1") is None
    assert [k.key for k in db.get_prefix(p)[0]] == [p + "a/2", p + "b/1"]
    assert db.current_revision() >= r2


def test_revision_check_is_compare_and_swap(backend: Backend) -> None:
    db, p = backend.driver(), backend.prefix
    r1 = db.commit([Revision(p + "k", 0)], [Put(p + "k", b"v1")])
    with pytest.raises(TxnFailed):  # create-only: exists already
        db.commit([Revision(p + "k", 0)], [Put(p + "k", b"dup")])
    r2 = db.commit([Revision(p + "k", r1)], [Put(p + "k", b"v2")])
    # a stale writer (based on r1) loses, and its other op is not applied either
    with pytest.raises(TxnFailed):
        db.commit([Revision(p + "k", r1)], [Put(p + "k", b"stale"), Put(p + "other", b"x")])
    kv = db.get(p + "k")
    assert kv is not None and (kv.value, kv.mod_revision) == (b"v2", r2)
    assert db.get(p + "other") is None


def test_exists_and_prefix_empty_checks(backend: Backend) -> None:
    db, p = backend.driver(), backend.prefix
    with pytest.raises(TxnFailed):
        db.commit([Exists(p + "net/1")], [Put(p + "port/1", b"x")])
    assert db.get(p + "port/1") is None
    db.commit([], [Put(p + "net/1", b"n")])
    db.commit([Exists(p + "net/1")], [Put(p + "port/1", b"x"), Put(p + "idx/net/1/port1", b"")])
    with pytest.raises(TxnFailed):
        db.commit([PrefixEmpty(p + "idx/net/1/")], [Delete(p + "net/1")])
    assert db.get(p + "net/1") is not None
    # a sibling prefix does not count ("idx/net/1/" vs "idx/net/10/")
    db.commit([], [Put(p + "idx/net/10/x", b"")])
    db.commit([], [Delete(p + "idx/net/1/port1")])
    db.commit([PrefixEmpty(p + "idx/net/1/")], [Delete(p + "net/1")])
    assert db.get(p + "net/1") is None


def test_increment_unique_under_concurrency(backend: Backend) -> None:
    drivers = [backend.driver() for _ in range(4)]
    key = backend.prefix + "ctr/port"
    got: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        mine = [drivers[i % len(drivers)].increment(key) for _ in range(100)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 800
    assert len(set(got)) == 800
    assert min(got) >= 1


def test_watch_delivers_every_change_in_order(backend: Backend) -> None:
    db, p = backend.driver(), backend.prefix
    start = db.current_revision() + 1
    col = Collector()
    w = db.watch(p + "obj/", start, col.on_event, col.on_compacted)
    try:
        revs = []
        for i in range(100):
            revs.append(db.commit([], [Put(f"{p}obj/{i % 10}", str(i).encode())]))
            db.commit([], [Put(f"{p}other/{i}", b"not watched")])
        revs.append(db.commit([], [Delete(f"{p}obj/3")]))
        events = col.wait_for(101)
        assert [e.revision for e in events] == revs
        assert [e.value for e in events[:100]] == [str(i).encode() for i in range(100)]
        assert events[-1].value is None and events[-1].prev_value == b"93"
        assert events[15].prev_value == b"5"
    finally:
        w.cancel()


def test_watch_resumes_after_connection_cut_without_loss(backend: Backend) -> None:
    """The loss test: the subscriber's connection is cut mid-stream while 1,000 writes
    happen; it must deliver exactly all of them, in order, once."""
    writer, p = backend.driver(), backend.prefix
    reader = backend.proxied_driver()
    start = writer.current_revision() + 1
    col = Collector()
    w = reader.watch(p, start, col.on_event, col.on_compacted)
    try:
        revs = []
        for i in range(1000):
            revs.append(writer.commit([], [Put(f"{p}k{i % 37}", str(i).encode())]))
            if backend.can_sever and i in (100, 400, 401, 700):
                backend.sever()
        events = col.wait_for(1000, timeout=60)
        assert len(events) == 1000, f"got {len(events)} events"
        assert [e.revision for e in events] == revs
        assert [e.value for e in events] == [str(i).encode() for i in range(1000)]
        assert col.compacted.empty()
    finally:
        w.cancel()


def test_watch_from_compacted_revision_asks_for_resync(backend: Backend) -> None:
    db, p = backend.driver(), backend.prefix
    first = db.commit([], [Put(p + "a", b"1")])
    for i in range(5):
        db.commit([], [Put(p + "a", str(i).encode())])
    last = db.commit([], [Put(p + "a", b"last")])
    db.compact(last)
    col = Collector()
    w = db.watch(p, first, col.on_event, col.on_compacted)
    try:
        rev = col.compacted.get(timeout=10)
        assert rev >= first
        assert col.events == []
    finally:
        w.cancel()
    # resuming from a revision that survived works
    col2 = Collector()
    w2 = db.watch(p, last, col2.on_event, col2.on_compacted)
    try:
        assert [e.value for e in col2.wait_for(1)] == [b"last"]
    finally:
        w2.cancel()


def test_watch_cancel_stops_delivery(backend: Backend) -> None:
    db, p = backend.driver(), backend.prefix
    col = Collector()
    w = db.watch(p, db.current_revision() + 1, col.on_event, col.on_compacted)
    db.commit([], [Put(p + "x", b"1")])
    col.wait_for(1)
    w.cancel()
    db.commit([], [Put(p + "x", b"2")])
    time.sleep(0.3)
    assert [e.value for e in col.events] == [b"1"]
