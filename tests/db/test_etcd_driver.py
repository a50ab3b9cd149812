"""etcd-specific driver checks against real etcd servers (the shared behaviour is in
test_kv_conformance.py): url parsing, atomic checks with explicit failure messages, big
commits, the watch across cut and held links, compaction, errors when etcd cannot be reached,
and failover in a 3-member cluster.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest

from dragonflow.db.driver import (
    Delete,
    Driver,
    DriverError,
    Event,
    Exists,
    Op,
    PrefixEmpty,
    Put,
    Revision,
    TxnFailed,
)
from dragonflow.db.drivers.etcd import EtcdDriver, EtcdWatch, grpc_target, prefix_range
from tests.db.helpers import Collector
from tests.fixtures.etcd_server import (
    EtcdServer,
    cluster_url,
    require_binary,
    start_cluster,
)
from tests.fixtures.tcpproxy import TcpProxy


@pytest.fixture
def prefix() -> str:
    return f"/te{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def db(etcd_server: EtcdServer) -> Iterator[EtcdDriver]:
    drv = EtcdDriver(etcd_server.url)
    try:
        yield drv
    finally:
        drv.close()


@pytest.fixture
def proxy(etcd_server: EtcdServer) -> Iterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", etcd_server.port).start()
    try:
        yield p
    finally:
        p.stop()


# --- url parsing (no server) -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("etcd://127.0.0.1:2379", "127.0.0.1:2379"),
        ("etcd://db.example:2379/", "db.example:2379"),
        ("etcd://[::1]:2379", "[::1]:2379"),
        ("etcd://127.0.0.1:1,127.0.0.2:2,127.0.0.3:3", "ipv4:127.0.0.1:1,127.0.0.2:2,127.0.0.3:3"),
        ("etcd://[::1]:1,[::2]:2", "ipv6:[::1]:1,[::2]:2"),
        ("etcd://localhost:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
    ],
)
def test_url_to_grpc_target(url: str, target: str) -> None:
    assert grpc_target(url) == target


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379",
        "etcd://127.0.0.1",
        "etcd://127.0.0.1:0",
        "etcd://127.0.0.1:99999",
        "etcd://:2379",
        "etcd://127.0.0.1:2379,",
        "etcd://::1:2379",
        "etcd://127.0.0.1:1,[::1]:2",
        "etcd://user@127.0.0.1:2379",
        "etcd://127.0.0.1:2379?x=1",
        "etcd://no-such-host.invalid:1,127.0.0.1:2",
    ],
)
def test_bad_url_is_refused_naming_it(url: str) -> None:
    with pytest.raises(ValueError, match="etcd driver") as err:
        EtcdDriver(url)
    assert repr(url) in str(err.value)


def test_prefix_range() -> None:
    assert prefix_range("/df/port/") == (b"/df/port/", b"/df/port0")
    assert prefix_range("") == (b"\0", b"\0")
    assert prefix_range("a\u00e9") == ("a\u00e9".encode(), b"a\xc3\xaa")


# --- commits -------------------------------------------------------------------------------
def test_driver_satisfies_the_protocol(db: EtcdDriver) -> None:
    assert isinstance(db, Driver)


def test_crud_via_commit(db: EtcdDriver, prefix: str) -> None:
    r1 = db.commit([], [Put(prefix + "b", b"2"), Put(prefix + "a", b"1"), Put(prefix + "c", b"")])
    r2 = db.commit([Revision(prefix + "a", r1)], [Put(prefix + "a", b"1b")])
    r3 = db.commit([Exists(prefix + "c")], [Delete(prefix + "c")])
    assert r1 < r2 < r3 == db.current_revision()
    kvs, rev = db.get_prefix(prefix)
    assert rev == r3
    assert [(k.key, k.value, k.mod_revision) for k in kvs] == [
        (prefix + "a", b"1b", r2),
        (prefix + "b", b"2", r1),
    ]
    assert db.get(prefix + "c") is None
    assert db.get_prefix(prefix + "zzz") == ([], r3)


@pytest.mark.parametrize(
    ("check", "why"),
    [
        ("create-only on existing", "now mod_revision="),
        ("stale revision", "now mod_revision="),
        ("exists on absent", "(absent)"),
        ("prefix not empty", "holds "),
    ],
)
def test_each_failing_check_writes_nothing(
    db: EtcdDriver, prefix: str, check: str, why: str
) -> None:
    r1 = db.commit([], [Put(prefix + "obj", b"v1"), Put(prefix + "idx/x", b"")])
    chk = {
        "create-only on existing": Revision(prefix + "obj", 0),
        "stale revision": Revision(prefix + "obj", r1 - 1),
        "exists on absent": Exists(prefix + "missing"),
        "prefix not empty": PrefixEmpty(prefix + "idx/"),
    }[check]
    assert isinstance(chk, Revision | Exists | PrefixEmpty)
    ok = Revision(prefix + "obj", r1)  # a check that holds, next to the failing one
    ops: list[Op] = [Put(prefix + "obj", b"v2"), Put(prefix + "new", b""), Delete(prefix + "idx/x")]
    with pytest.raises(TxnFailed, match="check failed") as err:
        db.commit([ok, chk], ops)
    assert why in str(err.value) and str(chk) in str(err.value) and str(ok) not in str(err.value)
    assert db.current_revision() == r1
    kvs, _ = db.get_prefix(prefix)
    assert [(k.key, k.value) for k in kvs] == [(prefix + "idx/x", b""), (prefix + "obj", b"v1")]


def test_prefix_empty_ignores_sibling_prefix(db: EtcdDriver, prefix: str) -> None:
    db.commit([], [Put(prefix + "idx/10/a", b"")])
    rev = db.commit([PrefixEmpty(prefix + "idx/1/")], [Put(prefix + "ok", b"")])
    assert db.get(prefix + "ok") is not None and rev == db.current_revision()


def test_big_commit_is_one_atomic_revision(db: EtcdDriver, prefix: str) -> None:
    """1,000 ops exceed etcd's 128 ops per Txn: the driver nests Txns inside one Txn."""
    col = Collector()
    w = db.watch(prefix, db.current_revision() + 1, col.on_event, col.on_compacted)
    try:
        ops = [Put(f"{prefix}k/{i:04}", str(i).encode()) for i in range(1000)]
        with pytest.raises(TxnFailed):  # a failing check still writes none of them
            db.commit([Exists(prefix + "nope")], ops)
        assert db.get_prefix(prefix) == ([], db.current_revision())
        rev = db.commit([PrefixEmpty(prefix + "k/")], ops)
        kvs, _ = db.get_prefix(prefix)
        assert len(kvs) == 1000 and {k.mod_revision for k in kvs} == {rev}
        events = col.wait_for(1000)
        assert [(e.key, e.revision) for e in events] == [(op.key, rev) for op in ops]
    finally:
        w.cancel()


def test_same_key_twice_in_one_commit_is_refused(db: EtcdDriver, prefix: str) -> None:
    with pytest.raises(ValueError, match="written twice"):
        db.commit([], [Put(prefix + "a", b"1"), Delete(prefix + "a")])
    assert db.get(prefix + "a") is None


# --- counters --------------------------------------------------------------------------------
def test_increment_unique_under_8_threads(etcd_server: EtcdServer, prefix: str) -> None:
    drivers = [EtcdDriver(etcd_server.url) for _ in range(4)]
    got: list[int] = []
    lock = threading.Lock()

    def work(d: EtcdDriver) -> None:
        mine = [d.increment(prefix + "ctr") for _ in range(200)]
        with lock:
            got.extend(mine)

    try:
        threads = [threading.Thread(target=work, args=(drivers[i % 4],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for d in drivers:
            d.close()
    assert sorted(got) == list(range(1, 1601))


def test_increment_of_a_non_integer_is_an_error(db: EtcdDriver, prefix: str) -> None:
    db.commit([], [Put(prefix + "ctr", b"seven")])
    with pytest.raises(DriverError, match="not an integer"):
        db.increment(prefix + "ctr")
    db.commit([], [Put(prefix + "ctr", b"41")])
    assert db.increment(prefix + "ctr") == 42


# --- watch -----------------------------------------------------------------------------------
def test_watch_in_order_and_callbacks_may_call_the_driver(db: EtcdDriver, prefix: str) -> None:
    seen: list[tuple[int, str, bytes | None, bytes | None, bytes | None]] = []
    done = threading.Event()

    def on_event(ev: Event) -> None:  # reads back through the same driver, from the callback
        kv = db.get(ev.key)
        seen.append((ev.revision, ev.key, ev.value, ev.prev_value, kv.value if kv else None))
        if len(seen) == 4:
            done.set()

    w = db.watch(prefix, db.current_revision() + 1, on_event, lambda rev: None)
    try:
        r1 = db.commit([], [Put(prefix + "a", b"1"), Put(prefix + "b", b"x")])
        r2 = db.commit([], [Put(prefix + "a", b"2")])
        r3 = db.commit([], [Delete(prefix + "a"), Delete(prefix + "nothing")])
        assert done.wait(10)
        assert [s[:4] for s in seen] == [
            (r1, prefix + "a", b"1", None),
            (r1, prefix + "b", b"x", None),
            (r2, prefix + "a", b"2", b"1"),
            (r3, prefix + "a", None, b"2"),
        ]
        assert seen[1][4] == b"x"
    finally:
        w.cancel()


def test_watch_survives_cut_link_during_1000_writes(
    db: EtcdDriver, proxy: TcpProxy, prefix: str
) -> None:
    reader = EtcdDriver(f"etcd://127.0.0.1:{proxy.port}")
    col = Collector()
    w = reader.watch(prefix, db.current_revision() + 1, col.on_event, col.on_compacted)
    try:
        revs, severed = [], 0
        for i in range(1000):
            revs.append(db.commit([], [Put(f"{prefix}k{i % 37}", str(i).encode())]))
            if i % 100 == 50:  # cut a stream that is live and delivering
                col.wait_for(i - 5)
                severed += proxy.sever()
        events = col.wait_for(1000)
        assert len(events) == 1000
        assert [e.revision for e in events] == revs
        assert [e.value for e in events] == [str(i).encode() for i in range(1000)]
        assert severed == 10 and w.reconnects >= 10
        assert col.compacted.empty()
    finally:
        w.cancel()
        reader.close()


def test_compaction_while_link_is_down_asks_for_resync(
    db: EtcdDriver, proxy: TcpProxy, prefix: str
) -> None:
    reader = EtcdDriver(f"etcd://127.0.0.1:{proxy.port}")
    col = Collector()
    w = reader.watch(prefix, db.current_revision() + 1, col.on_event, col.on_compacted)
    try:
        first = db.commit([], [Put(prefix + "a", b"0")])
        assert [e.value for e in col.wait_for(1)] == [b"0"]
        proxy.pause()  # the watch is cut and cannot come back yet
        for i in range(1, 6):
            last = db.commit([], [Put(prefix + "a", str(i).encode())])
        db.compact(last)
        proxy.resume()
        assert col.compacted.get(timeout=20) == last
        assert [e.revision for e in col.events] == [first]
    finally:
        w.cancel()
        reader.close()


def test_compact_twice_is_a_no_op_and_future_is_an_error(db: EtcdDriver, prefix: str) -> None:
    rev = db.commit([], [Put(prefix + "a", b"")])
    db.compact(rev)
    db.compact(rev)
    with pytest.raises(DriverError, match="future revision"):
        db.compact(db.current_revision() + 1000)


def test_raising_callback_stops_the_watch_loudly(
    db: EtcdDriver, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[Event] = []

    def on_event(ev: Event) -> None:
        calls.append(ev)
        raise RuntimeError("consumer bug")

    w = db.watch(prefix, db.current_revision() + 1, on_event, lambda rev: None)
    with caplog.at_level(logging.ERROR, logger="dragonflow.db.drivers.etcd"):
        db.commit([], [Put(prefix + "a", b"1")])
        db.commit([], [Put(prefix + "a", b"2")])
        w._thread.join(10)
    assert not w._thread.is_alive()
    assert isinstance(w.error, RuntimeError) and [e.value for e in calls] == [b"1"]
    assert "watch callback" in caplog.text
    w.cancel()


def test_cancel_from_callback_and_while_link_down(
    db: EtcdDriver, proxy: TcpProxy, prefix: str
) -> None:
    got: list[bytes | None] = []
    box: list[EtcdWatch] = []

    def on_event(ev: Event) -> None:
        got.append(ev.value)
        box[0].cancel()  # from the delivery thread itself

    box.append(db.watch(prefix, db.current_revision() + 1, on_event, lambda rev: None))
    db.commit([], [Put(prefix + "a", b"1")])
    db.commit([], [Put(prefix + "a", b"2")])
    box[0]._thread.join(10)
    assert got == [b"1"]

    reader = EtcdDriver(f"etcd://127.0.0.1:{proxy.port}")
    try:
        w = reader.watch(prefix, db.current_revision() + 1, lambda ev: None, lambda rev: None)
        proxy.pause()
        w.cancel()  # returns although its stream is trying to reconnect
        assert not w._thread.is_alive()
    finally:
        proxy.resume()
        reader.close()


# --- unreachable etcd ------------------------------------------------------------------------
def test_unreachable_etcd_is_a_clear_driver_error(proxy: TcpProxy, prefix: str) -> None:
    with socket_closed_port() as port:
        dead = EtcdDriver(f"etcd://127.0.0.1:{port}", timeout=0.5)
        try:
            with pytest.raises(DriverError, match=f"127.0.0.1:{port}.*unreachable|no answer"):
                dead.commit([], [Put(prefix + "a", b"")])
            with pytest.raises(DriverError, match="watch on"):
                dead.watch(prefix, 1, lambda ev: None, lambda rev: None)
        finally:
            dead.close()
    slow = EtcdDriver(f"etcd://127.0.0.1:{proxy.port}", timeout=0.5)
    try:
        proxy.pause()  # connections accepted, never answered
        with pytest.raises(DriverError, match=f"{proxy.port}: get failed: (no answer|unreach)"):
            slow.get(prefix + "a")
    finally:
        proxy.resume()
        slow.close()
    with pytest.raises(DriverError, match="closed"):
        slow.get(prefix + "a")


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port with nothing listening on it (bound, never listened)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


# --- 3-member cluster --------------------------------------------------------------------------
def test_cluster_failover_keeps_writes_and_watch(prefix: str) -> None:
    """Kill the member both clients talk to (the first in the list); writes go on through
    another member and the watch delivers everything, in order, once."""
    require_binary()
    members = start_cluster(3)
    url = cluster_url(members)
    writer, reader = EtcdDriver(url), EtcdDriver(url)
    col = Collector()
    try:
        w = reader.watch(prefix, writer.current_revision() + 1, col.on_event, col.on_compacted)
        revs: list[int] = []
        for i in range(300):
            if i == 100:
                members[0].kill()
            revs.append(_create_with_retry(writer, f"{prefix}k{i:03}", str(i).encode()))
        events = col.wait_for(300)
        assert [e.revision for e in events] == revs
        assert [e.value for e in events] == [str(i).encode() for i in range(300)]
        assert w.reconnects >= 1
        w.cancel()
    finally:
        writer.close()
        reader.close()
        for m in members:
            m.stop()


def _create_with_retry(db: EtcdDriver, key: str, value: bytes) -> int:
    """Create-only writes are safe to retry: a retry of an applied one fails its check."""
    for _ in range(20):
        try:
            return db.commit([Revision(key, 0)], [Put(key, value)])
        except TxnFailed:
            kv = db.get(key)
            assert kv is not None and kv.value == value
            return kv.mod_revision
        except DriverError:
            continue
    raise AssertionError(f"could not write {key}")
