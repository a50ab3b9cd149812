"""Ambiguous commits: the answer of a commit is lost after its request was sent.

A proxy between the client and a real etcd / redis cuts the connection right after
forwarding a commit (the server applies it; the answer never comes back) or right before
(nothing applied; the client cannot tell the difference). The drivers must say
AmbiguousCommit -- not a plain DriverError, which means "nothing written" -- and NbApi must
turn every such write into exactly one applied write and a success for its caller: N creates
(unique keys, IP and MAC claims), updates and deletes through these faults leave exactly the
objects, versions, index entries and claims the callers were told about, each write seen
once in the change stream.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from dragonflow.db import errors
from dragonflow.db.driver import AmbiguousCommit, Driver, DriverError, Put, Revision
from dragonflow.db.drivers.memory import MemoryDriver
from dragonflow.db.nbapi import NbApi
from dragonflow.model import NbObject, Port
from tests.db.helpers import Collector
from tests.db.test_nb_conformance import net, port, subnet
from tests.fixtures.tcpproxy import TcpProxy
from tests.fixtures.wait import eventually

pytestmark = pytest.mark.servers
T = TypeVar("T")



class Server:
    """A real server of one kind, reached directly or through a fault proxy."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.server = request.getfixturevalue(f"{kind}_server")
        self.ns = f"t{uuid.uuid4().hex[:10]}"
        self.proxy = TcpProxy("127.0.0.1", self.server.port).start()
        self.made: list[Driver] = []

    def _make(self, url: str, timeout: float) -> Driver:
        drv: Driver
        if self.kind == "etcd":
            from dragonflow.db.drivers.etcd import EtcdDriver

            drv = EtcdDriver(url, timeout=timeout)
        elif self.kind == "ovsdb":
            from dragonflow.db.drivers.ovsdb import OvsdbDriver

            drv = OvsdbDriver(url.replace("ovsdb://", "ovsdb:tcp:"), timeout=timeout)
        else:
            from dragonflow.db.drivers.redis import RedisDriver

            drv = RedisDriver(f"{url}/{self.ns}", timeout=timeout)
        self.made.append(drv)
        return drv

    def marker(self, text: bytes) -> bytes:
        """Bytes of a commit request that carry ``text`` from a VALUE: ovsdb sends values as
        JSON strings (quotes escaped)."""
        if self.kind == "ovsdb":
            return json.dumps(text.decode())[1:-1].encode()
        return text

    def key_marker(self, key: str, delete_of: NbObject | None = None) -> bytes:
        """Bytes only a commit request that writes ``key`` carries (ovsdb reads name the key
        too; its write names it as a row's ``"key":`` -- a delete as the removed value)."""
        if self.kind != "ovsdb":
            return key.encode()
        if delete_of is not None:
            return self.marker(b'"id":"%s"' % delete_of.id.encode())
        return b'"key":"' + key.encode()

    def direct(self, timeout: float = 3.0) -> Driver:
        return self._make(self.server.url, timeout)

    def proxied(self, timeout: float = 3.0) -> Driver:
        return self._make(f"{self.kind}://127.0.0.1:{self.proxy.port}", timeout)

    def close(self) -> None:
        for d in self.made:
            d.close()
        self.proxy.stop()


@pytest.fixture(params=["etcd", "redis", "ovsdb"])
def srv(request: pytest.FixtureRequest) -> Iterator[Server]:
    s = Server(request.param, request)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def prefix() -> str:
    return f"/ta{uuid.uuid4().hex[:10]}/"


# --- driver level ------------------------------------------------------------------------------
def test_a_lost_answer_is_an_ambiguous_commit(srv: Server, prefix: str) -> None:
    direct, proxied = srv.direct(), srv.proxied()
    proxied.commit([], [Put(prefix + "warm-up", b"")])  # connected (redis: script loaded)
    # the request reaches the server, the answer is lost: applied
    fired = srv.proxy.cut_next(srv.key_marker(prefix + "applied-key"), deliver=True)
    with pytest.raises(AmbiguousCommit, match="may or may not have been applied"):
        proxied.commit([Revision(prefix + "applied-key", 0)], [Put(prefix + "applied-key", b"1")])
    assert fired.wait(5)
    kv = direct.get(prefix + "applied-key")
    assert kv is not None and kv.value == b"1"
    # the connection is cut before the request is forwarded: not applied, just as ambiguous
    fired = srv.proxy.cut_next(srv.key_marker(prefix + "dropped-key"), deliver=False)
    with pytest.raises(AmbiguousCommit):
        proxied.commit([], [Put(prefix + "dropped-key", b"1")])
    assert fired.wait(5)
    time.sleep(0.5)
    assert direct.get(prefix + "dropped-key") is None
    # the driver goes on working, and never repeated a commit by itself
    rev = proxied.commit([], [Put(prefix + "after", b"x")])
    assert direct.get(prefix + "after") is not None and direct.current_revision() >= rev


def test_a_commit_that_could_not_be_sent_is_a_plain_driver_error(srv: Server,
                                                                  prefix: str) -> None:
    with socket_closed_port() as port_:
        dead = srv._make(f"{srv.kind}://127.0.0.1:{port_}", timeout=1.0)
        with pytest.raises(DriverError) as err:
            dead.commit([], [Put(prefix + "a", b"")])
    assert not isinstance(err.value, AmbiguousCommit), err.value  # nothing can have been written


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port with nothing listening on it (bound, never listened)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


# --- NbApi: exactly once ------------------------------------------------------------------------
def test_nb_writes_through_lost_answers_are_applied_exactly_once(
    srv: Server, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """36 writes (creates with unique keys and IP / MAC claims, updates, deletes); every one
    of the 24 armed faults loses the answer of a commit (applied) or its request (not
    applied). Every caller gets success; the database holds exactly what the callers were
    told; the stream shows every write exactly once."""
    direct = NbApi(srv.direct(), root=prefix)
    nb = NbApi(srv.proxied(), root=prefix)
    nb.resolve_timeout = 20.0
    direct.create(net(1))
    s1 = direct.create(subnet(1, "net1"))
    col = Collector()
    watch = direct.driver.watch(direct.obj_prefix + "port/", direct.revision() + 1,
                                col.on_event, col.on_compacted)
    live: dict[str, Port] = {}  # what the callers were told is stored
    errors: list[tuple[int, str, BaseException]] = []
    armed: list[threading.Event] = []
    next_port = 0
    try:
        with caplog.at_level(logging.WARNING, logger="dragonflow.db.nbapi"):
            for i in range(36):
                op = ("create", "update", "create", "delete")[i % 4]
                mode = (None, True, False)[(i // 4) % 3]  # every op meets every fault

                def arm(marker: bytes, mode: bool | None = mode) -> None:
                    if mode is not None:  # (the marker is in the commit, in no read before)
                        armed.append(srv.proxy.cut_next(marker, deliver=mode))

                try:
                    if op == "create":
                        arm(srv.marker(b'"id":"port%d"' % next_port))  # the new object
                        p = nb.create(port(next_port, "net1", s1))
                        next_port += 1
                        live[p.id] = p
                    elif op == "update":
                        old = live[sorted(live)[0]]
                        arm(srv.marker(b'"name":"u%d"' % i))
                        live[old.id] = nb.update(old.replace(name=f"u{i}"))
                    else:
                        victim = live.pop(sorted(live)[-1])
                        arm(srv.key_marker(  # a claim it releases
                            f"claim/ukey/port/{victim.unique_key}", delete_of=victim))
                        nb.delete(Port, victim.id)
                except Exception as e:  # collected: the assertion below shows them all
                    errors.append((i, op, e))
                    srv.proxy.disarm()
        assert errors == []
        assert all(ev.wait(5) for ev in armed) and srv.proxy.faults == 24
        logs = caplog.text
        assert "it was applied" in logs and "it was not applied" in logs  # both outcomes hit

        # the database holds exactly what the callers were told
        stored = {p.id: p for p in direct.list(Port)}
        assert stored == live
        keys = [p.unique_key for p in stored.values()]
        assert len(set(keys)) == len(keys) and 0 not in keys
        assert _owned(direct, [direct.get_or_raise("network", "net1"), s1, *live.values()]) \
            == _stored_entries(direct)

        # every write is in the stream exactly once: 18 creates, 9 updates, 9 deletes
        events = col.wait_for(36, timeout=20)
        time.sleep(0.5)
        assert len(col.events) == 36
        seen = [(e.key.rsplit("/", 1)[1], _version(e.value)) for e in events]
        assert len(set(seen)) == 36  # no write applied twice
        assert sum(1 for _, v in seen if v == 1) == 18
        assert sum(1 for _, v in seen if v is None) == 9
        assert [v for k, v in seen if k == "port0"] == list(range(1, 11))  # 9 updates of port0
        # few write tokens: each commit deletes those of the writes before it; what is left
        # is the last write's of each writer and one fence per lost request (swept later)
        tokens, _ = direct.driver.get_prefix(prefix + "txn/")
        fences = [t for t in tokens if b'"fenced":true' in t.value]
        assert len(fences) >= 12 and len(tokens) == 2 + len(fences)  # (12: lost requests)
    finally:
        watch.cancel()


def _version(raw: bytes | None) -> int | None:
    import json

    return None if raw is None else int(json.loads(raw)["version"])


def _owned(nb: NbApi, objs: list[NbObject]) -> set[tuple[str, bytes]]:
    """The (key, value) of every index entry and claim these objects must hold."""
    out: set[tuple[str, bytes]] = set()
    for o in objs:
        idx, claims = nb._owned_entries(o)
        out |= {(k, b"") for k in idx}
        out |= {(k, f"{o.TABLE}/{o.id}".encode()) for k in claims}
    return out


def _stored_entries(nb: NbApi) -> set[tuple[str, bytes]]:
    kvs, _ = nb.driver.get_prefix(nb.root)
    return {(kv.key, kv.value) for kv in kvs
            if kv.key.startswith((f"{nb.root}idx/", f"{nb.root}claim/"))}


def test_outcome_unknown_while_the_db_stays_away_is_a_clear_error(srv: Server,
                                                                   prefix: str) -> None:
    """The answer is lost and the database stays unreachable for longer than NbApi waits
    for it: the write raises AmbiguousCommit saying so (never a success it cannot prove)."""
    direct = NbApi(srv.direct(), root=prefix)
    nb = NbApi(srv.proxied(timeout=0.5), root=prefix)
    nb.resolve_timeout = 2.0
    direct.create(net(1))
    fired = srv.proxy.cut_next(srv.marker(b'"id":"net2"'), deliver=True, hold=0.3)
    cutter = threading.Thread(target=lambda: fired.wait(10) and srv.proxy.pause())
    cutter.start()
    try:
        with pytest.raises(AmbiguousCommit, match="could not be learnt within 2.0 s"):
            nb.create(net(2))
    finally:
        cutter.join()
        srv.proxy.resume()
    assert direct.get("network", "net2") is not None  # it had been applied
    # once the database answers again, the writer learns it like any reader would
    assert eventually(lambda: _answers(nb), timeout=20)
    with pytest.raises(errors.AlreadyExists):
        nb.create(net(2))


def _answers(nb: NbApi) -> bool:
    try:
        nb.revision()
        return True
    except DriverError:
        return False


# --- write tokens (no server needed) -------------------------------------------------------------
def test_write_tokens_are_cleaned_up() -> None:
    from dragonflow.db.nbapi import TXN_TTL

    drv = MemoryDriver()
    nb = NbApi(drv, root="/w/")
    nb.create(net(1))
    n = nb.get_or_raise("network", "net1")
    for i in range(50):
        n = nb.update(n.replace(name=f"v{i}"))
    tokens, _ = drv.get_prefix("/w/txn/")
    assert len(tokens) == 1  # the last write's; the others went with the next commits
    # a token left by a writer that died, and a fence: swept once older than TXN_TTL
    old = b'{"at":%d}' % (time.time() - TXN_TTL - 60)
    drv.commit([], [Put("/w/txn/dead", old), Put("/w/txn/fence", b'{"at":1,"fenced":true}'),
                    Put("/w/txn/recent", b'{"at":%d,"fenced":true}' % time.time())])
    nb._swept = float("-inf")
    nb.update(n.replace(name="sweep"))
    left = {kv.key for kv in drv.get_prefix("/w/txn/")[0]}
    assert "/w/txn/dead" not in left and "/w/txn/fence" not in left
    assert "/w/txn/recent" in left and len(left) == 2


# --- a real leader failure ---------------------------------------------------------------------
def writes_through_a_leader_kill(nb: NbApi, watcher: NbApi, kill_leader: Callable[[], None], *,
                                 ports: int, updates: int, delete_every: int, kill_after: int
                                 ) -> str:
    """4 threads write (per port: create, ``updates`` updates, every ``delete_every``-th port
    deleted, else one more update) through ``nb``; after ``kill_after`` writes the cluster's
    leader is killed, with commits in flight on it. A caller retries only after a plain
    DriverError (the contract: nothing was written); any other error fails. Afterwards
    ``watcher`` reads exactly what the callers were told, and its stream showed every write
    once. Returns a line on the lost answers (for the test's output)."""
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
            for j in range(ports):
                p = call(lambda n=t * ports + j + 1: nb.create(port(n, "net1", s1)))
                for k in range(updates):
                    p = call(lambda p=p, k=k: nb.update(p.replace(name=f"n{k}")))
                if j % delete_every == 0:
                    call(lambda p=p: nb.delete(Port, p.id))
                else:
                    p = call(lambda p=p: nb.update(p.replace(name="last")))
                    with lock:
                        live[p.id] = p
                with lock:
                    writes[0] += updates + 2
        except BaseException as e:  # reported below
            failures.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    logs = _Logs()
    with logs.capture("dragonflow.db.nbapi"):
        for th in threads:
            th.start()
        started.wait()
        assert eventually(lambda: writes[0] >= kill_after, timeout=120, poll=0.005)
        kill_leader()
        for th in threads:
            th.join(300)
    assert failures == []
    assert writes[0] == 4 * ports * (updates + 2)
    assert {p.id: p for p in watcher.list(Port)} == live
    assert _owned(watcher, [watcher.get_or_raise("network", "net1"), s1, *live.values()]) \
        == _stored_entries(watcher)
    events = col.wait_for(writes[0], timeout=60)
    time.sleep(0.5)
    seen = [(e.key.rsplit("/", 1)[1], _version(e.value)) for e in col.events]
    assert len(events) == len(seen) == len(set(seen)) == writes[0]  # each write once
    assert col.compacted.empty()
    w.cancel()
    return (f"{writes[0]} writes; commits whose answer was lost: "
            f"{logs.text.count('NB commit answer lost')}, of which applied: "
            f"{logs.text.count('it was applied')}")


class _Logs(logging.Handler):
    """The WARNING+ records of a logger while capturing, as text."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += record.getMessage() + "\n"

    @contextlib.contextmanager
    def capture(self, name: str) -> Iterator[None]:
        logger = logging.getLogger(name)
        logger.addHandler(self)
        try:
            yield
        finally:
            logger.removeHandler(self)


def test_killing_the_etcd_leader_during_writes_loses_and_repeats_nothing(prefix: str) -> None:
    """Through the LEADER of a 3-member etcd cluster, which is killed mid-way (see
    writes_through_a_leader_kill)."""
    from dragonflow.db.drivers.etcd import EtcdDriver
    from tests.fixtures.etcd_server import cluster_url, require_binary, start_cluster

    require_binary()
    members = start_cluster(3)
    leader = _leader(members)
    ordered = [members[leader]] + [m for i, m in enumerate(members) if i != leader]
    url = cluster_url(ordered)  # the client connects to the first: the leader
    drivers = [EtcdDriver(url), EtcdDriver(url)]
    try:
        print(writes_through_a_leader_kill(
            NbApi(drivers[0], root=prefix), NbApi(drivers[1], root=prefix),
            members[leader].kill, ports=10, updates=3, delete_every=3, kill_after=30))
    finally:
        for d in drivers:
            d.close()
        for m in members:
            m.stop()


def _leader(members: list[Any]) -> int:
    import json

    status = [json.loads(m.etcdctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]
              for m in members]
    ids = [s["header"]["member_id"] for s in status]
    return ids.index(status[0]["leader"])
