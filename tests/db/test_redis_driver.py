"""Redis-specific driver tests, on a real redis-server: the Lua commit is atomic, the stream
layout is what readers rely on, and every way of losing history (stream trimmed under a slow
watcher, server restarted empty) ends in ``on_compacted`` instead of silent loss.

The cross-driver semantics are in test_kv_conformance.py.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dragonflow.db.driver import (
    Check,
    Delete,
    DriverError,
    Event,
    Exists,
    PrefixEmpty,
    Put,
    Revision,
    TxnFailed,
)
from dragonflow.db.drivers.redis import RedisDriver
from tests.fixtures.redis_server import RedisServer, require_binary
from tests.fixtures.tcpproxy import TcpProxy

pytestmark = pytest.mark.servers


class Sink:
    """Collects a watch's callbacks; ``gate`` (if given) blocks each on_event until set."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.compacted: queue.Queue[int] = queue.Queue()
        self.entered = threading.Event()
        self.gate = gate

    def on_event(self, ev: Event) -> None:
        self.events.put(ev)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)

    def on_compacted(self, rev: int) -> None:
        self.compacted.put(rev)

    def take(self, n: int) -> list[Event]:
        return [self.events.get(timeout=10) for _ in range(n)]

    def drained(self) -> list[Event]:
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out


@pytest.fixture
def ns() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    yield client
    client.close()


@pytest.fixture
def drivers(redis_server: RedisServer, ns: str) -> Iterator[list[RedisDriver]]:
    made: list[RedisDriver] = []
    yield made
    for d in made:
        d.close()


def make(made: list[RedisDriver], url: str, **kw: int | float) -> RedisDriver:
    d = RedisDriver(url, **kw)  # type: ignore[arg-type]
    made.append(d)
    return d


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:6379", "redis://", "redis://host:notaport", "redis://h:1/a/b", "etcd"],
)
def test_bad_url_is_rejected_by_name(url: str) -> None:
    with pytest.raises(ValueError, match="bad url"):
        RedisDriver(url)


def test_unreachable_server_is_a_driver_error() -> None:
    server = RedisServer()
    require_binary(server.binary)
    server.start()
    port = server.port
    server.stop()
    d = RedisDriver(f"redis://127.0.0.1:{port}/x", timeout=1.0)
    try:
        with pytest.raises(DriverError, match=f"127.0.0.1:{port}.*commit failed"):
            d.commit([], [Put("/a", b"1")])
        with pytest.raises(DriverError, match="get_prefix"):
            d.get_prefix("/")
    finally:
        d.close()


def test_namespaces_are_separate_and_layout_is_as_documented(
    redis_server: RedisServer, ns: str, raw: redis.Redis, drivers: list[RedisDriver]
) -> None:
    a = make(drivers, f"{redis_server.url}/{ns}")
    b = make(drivers, f"{redis_server.url}/{ns}b")
    r1 = a.commit([], [Put("/x", b"1"), Put("/y", b"2")])
    r2 = a.commit([], [Put("/x", b"3"), Delete("/y"), Delete("/never")])
    assert (r1, r2) == (1, 2)
    assert b.get("/x") is None and b.current_revision() == 0
    assert raw.hgetall(f"{ns}:v") == {b"/x": b"3"}
    assert raw.hgetall(f"{ns}:r") == {b"/x": b"2"}
    assert raw.zrange(f"{ns}:k", 0, -1) == [b"/x"]
    assert raw.get(f"{ns}:seq") == b"2"
    entries = raw.xrange(f"{ns}:s")
    assert entries == [
        (b"1-0", {b"key": b"/x", b"value": b"1", b"n": b"2"}),
        (b"1-1", {b"key": b"/y", b"value": b"2", b"n": b"2"}),
        (b"2-0", {b"key": b"/x", b"value": b"3", b"prev": b"1", b"n": b"2"}),
        (b"2-1", {b"key": b"/y", b"del": b"1", b"prev": b"2", b"n": b"2"}),
    ]
    # a commit that changes nothing visible still occupies its revision in the stream
    assert a.commit([], [Delete("/never")]) == 3
    assert raw.xrange(f"{ns}:s", min="3-0") == [(b"3-0", {b"noop": b"1", b"n": b"1"})]
    assert a.increment("/ctr") == 1 and a.increment("/ctr") == 2
    assert a.current_revision() == 3  # counters are not revisions


def test_failed_check_writes_nothing_and_keeps_the_sequence(
    redis_server: RedisServer, ns: str, raw: redis.Redis, drivers: list[RedisDriver]
) -> None:
    db = make(drivers, f"{redis_server.url}/{ns}")
    rev = db.commit([], [Put("/net/1", b"n"), Put("/idx/net/1/p", b"")])

    def state() -> list[object]:
        return [
            raw.get(f"{ns}:seq"),
            raw.xlen(f"{ns}:s"),
            raw.hgetall(f"{ns}:v"),
            raw.hgetall(f"{ns}:r"),
            raw.zrange(f"{ns}:k", 0, -1),
            raw.get(f"{ns}:epoch"),
        ]

    before = state()
    failing: list[list[Check]] = [
        [Revision("/net/1", rev), Revision("/net/1", rev + 1)],
        [Revision("/net/1", rev), Exists("/net/2")],
        [Exists("/net/1"), PrefixEmpty("/idx/net/1/")],
        [Revision("/new", 0), Revision("/net/1", 0)],
    ]
    for checks in failing:
        with pytest.raises(TxnFailed, match="check failed"):
            db.commit(checks, [Put("/new", b"x"), Delete("/net/1")])
        assert state() == before
    assert db.commit([PrefixEmpty("/idx/net/2/"), Exists("/net/1")], [Put("/new", b"x")]) == 2


def test_prefix_scan_is_exact_for_non_ascii_keys_and_large_sets(
    redis_server: RedisServer, ns: str, drivers: list[RedisDriver]
) -> None:
    db = make(drivers, f"{redis_server.url}/{ns}")
    keys = ["/p/é", "/p/\U0001f600", "/p/z", "/p0", "/p", "/q/é"]
    db.commit([], [Put(k, k.encode()) for k in keys])
    got, _ = db.get_prefix("/p/")
    assert [kv.key for kv in got] == sorted(["/p/é", "/p/\U0001f600", "/p/z"])
    with pytest.raises(TxnFailed):
        db.commit([PrefixEmpty("/p/\U0001f600")], [Put("/x", b"")])
    # more keys than one Lua HMGET chunk (1000)
    db.commit([], [Put(f"/big/{i:05d}", str(i).encode()) for i in range(2500)])
    big, rev = db.get_prefix("/big/")
    assert [kv.value for kv in big] == [str(i).encode() for i in range(2500)]
    assert {kv.mod_revision for kv in big} == {rev}


def test_snapshot_is_consistent_under_concurrent_commits(
    redis_server: RedisServer, ns: str, drivers: list[RedisDriver]
) -> None:
    """Writers always change /a and /b together; no snapshot may see them differ."""
    url = f"{redis_server.url}/{ns}"
    reader = make(drivers, url)
    errors: list[BaseException] = []

    def write(d: RedisDriver) -> None:
        try:
            for i in range(300):
                d.commit([], [Put("/s/a", str(i).encode()), Put("/s/b", str(i).encode())])
        except BaseException as e:  # reported below
            errors.append(e)

    writers = [threading.Thread(target=write, args=(make(drivers, url),)) for _ in range(2)]
    for t in writers:
        t.start()
    snaps = 0
    while any(t.is_alive() for t in writers) or snaps == 0:
        kvs, rev = reader.get_prefix("/s/")
        if kvs:
            assert kvs[0].value == kvs[1].value
            assert kvs[0].mod_revision == kvs[1].mod_revision <= rev
        snaps += 1
    for t in writers:
        t.join()
    assert errors == []
    assert reader.current_revision() == 600


def test_noop_commits_do_not_look_like_gaps(
    redis_server: RedisServer, ns: str, drivers: list[RedisDriver]
) -> None:
    db = make(drivers, f"{redis_server.url}/{ns}")
    sink = Sink()
    w = db.watch("/", 1, sink.on_event, sink.on_compacted)
    try:
        db.commit([], [Delete("/nothing")])
        r = db.commit([], [Put("/a", b"1")])
        assert [(e.revision, e.key, e.value) for e in sink.take(1)] == [(r, "/a", b"1")]
        assert sink.compacted.empty()
    finally:
        w.cancel()


def test_slow_watcher_whose_history_is_trimmed_is_told_to_resync(
    redis_server: RedisServer, ns: str, raw: redis.Redis, drivers: list[RedisDriver]
) -> None:
    db = make(drivers, f"{redis_server.url}/{ns}", stream_maxlen=10)
    gate = threading.Event()
    sink = Sink(gate)
    w = db.watch("/", 1, sink.on_event, sink.on_compacted)
    try:
        db.commit([], [Put("/k", b"first")])
        assert sink.entered.wait(10)  # the watcher is now stuck in its callback
        for i in range(500):
            db.commit([], [Put("/k", str(i).encode())])
        oldest: Any = raw.xrange(f"{ns}:s", count=1)
        assert int(oldest[0][0].split(b"-")[0]) > 2  # MAXLEN ~ trimmed what the watcher needs
        gate.set()
        assert sink.compacted.get(timeout=10) == 501
        assert [e.value for e in sink.drained()] == [b"first"]
        w.cancel()
        assert not w.alive()
    finally:
        gate.set()
        w.cancel()


def test_watch_after_whole_stream_compacted_is_told_to_resync(
    redis_server: RedisServer, ns: str, drivers: list[RedisDriver]
) -> None:
    db = make(drivers, f"{redis_server.url}/{ns}")
    for i in range(5):
        last = db.commit([], [Put("/k", str(i).encode())])
    db.compact(last + 1)  # the stream is now empty, the revision is 5
    sink = Sink()
    w = db.watch("/", 3, sink.on_event, sink.on_compacted)
    try:
        assert sink.compacted.get(timeout=10) == last
    finally:
        w.cancel()
    # up to date: nothing is missing, so the watch just waits for new changes
    ok = Sink()
    w2 = db.watch("/", last + 1, ok.on_event, ok.on_compacted)
    try:
        r = db.commit([], [Put("/k", b"new")])
        assert [(e.revision, e.value) for e in ok.take(1)] == [(r, b"new")]
        assert ok.compacted.empty()
    finally:
        w2.cancel()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A private server: these tests restart it, which must not disturb anyone else."""
    server = RedisServer()
    require_binary(server.binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_server_restarted_empty_is_detected(
    own_server: RedisServer, drivers: list[RedisDriver]
) -> None:
    db = make(drivers, f"{own_server.url}/ns")
    sink = Sink()
    w = db.watch("/", 1, sink.on_event, sink.on_compacted)
    try:
        for i in range(3):
            db.commit([], [Put("/k", str(i).encode())])
        assert len(sink.take(3)) == 3
        own_server.restart()
        assert sink.compacted.get(timeout=10) == 0
        assert sink.drained() == []  # the 3 events were taken above; nothing came after
        w._thread.join(10)  # the watch ends by itself after on_compacted
        assert not w.alive()
    finally:
        w.cancel()


def test_restart_then_more_writes_than_before_is_still_detected(
    own_server: RedisServer, drivers: list[RedisDriver]
) -> None:
    """The new server's sequence overtakes the old one before the watcher reconnects: the
    revisions alone look contiguous, only the database epoch tells the histories apart."""
    url = f"{own_server.url}/ns"
    db, writer = make(drivers, url), make(drivers, url)
    gate = threading.Event()
    sink = Sink(gate)
    for i in range(3):
        writer.commit([], [Put("/k", str(i).encode())])
    db.get_prefix("/")
    w = db.watch("/", 1, sink.on_event, sink.on_compacted)  # its first read gets all three
    try:
        assert sink.entered.wait(10)  # blocked in the callback of revision 1
        own_server.restart()
        for i in range(10):
            writer.commit([], [Put("/k", f"new{i}".encode())])
        gate.set()
        assert sink.compacted.get(timeout=10) == 10
        assert [e.value for e in sink.drained()] == [b"0", b"1", b"2"]
        # the driver's last snapshot predates the restart: a new watch asks for resync too
        stale = Sink()
        w2 = db.watch("/", 4, stale.on_event, stale.on_compacted)
        assert stale.compacted.get(timeout=10) == 10
        w2.cancel()
        # after a fresh snapshot the same driver watches normally again
        _, rev = db.get_prefix("/")
        fresh = Sink()
        w3 = db.watch("/", rev + 1, fresh.on_event, fresh.on_compacted)
        r = writer.commit([], [Put("/k", b"after")])
        assert [(e.revision, e.value) for e in fresh.take(1)] == [(r, b"after")]
        w3.cancel()
    finally:
        gate.set()
        w.cancel()


def test_restart_empty_moves_the_generation_and_nb_reserves_keys_anew(
    own_server: RedisServer, drivers: list[RedisDriver]
) -> None:
    """A read that sees the new epoch counts a new generation; an NbApi then hands out no
    unique key reserved from the old database's counter."""
    from dragonflow.db.nbapi import NbApi
    from dragonflow.model import Network
    from tests.db.test_nb_conformance import net, port, subnet

    url = f"{own_server.url}/ns"
    db = make(drivers, url)
    nb = NbApi(db)
    nb.create(net(1))
    s1 = nb.create(subnet(1, "net1"))
    for i in range(5):
        nb.create(port(i, "net1", s1))  # reserves the port counter's block 1..32
    own_server.restart()
    other = NbApi(make(drivers, url))
    other.create(net(1))
    s1 = other.create(subnet(1, "net1"))
    theirs = other.create(port(1, "net1", s1))  # the new counter: block 1..32
    assert nb.get(Network, "net1") is not None  # this read sees the new epoch
    mine = nb.create(port(2, "net1", s1))
    assert (theirs.unique_key, mine.unique_key) == (1, 33)  # not 6, from the old block
    assert db.generation == 1


def test_callback_error_stops_the_watch_loudly(
    redis_server: RedisServer,
    ns: str,
    drivers: list[RedisDriver],
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = make(drivers, f"{redis_server.url}/{ns}")
    seen: list[Event] = []

    def boom(ev: Event) -> None:
        seen.append(ev)
        raise RuntimeError("app bug")

    compacted: list[int] = []
    with caplog.at_level(logging.ERROR, logger="dragonflow.db.drivers.redis"):
        w = db.watch("/", 1, boom, compacted.append)
        db.commit([], [Put("/a", b"1")])
        db.commit([], [Put("/a", b"2")])
        w._thread.join(10)
    assert not w.alive()
    assert [e.value for e in seen] == [b"1"] and compacted == []
    assert "app bug" in caplog.text and "stopped by an error" in caplog.text


def test_cancel_is_prompt_while_the_server_is_unreachable(own_server: RedisServer) -> None:
    db = RedisDriver(f"{own_server.url}/ns", timeout=1.0)
    sink = Sink()
    w = db.watch("/", 1, sink.on_event, sink.on_compacted)
    try:
        db.commit([], [Put("/a", b"1")])
        assert len(sink.take(1)) == 1
        own_server.stop()  # the watcher now loops on connection errors, with backoff
        w.cancel()
        assert not w.alive()
        assert sink.compacted.empty()
    finally:
        db.close()


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", redis_server.port).start()
    try:
        yield p
    finally:
        p.stop()


def test_watch_resumes_in_the_middle_of_a_commit(
    redis_server: RedisServer, ns: str, proxy: TcpProxy, drivers: list[RedisDriver]
) -> None:
    """One commit of 2,500 events spans three XREAD batches; the link is cut inside it
    (between batches and within one): every event arrives once, in op order."""
    writer = make(drivers, f"{redis_server.url}/{ns}")
    reader = make(drivers, f"redis://127.0.0.1:{proxy.port}/{ns}")
    got: list[Event] = []
    cut: list[int] = []
    done = threading.Event()

    def on_event(ev: Event) -> None:
        got.append(ev)
        if len(got) in (1000, 1500):  # at the end of batch 1; inside batch 2
            cut.append(proxy.sever())
        if len(got) == 2501:
            done.set()

    compacted: list[int] = []
    w = reader.watch("/", 1, on_event, compacted.append)
    try:
        r1 = writer.commit([], [Put(f"/k/{i:05d}", str(i).encode()) for i in range(2500)])
        r2 = writer.commit([], [Delete("/k/00007")])
        assert done.wait(30), f"got {len(got)} events"
        assert [e.key for e in got[:2500]] == [f"/k/{i:05d}" for i in range(2500)]
        assert {e.revision for e in got[:2500]} == {r1}
        assert (got[2500].revision, got[2500].value, got[2500].prev_value) == (r2, None, b"7")
        assert compacted == [] and cut == [1, 1]
    finally:
        w.cancel()


def test_watch_survives_a_link_that_stays_down(
    redis_server: RedisServer, ns: str, proxy: TcpProxy, drivers: list[RedisDriver]
) -> None:
    writer = make(drivers, f"{redis_server.url}/{ns}")
    reader = make(drivers, f"redis://127.0.0.1:{proxy.port}/{ns}", timeout=0.5)
    sink = Sink()
    w = reader.watch("/", 1, sink.on_event, sink.on_compacted)
    try:
        writer.commit([], [Put("/a", b"0")])
        assert [e.value for e in sink.take(1)] == [b"0"]
        assert proxy.pause() >= 1  # reconnects now hang until their timeout
        revs = [writer.commit([], [Put("/a", str(i).encode())]) for i in range(1, 300)]
        threading.Event().wait(1.2)  # let at least one reconnect attempt time out
        proxy.resume()
        events = sink.take(299)
        assert [e.revision for e in events] == revs
        assert [e.value for e in events] == [str(i).encode() for i in range(1, 300)]
        assert sink.compacted.empty() and sink.events.empty()
    finally:
        w.cancel()
