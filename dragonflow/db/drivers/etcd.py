"""The etcd NB driver (etcd v3 gRPC API through ``aetcd``'s generated stubs).

Shape: the driver owns one asyncio event loop running in a daemon thread and one gRPC
channel on it; the public methods are synchronous and hand their coroutine to that loop.
``etcd://h1:p1,h2:p2,h3:p3`` becomes one gRPC address list, so the channel fails over to
another member by itself.

* ``commit`` is ONE etcd Txn: checks become compares (``Revision(k, 0)`` -> version == 0,
  ``Revision(k, n)`` -> mod_revision == n, ``Exists`` -> version > 0, ``PrefixEmpty`` -> a
  *range* compare version == 0 over the prefix, which etcd >= 3.3 evaluates over every key
  in the range and, for an empty range, against an absent key). More ops than etcd's default
  ``--max-txn-ops`` (128) are split into nested Txns inside the one Txn: still one revision,
  still atomic. A commit that changes nothing (only deletes of absent keys) does not get a new
  revision from etcd: it returns the current one.
* ``increment`` is a compare-and-swap loop on an ASCII integer (one Txn per try; the failure
  branch reads the current value, so a lost race costs one round trip).
* A watch is a task on the loop reading one gRPC Watch stream (``prev_kv``, require-leader);
  it queues events for a per-watch delivery thread that runs the callbacks, so callbacks may
  call the driver. When the stream breaks it re-creates it from the last queued revision + 1
  (etcd never splits one revision over two responses, so nothing is skipped or repeated). A
  compacted start revision ends the watch with one ``on_compacted(compact_revision)``.
* The history followed: etcd restarted with an empty data dir keeps its address, and (same
  name, peer URL and cluster token) even its cluster id and member id; only its revision starts
  again from 1. So the driver keeps the cluster id of the etcd it talks to and the highest
  revision it has seen (``_max_rev``: every response header and watch event). An answer from
  another cluster id, or a linearizable answer (every Range / Txn here is one) at a revision
  lower than one seen *before the request was sent*, means the database was replaced: the
  driver logs it, adopts the new history, bumps ``generation`` and ends every older watch with
  one ``on_compacted(current revision)``; the call itself returns normally. A watch also checks
  each stream it (re)creates before delivering anything from it: the revision it resumes from
  must not be in the server's future, and the last event it delivered must still be in the
  server's history (a Range of that key *at* that revision gives back the same value) -- which
  catches a replaced etcd whose revision has already overtaken the old one. Watch responses
  are not compared by revision (a lagging follower may legitimately answer behind).
  Limit: a new watch whose ``start_revision`` came from the old database, on a driver that has
  already adopted the new one whose revision has overtaken it, is not caught (nothing left to
  compare with).
* Every RPC has a deadline (``timeout``); failures raise DriverError naming the URL. A commit
  whose Txn may have reached etcd and got no answer (deadline exceeded, connection lost after
  sending, etcd's "request timed out" / "leader changed") raises AmbiguousCommit: it may or
  may not have been applied, and it is never retried here (NbApi resolves it). Only a Txn that
  found no connection to be sent on ("failed to connect to all addresses") is a plain
  DriverError. An ``increment`` whose answer was lost is a plain DriverError: the block it may
  have reserved is skipped, never handed out twice.
* Security (:class:`~dragonflow.db.security.NbSecurity`): ``etcds://`` makes the channel a TLS
  one (``ssl_channel_credentials``: the CA file or the system trust store, and the client
  certificate if given). With several endpoints the server certificates are checked against
  the first endpoint's host name (gRPC has one name per channel), so give every member a
  certificate valid for it (e.g. a shared SAN). With a user and password, the driver gets a
  token from ``Auth.Authenticate`` (lazily, on the first call) and sends it as the ``token``
  metadata of every unary call and watch stream; a token etcd rejects (expired simple token,
  auth store revision changed) is renewed once and the call repeated -- safe even for a
  commit, since etcd rejected it before applying anything.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import os
import queue
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from dragonflow.db.driver import (
    KV,
    AmbiguousCommit,
    Check,
    Delete,
    DriverError,
    Event,
    Exists,
    Op,
    PrefixEmpty,
    Put,
    Revision,
    TxnFailed,
)
from dragonflow.db.security import NbSecurity, SecurityConfigError, opt, redact_url

LOG = logging.getLogger(__name__)
T = TypeVar("T")

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops: the most ops one (nested) Txn may carry
_REQUIRE_LEADER = (("hasleader", "true"),)  # a member cut off from the leader ends watches
_MIN_BACKOFF, _MAX_BACKOFF = 0.05, 0.5  # an NB back after an outage is seen within 0.5 s
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", -1),  # get_prefix of a big NB in one answer
    ("grpc.keepalive_time_ms", 10_000),  # etcd refuses pings more often than every 5 s
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.use_local_subchannel_pool", 1),  # one connection per driver, not per process
)


_SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",
)


def parse_url(url: str) -> tuple[str, bool, str]:
    """``etcd[s]://host:port[,host:port...]`` -> (gRPC target, TLS?, first host name).

    Several endpoints need IP literals for gRPC's static address list; host names are
    resolved here, once. ValueError names the url when it does not parse.
    """
    tls = url.startswith("etcds://")
    rest = url.removeprefix("etcds://" if tls else "etcd://")
    if rest == url or "?" in rest or "#" in rest or "@" in rest:
        creds = " (credentials go in [df] nb_db_user / nb_db_password)" if "@" in rest else ""
        raise ValueError(f"etcd driver: bad url {redact_url(url)!r} "
                         f"(expected etcd[s]://host:port[,host:port]){creds}")
    endpoints = [_split_endpoint(url, e) for e in rest.rstrip("/").split(",")]
    first = endpoints[0][0]
    if len(endpoints) == 1:
        host, port = endpoints[0]
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), tls, first
    addrs = [(_resolve(url, h, p), p) for h, p in endpoints]
    families = {ipaddress.ip_address(a).version for a, _ in addrs}
    if families == {4}:
        return "ipv4:" + ",".join(f"{a}:{p}" for a, p in addrs), tls, first
    if families == {6}:
        return "ipv6:" + ",".join(f"[{a}]:{p}" for a, p in addrs), tls, first
    raise ValueError(f"etcd driver: url {url!r} mixes IPv4 and IPv6 endpoints")


def grpc_target(url: str) -> str:
    """``etcd[s]://host:port[,host:port...]`` -> a gRPC target (an address list for several)."""
    return parse_url(url)[0]


def _system_roots() -> bytes | None:
    """The system trust store as one PEM bundle (gRPC takes bytes, not a directory); None:
    gRPC's own bundled roots."""
    paths = ssl.get_default_verify_paths()
    for path in (os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile,
                 *_SYSTEM_CA_BUNDLES):
        if path and os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError:
                continue
    LOG.warning("etcd driver: no system CA bundle found; using gRPC's built-in roots "
                "(set [df] nb_db_ca_file)")
    return None


# --- authentication and error wording --------------------------------------------------------
_TOKEN_REJECTED = ("invalid auth token", "revision of auth store is old", "user name is empty")
_TLS_MARKERS = ("handshake failed", "Handshake read failed", "Unwrap failed", "TSI_",
                "SSL_ERROR", "CERTIFICATE_VERIFY_FAILED", "Hostname Verification")


def _token_rejected(e: grpc.aio.AioRpcError) -> bool:
    return any(m in (e.details() or "") for m in _TOKEN_REJECTED)


# A Txn that failed with one of these may have reached etcd (and been applied, or still be)
_MAYBE_APPLIED = frozenset({
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED,
    grpc.StatusCode.DATA_LOSS,
})
_NOT_SENT = "failed to connect to all addresses"  # no connection: the request never left


def _maybe_applied(e: grpc.aio.AioRpcError) -> bool:
    return e.code() in _MAYBE_APPLIED and not (e.details() or "").startswith(_NOT_SENT)


class _RpcError(DriverError):
    """A failed call, with gRPC's status for callers that tell errors apart."""

    def __init__(self, message: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(message)
        self.code, self.details = code, details


def _last_error(details: str) -> str:
    return details.removeprefix("failed to connect to all addresses; ").removeprefix(
        "last error: ")


def _split_endpoint(url: str, endpoint: str) -> tuple[str, int]:
    if endpoint.startswith("["):  # [v6]:port
        host, sep, port = endpoint[1:].partition("]:")
    else:
        host, sep, port = endpoint.rpartition(":")
        if ":" in host:
            sep = ""  # an unbracketed IPv6 address is ambiguous
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"etcd driver: bad endpoint {endpoint!r} in url {url!r} (host:port)")
    return host, int(port)


def _resolve(url: str, host: str, port: int) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"etcd driver: cannot resolve {host!r} in url {url!r}: {e}") from None
    return str(infos[0][4][0])


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """The etcd ``[key, range_end)`` of every key starting with ``prefix``."""
    start = prefix.encode()
    if not start:
        return b"\0", b"\0"  # every key
    return start, start[:-1] + bytes([start[-1] + 1])  # UTF-8 never holds a 0xff byte


def _compare(check: Check) -> rpc.Compare:
    if isinstance(check, Revision):
        if check.mod_revision == 0:
            return rpc.Compare(
                key=check.key.encode(), target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL
            )
        return rpc.Compare(
            key=check.key.encode(), target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
            mod_revision=check.mod_revision,
        )  # fmt: skip
    if isinstance(check, Exists):
        return rpc.Compare(
            key=check.key.encode(), target=rpc.Compare.VERSION, result=rpc.Compare.GREATER
        )
    if isinstance(check, PrefixEmpty):
        key, end = prefix_range(check.prefix)
        return rpc.Compare(
            key=key, range_end=end, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL
        )
    raise TypeError(f"etcd driver: unknown check {check!r}")


def _probe(check: Check) -> rpc.RequestOp:
    """A read for the failure branch, to say in TxnFailed which check did not hold."""
    if isinstance(check, PrefixEmpty):
        key, end = prefix_range(check.prefix)
        return rpc.RequestOp(
            request_range=rpc.RangeRequest(key=key, range_end=end, limit=1, keys_only=True)
        )
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=check.key.encode(), keys_only=True))


def _explain(checks: Sequence[Check], resp: Any) -> str:
    failed = []
    for check, r in zip(checks, resp.responses, strict=True):
        kvs = r.response_range.kvs
        if isinstance(check, Revision):
            now = kvs[0].mod_revision if kvs else 0
            if now != check.mod_revision:
                failed.append(f"{check} (now mod_revision={now})")
        elif isinstance(check, Exists) and not kvs:
            failed.append(f"{check} (absent)")
        elif isinstance(check, PrefixEmpty) and kvs:
            failed.append(f"{check} (holds {kvs[0].key.decode(errors='replace')!r})")
    return "; ".join(failed) or "checks raced with another writer"


def _request_op(op: Op) -> rpc.RequestOp:
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key.encode(), value=op.value))
    if isinstance(op, Delete):
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key.encode()))
    raise TypeError(f"etcd driver: unknown op {op!r}")


def _success_ops(ops: Sequence[Op], n_checks: int) -> list[rpc.RequestOp]:
    """``ops`` as the success branch; beyond MAX_TXN_OPS, as nested Txns (etcd limits each
    Txn to MAX_TXN_OPS entries and each nested one to MAX_TXN_OPS minus its parent's)."""
    reqs = [_request_op(op) for op in ops]
    if len(reqs) <= MAX_TXN_OPS and n_checks <= MAX_TXN_OPS:
        return reqs
    for groups in range(2, MAX_TXN_OPS + 1):
        budget = MAX_TXN_OPS - max(groups, n_checks)
        if budget * groups >= len(reqs):
            chunks = [reqs[i : i + budget] for i in range(0, len(reqs), budget)]
            return [rpc.RequestOp(request_txn=rpc.TxnRequest(success=c)) for c in chunks]
    raise DriverError(
        f"etcd driver: a commit of {len(ops)} ops and {n_checks} checks exceeds what one etcd "
        f"transaction can carry (--max-txn-ops {MAX_TXN_OPS}); split it"
    )


def _event(ev: Any) -> Event:
    kv = ev.kv
    prev = ev.prev_kv.value if ev.HasField("prev_kv") else None
    value = None if ev.type == rpc.Event.DELETE else kv.value
    return Event(kv.mod_revision, kv.key.decode(), value, prev)


@dataclass(frozen=True, slots=True)
class _Compacted:
    revision: int


_STOP = object()


class _StreamEnded(Exception):
    pass


class EtcdWatch:
    """One resumable watch (see the module docstring). ``error`` holds what stopped it, if a
    callback raised; ``reconnects`` counts re-created streams."""

    def __init__(
        self,
        driver: EtcdDriver,
        prefix: str,
        start_revision: int,
        on_event: Callable[[Event], None],
        on_compacted: Callable[[int], None],
    ) -> None:
        self.prefix = prefix
        self.error: BaseException | None = None
        self.reconnects = 0
        self.last_failure = ""
        self._driver = driver
        self._next_rev = max(start_revision, 1)
        self._on_event = on_event
        self._on_compacted = on_compacted
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._created: asyncio.Event | None = None
        self._backoff = _MIN_BACKOFF
        self._generation = driver.generation  # the history it follows (see _history_gone)
        # the last event queued: (key, revision, hash of its value or None if a delete)
        self._mark: tuple[bytes, int, int | None] | None = None
        self._gone = False  # on_compacted is queued: nothing more from this watch
        self._thread = threading.Thread(target=self._deliver, name="df-etcd-watch", daemon=True)

    # --- loop side ----------------------------------------------------------------------
    async def _start(self, timeout: float) -> None:
        self._created = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._follow())
        try:
            await asyncio.wait_for(self._created.wait(), timeout)
        except TimeoutError:
            await self._stop_task()
            raise DriverError(
                f"etcd {self._driver.url}: watch on {self.prefix!r} not created within "
                f"{timeout} s ({self.last_failure or 'no answer'})"
            ) from None

    async def _stop_task(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _follow(self) -> None:
        try:
            while True:
                try:
                    await self._stream_once()
                    return  # compacted: the watch is over
                except grpc.aio.AioRpcError as e:
                    self.last_failure = self._driver._why("watch", e)
                except (_StreamEnded, DriverError) as e:  # DriverError: authentication
                    self.last_failure = str(e)
                assert self._created is not None
                LOG.warning(
                    "etcd %s: watch on %r %s (%s); resuming from revision %d",
                    self._driver.url, self.prefix,
                    "lost" if self._created.is_set() else "not created yet",
                    self.last_failure, self._next_rev,
                )  # fmt: skip
                await asyncio.sleep(self._backoff)  # 0 right after a stream that worked
                self._backoff = min(max(self._backoff * 2, _MIN_BACKOFF), _MAX_BACKOFF)
                self.reconnects += 1
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug here must not look like a quiet database
            LOG.exception("etcd %s: watch on %r failed; it delivers nothing more",
                          self._driver.url, self.prefix)  # fmt: skip
            self.error = e
            self._queue.put(_STOP)

    async def _stream_once(self) -> None:
        """Follow one Watch stream; returns when compacted, raises when the stream breaks."""
        assert self._created is not None
        key, end = prefix_range(self.prefix)
        create = rpc.WatchCreateRequest(
            key=key, range_end=end, start_revision=self._next_rev, prev_kv=True
        )
        auth = await self._driver._metadata()
        call = self._driver._watch_stub.Watch(metadata=_REQUIRE_LEADER + auth)
        try:
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise _StreamEnded("etcd closed the watch stream")
                self._check_cluster(resp.header)
                if self._gone:
                    return
                if resp.compact_revision:
                    self._queue.put(_Compacted(resp.compact_revision))
                    self._created.set()
                    return
                if resp.canceled:
                    # etcd says "permission denied" for an expired token too
                    self._driver._drop_token(auth)
                    raise _StreamEnded(f"watch cancelled by etcd: {resp.cancel_reason!r}")
                if resp.created:
                    # nothing from this stream is delivered before its history is checked
                    gone_at = await self._history_check()
                    if gone_at is not None:
                        self._history_gone(gone_at)
                    if self._gone:
                        return
                    self._created.set()
                    self._backoff = 0.0
                for ev in resp.events:
                    self._queue.put(_event(ev))
                if resp.events:  # responses hold whole revisions
                    last = resp.events[-1]
                    self._next_rev = last.kv.mod_revision + 1
                    self._mark = (last.kv.key, last.kv.mod_revision,
                                  None if last.type == rpc.Event.DELETE else hash(last.kv.value))
                    drv = self._driver
                    if self._generation == drv.generation:
                        drv._max_rev = max(drv._max_rev, last.kv.mod_revision)
        except grpc.aio.AioRpcError as e:
            if _token_rejected(e):
                self._driver._drop_token(auth)
            raise
        finally:
            call.cancel()

    def _check_cluster(self, header: Any) -> None:
        """Every watch response names its cluster: another one means another database."""
        drv, cid = self._driver, int(header.cluster_id)
        if not cid or self._generation != drv.generation:
            return
        if drv._cluster_id is None:
            drv._cluster_id = cid
        elif cid != drv._cluster_id:
            drv._replaced(f"watch on {self.prefix!r} answered from cluster {cid:x}, not "
                          f"{drv._cluster_id:x}", cid, int(header.revision))

    async def _history_check(self) -> int | None:
        """Right after a stream was (re)created: None if etcd still holds the history this
        watch follows; else etcd's current revision (restarted empty, replaced)."""
        drv = self._driver
        floor = self._next_rev - 1  # delivered (or, at first, applied by the caller) so far
        reason, now = "", None
        if self._mark is not None:  # is the last event delivered still in etcd's history?
            key, rev, digest = self._mark
            try:
                resp = await drv._rpc("watch check", drv._kv.Range,
                                      rpc.RangeRequest(key=key, revision=rev))
            except _RpcError as e:
                if "future revision" in e.details:
                    reason = f"revision {rev} it delivered is in the server's future"
                elif "compacted" not in e.details:  # compacted: cannot compare, go on
                    raise
            else:
                kvs, now = resp.kvs, int(resp.header.revision)
                same = not kvs if digest is None else (
                    bool(kvs) and kvs[0].mod_revision == rev and hash(kvs[0].value) == digest)
                if not same:
                    reason = (f"{key.decode(errors='replace')!r} at revision {rev} is not what "
                              f"it delivered")
        if now is None:
            start, end = prefix_range(self.prefix)
            req = rpc.RangeRequest(key=start, range_end=end, limit=1, keys_only=True)
            now = int((await drv._rpc("watch check", drv._kv.Range, req)).header.revision)
            if not reason and now < floor:
                reason = f"the server is at revision {now}, behind revision {floor}"
        if self._generation != drv.generation:
            return drv._max_rev  # the driver found the database replaced meanwhile
        if not reason:
            return None
        assert self._created is not None
        LOG.warning("etcd %s: watch on %r: %s: the history it follows is gone", drv.url,
                    self.prefix, reason)
        if self._created.is_set():  # it was following this history: the database was replaced
            drv._replaced(f"watch on {self.prefix!r}: {reason}", drv._cluster_id or 0, now)
        return now

    def _history_gone(self, revision: int) -> None:
        """(On the loop.) The history this watch follows is gone: it queues one
        ``on_compacted(revision)`` and stops."""
        if self._gone:
            return
        self._gone = True
        self._queue.put(_Compacted(revision))
        if self._created is not None:
            self._created.set()  # a watch() still waiting returns; the thread then tells
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    # --- delivery thread ----------------------------------------------------------------
    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP or self._stopped.is_set():
                return
            try:
                if isinstance(item, _Compacted):
                    self._stopped.set()
                    self._driver._forget(self)
                    self._on_compacted(item.revision)
                    return
                assert isinstance(item, Event)
                self._on_event(item)
            except Exception as e:
                LOG.exception("etcd %s: watch callback for %r raised; this watch stops",
                              self._driver.url, self.prefix)  # fmt: skip
                self.error = e
                self._stopped.set()
                self._driver._stop_watch_task(self)
                self._driver._forget(self)
                return

    def cancel(self) -> None:
        """Stop delivering; returns after the delivery thread has ended."""
        self._stopped.set()
        self._queue.put(_STOP)
        self._driver._stop_watch_task(self)
        if self._thread is not threading.current_thread() and self._thread.ident is not None:
            self._thread.join()
        self._driver._forget(self)


class EtcdDriver:
    """NB driver on etcd v3 (see the module docstring)."""

    def __init__(
        self, url: str, *, timeout: float = 3.0, security: NbSecurity | None = None
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._target, self._tls, first_host = parse_url(url)
        sec = security if security is not None else NbSecurity()
        sec.check_tls(url, self._tls)
        if (sec.user is None) != (sec.password is None):
            have, missing = ("user", "password") if sec.password is None else ("password", "user")
            raise SecurityConfigError(
                f"{opt(have)} is set but {opt(missing)} is not: etcd authenticates a user "
                f"name with its password (set both, or neither)")
        self._security = sec
        self._credentials: grpc.ChannelCredentials | None = None
        self._options: tuple[tuple[str, Any], ...] = _CHANNEL_OPTIONS
        if self._tls:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=sec.read("ca_file") if sec.ca_file else _system_roots(),
                private_key=sec.read("key_file"),
                certificate_chain=sec.read("cert_file"),
            )
            if "," in self._target:  # an address list has no host name to check against
                self._options += (("grpc.ssl_target_name_override", first_host),)
        self._token: str | None = None  # None: authenticate first ("": auth is off)
        self._auth_lock: asyncio.Lock | None = None
        self._closed = False
        self._watches: set[EtcdWatch] = set()
        self._lock = threading.Lock()
        # the history followed (changed on the loop only): see the module docstring
        self._cluster_id: int | None = None
        self._max_rev = 0
        self.generation = 0  # times the database was found replaced
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="df-etcd-loop", daemon=True
        )
        self._thread.start()
        self._channel, self._kv, self._watch_stub, self._auth = self._run(
            self._open(), "connect")

    async def _open(self) -> tuple[Any, Any, Any, Any]:
        # (gRPC's "min reconnect backoff" is in fact the least time a connect attempt gets)
        connect = ("grpc.min_reconnect_backoff_ms", max(int(self.timeout * 1000), 100))
        options = (*self._options, connect)
        if self._credentials is not None:
            channel = grpc.aio.secure_channel(self._target, self._credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(self._target, options=options)
        self._auth_lock = asyncio.Lock()
        return channel, rpc.KVStub(channel), rpc.WatchStub(channel), rpc.AuthStub(channel)

    # --- authentication (runs on the loop) -------------------------------------------------
    async def _metadata(self) -> tuple[tuple[str, str], ...]:
        """The ``token`` metadata of the next call (authenticating first if needed)."""
        if self._security.user is None:
            return ()
        if self._token is None:
            assert self._auth_lock is not None
            async with self._auth_lock:
                if self._token is None:
                    self._token = await self._authenticate()
        return (("token", self._token),) if self._token else ()

    async def _authenticate(self) -> str:
        sec = self._security
        req = rpc.AuthenticateRequest(name=sec.user, password=sec.password)
        try:
            resp = await self._auth.Authenticate(req, timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            details = e.details() or ""
            if "authentication is not enabled" in details:
                LOG.warning("etcd %s: authentication is not enabled on the server; "
                            "[df] nb_db_user %r is not used", self.url, sec.user)
                return ""
            if "invalid user ID or password" in details:
                raise DriverError(f"etcd {self.url}: authentication failed: invalid user or "
                                  f"password (user {sec.user!r})") from None
            raise self._error("authenticate", e) from None
        LOG.debug("etcd %s: authenticated as %r", self.url, sec.user)
        return str(resp.token)

    def _drop_token(self, used: tuple[tuple[str, str], ...]) -> None:
        """etcd refused the token in ``used`` (or the lack of one, if authentication was off
        when the driver asked): the next call authenticates again, unless another call has
        already done so. Nothing to do without a user."""
        if self._security.user is not None and self._token == (used[0][1] if used else ""):
            self._token = None

    @property
    def cluster_id(self) -> int | None:
        """The cluster id of the etcd answering (None before the first answer)."""
        return self._cluster_id

    # --- plumbing -----------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T], what: str, *, commit: bool = False) -> T:
        if self._closed:
            coro.close()
            raise DriverError(f"etcd {self.url}: {what}: driver is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(self.timeout + 2.0)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            msg = f"etcd {self.url}: {what}: no answer within {self.timeout} s"
            if commit:
                raise AmbiguousCommit(f"{msg}: it may or may not have been applied") from None
            raise DriverError(msg) from None

    async def _rpc(self, what: str, method: Any, request: Any, *, commit: bool = False) -> Any:
        for attempt in range(2):
            auth = await self._metadata()
            gen, floor = self.generation, self._max_rev  # what was known before sending
            try:
                resp = await method(request, timeout=self.timeout, metadata=auth or None)
            except grpc.aio.AioRpcError as e:
                if attempt == 0 and self._security.user is not None and _token_rejected(e):
                    self._drop_token(auth)  # expired: renew it and ask again
                    continue
                if commit and _maybe_applied(e):
                    raise AmbiguousCommit(
                        f"etcd {self.url}: {what} failed: {self._why(what, e)}: it may or may "
                        f"not have been applied") from None
                raise self._error(what, e) from None
            self._observe(resp.header, gen, floor, what)
            return resp
        raise AssertionError("unreachable")

    def _observe(self, header: Any, gen: int, floor: int, what: str) -> None:
        """(On the loop.) Check a linearizable answer against the history followed: ``floor``
        is the highest revision seen before the request was sent, ``gen`` the generation then."""
        cid, rev = int(header.cluster_id), int(header.revision)
        if gen != self.generation or not cid:
            return  # the history changed while the call was out: the answer proves nothing
        if self._cluster_id is None:
            self._cluster_id = cid
        elif cid != self._cluster_id:
            self._replaced(f"cluster id {self._cluster_id:x} became {cid:x}", cid, rev)
            return
        if rev < floor:
            self._replaced(f"{what} answered at revision {rev}, behind revision {floor} seen "
                           f"before", cid, rev)
            return
        self._max_rev = max(self._max_rev, rev)

    def _replaced(self, why: str, cluster_id: int, revision: int) -> None:
        """(On the loop.) The database was replaced: adopt its history, end older watches."""
        LOG.warning("etcd %s: the database was replaced (%s): restarted empty, or another "
                    "cluster; its history is gone, every watch resyncs", self.url, why)
        self._cluster_id, self._max_rev = cluster_id or self._cluster_id, revision
        self.generation += 1
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            if w._generation < self.generation:
                w._history_gone(revision)

    def _error(self, what: str, e: grpc.aio.AioRpcError) -> DriverError:
        return _RpcError(f"etcd {self.url}: {what} failed: {self._why(what, e)}", e.code(),
                         e.details() or "")

    def _why(self, what: str, e: grpc.aio.AioRpcError) -> str:
        """The reason of a failed call, in words an operator can act on."""
        code, details = e.code(), e.details() or ""
        sec = self._security
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer within {self.timeout} s"
        if self._tls and any(m in details for m in _TLS_MARKERS):
            last = _last_error(details)
            if "CERTIFICATE_VERIFY_FAILED" in details or "Hostname Verification" in details:
                trust = f"{opt('ca_file')} {sec.ca_file!r}" if sec.ca_file \
                    else "the system trust store (no [df] nb_db_ca_file)"
                return (f"TLS handshake failed: the server's certificate is not trusted by "
                        f"{trust} or not valid for the url's host ({last})")
            if "Handshake read failed" in details:
                return (f"TLS handshake failed: the server closed the connection (is it "
                        f"serving TLS? etcd:// is plaintext) ({last})")
            if sec.cert_file is None:
                return (f"TLS handshake failed: the server refused the connection; it "
                        f"probably requires a client certificate ([df] nb_db_cert_file and "
                        f"nb_db_key_file are not set) ({last})")
            return (f"TLS handshake failed: the server refused the connection; is "
                    f"{opt('cert_file')} {sec.cert_file!r} signed by a CA it trusts? ({last})")
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = ""
            # (not once a stream was under way: that connection was cut, not refused)
            if not self._tls and "Socket closed" in details \
                    and not details.startswith("Stream removed"):
                hint = "; a TLS-only server closes plaintext connections: etcds://?"
            return f"unreachable ({details}{hint})"
        if "user name is empty" in details:
            if sec.user is None:
                return ("authentication required: etcd has authentication enabled "
                        "([df] nb_db_user and nb_db_password are not set)")
            return "authentication required: etcd asked for a token again after authenticating"
        if _token_rejected(e):
            return f"authentication failed: etcd rejected the token just renewed ({details})"
        if code == grpc.StatusCode.PERMISSION_DENIED and sec.user is not None:
            return (f"permission denied: etcd user {sec.user!r} has no role granting this "
                    f"({details})")
        return f"{code.name}: {details}"

    # --- reads --------------------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        resp = self._run(
            self._rpc("get", self._kv.Range, rpc.RangeRequest(key=key.encode())), "get"
        )
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return KV(key, kv.value, kv.mod_revision)

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        key, end = prefix_range(prefix)
        req = rpc.RangeRequest(key=key, range_end=end)  # etcd answers sorted by key
        resp = self._run(self._rpc("get_prefix", self._kv.Range, req), "get_prefix")
        kvs = [KV(kv.key.decode(), kv.value, kv.mod_revision) for kv in resp.kvs]
        return kvs, int(resp.header.revision)

    def current_revision(self) -> int:
        req = rpc.RangeRequest(key=b"\0", count_only=True)
        resp = self._run(self._rpc("current_revision", self._kv.Range, req), "current_revision")
        return int(resp.header.revision)

    # --- writes -------------------------------------------------------------------------
    def commit(self, checks: Sequence[Check], ops: Sequence[Op]) -> int:
        if not ops:
            raise ValueError("commit needs at least one op")
        seen: set[str] = set()
        for op in ops:
            if op.key in seen:  # etcd refuses a Txn that touches a key twice
                raise ValueError(f"etcd driver: key {op.key!r} is written twice in one commit")
            seen.add(op.key)
        req = rpc.TxnRequest(
            compare=[_compare(c) for c in checks],
            success=_success_ops(ops, len(checks)),
            failure=[_probe(c) for c in checks],
        )
        resp = self._run(self._rpc("commit", self._kv.Txn, req, commit=True), "commit",
                         commit=True)
        if not resp.succeeded:
            raise TxnFailed(f"etcd {self.url}: check failed: {_explain(checks, resp)}")
        return int(resp.header.revision)

    def increment(self, key: str, amount: int = 1) -> int:
        if amount < 1:
            raise ValueError(f"increment amount must be >= 1, got {amount}")
        return self._run(self._increment(key, amount), "increment")

    async def _increment(self, key: str, amount: int) -> int:
        bkey = key.encode()
        mod, value = 0, 0  # guess: absent
        for _ in range(10_000):
            req = rpc.TxnRequest(
                compare=[rpc.Compare(key=bkey, target=rpc.Compare.MOD,
                                     result=rpc.Compare.EQUAL, mod_revision=mod)],
                success=[rpc.RequestOp(request_put=rpc.PutRequest(
                    key=bkey, value=str(value + amount).encode()))],
                failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=bkey))],
            )  # fmt: skip
            resp = await self._rpc("increment", self._kv.Txn, req)
            if resp.succeeded:
                return value + amount
            kvs = resp.responses[0].response_range.kvs
            mod = kvs[0].mod_revision if kvs else 0
            raw = kvs[0].value if kvs else b"0"
            try:
                value = int(raw.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise DriverError(
                    f"etcd {self.url}: counter {key!r} holds {raw[:40]!r}, not an integer"
                ) from None
        raise DriverError(f"etcd {self.url}: increment of {key!r} kept losing races")

    def compact(self, revision: int) -> None:
        req = rpc.CompactionRequest(revision=revision, physical=True)
        try:
            self._run(self._rpc("compact", self._kv.Compact, req), "compact")
        except DriverError as e:
            if "required revision has been compacted" not in str(e):
                raise  # compacting again at or below the last compaction is a no-op

    # --- watches ------------------------------------------------------------------------
    def watch(
        self,
        prefix: str,
        start_revision: int,
        on_event: Callable[[Event], None],
        on_compacted: Callable[[int], None],
    ) -> EtcdWatch:
        """Returns once etcd has created the watch (DriverError if it cannot in time)."""
        w = EtcdWatch(self, prefix, start_revision, on_event, on_compacted)
        with self._lock:  # before it starts: a replaced database found meanwhile ends it too
            self._watches.add(w)
        try:
            self._run(w._start(self.timeout), "watch")
        except BaseException:
            self._forget(w)
            raise
        w._thread.start()
        return w

    def _stop_watch_task(self, w: EtcdWatch) -> None:
        if self._closed or not self._loop.is_running():
            return
        fut = asyncio.run_coroutine_threadsafe(w._stop_task(), self._loop)
        try:
            fut.result(self.timeout)
        except concurrent.futures.TimeoutError:
            LOG.error("etcd %s: watch on %r did not stop in time", self.url, w.prefix)

    def _forget(self, w: EtcdWatch) -> None:
        with self._lock:
            self._watches.discard(w)

    def close(self) -> None:
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            w.cancel()
        if self._closed:
            return
        try:
            self._run(self._channel.close(), "close")
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=5)
                self._loop.close()
