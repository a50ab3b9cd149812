"""The embedded NB driver: an in-process transactional key-value store with history.

One process, many users: every NbApi and every local controller in the process that share a
``MemoryDriver`` instance see one database (``memory://name`` URLs name a process-wide
instance, so several simulated nodes in one process share it). History is kept in a bounded
log; a watcher that falls behind the log's start is told to resync, exactly like etcd
compaction.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from urllib.parse import urlparse

from dragonflow.db.driver import (
    KV,
    Check,
    Delete,
    Event,
    Exists,
    Op,
    PrefixEmpty,
    Put,
    Revision,
    TxnFailed,
)

_INSTANCES: dict[str, MemoryDriver] = {}
_INSTANCES_LOCK = threading.Lock()


def _check_holds(data: dict[str, tuple[bytes, int]], keys: list[str], check: Check) -> bool:
    if isinstance(check, Revision):
        cur = data.get(check.key)
        return (cur[1] if cur else 0) == check.mod_revision
    if isinstance(check, Exists):
        return check.key in data
    if isinstance(check, PrefixEmpty):
        i = bisect.bisect_left(keys, check.prefix)
        return i == len(keys) or not keys[i].startswith(check.prefix)
    raise TypeError(f"unknown check {check!r}")


class _MemoryWatch:
    def __init__(
        self,
        db: MemoryDriver,
        prefix: str,
        start_revision: int,
        on_event: Callable[[Event], None],
        on_compacted: Callable[[int], None],
    ) -> None:
        self._db = db
        self._prefix = prefix
        self._next = start_revision
        self._on_event = on_event
        self._on_compacted = on_compacted
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="df-memory-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = self._db
        while True:
            with db._cond:
                while not self._stopped and db._revision < self._next:
                    db._cond.wait()
                if self._stopped:
                    return
                if self._next <= db._compacted:
                    compacted = db._compacted
                    self._stopped = True
                    lost = True
                else:
                    lost = False
                    i = bisect.bisect_left(db._log_revs, self._next)
                    batch = db._log[i:]
                    self._next = db._revision + 1
            if lost:
                self._on_compacted(compacted)
                return
            for ev in batch:
                if self._stopped:
                    return
                if ev.key.startswith(self._prefix):
                    self._on_event(ev)

    def cancel(self) -> None:
        with self._db._cond:
            self._stopped = True
            self._db._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()


class MemoryDriver:
    """In-process NB store. ``history`` bounds the change log (older entries are compacted)."""

    def __init__(self, url: str = "memory://", *, history: int = 1_000_000) -> None:
        if urlparse(url).scheme != "memory":
            raise ValueError(f"memory driver: bad url {url!r} (expected memory://[name])")
        self._data: dict[str, tuple[bytes, int]] = {}
        self._keys: list[str] = []  # sorted, for prefix scans
        self._counters: dict[str, int] = {}
        self._log: list[Event] = []
        self._log_revs: list[int] = []
        self._revision = 0
        self._compacted = 0  # revisions <= this are gone from the log
        self._history = history
        self._cond = threading.Condition()
        self._watches: list[_MemoryWatch] = []

    @classmethod
    def shared(cls, url: str) -> MemoryDriver:
        """The process-wide instance for ``memory://NAME`` (created on first use)."""
        name = urlparse(url).netloc
        with _INSTANCES_LOCK:
            if name not in _INSTANCES:
                _INSTANCES[name] = cls(url)
            return _INSTANCES[name]

    def get(self, key: str) -> KV | None:
        with self._cond:
            cur = self._data.get(key)
            return KV(key, cur[0], cur[1]) if cur else None

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        with self._cond:
            i = bisect.bisect_left(self._keys, prefix)
            out = []
            while i < len(self._keys) and self._keys[i].startswith(prefix):
                key = self._keys[i]
                value, rev = self._data[key]
                out.append(KV(key, value, rev))
                i += 1
            return out, self._revision

    def commit(self, checks: Sequence[Check], ops: Sequence[Op]) -> int:
        if not ops:
            raise ValueError("commit needs at least one op")
        with self._cond:
            for check in checks:
                if not _check_holds(self._data, self._keys, check):
                    raise TxnFailed(f"check failed: {check}")
            self._revision += 1
            rev = self._revision
            for op in ops:
                prev = self._data.get(op.key)
                if isinstance(op, Put):
                    if prev is None:
                        bisect.insort(self._keys, op.key)
                    self._data[op.key] = (op.value, rev)
                    ev = Event(rev, op.key, op.value, prev[0] if prev else None)
                elif isinstance(op, Delete):
                    if prev is None:
                        continue
                    del self._data[op.key]
                    del self._keys[bisect.bisect_left(self._keys, op.key)]
                    ev = Event(rev, op.key, None, prev[0])
                else:
                    raise TypeError(f"unknown op {op!r}")
                self._log.append(ev)
                self._log_revs.append(rev)
            if len(self._log) > self._history:
                self._compact_locked(self._log_revs[len(self._log) - self._history])
            self._cond.notify_all()
            return rev

    def increment(self, key: str, amount: int = 1) -> int:
        if amount < 1:
            raise ValueError(f"increment amount must be >= 1, got {amount}")
        with self._cond:
            value = self._counters.get(key, 0) + amount
            self._counters[key] = value
            return value

    def current_revision(self) -> int:
        with self._cond:
            return self._revision

    def watch(
        self,
        prefix: str,
        start_revision: int,
        on_event: Callable[[Event], None],
        on_compacted: Callable[[int], None],
    ) -> _MemoryWatch:
        w = _MemoryWatch(self, prefix, max(start_revision, 1), on_event, on_compacted)
        with self._cond:
            self._watches = [x for x in self._watches if not x._stopped] + [w]
        return w

    def _compact_locked(self, revision: int) -> None:
        i = bisect.bisect_left(self._log_revs, revision)
        del self._log[:i]
        del self._log_revs[:i]
        self._compacted = max(self._compacted, revision - 1)

    def compact(self, revision: int) -> None:
        with self._cond:
            self._compact_locked(revision)
            self._cond.notify_all()

    def close(self) -> None:
        for w in list(self._watches):
            w.cancel()
        self._watches.clear()
