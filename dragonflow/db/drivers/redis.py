"""The Redis NB driver: values in hashes, changes in a Stream, one Lua script per commit.

Layout under a namespace ``ns`` (url path, default ``df``):

* ``ns:v``  hash  key -> value           ``ns:r``   hash key -> mod_revision
* ``ns:k``  zset  every key, score 0 (prefix scans with ZRANGEBYLEX)
* ``ns:seq`` the global revision (INCR'd once per commit)
* ``ns:s``  stream of changes, entry id ``<seq>-<i>`` (i = index of the event in its
  commit), fields ``key``, ``value`` (absent on delete), ``prev`` (if any), ``del`` (on
  delete), ``n`` (events in the commit); a commit without visible change writes one
  ``noop`` entry so that the sequence stays contiguous in the stream
* ``ns:c``  hash  counters for :meth:`RedisDriver.increment`
* ``ns:epoch`` random id of this database's life; a server restarted empty gets a new one

Redis pub/sub loses messages and XREAD from a trimmed id silently starts at the oldest
survivor, so a watcher checks that the ``(seq, i)`` it reads are contiguous, and that the
epoch did not change across reconnects; any hole means history is lost -> ``on_compacted``.
The driver's ``generation`` counts the epoch changes its reads, commits and watches saw.

A commit whose EVALSHA may have reached the server without an answer coming back (the
connection broke or timed out while reading the reply) raises AmbiguousCommit; one that never
left (connecting, authenticating or writing the request failed) is a plain DriverError.

Security (:class:`~dragonflow.db.security.NbSecurity`): ``rediss://`` connects with TLS (the
CA file or the system trust store, host name checked, the client certificate if given);
``redis[s]://user:password@host`` or the ``user``/``password`` of NbSecurity authenticate
(AUTH) every connection the driver opens, the watch connections included. A user or password
in the url takes precedence over NbSecurity's, field by field.
"""

from __future__ import annotations

import logging
import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError
from redis.retry import Retry

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

_MAX_SUB = 2**64 - 1  # largest sequence part of a stream id
_BLOCK_MS = 2000  # XREAD BLOCK: an idle watch makes one round trip per 2 s (cancel() cuts it)
_BATCH = 1000  # stream entries per XREAD
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 0.5  # the first reconnect is immediate

# KEYS: v r k seq s epoch.  ARGV: epoch-candidate maxlen nchecks (kind a b)* nops (kind key val)*
# Checks first, then writes: a failed check writes nothing (not even the epoch).
_COMMIT_LUA = """
local kv, kr, kk, kseq, ks, kep = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local i = 4
for c = 1, tonumber(ARGV[3]) do
  local kind, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local ok
  if kind == 'r' then
    ok = tonumber(redis.call('HGET', kr, a) or '0') == tonumber(b)
  elseif kind == 'e' then
    ok = redis.call('HEXISTS', kr, a) == 1
  elseif kind == 'p' then
    ok = #redis.call('ZRANGEBYLEX', kk, a, b, 'LIMIT', 0, 1) == 0
  else
    return redis.error_reply('unknown check kind ' .. tostring(kind))
  end
  if not ok then return {0, c} end
end
local seq = redis.call('INCR', kseq)
local nops = tonumber(ARGV[i])
i = i + 1
local events = {}
for o = 1, nops do
  local kind, key, val = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local prev = redis.call('HGET', kv, key)
  if kind == 'p' then
    redis.call('HSET', kv, key, val)
    redis.call('HSET', kr, key, seq)
    redis.call('ZADD', kk, 0, key)
    local f = {'key', key, 'value', val}
    if prev then f[5] = 'prev'; f[6] = prev end
    events[#events + 1] = f
  elseif prev then
    redis.call('HDEL', kv, key)
    redis.call('HDEL', kr, key)
    redis.call('ZREM', kk, key)
    events[#events + 1] = {'key', key, 'del', '1', 'prev', prev}
  end
end
if #events == 0 then events[1] = {'noop', '1'} end
for e = 1, #events do
  local f = events[e]
  f[#f + 1] = 'n'
  f[#f + 1] = tostring(#events)
  redis.call('XADD', ks, 'MAXLEN', '~', ARGV[2], string.format('%d-%d', seq, e - 1), unpack(f))
end
redis.call('SET', kep, ARGV[1], 'NX')
return {1, seq, redis.call('GET', kep)}
"""

# KEYS: v r k seq epoch.  ARGV: min max epoch-candidate.  One consistent snapshot.
_SNAPSHOT_LUA = """
local keys = redis.call('ZRANGEBYLEX', KEYS[3], ARGV[1], ARGV[2])
local vals, revs = {}, {}
for j = 1, #keys, 1000 do
  local chunk = {}
  for x = j, math.min(j + 999, #keys) do chunk[#chunk + 1] = keys[x] end
  local v = redis.call('HMGET', KEYS[1], unpack(chunk))
  local r = redis.call('HMGET', KEYS[2], unpack(chunk))
  for x = 1, #chunk do
    vals[#vals + 1] = v[x]
    revs[#revs + 1] = r[x]
  end
end
redis.call('SET', KEYS[5], ARGV[3], 'NX')
return {redis.call('GET', KEYS[4]) or '0', redis.call('GET', KEYS[5]), keys, vals, revs}
"""


@dataclass(frozen=True)
class _Url:
    host: str
    port: int
    ns: str
    tls: bool
    user: str | None  # percent-decoded; None: not in the url
    password: str | None


def _parse_url(url: str) -> _Url:
    shown = redact_url(url)
    try:
        parsed = urlparse(url)
        port = parsed.port or 6379
    except ValueError as e:
        raise ValueError(f"redis driver: bad url {shown!r}: {e}") from None
    ns = parsed.path.strip("/") or "df"
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname or "/" in ns \
            or parsed.query:
        raise ValueError(
            f"redis driver: bad url {shown!r} "
            f"(expected redis[s]://[user[:password]@]host[:port][/namespace])"
        )
    user = unquote(parsed.username) if parsed.username else None
    password = unquote(parsed.password) if parsed.password is not None else None
    return _Url(parsed.hostname, port, ns, parsed.scheme == "rediss", user, password)


# redis-py's words for a request that never reached the server (connect, AUTH, write)
_NOT_SENT = ("connecting to", "Timeout connecting", "while writing to socket",
             "Timeout writing to socket")


def _maybe_sent(e: redis.RedisError) -> bool:
    """Could the failed command have reached the server (and been executed)?"""
    if isinstance(e, redis.AuthenticationError | NoPermissionError) or isinstance(
            e.__context__, ssl.SSLError):
        return False
    return not any(m in str(e) for m in _NOT_SENT)


def _lex_range(prefix: str) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds for every key starting with ``prefix`` (0xff never occurs in UTF-8)."""
    if not prefix:
        return b"-", b"+"
    p = prefix.encode()
    return b"[" + p, b"[" + p + b"\xff"


class _Keys:
    def __init__(self, ns: str) -> None:
        self.values, self.revs, self.index = f"{ns}:v", f"{ns}:r", f"{ns}:k"
        self.seq, self.stream, self.counters = f"{ns}:seq", f"{ns}:s", f"{ns}:c"
        self.epoch = f"{ns}:epoch"


class RedisDriver:
    """NB driver on one Redis server. ``stream_maxlen`` bounds the change history."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 3.0,
        stream_maxlen: int = 100_000,
        security: NbSecurity | None = None,
    ) -> None:
        u = _parse_url(url)
        self._host, self._port, self._ns, self._tls = u.host, u.port, u.ns, u.tls
        if stream_maxlen < 1:
            raise ValueError(f"redis driver: stream_maxlen must be >= 1, got {stream_maxlen}")
        sec = security if security is not None else NbSecurity()
        sec.check_tls(url, self._tls)
        self._security = sec
        self._user = u.user if u.user is not None else sec.user  # the url's come first
        self._password = u.password if u.password is not None else sec.password
        if self._user is not None and self._password is None:
            raise SecurityConfigError(
                f"redis user {self._user!r} ({'url' if u.user else opt('user')}) has no "
                f"password: set {opt('password')} or put it in the url")
        self.url = redact_url(url)  # what errors and logs show
        self._timeout = timeout
        self._maxlen = stream_maxlen
        self._k = _Keys(self._ns)
        self._client = self._new_client()
        self._commit_script = self._client.register_script(_COMMIT_LUA)
        self._snapshot_script = self._client.register_script(_SNAPSHOT_LUA)
        self._epoch: bytes | None = None  # epoch seen by the last snapshot
        self._seen_epoch: bytes | None = None  # epoch seen by the last call of any kind
        self.generation = 0  # times the epoch was seen to change (database replaced)
        self._watches: list[_RedisWatch] = []
        self._lock = threading.Lock()

    def _note_epoch(self, epoch: bytes | None) -> None:
        """Count a change of the database's epoch (it was replaced: restarted empty)."""
        if epoch is None:
            return
        with self._lock:
            if self._seen_epoch is not None and epoch != self._seen_epoch:
                self.generation += 1
                LOG.warning("redis %s: the database was replaced (epoch changed: restarted "
                            "empty?): its history is gone", self.url)
            self._seen_epoch = epoch

    def _new_client(self, min_read_timeout: float = 0.0) -> redis.Redis:
        # No automatic retries: a timed-out commit may have been applied; the caller decides.
        tls: dict[str, Any] = {}
        if self._tls:
            sec = self._security
            tls = dict(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True,
                       ssl_ca_certs=sec.ca_file,  # None: the system trust store
                       ssl_certfile=sec.cert_file, ssl_keyfile=sec.key_file)
        return redis.Redis(
            host=self._host,
            port=self._port,
            username=self._user,
            password=self._password,
            socket_timeout=max(self._timeout, min_read_timeout),
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
            **tls,
        )

    def _fail(self, what: str, e: redis.RedisError) -> DriverError:
        return DriverError(f"redis {self.url}: {what} failed: {self._why(e)}")

    def _why(self, e: BaseException) -> str:
        """The reason of a failure, in words an operator can act on."""
        sec, cause = self._security, e.__cause__ or e.__context__
        if isinstance(e, redis.AuthenticationError):
            if self._password is None:
                return (f"authentication required: the server wants a password ([df] "
                        f"nb_db_password, or one in the url, is not set) ({e})")
            who = f"user {self._user!r}" if self._user else "the default user"
            return f"authentication failed: invalid user or password ({who}: {e})"
        if isinstance(e, NoPermissionError):
            return f"permission denied: {e}"
        if isinstance(cause, ssl.SSLCertVerificationError):
            trust = f"{opt('ca_file')} {sec.ca_file!r}" if sec.ca_file \
                else "the system trust store (no [df] nb_db_ca_file)"
            return (f"TLS handshake failed: the server's certificate is not trusted by {trust} "
                    f"or not valid for {self._host!r} ({cause.verify_message or cause})")
        if isinstance(cause, ssl.SSLError):
            text = str(cause)
            if "CERTIFICATE_REQUIRED" in text:
                return (f"TLS handshake failed: the server requires a client certificate "
                        f"([df] nb_db_cert_file and nb_db_key_file) ({cause})")
            if "WRONG_VERSION_NUMBER" in text or "record layer" in text:
                return (f"TLS handshake failed: the server does not speak TLS here "
                        f"(redis:// is plaintext) ({cause})")
            if sec.cert_file is not None and any(
                    a in text for a in ("UNKNOWN_CA", "BAD_CERTIFICATE", "DECRYPT_ERROR")):
                return (f"TLS handshake failed: the server refused the client certificate "
                        f"{opt('cert_file')} {sec.cert_file!r}: is it signed by a CA the "
                        f"server trusts? ({cause})")
            # TLS 1.3: a refused client certificate may show as a mere EOF after the handshake
            hint = (f"; did the server refuse the client certificate {opt('cert_file')} "
                    f"{sec.cert_file!r} (is it signed by a CA the server trusts?)"
                    if sec.cert_file is not None else
                    "; does the server require a client certificate? [df] nb_db_cert_file and "
                    "nb_db_key_file are not set")
            return f"TLS connection failed: {cause}{hint}"
        if not self._tls and isinstance(cause, ConnectionResetError):
            return f"{e} (a TLS-only server resets plaintext connections: rediss://?)"
        return str(e)

    # --- reads -----------------------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        try:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(self._k.values, key)
                pipe.hget(self._k.revs, key)
                pipe.get(self._k.epoch)
                value, rev, epoch = pipe.execute()
        except redis.RedisError as e:
            raise self._fail(f"get {key!r}", e) from e
        self._note_epoch(epoch)
        if value is None:
            return None
        return KV(key, value, int(rev))

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        lo, hi = _lex_range(prefix)
        k = self._k
        try:
            seq, epoch, keys, vals, revs = self._snapshot_script(
                keys=[k.values, k.revs, k.index, k.seq, k.epoch],
                args=[lo, hi, uuid.uuid4().hex],
            )
        except redis.RedisError as e:
            raise self._fail(f"get_prefix {prefix!r}", e) from e
        self._epoch = epoch
        self._note_epoch(epoch)
        out = [KV(key.decode(), v, int(r)) for key, v, r in zip(keys, vals, revs, strict=True)]
        return out, int(seq)

    def current_revision(self) -> int:
        try:
            return int(self._client.get(self._k.seq) or 0)
        except redis.RedisError as e:
            raise self._fail("current_revision", e) from e

    # --- writes ----------------------------------------------------------------------------
    def commit(self, checks: Sequence[Check], ops: Sequence[Op]) -> int:
        if not ops:
            raise ValueError("commit needs at least one op")
        args: list[bytes | str | int] = [uuid.uuid4().hex, self._maxlen, len(checks)]
        for c in checks:
            if isinstance(c, Revision):
                args += ["r", c.key, c.mod_revision]
            elif isinstance(c, Exists):
                args += ["e", c.key, ""]
            elif isinstance(c, PrefixEmpty):
                args += ["p", *_lex_range(c.prefix)]
            else:
                raise TypeError(f"unknown check {c!r}")
        args.append(len(ops))
        for op in ops:
            if isinstance(op, Put):
                args += ["p", op.key, op.value]
            elif isinstance(op, Delete):
                args += ["d", op.key, ""]
            else:
                raise TypeError(f"unknown op {op!r}")
        k = self._k
        try:
            res = self._commit_script(
                keys=[k.values, k.revs, k.index, k.seq, k.stream, k.epoch], args=args
            )
        except (redis.ConnectionError, redis.TimeoutError) as e:
            if _maybe_sent(e):
                raise AmbiguousCommit(f"redis {self.url}: commit failed: {self._why(e)}: it may "
                                      f"or may not have been applied") from e
            raise self._fail("commit", e) from e
        except redis.RedisError as e:
            raise self._fail("commit", e) from e
        ok, n = res[0], res[1]
        if not ok:
            raise TxnFailed(f"check failed: {checks[int(n) - 1]}")
        self._note_epoch(res[2] if len(res) > 2 else None)
        return int(n)

    def increment(self, key: str, amount: int = 1) -> int:
        if amount < 1:
            raise ValueError(f"increment amount must be >= 1, got {amount}")
        try:
            return int(self._client.hincrby(self._k.counters, key, amount))
        except redis.RedisError as e:
            raise self._fail(f"increment {key!r}", e) from e

    def compact(self, revision: int) -> None:
        try:
            self._client.xtrim(self._k.stream, minid=f"{revision}-0", approximate=False)
        except redis.RedisError as e:
            raise self._fail(f"compact to {revision}", e) from e

    # --- watch -----------------------------------------------------------------------------
    def watch(
        self,
        prefix: str,
        start_revision: int,
        on_event: Callable[[Event], None],
        on_compacted: Callable[[int], None],
    ) -> _RedisWatch:
        w = _RedisWatch(self, prefix, max(start_revision, 1), on_event, on_compacted)
        with self._lock:
            self._watches = [x for x in self._watches if x.alive()] + [w]
        w.start()
        return w

    def close(self) -> None:
        with self._lock:
            watches, self._watches = self._watches, []
        for w in watches:
            w.cancel()
        self._client.close()


class _Gap(Exception):
    """History needed by a watch is gone; ``revision``: the server's, if already known."""

    def __init__(self, reason: str, revision: int | None = None) -> None:
        super().__init__(reason)
        self.revision = revision


class _RedisWatch:
    """Delivery thread: XREAD BLOCK from the last delivered id on its own connection."""

    def __init__(
        self,
        drv: RedisDriver,
        prefix: str,
        start_revision: int,
        on_event: Callable[[Event], None],
        on_compacted: Callable[[int], None],
    ) -> None:
        self._drv = drv
        self._k = drv._k
        self._prefix = prefix
        self._on_event = on_event
        self._on_compacted = on_compacted
        self._epoch = drv._epoch  # None: learn it on first connect
        # position: last stream entry consumed, and whether its commit is complete
        self._seq, self._idx, self._n = start_revision - 1, 0, 1
        self._stop = threading.Event()
        self._conn: redis.Redis | None = None
        self._thread = threading.Thread(target=self._run, name="df-redis-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def cancel(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:  # cut a blocked XREAD short: the thread sees _stop and ends
            try:
                conn.connection_pool.disconnect(inuse_connections=True)
            except (redis.RedisError, OSError):
                pass
        if threading.current_thread() is not self._thread and self._thread.ident is not None:
            self._thread.join()

    # -- position bookkeeping
    def _last_id(self) -> str:
        return f"{self._seq}-{self._idx if self._idx < self._n - 1 else _MAX_SUB}"

    def _expected(self) -> tuple[int, int]:
        if self._idx < self._n - 1:
            return self._seq, self._idx + 1
        return self._seq + 1, 0

    # -- the loop
    def _run(self) -> None:
        backoff = 0.0
        try:
            while not self._stop.is_set():
                try:
                    if self._conn is None:
                        # its own pool: sequential use keeps exactly one connection
                        self._conn = self._drv._new_client(_BLOCK_MS / 1000 + 1.0)
                    self._read(self._conn)
                    backoff = 0.0
                except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                    if self._stop.is_set():
                        return  # cancel() cut the connection
                    # refused credentials or TLS need an operator; a lost link does not
                    serious = isinstance(e, redis.AuthenticationError) or isinstance(
                        e.__context__, ssl.SSLError)
                    LOG.log(logging.WARNING if serious else logging.INFO,
                            "redis %s: watch %r: connection lost (%s); retrying",
                            self._drv.url, self._prefix, self._drv._why(e))
                    self._drop_conn()
                    self._stop.wait(backoff)
                    backoff = min(max(backoff * 2, _BACKOFF_MIN), _BACKOFF_MAX)
                except _Gap as gap:
                    LOG.warning("redis watch %r: %s; resync needed", self._prefix, gap)
                    if not self._stop.is_set():
                        self._on_compacted(self._current(gap))
                    return
        except Exception:
            # A failing callback or a server error: the watch cannot continue without losing
            # events, so it stops, loudly.
            LOG.exception("redis watch %r stopped by an error", self._prefix)
        finally:
            self._stop.set()
            self._drop_conn()

    def _drop_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except (redis.RedisError, OSError):
                pass
            self._conn = None

    def _current(self, gap: _Gap) -> int:
        try:
            if self._conn is not None:
                return int(self._conn.get(self._k.seq) or 0)
        except (redis.RedisError, OSError):
            pass
        return gap.revision if gap.revision is not None else self._seq

    def _check_contiguous(self, entry_id: bytes) -> tuple[int, int]:
        s, _, i = entry_id.partition(b"-")
        got = (int(s), int(i))
        if got != self._expected():
            want = "{}-{}".format(*self._expected())
            raise _Gap(f"expected stream entry {want}, found {entry_id.decode()} (trimmed)")
        return got

    def _read(self, conn: redis.Redis) -> None:
        """One round trip: the epoch, the revision and what the stream has after the last
        entry; only when that is nothing, a second one: XREAD BLOCK.

        Checking the epoch and revision before every read (not only after a reconnect the
        client may hide) proves the entries come from the history we were following; a
        server restarted empty is seen at once (a blocked read would wait for entries past
        the old position, which the new stream may not reach for long).
        """
        pipe = conn.pipeline(transaction=False)
        pipe.set(self._k.epoch, uuid.uuid4().hex, nx=True)
        pipe.get(self._k.epoch)
        pipe.get(self._k.seq)
        pipe.xread({self._k.stream: self._last_id()}, count=_BATCH)
        resp: Any
        _, epoch, seq_raw, resp = pipe.execute()
        seq = int(seq_raw or 0)
        if self._epoch is None:
            self._epoch = epoch
        if epoch != self._epoch:
            self._drv._note_epoch(epoch)
            raise _Gap("the database was replaced (server restarted empty?)", seq)
        if seq < self._seq:
            raise _Gap(f"server revision {seq} is behind {self._seq} (history lost)", seq)
        if not resp:
            if seq > self._seq or self._idx < self._n - 1:  # entries existed before XREAD
                raise _Gap(f"stream has nothing after {self._last_id()} (trimmed)", seq)
            resp = conn.xread({self._k.stream: self._last_id()}, count=_BATCH,
                              block=_BLOCK_MS)
            if not resp:
                return
        for entry_id, fields in resp[0][1]:
            if self._stop.is_set():
                return
            seq, idx = self._check_contiguous(entry_id)
            self._seq, self._idx, self._n = seq, idx, int(fields[b"n"])
            if b"noop" in fields:
                continue
            key = fields[b"key"].decode()
            if key.startswith(self._prefix):
                value = None if b"del" in fields else fields[b"value"]
                self._on_event(Event(seq, key, value, fields.get(b"prev")))
