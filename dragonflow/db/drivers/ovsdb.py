"""The OVSDB NB driver: the NB in a real ``ovsdb-server`` (standalone or a Raft cluster).

URL: ``ovsdb:tcp:HOST:PORT`` -- several remotes for a cluster, comma separated
(``ovsdb:tcp:10.0.0.1:6641,tcp:10.0.0.2:6641,tcp:10.0.0.3:6641``); ``ssl:HOST:PORT`` remotes
use TLS with the NbSecurity CA / certificate / key (OVSDB authenticates clients by their
certificate; a user name or password is refused). The database is ``DF_NB``, with the schema
shipped next to this module (``ovsdb_nb.ovsschema``); ``df-db ovsdb-create`` makes its file
(standalone, new cluster, or a member joining one).

Tables:

* ``Data``  one row per key: ``key`` (indexed), ``value`` (text, base64 when ``b64``),
  ``rev`` (mod_revision), ``parents`` (every ``/``-terminated prefix of the key, so a prefix
  read or watch is an ``includes`` condition the server evaluates)
* ``Log``   the change stream: one row per changed key per commit, ``(rev, i)`` indexed, ``n``
  events in the commit, ``value`` (absent on delete) and ``prev``, ``pr``: ``<dir>#<bucket>``
  for the key's every ``/``-terminated prefix (and ``""``), bucket = ``rev // BUCKET``; a
  commit that changed nothing visible writes one row with an empty key
* ``Meta``  one row: ``rev`` (the global revision), ``compacted`` (Log rows below it are
  gone), ``epoch`` (random id of this database's life: a database created anew gets another)
* ``Counter``  ``name`` -> ``value`` for :meth:`OvsdbDriver.increment`

Commits are optimistic and serialized by the global revision: the driver reads ``Meta.rev``
= R and what the checks and ops need in one read-only transaction, evaluates the checks on
that snapshot, and sends ONE transaction that first *waits* for ``Meta.rev == R`` (so it
applies only to exactly the state the checks were evaluated on), then writes the data, the
log rows and ``Meta.rev = R + 1``. If another commit got in first, the wait fails and
nothing is written: the driver reads again (a lost race, not a retried commit). A commit
whose answer is lost after it was sent raises AmbiguousCommit; NbApi resolves it.

Watches run the OVS Python IDL on the ``Log`` and ``Meta`` tables. The monitor condition
on ``Log`` (clauses of a condition are OR-ed, so it is one clause per bucket) is ``pr
includes "<prefix dir>#<b>"`` for the WINDOW buckets from the one of the next revision on:
the server sends only the watched prefix's changes of the next few thousand revisions, and
the IDL's copy holds no more than that window. Once the watch is half-way through it, the
condition moves forward (the server then sends what newly matches); changes are delivered
only up to the end of the window the server has acknowledged, so none is skipped while the
condition moves. The IDL reconnects by itself, follows the cluster leader and resumes with
``monitor_cond_since`` (the last transaction id): a cluster member that still has the
history sends exactly what was missed; otherwise the current rows are sent again and the
watch skips what it already delivered. History lost while away (``Log`` rows trimmed past
the watch's position: ``Meta.compacted``, or another ``epoch``) ends the watch with
``on_compacted``. Every ``trim_every`` commits the committing writer trims the log to its
last ``log_maxlen`` revisions in the same transaction.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import Any

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream

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
from dragonflow.db.security import NbSecurity, SecurityConfigError
from dragonflow.ovs import fastjson

LOG = logging.getLogger(__name__)
fastjson.install()  # the PyPI ovs package parses JSON in pure Python: 30x slower

DB = "DF_NB"
SCHEMA_FILE = "ovsdb_nb.ovsschema"
_IDLE_PROBE = 3.0  # seconds idle after which a connection is probed before a commit
_RACE_DEADLINE = 10.0  # seconds a commit may keep losing races before it gives up
BUCKET = 256  # revisions per Log bucket (the unit of a watch's monitor condition)
WINDOW = 8  # buckets a watch's condition covers; it moves on half-way through


def schema_path() -> str:
    """The packaged DF_NB schema (for ``ovsdb-tool create``)."""
    return str(resources.files("dragonflow.db.drivers").joinpath(SCHEMA_FILE))


def schema_json() -> dict[str, Any]:
    with open(schema_path(), encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def create_db_file(path: str, *, cluster: str | None = None, join: Sequence[str] = (),
                   tool: str = "ovsdb-tool") -> str:
    """Create the DF_NB database file ``path`` for ovsdb-server (the driver's setup tooling,
    ``df-db ovsdb-create``): standalone; with ``cluster`` (this member's Raft address, e.g.
    ``tcp:10.0.0.1:6643``) a new one-member cluster; with ``cluster`` and ``join`` (Raft
    addresses of members already in the cluster) a member that joins it when served.
    Returns what ovsdb-tool printed. Raises ValueError (bad arguments) or RuntimeError
    (ovsdb-tool failed, with its message)."""
    if os.path.exists(path):
        raise ValueError(f"{path} already exists (remove it to start over)")
    if join and not cluster:
        raise ValueError("joining a cluster needs this member's own Raft address (--cluster)")
    if cluster is None:
        cmd = [tool, "create", path, schema_path()]
    elif not join:
        cmd = [tool, "create-cluster", path, schema_path(), cluster]
    else:
        cmd = [tool, "join-cluster", path, DB, cluster, *join]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise RuntimeError(f"{tool} not found (apt-get install openvswitch-common)") from None
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {(out.stderr or out.stdout).strip()}")
    return out.stdout.strip()


def parse_remotes(url: str) -> list[str]:
    """``ovsdb:tcp:H:P[,tcp:H:P...]`` -> the remotes; a clear error for anything else."""
    scheme, sep, rest = url.partition(":")
    remotes = [r.strip() for r in rest.split(",") if r.strip()] if sep else []
    hint = "expected ovsdb:tcp:HOST:PORT or ovsdb:ssl:HOST:PORT, comma separated for a cluster"
    if scheme != "ovsdb" or not remotes:
        raise ValueError(f"ovsdb driver: bad url {url!r} ({hint})")
    for r in remotes:
        kind, _, addr = r.partition(":")
        host, _, port = addr.rpartition(":")
        if kind not in ("tcp", "ssl") or not host or not port.isdigit():
            raise ValueError(f"ovsdb driver: bad remote {r!r} in {url!r} ({hint})")
    return remotes


def parents(key: str) -> list[str]:
    """Every ``/``-terminated proper prefix of ``key``."""
    return [key[: i + 1] for i, ch in enumerate(key) if ch == "/" and i + 1 < len(key)]


def _dir_of(prefix: str) -> str:
    """The longest ``/``-terminated prefix of ``prefix`` (what the server can filter on)."""
    return prefix[: prefix.rfind("/") + 1]


_KEY_NS = uuid.UUID("8a0c1f64-5c1e-4a57-9d0e-2f4b6c8d1e37")  # Data row uuid = uuid5(key)
_COUNTER = uuid.UUID("3f9e2b71-0d4c-4e8a-b6f5-7a1c9e2d4b60")  # Counter row uuid = uuid5(name)


def _key_uuid(key: str, ns: uuid.UUID = _KEY_NS) -> str:
    """The uuid of ``key``'s row: ovsdb-server finds a row by ``_uuid`` directly, by any
    other column only by scanning its table."""
    return str(uuid.uuid5(ns, key))


def _where_key(key: str, ns: uuid.UUID = _KEY_NS) -> list[Any]:
    return [["_uuid", "==", ["uuid", _key_uuid(key, ns)]]]


def buckets(key: str, rev: int, tags: Sequence[str] = ()) -> list[str]:
    """The ``pr`` of a Log row: ``<dir>#<bucket>`` for "" and every parent dir of ``key``
    (what an unfiltered watch of the dir matches) and ``<dir>@<tag>#<bucket>`` for each of
    the change's tags (an untagged change has the global tag "")."""
    b = rev // BUCKET
    dirs = ["", *parents(key)]
    return [f"{d}#{b}" for d in dirs] + [f"{d}@{t}#{b}" for d in dirs for t in tags or ("",)]


def _enc(*values: bytes | None) -> tuple[list[str | None], bool]:
    """Values as OVSDB strings: UTF-8 text as is; anything else (or text with NUL) base64 --
    all of them, so one flag says which."""
    try:
        texts = [None if v is None else v.decode("utf-8") for v in values]
        if not any(t is not None and "\x00" in t for t in texts):
            return list(texts), False
    except UnicodeDecodeError:
        pass
    return [None if v is None else base64.b64encode(v).decode() for v in values], True


def _dec(text: str, b64: bool) -> bytes:
    return base64.b64decode(text) if b64 else text.encode("utf-8")


def _opt(value: str | None) -> Any:
    """An optional string column's OVSDB value."""
    return ["set", []] if value is None else value


def _opt_get(value: Any) -> str | None:
    if isinstance(value, list):  # ["set", []] or ["set", [x]]
        inner = value[1] if len(value) == 2 and value[0] == "set" else []
        return inner[0] if inner else None
    return value  # type: ignore[no-any-return]


class _Lost(Exception):
    """The connection failed; ``sent``: the request may have reached the server."""

    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent


class _Rpc:
    """One JSON-RPC connection to the cluster leader (or the standalone server), used by one
    caller at a time (the driver's lock). Reconnects lazily, trying the remotes in turn."""

    def __init__(self, remotes: list[str], timeout: float) -> None:
        self.remotes = remotes
        self.timeout = timeout
        self._conn: ovs.jsonrpc.Connection | None = None
        self._next = 0
        self._last_used = 0.0
        self.name = ""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self) -> ovs.jsonrpc.Connection:
        reasons = []
        for k in range(len(self.remotes)):
            remote = self.remotes[(self._next + k) % len(self.remotes)]
            err, stream = ovs.stream.Stream.open_block(
                ovs.stream.Stream.open(remote), int(self.timeout * 1000))
            if err:
                reasons.append(f"{remote}: {os.strerror(err)}")
                continue
            conn = ovs.jsonrpc.Connection(stream)
            try:
                why = self._unfit(conn)
            except _Lost as e:
                why = str(e)
            if why is None:
                self._next = (self._next + k) % len(self.remotes)
                self.name = remote
                self._last_used = time.monotonic()
                return conn
            conn.close()
            if remote.startswith("ssl:") and not why.startswith(("the server", "cluster")):
                why += (" (TLS handshake refused? the server must trust the CA of [df] "
                        "nb_db_cert_file, and [df] nb_db_ca_file must have signed the "
                        "server's certificate)")
            reasons.append(f"{remote}: {why}")
        self._next = (self._next + 1) % len(self.remotes)
        raise _Lost("no usable server: " + "; ".join(reasons), sent=False)

    def _unfit(self, conn: ovs.jsonrpc.Connection) -> str | None:
        """Why this server cannot serve us (None: it can): no DF_NB database, or a cluster
        member that is not connected to its cluster or not its leader."""
        res = self._call(conn, "transact", ["_Server", {
            "op": "select", "table": "Database", "where": [["name", "==", DB]],
            "columns": ["model", "connected", "leader", "schema"]}])
        rows = res[0].get("rows", []) if isinstance(res, list) and res else []
        if not rows:
            return (f"the server has no {DB} database (create its file with `df-db "
                    f"ovsdb-create` and serve it)")
        row = rows[0]
        if row.get("model") == "clustered":
            if not _opt_get(row.get("schema")):
                return "cluster member has not joined its cluster yet"
            if not row.get("connected"):
                return "cluster member is disconnected from its cluster"
            if not row.get("leader"):
                return "cluster member is not the leader"
        return None

    def _call(self, conn: ovs.jsonrpc.Connection, method: str, params: list[Any],
              sent_once: bool = False) -> Any:
        req = ovs.jsonrpc.Message.create_request(method, params)
        err = conn.send(req)
        if err:
            raise _Lost(f"send failed: {os.strerror(err)}", sent=False)
        deadline = time.monotonic() + self.timeout
        while True:
            conn.run()
            err, msg = conn.recv()
            if err == errno.EAGAIN:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Lost(f"no answer within {self.timeout:g} s", sent=True)
                poller = ovs.poller.Poller()
                conn.wait(poller)
                conn.recv_wait(poller)
                poller.timer_wait(int(left * 1000) + 1)
                poller.block()
                continue
            if err:
                why = "connection closed" if err == ovs.jsonrpc.EOF else os.strerror(err)
                raise _Lost(why, sent=True)
            assert msg is not None
            if msg.type == ovs.jsonrpc.Message.T_REQUEST and msg.method == "echo":
                conn.send(ovs.jsonrpc.Message.create_reply(msg.params, msg.id))
                continue
            if msg.id != req.id:
                continue
            if msg.type == ovs.jsonrpc.Message.T_ERROR:
                raise DriverError(f"ovsdb {self.name}: {method} refused: {msg.error}")
            return msg.result

    def call(self, method: str, params: list[Any]) -> Any:
        """One request on a live connection (connecting, and probing an idle one first, so
        that a connection the server dropped while idle never makes a commit ambiguous)."""
        if self._conn is not None and time.monotonic() - self._last_used > _IDLE_PROBE:
            try:
                self._call(self._conn, "echo", [])
            except _Lost:
                self.close()
        if self._conn is None:
            self._conn = self._connect()
        try:
            result = self._call(self._conn, method, params)
        except _Lost:
            self.close()
            self._next = (self._next + 1) % len(self.remotes)
            raise
        self._last_used = time.monotonic()
        return result


def _row_error(results: list[Any], nops: int) -> tuple[int, dict[str, Any]] | None:
    """The first failed operation of a transact reply (index, error), if any; an index of
    ``nops`` or more is the commit itself failing (storage, cluster)."""
    for i, r in enumerate(results):
        if isinstance(r, dict) and r.get("error"):
            return i, r
    if len(results) < nops:
        return len(results), {"error": "truncated reply"}
    return None


class OvsdbDriver:
    """NB driver on ovsdb-server (``DF_NB``). ``log_maxlen`` bounds the change history."""

    def __init__(self, url: str, *, timeout: float = 3.0, log_maxlen: int = 50_000,
                 trim_every: int = 256, security: NbSecurity | None = None) -> None:
        self.remotes = parse_remotes(url)
        if log_maxlen < 1 or trim_every < 1:
            raise ValueError("ovsdb driver: log_maxlen and trim_every must be >= 1")
        sec = security if security is not None else NbSecurity()
        if sec.user is not None or sec.password is not None:
            raise SecurityConfigError(
                "ovsdb driver: OVSDB has no user/password authentication; use ssl: remotes "
                "with a client certificate ([df] nb_db_cert_file / nb_db_key_file) and unset "
                "[df] nb_db_user / nb_db_password")
        tls = [r.startswith("ssl:") for r in self.remotes]
        if any(tls) and not all(tls):
            raise ValueError(f"ovsdb driver: {url!r} mixes ssl: and tcp: remotes")
        sec.check_tls(url, any(tls))
        if any(tls):
            _set_ssl(sec)
        self.url = url
        self._timeout = timeout
        self._maxlen = log_maxlen
        self._trim_every = trim_every
        self._rpc = _Rpc(self.remotes, timeout)
        self._lock = threading.Lock()
        self._seen_epoch: str | None = None
        self.generation = 0
        self._watches: list[_OvsdbWatch] = []

    # --- plumbing -------------------------------------------------------------------------
    def _transact(self, ops: list[dict[str, Any]], what: str, *, write: bool = False
                  ) -> list[Any]:
        try:
            with self._lock:
                try:
                    res = self._rpc.call("transact", [DB, *ops])
                except _Lost:
                    if write:
                        raise
                    # a read is safe to ask again: once, of the next server (leader change)
                    res = self._rpc.call("transact", [DB, *ops])
        except _Lost as e:
            if write and e.sent:
                raise AmbiguousCommit(f"ovsdb {self.url}: {what} failed: {e}: it may or may "
                                      f"not have been applied") from e
            raise DriverError(f"ovsdb {self.url}: {what} failed: {e}") from e
        if not isinstance(res, list):
            raise DriverError(f"ovsdb {self.url}: {what}: unexpected reply {res!r}")
        return res

    def _note_epoch(self, meta: dict[str, Any] | None) -> None:
        if meta is None:
            return
        epoch = meta.get("epoch")
        with self._lock:
            if self._seen_epoch is not None and epoch != self._seen_epoch:
                self.generation += 1
                LOG.warning("ovsdb %s: the database was replaced (epoch changed: created "
                            "anew?): its history is gone", self.url)
            self._seen_epoch = epoch

    @staticmethod
    def _meta_of(result: dict[str, Any]) -> dict[str, Any] | None:
        rows = result.get("rows", [])
        return rows[0] if rows else None

    @staticmethod
    def _sel_meta() -> dict[str, Any]:
        return {"op": "select", "table": "Meta", "where": [],
                "columns": ["rev", "compacted", "epoch"]}

    @staticmethod
    def _sel_key(key: str, columns: list[str] | None = None) -> dict[str, Any]:
        return {"op": "select", "table": "Data", "where": _where_key(key),
                "columns": columns or ["key", "value", "b64", "rev"]}

    @staticmethod
    def _sel_prefix(prefix: str, columns: list[str]) -> dict[str, Any]:
        d = _dir_of(prefix)
        where = [["parents", "includes", d]] if d else []
        return {"op": "select", "table": "Data", "where": where, "columns": columns}

    # --- reads ----------------------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        meta_r, row_r = self._transact([self._sel_meta(), self._sel_key(key)], f"get {key!r}")
        self._note_epoch(self._meta_of(meta_r))
        rows = row_r.get("rows", [])
        if not rows:
            return None
        r = rows[0]
        return KV(key, _dec(r["value"], r["b64"]), int(r["rev"]))

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        meta_r, rows_r = self._transact(
            [self._sel_meta(), self._sel_prefix(prefix, ["key", "value", "b64", "rev"])],
            f"get_prefix {prefix!r}")
        meta = self._meta_of(meta_r)
        self._note_epoch(meta)
        out = [KV(r["key"], _dec(r["value"], r["b64"]), int(r["rev"]))
               for r in rows_r.get("rows", []) if r["key"].startswith(prefix)]
        out.sort(key=lambda kv: kv.key)
        return out, int(meta["rev"]) if meta else 0

    def current_revision(self) -> int:
        (meta_r,) = self._transact([self._sel_meta()], "current_revision")
        meta = self._meta_of(meta_r)
        self._note_epoch(meta)
        return int(meta["rev"]) if meta else 0

    # --- writes ---------------------------------------------------------------------------
    def commit(self, checks: Sequence[Check], ops: Sequence[Op]) -> int:
        if not ops:
            raise ValueError("commit needs at least one op")
        for c in checks:
            if not isinstance(c, Revision | Exists | PrefixEmpty):
                raise TypeError(f"unknown check {c!r}")
        for op in ops:
            if not isinstance(op, Put | Delete):
                raise TypeError(f"unknown op {op!r}")
        deadline = time.monotonic() + _RACE_DEADLINE
        races = 0
        while True:
            rev = self._try_commit(checks, ops)
            if rev is not None:
                return rev
            races += 1
            if time.monotonic() > deadline:
                raise DriverError(f"ovsdb {self.url}: commit lost {races} races to other "
                                  f"writers in {_RACE_DEADLINE:g} s; nothing was written")
            if races > 2:
                time.sleep(random.uniform(0, min(0.05, 0.002 * races)))

    def _try_commit(self, checks: Sequence[Check], ops: Sequence[Op]) -> int | None:
        """One optimistic attempt: the revision, or None when another commit got in first."""
        keys = list(dict.fromkeys([op.key for op in ops] + [
            c.key for c in checks if isinstance(c, Revision | Exists)]))
        prefixes = list(dict.fromkeys(c.prefix for c in checks if isinstance(c, PrefixEmpty)))
        read = [self._sel_meta()] + [self._sel_key(k) for k in keys] + [
            self._sel_prefix(p, ["key"]) for p in prefixes]
        res = self._transact(read, "commit (read)")
        meta = self._meta_of(res[0])
        self._note_epoch(meta)
        state: dict[str, dict[str, Any] | None] = {}
        for k, r in zip(keys, res[1:1 + len(keys)], strict=True):
            rows = r.get("rows", [])
            state[k] = rows[0] if rows else None
        taken = {p: any(row["key"].startswith(p) for row in r.get("rows", []))
                 for p, r in zip(prefixes, res[1 + len(keys):], strict=True)}
        for c in checks:
            if isinstance(c, Revision):
                cur = state[c.key]
                ok = (int(cur["rev"]) if cur else 0) == c.mod_revision
            elif isinstance(c, Exists):
                ok = state[c.key] is not None
            else:
                ok = not taken[c.prefix]
            if not ok:
                raise TxnFailed(f"check failed: {c}")
        rev = (int(meta["rev"]) if meta else 0) + 1
        write: list[dict[str, Any]] = []
        if meta is None:  # a new database: the first commit creates its Meta row
            write += [{"op": "wait", "table": "Meta", "where": [], "columns": ["rev"],
                       "until": "==", "rows": [], "timeout": 0},
                      {"op": "insert", "table": "Meta", "row": {
                          "rev": rev, "compacted": 0, "epoch": uuid.uuid4().hex}}]
        else:
            write += [{"op": "wait", "table": "Meta", "where": [], "columns": ["rev"],
                       "until": "==", "rows": [{"rev": rev - 1}], "timeout": 0},
                      {"op": "update", "table": "Meta", "where": [], "row": {"rev": rev}}]
        events: list[tuple[str, bytes | None, dict[str, Any] | None, tuple[str, ...]]] = []
        existed = {k: state[k] is not None for k in keys}
        for op in ops:
            prev = state[op.key]
            if isinstance(op, Put):
                (text,), b64 = _enc(op.value)
                state[op.key] = {"key": op.key, "value": text, "b64": b64, "rev": rev}
                events.append((op.key, op.value, prev, op.tags))
            elif prev is not None:
                state[op.key] = None
                events.append((op.key, None, prev, op.tags))
        # one operation per key: its row's final state (a row deleted and made again in one
        # transaction is an update: its uuid, the key's, cannot be reused within it)
        for k in dict.fromkeys(op.key for op in ops):
            final = state[k]
            if final is not None:
                row = {"value": final["value"], "b64": final["b64"], "rev": rev}
                if existed[k]:
                    write.append({"op": "update", "table": "Data", "where": _where_key(k),
                                  "row": row})
                else:
                    write.append({"op": "insert", "table": "Data", "uuid": _key_uuid(k),
                                  "row": {"key": k, "parents": ["set", parents(k)], **row}})
            elif existed[k]:
                write.append({"op": "delete", "table": "Data", "where": _where_key(k)})
        n = max(1, len(events))
        if not events:
            write.append({"op": "insert", "table": "Log", "row": {
                "rev": rev, "i": 0, "n": 1, "key": "", "b64": False}})
        for i, (key, value, prev, tags) in enumerate(events):
            pv = _dec(prev["value"], prev["b64"]) if prev is not None else None
            (v, p), b64 = _enc(value, pv)
            write.append({"op": "insert", "table": "Log", "row": {
                "rev": rev, "i": i, "n": n, "key": key, "value": _opt(v), "prev": _opt(p),
                "b64": b64, "pr": ["set", buckets(key, rev, tags)]}})
        if rev % self._trim_every == 0 and rev > self._maxlen:
            floor = rev - self._maxlen + 1
            write += [{"op": "delete", "table": "Log", "where": [["rev", "<", floor]]},
                      {"op": "update", "table": "Meta", "where": [["compacted", "<", floor]],
                       "row": {"compacted": floor}}]
        out = self._transact(write, "commit", write=True)
        failed = _row_error(out, len(write))
        if failed is None:
            return rev
        i, err = failed
        if i == 0 and err.get("error") == "timed out":
            return None  # another commit moved Meta.rev first: nothing was written
        if i >= len(write):
            raise AmbiguousCommit(f"ovsdb {self.url}: commit failed: {err}: it may or may not "
                                  f"have been applied")
        raise DriverError(f"ovsdb {self.url}: commit refused at operation {i} "
                          f"({write[i]['op']} {write[i]['table']}): {err}")

    def increment(self, key: str, amount: int = 1) -> int:
        if amount < 1:
            raise ValueError(f"increment amount must be >= 1, got {amount}")
        where = _where_key(key, _COUNTER)
        while True:
            ops: list[dict[str, Any]] = [{"op": "mutate", "table": "Counter", "where": where,
                    "mutations": [["value", "+=", amount]]},
                   {"op": "select", "table": "Counter", "where": where, "columns": ["value"]}]
            res = self._increment_txn(ops, key)
            if res[0].get("count", 0) == 1:
                return int(res[1]["rows"][0]["value"])
            ops = [{"op": "wait", "table": "Counter", "where": where, "columns": ["name"],
                    "until": "==", "rows": [], "timeout": 0},
                   {"op": "insert", "table": "Counter", "uuid": _key_uuid(key, _COUNTER),
                    "row": {"name": key, "value": amount}}]
            res = self._increment_txn(ops, key)
            if _row_error(res, len(ops)) is None:
                return amount
            # another writer created the counter first: add to it

    def _increment_txn(self, ops: list[dict[str, Any]], key: str) -> list[Any]:
        try:
            return self._transact(ops, f"increment {key!r}", write=True)
        except AmbiguousCommit as e:
            # the block may have been taken or not: it is simply never handed out
            raise DriverError(str(e)) from e

    def compact(self, revision: int) -> None:
        self._transact([
            {"op": "delete", "table": "Log", "where": [["rev", "<", revision]]},
            {"op": "update", "table": "Meta", "where": [["compacted", "<", revision]],
             "row": {"compacted": revision}}], f"compact to {revision}")

    # --- watch ----------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int, on_event: Callable[[Event], None],
              on_compacted: Callable[[int], None]) -> _OvsdbWatch:
        w = _OvsdbWatch(self, prefix, max(start_revision, 1), on_event, on_compacted)
        with self._lock:
            self._watches = [x for x in self._watches if x.alive()] + [w]
        w.start()
        return w

    def close(self) -> None:
        with self._lock:
            watches, self._watches = self._watches, []
        for w in watches:
            w.cancel()
        with self._lock:
            self._rpc.close()


def _set_ssl(sec: NbSecurity) -> None:
    """The OVS Python stream library keeps its TLS files process-wide."""
    if not (sec.ca_file and sec.cert_file and sec.key_file):
        raise SecurityConfigError(
            "ovsdb driver: ssl: remotes need [df] nb_db_ca_file, nb_db_cert_file and "
            "nb_db_key_file (OVSDB authenticates clients by certificate)")
    ovs.stream.Stream.ssl_set_ca_cert_file(sec.ca_file)
    ovs.stream.Stream.ssl_set_certificate_file(sec.cert_file)
    ovs.stream.Stream.ssl_set_private_key_file(sec.key_file)


class _Gap(Exception):
    pass


class _LogIdl(ovs.db.idl.Idl):
    """An IDL that hands every new Log row to its watch."""

    def __init__(self, remote: str, helper: ovs.db.idl.SchemaHelper,
                 sink: list[tuple[int, int, str, Any, Any, bool]]) -> None:
        super().__init__(remote, helper, leader_only=True)
        self._sink = sink

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        if event == ovs.db.idl.ROW_CREATE and row._table.name == "Log":
            self._sink.append((row.rev, row.i, row.key, row.value, row.prev, row.b64))


class _OvsdbWatch:
    """Delivery thread: an IDL monitoring the Log rows of one prefix from a revision on."""

    def __init__(self, drv: OvsdbDriver, prefix: str, start_revision: int,
                 on_event: Callable[[Event], None], on_compacted: Callable[[int], None]
                 ) -> None:
        self._drv = drv
        self._prefix = prefix
        self._dir = _dir_of(prefix)
        self._on_event = on_event
        self._on_compacted = on_compacted
        self._last = start_revision - 1  # every change up to here is delivered
        self._from = start_revision // BUCKET  # first bucket of the requested condition
        self.rows_received = 0  # Log rows the server sent (stats; tests of the filtering)
        # server-side filter (set_tags): None = everything under the prefix. _tlock guards
        # these; it is never held while a callback runs
        self._tlock = threading.Lock()
        self._tags: frozenset[str] | None = None
        self._cond_dirty = False
        self._frozen = False  # deliver nothing past _last until the server applied _want
        self._want: list[Any] | None = None
        self._epoch: str | None = drv._seen_epoch
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._thread = threading.Thread(target=self._run, name="df-ovsdb-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def cancel(self) -> None:
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if threading.current_thread() is not self._thread and self._thread.ident is not None:
            self._thread.join()

    def set_tags(self, tags: Iterable[str] | None) -> None:
        """Only changes with one of these tags (or untagged ones) from now on; None: all.
        A grown set holds delivery back until the server applied it (driver.Watch)."""
        new = None if tags is None else frozenset(tags) | {""}
        with self._tlock:
            if new == self._tags:
                return
            grew = new is None or (self._tags is not None and not new <= self._tags)
            self._tags = new
            self._cond_dirty = True
            self._frozen = self._frozen or grew
        try:
            os.write(self._wake_w, b"t")
        except OSError:
            pass

    def _cond(self) -> list[Any]:
        window = range(self._from, self._from + WINDOW)
        if self._tags is None:
            return [["pr", "includes", f"{self._dir}#{b}"] for b in window]
        return [["pr", "includes", f"{self._dir}@{t}#{b}"]
                for t in sorted(self._tags) for b in window]

    def _update_cond(self, idl: ovs.db.idl.Idl) -> None:
        """Ask the server for the current condition (IDL thread only)."""
        with self._tlock:
            self._cond_dirty = False
            self._want = self._cond()
            idl.cond_change("Log", self._want)

    @staticmethod
    def _covered_to(cond: Any) -> int:
        """The last revision a condition of ours makes the server send (-1: none)."""
        if cond == [True]:
            return 2**62
        bs = [int(c[2].rsplit("#", 1)[1]) for c in cond or () if isinstance(c, list)]
        return (max(bs) + 1) * BUCKET - 1 if bs else -1

    def _run(self) -> None:
        helper = ovs.db.idl.SchemaHelper(schema_json=schema_json())
        helper.register_columns("Log", ["rev", "i", "key", "value", "prev", "b64"])
        helper.register_columns("Meta", ["rev", "compacted", "epoch"])
        pending: list[tuple[int, int, str, Any, Any, bool]] = []
        idl = _LogIdl(",".join(self._drv.remotes), helper, pending)
        self._update_cond(idl)
        seqno = idl.change_seqno
        try:
            while not self._stop.is_set():
                if self._cond_dirty:
                    self._update_cond(idl)
                idl.run()
                if idl.change_seqno != seqno or pending:
                    seqno = idl.change_seqno
                    if idl.state == idl.IDL_S_MONITORING:
                        self._deliver(idl, pending)
                if self._stop.is_set():
                    return
                poller = ovs.poller.Poller()
                idl.wait(poller)
                poller.fd_wait(self._wake_r, ovs.poller.POLLIN)
                poller.timer_wait(10_000)  # (the IDL asks for its own timers)
                poller.block()
                try:
                    os.read(self._wake_r, 64)  # drained: set_tags' wake-ups are one-shot
                except OSError:  # (non-blocking: nothing there)
                    pass
        except _Gap as gap:
            LOG.warning("ovsdb watch %r: %s; resync needed", self._prefix, gap)
            if not self._stop.is_set():
                self._on_compacted(self._current(idl))
        except Exception:
            LOG.exception("ovsdb watch %r stopped by an error", self._prefix)
        finally:
            self._stop.set()
            idl.close()
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    @staticmethod
    def _meta(idl: ovs.db.idl.Idl) -> Any:
        rows = list(idl.tables["Meta"].rows.values())
        return rows[0] if rows else None

    def _current(self, idl: ovs.db.idl.Idl) -> int:
        meta = self._meta(idl)
        return int(meta.rev) if meta is not None else self._last

    def _deliver(self, idl: ovs.db.idl.Idl,
                 pending: list[tuple[int, int, str, Any, Any, bool]]) -> None:
        meta = self._meta(idl)
        if meta is None:
            if self._epoch is not None:
                raise _Gap("the database was replaced (its Meta row is gone)")
            pending.clear()
            return
        if self._epoch is None:
            self._epoch = meta.epoch
        elif meta.epoch != self._epoch:
            self._drv._note_epoch({"epoch": meta.epoch})
            raise _Gap("the database was replaced (another epoch)")
        if meta.compacted > self._last + 1:
            raise _Gap(f"history before revision {meta.compacted} is gone and this watch "
                       f"needs it from {self._last + 1}")
        # everything up to here has arrived: the server's revision, within what the
        # condition the server acknowledged makes it send -- and while a grown tag set is
        # not applied yet, nothing new (its changes after _last come with it, in order)
        acked = idl.tables["Log"].condition_state.acked
        with self._tlock:
            if self._frozen and not self._cond_dirty and acked == self._want:
                self._frozen = False
            frozen = self._frozen
        upto = self._last if frozen else max(self._last, min(int(meta.rev),
                                                            self._covered_to(acked)))
        pending.sort()
        cut = 0
        while cut < len(pending) and pending[cut][0] <= upto:
            cut += 1
        rows, pending[:] = pending[:cut], pending[cut:]
        self.rows_received += len(rows)
        for rev, _i, key, value, prev, b64 in rows:
            if self._stop.is_set():
                return
            if rev > self._last and key.startswith(self._prefix) and key:
                v = _dec(value[0], b64) if value else None
                p = _dec(prev[0], b64) if prev else None
                self._on_event(Event(rev, key, v, p))
        self._last = upto
        if (self._last + 1) // BUCKET >= self._from + WINDOW // 2:
            self._from = (self._last + 1) // BUCKET
            self._update_cond(idl)
