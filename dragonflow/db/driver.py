"""The NB database driver protocol: a small transactional key-value store with a
resumable, ordered change stream.

Every driver (memory, etcd, redis) implements exactly this; NbApi builds the typed model,
validation, indexes and unique keys on top of it, so those rules live in one place.

Semantics every driver must honour (the conformance suite in tests/db checks them):

* Keys are ``str`` (``/``-separated, no NUL), values are ``bytes``.
* Every successful :meth:`Driver.commit` gets exactly one new, strictly increasing, global
  *revision*; every key it writes or deletes gets that revision as its ``mod_revision``.
  Revisions are contiguous per driver for commits (etcd: its own revision counter, which
  also counts :meth:`Driver.increment`; redis: a sequence kept by the Lua script; memory: a
  counter) -- consumers must only rely on "strictly increasing", never on "+1".
* :meth:`Driver.commit` is atomic: either every check holds and every op is applied, or
  nothing changes and :class:`TxnFailed` is raised. When the request may have reached the
  server but no answer came back (connection lost after sending, timeout, leader change) it
  raises :class:`AmbiguousCommit`: the commit may or may not have been applied, and may even
  still be applied later if its checks hold then. Any other :class:`DriverError` from
  ``commit`` means nothing was written. Drivers never retry a commit themselves; NbApi
  resolves the ambiguity (see ``NbApi._commit``).
* A watch delivers every change under its prefix with ``revision >= start_revision``, in
  revision order (changes of one commit in op order), exactly once, across lost connections
  (the driver reconnects and resumes by itself from the last delivered revision + 1).
  If the history it needs is gone (compaction, stream trimmed, server restarted empty) it
  calls ``on_compacted(revision)`` once and stops: the consumer must resync from a snapshot.
* Callbacks run on a driver-owned thread, never concurrently with each other for one watch.
* A driver that can find the database *replaced* (a server restarted empty, another cluster
  behind the same address) counts those findings in an ``int`` attribute ``generation``
  (optional: absent means 0, e.g. memory). Anything read or reserved before it changed (cached
  values, reserved counter blocks) belongs to a history that is gone; every watch started
  before it changed gets ``on_compacted``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class DriverError(Exception):
    """The DB could not be reached or answered with an error."""


class TxnFailed(DriverError):
    """A commit's checks did not hold; nothing was written."""


class AmbiguousCommit(DriverError):
    """A commit's request may have been applied, but its answer was lost (connection cut after
    sending, deadline exceeded, leader change): the outcome is unknown to the driver."""


class Compacted(DriverError):
    """The requested history is gone; resync from a snapshot at ``revision`` or later."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"history compacted up to revision {revision}; resync required")
        self.revision = revision


@dataclass(frozen=True, slots=True)
class KV:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change of one key. ``value is None`` means the key was deleted."""

    revision: int
    key: str
    value: bytes | None
    prev_value: bytes | None


# --- commit checks -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Revision:
    """``key``'s mod_revision must equal ``mod_revision``; 0 means "must not exist"."""

    key: str
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Exists:
    """``key`` must exist (any revision)."""

    key: str


@dataclass(frozen=True, slots=True)
class PrefixEmpty:
    """No key may start with ``prefix``."""

    prefix: str


Check = Revision | Exists | PrefixEmpty


# --- commit ops ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Put:
    """``tags``: labels of this change (the relevance scopes of the object, old and new) a
    driver may filter watches on (see :meth:`Watch.set_tags`); untagged means global."""

    key: str
    value: bytes
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    tags: tuple[str, ...] = ()


Op = Put | Delete


class Watch(Protocol):
    def cancel(self) -> None:
        """Stop delivering; returns after the delivery thread has ended."""

    # Optional (ovsdb has it): ``set_tags(tags: Iterable[str] | None) -> None`` -- from now on
    # the server may leave out changes none of whose tags is in ``tags`` (untagged changes
    # are always sent; None: everything). A consumer must still filter what it gets: this
    # only saves the traffic. When the set grows, the watch delivers nothing newer than what
    # it had delivered until the server applies the new filter, so every change of the added
    # tags after that point is delivered, in order.


@runtime_checkable
class Driver(Protocol):
    def get(self, key: str) -> KV | None: ...

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """All keys under ``prefix`` (sorted by key) from ONE consistent snapshot, and the
        revision of that snapshot (the DB's current revision when it was taken)."""
        ...

    def commit(self, checks: Sequence[Check], ops: Sequence[Op]) -> int:
        """Atomically verify ``checks`` and apply ``ops``; return the new revision.
        Raises TxnFailed (nothing written) if a check fails. ``ops`` is never empty."""
        ...

    def increment(self, key: str, amount: int = 1) -> int:
        """Atomically add ``amount`` (>= 1) to the integer counter at ``key`` (absent = 0)
        and return the new value: the caller owns the block (value-amount, value]. No two
        calls ever get overlapping blocks."""
        ...

    def current_revision(self) -> int: ...

    def watch(
        self,
        prefix: str,
        start_revision: int,
        on_event: Callable[[Event], None],
        on_compacted: Callable[[int], None],
    ) -> Watch: ...

    def compact(self, revision: int) -> None:
        """Discard history before ``revision`` (tests and maintenance)."""
        ...

    def close(self) -> None: ...
