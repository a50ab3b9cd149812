"""NbApi: the one path every NB write takes (Neutron plugin, df-db CLI, tests).

Layout of the key space under ``root`` (default ``/df/``)::

    obj/<table>/<id>                       JSON of the object (the only watched prefix)
    idx/<table>/<index>/<value>/<id>       secondary index entry (empty value)
    claim/<claim>                          unique claim -> "<table>/<id>" (IP in a subnet,
                                           MAC in a network, unique keys "ukey/<ns>/<n>")
    ctr/ukey/<ns>                          unique-key counter
    live/<chassis id>                      liveness: {"heartbeat": epoch seconds}, written
                                           by each controller, outside obj/ so no
                                           controller receives another's heartbeat
    txn/<token>                            write token: {"at": epoch seconds} (+ "fenced")

A write is ONE driver commit: the object, its index entries and its claims change together,
guarded by checks -- the object's own mod_revision (optimistic concurrency), the mod_revision
of every object it was validated against (so a reference cannot vanish or change under it),
absent claims, and on delete the emptiness of every index that refers to it. When a check
fails the write re-reads and re-validates (so the error it finally raises, if any, is
precise), at most ``_RETRIES`` times. A failed write changes nothing.

Ambiguous commits: a commit whose answer was lost (AmbiguousCommit: connection cut after
sending, timeout, etcd leader change) may or may not have been applied -- and may even be
applied later. Every write commit therefore also creates a unique write token
``txn/<uuid>``, checked absent in the same commit. On AmbiguousCommit the writer *fences*
the token: a commit that creates it only if it is still absent. If the fence succeeds, the
write was not applied and never can be (its own check now fails): it is redone from fresh
reads like a lost race. If the fence fails, the token exists: its value tells whether the
write put it (applied at the token's mod_revision: success) or an earlier fence of ours did.
So a write is applied at most once and its caller gets success whenever it was applied;
while the database stays unreachable the fence is retried for ``resolve_timeout`` seconds,
then the write raises AmbiguousCommit (the only case where its outcome stays unknown). Every
other DriverError from a write means nothing was written. A token's job ends with its
write's outcome: the next commits of the same NbApi delete it, and tokens older than
``TXN_TTL`` (left by a writer that died, or fences) are swept by any writer now and then.
Heartbeats (``beat``) are not tokened: one that is ambiguous is simply written again later.

A database found *replaced* (the driver's ``generation`` changed: restarted empty) empties
the write cache and drops the reserved unique-key blocks, so no key is handed out from the
old database's counter (claims are checked by every commit, so a stale block could not
give out a key twice; it would only collide later and switch this NbApi to probing).

The write path reads through a small cache of what this NbApi last read or wrote: a stale
entry cannot cause a wrong write (the commit's revision checks fail and the write is redone
from fresh reads), and an error decided on cached data is re-decided on fresh data before it
is raised. Public reads (get, list, ...) always go to the database.
"""

from __future__ import annotations

import builtins
import functools
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from dragonflow.db import errors
from dragonflow.db.driver import (
    KV,
    AmbiguousCommit,
    Check,
    Delete,
    Driver,
    DriverError,
    Exists,
    Op,
    PrefixEmpty,
    Put,
    TxnFailed,
)
from dragonflow.db.driver import Revision as RevCheck
from dragonflow.model import REFERENCED_BY, TABLES, NbObject, ValidationError
from dragonflow.model.scopes import relevance_scopes

LOG = logging.getLogger(__name__)
T = TypeVar("T", bound=NbObject)
_RETRIES = 8
UNIQUE_KEY_SPACE = 2**32 - 1  # keys are 1 .. 2**32-1; 0 means "not allocated"
KEY_BLOCK = 32  # unique-key counter values reserved per round trip
TXN_TTL = 3600.0  # seconds after which a write token is garbage, whoever wrote it
_SWEEP_EVERY = 600.0  # seconds between two sweeps of old write tokens by one NbApi
_CLEAN_PER_COMMIT = 16  # tokens of finished writes deleted by each later commit, at most


def _stamp(fenced: bool = False) -> bytes:
    return json.dumps({"at": round(time.time(), 3), **({"fenced": True} if fenced else {})},
                      separators=(",", ":")).encode()


def _token_info(raw: bytes) -> tuple[float, bool]:
    """(written at, fenced?) of a token's value; an unreadable one counts as ancient."""
    try:
        d = json.loads(raw)
        return float(d["at"]), d.get("fenced") is True
    except (ValueError, KeyError, TypeError):
        return 0.0, False


class _NotApplied(TxnFailed):
    """An ambiguous commit proven not applied (fenced: it never will be); redo the write."""


def encode(obj: NbObject) -> bytes:
    return json.dumps(obj.to_dict(), separators=(",", ":"), sort_keys=True).encode()


@functools.lru_cache(maxsize=8192)
def decode(table: str, raw: bytes) -> NbObject:
    """Objects are immutable, so equal bytes may share one decoded (validated) object."""
    return TABLES[table].from_dict(json.loads(raw))


_DECODE_ERRORS = (ValidationError, ValueError, KeyError, TypeError)
_logged_invalid: OrderedDict[tuple[str, int], None] = OrderedDict()  # (key, hash(value))
_logged_lock = threading.Lock()


def why_invalid(table: str, raw: bytes) -> str | None:
    """None if ``raw`` decodes as a ``table`` object, else the reason."""
    try:
        decode(table, raw)
        return None
    except _DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"


def decode_or_none(key: str, table: str, raw: bytes) -> NbObject | None:
    """The one rule for data nobody validated for the reader (another writer, a newer
    version, a hand edit): an undecodable object is logged ONCE per key and value, treated
    as absent, and the reader goes on."""
    try:
        return decode(table, raw)
    except _DECODE_ERRORS as e:
        mark = (key, hash(raw))
        with _logged_lock:
            first = mark not in _logged_invalid
            if first:
                _logged_invalid[mark] = None
                if len(_logged_invalid) > 10_000:
                    _logged_invalid.popitem(last=False)
        if first:
            LOG.error("NB object %s is invalid and is treated as absent: %s "
                      "(df-db ls shows it, df-db rm removes it)", key, e)
        return None


def table_of(table: str | type[NbObject]) -> str:
    name = table if isinstance(table, str) else table.TABLE
    if name not in TABLES:
        raise ValidationError("nb", "", "table", f"unknown table {name!r}; known: {sorted(TABLES)}")
    return name


class _Reads:
    """The objects one write was validated against, with the revisions to guard."""

    def __init__(self, nb: NbApi, fresh: bool) -> None:
        self.nb = nb
        self.fresh = fresh
        self.seen: dict[str, int] = {}  # key -> mod_revision (0 = absent)
        self.objs: dict[str, NbObject | None] = {}

    def lookup(self, table: str, obj_id: str) -> NbObject | None:
        key = self.nb.obj_key(table, obj_id)
        if key in self.objs:
            return self.objs[key]
        kv = self.nb._read(key, self.fresh)
        self.seen[key] = kv.mod_revision if kv else 0
        self.objs[key] = decode(table, kv.value) if kv else None
        return self.objs[key]

    def checks(self) -> list[Check]:
        return [RevCheck(k, r) if r else Exists(k) for k, r in self.seen.items() if r]


class _Cache:
    """LRU of key -> KV (None: known absent), shared by the threads using one NbApi."""

    def __init__(self, size: int = 20_000) -> None:
        self._d: OrderedDict[str, KV | None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[bool, KV | None]:
        with self._lock:
            if key not in self._d:
                return False, None
            self._d.move_to_end(key)
            return True, self._d[key]

    def put(self, key: str, kv: KV | None) -> None:
        with self._lock:
            self._d[key] = kv
            self._d.move_to_end(key)
            if len(self._d) > self._size:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()



def change_tags(new: NbObject | None, old: NbObject | None) -> tuple[str, ...]:
    """The tags of an object's change (see driver.Put): the relevance scopes of its new and
    its old state (a subscriber that followed it under the old one learns it left) and
    ``id:<id>`` (subscribers may follow single objects); ``""`` is the global scope."""
    tags: set[str] = set()
    for o in (new, old):
        if o is not None:
            tags.update(relevance_scopes(o))
            tags.add(f"id:{o.id}")
    return tuple(sorted(tags))

class NbApi:
    def __init__(self, driver: Driver, root: str = "/df/") -> None:
        if not root.startswith("/") or not root.endswith("/"):
            raise ValueError(f"NbApi root must start and end with '/': {root!r}")
        self.driver = driver
        self.root = root
        self._probe_ukeys = False  # set once a counter handed out a key that was taken
        self._cache = _Cache()
        self._key_blocks: dict[str, list[int]] = {}  # namespace -> unused keys, reserved
        self._key_lock = threading.Lock()
        self._generation = getattr(driver, "generation", 0)  # the database's history
        self.resolve_timeout = 30.0  # seconds to learn the outcome of an ambiguous commit
        self._txn_lock = threading.Lock()
        self._txn_done: list[str] = []  # tokens of finished writes, to delete
        self._swept = time.monotonic()  # last sweep of old tokens (the first in 10 min)

    def _sync_generation(self) -> None:
        """Forget the cache and the reserved keys if the database was found replaced."""
        gen = getattr(self.driver, "generation", 0)
        if gen == self._generation:
            return
        LOG.warning("NB database replaced (restarted empty?): dropping the write cache and "
                    "the reserved unique keys")
        self._generation = gen
        with self._key_lock:
            self._key_blocks.clear()
        self._cache.clear()

    def _read(self, key: str, fresh: bool) -> KV | None:
        """Write-path read: from the cache unless ``fresh``."""
        if not fresh:
            hit, kv = self._cache.get(key)
            if hit:
                return kv
        kv = self.driver.get(key)
        self._cache.put(key, kv)
        return kv

    def _commit(self, checks: list[Check], ops: list[Op]) -> int:
        """One write's commit, with its write token (see the module docstring): returns its
        revision; TxnFailed if it was not applied (a check failed, or an ambiguous commit was
        fenced); AmbiguousCommit only if the outcome could not be learnt in time."""
        tok = f"{self.root}txn/{uuid.uuid4().hex}"
        with self._txn_lock:
            clean = self._txn_done[:_CLEAN_PER_COMMIT]
            del self._txn_done[:_CLEAN_PER_COMMIT]
        try:
            try:
                rev = self.driver.commit([*checks, RevCheck(tok, 0)],
                                         [*ops, Put(tok, _stamp()), *map(Delete, clean)])
            except AmbiguousCommit as e:
                applied = self._resolve(tok, e)
                if applied is None:
                    raise _NotApplied(f"{e} -- it was not applied") from None
                rev = applied
        except BaseException:
            with self._txn_lock:  # not deleted: by a later commit then
                self._txn_done[:0] = clean
            raise
        with self._txn_lock:
            self._txn_done.append(tok)
        self._maybe_sweep()
        for op in ops:
            if op.key.startswith(self.obj_prefix):
                self._cache.put(op.key, KV(op.key, op.value, rev) if isinstance(op, Put)
                                else None)
        return rev

    def _resolve(self, tok: str, first: AmbiguousCommit) -> int | None:
        """The revision of the ambiguous commit that was to create ``tok`` if it was applied;
        None if it was not -- and now never will be: the fence creates ``tok`` first."""
        deadline = time.monotonic() + self.resolve_timeout
        delay, last = 0.05, str(first)
        while True:
            try:
                try:
                    self.driver.commit([RevCheck(tok, 0)], [Put(tok, _stamp(fenced=True))])
                    LOG.warning("NB commit answer lost (%s): it was not applied; redoing the "
                                "write", first)
                    return None
                except TxnFailed:  # the token exists: the write's or an earlier fence's
                    kv = self.driver.get(tok)
                if kv is not None and _token_info(kv.value)[1]:
                    LOG.warning("NB commit answer lost (%s): it was not applied (fenced "
                                "before); redoing the write", first)
                    return None
                if kv is not None:
                    LOG.warning("NB commit answer lost (%s): it was applied (revision %d)",
                                first, kv.mod_revision)
                    return kv.mod_revision
                # absent again: only a sweep (after TXN_TTL) removes tokens; look again
            except DriverError as e:  # the fence's answer lost too, or the DB still away
                last = str(e)
            if time.monotonic() >= deadline:
                raise AmbiguousCommit(
                    f"{first}; its outcome could not be learnt within {self.resolve_timeout} s "
                    f"({last}): read the object back before writing again") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _maybe_sweep(self) -> None:
        """Now and then, delete write tokens older than TXN_TTL (any writer's)."""
        now = time.monotonic()
        with self._txn_lock:
            if now - self._swept < _SWEEP_EVERY:
                return
            self._swept = now
        try:
            kvs, _ = self.driver.get_prefix(f"{self.root}txn/")
            cutoff = time.time() - TXN_TTL
            old = [kv.key for kv in kvs if _token_info(kv.value)[0] < cutoff]
            for i in range(0, len(old), 100):
                self.driver.commit([], [Delete(k) for k in old[i:i + 100]])
        except DriverError as e:
            LOG.info("NB: sweeping old write tokens failed (%s); trying again later", e)

    # --- keys ------------------------------------------------------------------------
    @property
    def obj_prefix(self) -> str:
        return f"{self.root}obj/"

    def obj_key(self, table: str, obj_id: str) -> str:
        return f"{self.root}obj/{table}/{obj_id}"

    def _idx_key(self, table: str, index: str, value: str, obj_id: str) -> str:
        return f"{self.root}idx/{table}/{index}/{value}/{obj_id}"

    def _claim_key(self, claim: str) -> str:
        return f"{self.root}claim/{claim}"

    def split_key(self, key: str) -> tuple[str, str]:
        """``obj/<table>/<id>`` key -> (table, id)."""
        table, _, obj_id = key[len(self.obj_prefix) :].partition("/")
        return table, obj_id

    # --- reads -----------------------------------------------------------------------
    def get(self, table: type[T] | str, obj_id: str) -> T | None:
        """The object, or None if there is none -- or if its stored value is invalid
        (logged once; see ``invalid()``)."""
        name = table_of(table)
        key = self.obj_key(name, obj_id)
        kv = self.driver.get(key)
        return decode_or_none(key, name, kv.value) if kv else None  # type: ignore[return-value]

    def get_or_raise(self, table: type[T] | str, obj_id: str) -> T:
        obj = self.get(table, obj_id)
        if obj is None:
            raise errors.NotFound(table_of(table), obj_id)
        return obj  # type: ignore[return-value]

    def list(self, table: type[T] | str, *, topic: str | None = None) -> builtins.list[T]:
        name = table_of(table)
        kvs, _ = self.driver.get_prefix(f"{self.obj_prefix}{name}/")
        objs = [o for kv in kvs if (o := decode_or_none(kv.key, name, kv.value)) is not None]
        return [o for o in objs if topic is None or o.topic == topic]  # type: ignore[misc]

    def invalid(self, table: type[NbObject] | str) -> builtins.list[tuple[str, str]]:
        """(id, reason) of every stored object of ``table`` that does not decode: what
        readers treat as absent, for an operator to see and remove (``df-db ls / rm``)."""
        name = table_of(table)
        kvs, _ = self.driver.get_prefix(f"{self.obj_prefix}{name}/")
        return [(self.split_key(kv.key)[1], why) for kv in kvs
                if (why := why_invalid(name, kv.value)) is not None]

    def by_index(self, table: type[T] | str, index: str, value: str) -> builtins.list[T]:
        """E.g. ``by_index(Port, "network_id", net_id)``: the ports of a network."""
        name = table_of(table)
        kvs, _ = self.driver.get_prefix(f"{self.root}idx/{name}/{index}/{value}/")
        out: builtins.list[NbObject] = []
        for kv in kvs:
            obj = self.get(name, kv.key.rsplit("/", 1)[1])
            if obj is not None:
                out.append(obj)
        return out  # type: ignore[return-value]

    def snapshot(self, must_contain: Iterable[str] | None = None
                 ) -> tuple[builtins.list[NbObject], int]:
        """Every object, from one consistent read, with its revision. With
        ``must_contain``, only objects whose stored JSON contains one of these strings (as
        a JSON string: an id, a project) are decoded and returned -- a superset of what a
        caller looking for those ids needs, found by a byte scan instead of decoding the
        whole NB."""
        kvs, rev = self.driver.get_prefix(self.obj_prefix)
        if must_contain is not None:
            needles = [json.dumps(s).encode() for s in set(must_contain)]
            kvs = [kv for kv in kvs if any(n in kv.value for n in needles)]
        objs = [decode_or_none(kv.key, self.split_key(kv.key)[0], kv.value) for kv in kvs]
        return [o for o in objs if o is not None], rev

    def revision(self) -> int:
        return self.driver.current_revision()

    # --- liveness (outside obj/: nobody's change stream carries it) --------------------
    def _live_key(self, chassis_id: str) -> str:
        return f"{self.root}live/{chassis_id}"

    def beat(self, chassis_id: str, at: float) -> None:
        """Record that ``chassis_id`` was alive at ``at`` (epoch seconds). Not an NB object:
        a heartbeat changes no object, wakes no controller and recompiles nothing (as OVN
        keeps liveness in Chassis_Private)."""
        if not chassis_id or "/" in chassis_id:
            raise errors.NbError("chassis", chassis_id, "id", "must be non-empty, without '/'")
        self.driver.commit([], [Put(self._live_key(chassis_id),
                                    json.dumps({"heartbeat": at}).encode())])

    def liveness(self) -> dict[str, float]:
        """Last heartbeat of every chassis that ever beat (a value that cannot be read is
        logged and left out, never an error)."""
        prefix = self._live_key("")
        kvs, _ = self.driver.get_prefix(prefix)
        out: dict[str, float] = {}
        for kv in kvs:
            try:
                at = json.loads(kv.value)["heartbeat"]
                if isinstance(at, (int, float)) and not isinstance(at, bool):
                    out[kv.key[len(prefix):]] = float(at)
                    continue
            except (ValueError, KeyError, TypeError):
                pass
            LOG.warning("NB liveness %s: unreadable value %r: ignored", kv.key, kv.value[:80])
        return out

    def forget_liveness(self, chassis_id: str) -> None:
        key = self._live_key(chassis_id)
        for attempt in range(3):  # a delete may be repeated: an ambiguous one is looked at again
            if self.driver.get(key) is None:
                return
            try:
                self.driver.commit([], [Delete(key)])
                return
            except AmbiguousCommit:
                if attempt == 2:
                    raise

    # --- writes ----------------------------------------------------------------------
    def create(self, obj: T) -> T:
        return self._retry(lambda fresh: self._create_once(obj, fresh))

    def update(self, obj: T, *, force_version: int | None = None,
               expect_version: int | None = None) -> T:
        """Write ``obj`` over the stored object.

        Default (optimistic concurrency): ``obj.version`` must equal the stored version (the
        caller read it), and the stored version becomes ``version + 1``. With
        ``force_version`` (an external source of truth such as Neutron's revision_number) the
        new version is exactly that and must be greater than the stored one; add
        ``expect_version`` to also require that the stored version is still the one the
        caller merged into (so a concurrent writer's change, e.g. a port status, is not lost).
        """
        return self._retry(
            lambda fresh: self._update_once(obj, force_version, fresh, expect_version))

    def delete(self, table: type[NbObject] | str, obj_id: str, *, expect_version: int | None = None
               ) -> None:
        name = table_of(table)
        self._retry(lambda fresh: self._delete_once(name, obj_id, expect_version, fresh))
        if name == "chassis":
            self.forget_liveness(obj_id)

    def _retry(self, attempt: Callable[[bool], Any]) -> Any:
        """Run ``attempt(fresh)``: first on cached reads, again on fresh reads if a check
        failed (lost race or stale cache) or if it decided an error on cached data."""
        last: TxnFailed | None = None
        fresh = False
        for _ in range(_RETRIES):
            self._sync_generation()
            try:
                return attempt(fresh)
            except TxnFailed as e:  # lost a race: re-read, re-validate, try again
                last = e
            except (errors.NbError, ValidationError):
                if fresh:
                    raise
            fresh = True
        raise errors.ConcurrentUpdate("nb", "", "*", f"gave up after {_RETRIES} races: {last}")

    def _alloc_unique_key(self, ns: str) -> int:
        """The next key of the counter. After a collision (e.g. objects restored from a dump
        behind the counter's back) keys are checked against their claims until a free one."""
        while True:
            key = (self._next_counter_value(ns) - 1) % UNIQUE_KEY_SPACE + 1
            if not self._probe_ukeys or self.driver.get(
                    self._claim_key(f"ukey/{ns}/{key}")) is None:
                return key

    def _next_counter_value(self, ns: str) -> int:
        """Counter values are reserved from the DB in blocks of ``KEY_BLOCK`` per NbApi, so
        most creates cost no counter round trip (unused values of a block are skipped)."""
        self._sync_generation()
        with self._key_lock:
            block = self._key_blocks.get(ns)
            if not block:
                top = self.driver.increment(f"{self.root}ctr/ukey/{ns}", KEY_BLOCK)
                block = self._key_blocks[ns] = list(range(top, top - KEY_BLOCK, -1))
            return block.pop()

    def _create_once(self, obj: T, fresh: bool) -> T:
        obj = obj.replace(version=max(obj.version, 1)).assign_unique_keys(self._alloc_unique_key)
        corrupt = self._corrupt(obj.TABLE, obj.id) if fresh else None
        if corrupt is not None:  # an invalid value is absent: the new object replaces it
            return self._write(obj, old=None, old_rev=corrupt.mod_revision, fresh=fresh,
                               orphans=self._orphans(obj.TABLE, obj.id))
        return self._write(obj, old=None, old_rev=0, fresh=fresh)

    def _corrupt(self, name: str, obj_id: str) -> KV | None:
        """The stored KV of ``name/obj_id`` if it exists and does not decode."""
        kv = self.driver.get(self.obj_key(name, obj_id))
        return kv if kv is not None and why_invalid(name, kv.value) is not None else None

    def _orphans(self, name: str, obj_id: str) -> builtins.list[str]:
        """Index entries and claims held by an object whose value cannot be decoded (found
        by scanning: the value that would list them is unreadable)."""
        owner = f"{name}/{obj_id}".encode()
        idx, _ = self.driver.get_prefix(f"{self.root}idx/{name}/")
        claims, _ = self.driver.get_prefix(self._claim_key(""))
        return ([kv.key for kv in idx if kv.key.rsplit("/", 1)[1] == obj_id]
                + [kv.key for kv in claims if kv.value == owner])

    def _update_once(self, obj: T, force_version: int | None, fresh: bool,
                     expect_version: int | None = None) -> T:
        name = obj.TABLE
        kv = self._read(self.obj_key(name, obj.id), fresh)
        if kv is None:
            raise errors.NotFound(name, obj.id)
        old = decode(name, kv.value)
        if expect_version is not None and expect_version != old.version:
            raise errors.StaleVersion(
                name, obj.id, f"write based on version {expect_version}, stored is {old.version}")
        if force_version is None:
            if obj.version != old.version:
                raise errors.StaleVersion(
                    name, obj.id, f"write based on version {obj.version}, stored is {old.version}")
            new_version = old.version + 1
        else:
            if force_version <= old.version:
                raise errors.StaleVersion(
                    name, obj.id, f"version {force_version} is not newer than {old.version}")
            new_version = force_version
        obj = obj.replace(version=new_version).carry_unique_keys(old)  # type: ignore[arg-type]
        obj = obj.assign_unique_keys(self._alloc_unique_key)
        return self._write(obj, old=old, old_rev=kv.mod_revision, fresh=fresh)

    def _owned_entries(self, obj: NbObject) -> tuple[set[str], dict[str, str]]:
        """(index keys, {claim key: field}) that ``obj`` holds."""
        idx = {
            self._idx_key(obj.TABLE, index, value, obj.id)
            for index, value in obj.index_entries()
            if value != obj.id  # self-references do not pin the object
        }
        claims = {self._claim_key(c): f for c, f in obj.claims()}
        for ns, ukey in obj.unique_keys():
            claims[self._claim_key(f"ukey/{ns}/{ukey}")] = "unique_key"
        return idx, claims

    def _write(self, obj: T, old: NbObject | None, old_rev: int, fresh: bool,
               orphans: builtins.list[str] = ()) -> T:  # type: ignore[assignment]
        name = obj.TABLE
        reads = _Reads(self, fresh)
        obj.validate_refs(reads.lookup)
        for ref_table, ref_id, field in obj.references():
            if ref_table == name and ref_id == obj.id:
                continue
            if reads.lookup(ref_table, ref_id) is None:
                raise ValidationError(name, obj.id, field, f"{ref_table} {ref_id!r} does not exist")
        owner = f"{name}/{obj.id}".encode()
        checks: list[Check] = [RevCheck(self.obj_key(name, obj.id), old_rev), *reads.checks()]
        ops: list[Op] = [Put(self.obj_key(name, obj.id), encode(obj), change_tags(obj, old))]
        idx, claims = self._owned_entries(obj)
        old_idx, old_claims = self._owned_entries(old) if old else (set(), {})
        new_claims = {k: f for k, f in claims.items() if k not in old_claims}
        for ckey in new_claims:  # must be free: checked by the commit, diagnosed if not
            checks.append(RevCheck(ckey, 0))
            ops.append(Put(ckey, owner))
        ops += [Put(k, b"") for k in sorted(idx - old_idx)]
        ops += [Delete(k) for k in sorted(old_idx - idx)]
        ops += [Delete(k) for k in sorted(set(old_claims) - set(claims))]
        ops += [Delete(k) for k in sorted(set(orphans) - idx - set(claims))]
        try:
            self._commit(checks, ops)
        except TxnFailed:
            self._diagnose(obj, old, new_claims, owner)
            raise
        return obj

    def _diagnose(self, obj: NbObject, old: NbObject | None, new_claims: dict[str, str],
                  owner: bytes) -> None:
        """A commit failed: raise the precise error if the input is at fault; return (and
        let the caller retry) if it only lost a race."""
        if old is None and (kv := self.driver.get(self.obj_key(obj.TABLE, obj.id))) is not None:
            if why_invalid(obj.TABLE, kv.value) is not None:
                return  # an invalid stored value counts as absent: retried, and replaced
            raise errors.AlreadyExists(obj.TABLE, obj.id)
        for ckey, field in new_claims.items():
            held = self.driver.get(ckey)
            if held is None or held.value == owner:
                continue
            if field == "unique_key":  # the counter is behind the claims: probe from now on
                self._probe_ukeys = True
                continue
            what = ckey[len(self._claim_key("")) :]
            raise ValidationError(obj.TABLE, obj.id, field,
                                  f"{what} is already used by {held.value.decode()}")

    def _delete_once(self, name: str, obj_id: str, expect_version: int | None, fresh: bool
                     ) -> None:
        key = self.obj_key(name, obj_id)
        kv = self._read(key, fresh)
        if kv is None:
            raise errors.NotFound(name, obj_id)
        old = decode_or_none(key, name, kv.value)
        if old is not None and expect_version is not None and expect_version != old.version:
            raise errors.StaleVersion(
                name, obj_id, f"delete based on version {expect_version}, stored is {old.version}")
        checks: list[Check] = [RevCheck(key, kv.mod_revision)]
        prefixes = [(ref_table, f"{self.root}idx/{ref_table}/{index}/{obj_id}/")
                    for ref_table, index in REFERENCED_BY.get(name, ())]
        checks += [PrefixEmpty(prefix) for _, prefix in prefixes]
        if old is not None:
            idx, claims = self._owned_entries(old)
            owned = sorted(idx) + sorted(claims)
        else:  # an invalid value: what it held is found by scanning
            owned = self._orphans(name, obj_id)
        ops: list[Op] = [Delete(key, change_tags(None, old)), *(Delete(k) for k in owned)]
        try:
            self._commit(checks, ops)
        except TxnFailed:  # still referenced? say by whom; else it was a race: retry
            users: list[str] = []
            for ref_table, prefix in prefixes:
                found, _ = self.driver.get_prefix(prefix)
                users += [f"{ref_table} {k.key.rsplit('/', 1)[1]!r}" for k in found]
            if users:
                raise errors.InUse(name, obj_id, users) from None
            raise
