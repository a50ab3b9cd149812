"""The NB change stream: typed, ordered, topic-filtered, resumable.

A :class:`Subscription` turns a driver watch on ``obj/`` into :class:`Change` objects:

* resumes from ``from_revision`` (the last revision the subscriber applied + 1), so a
  restarted controller misses nothing;
* when the history it needs is gone (compaction / trimmed stream / server restarted empty),
  it takes one consistent snapshot and hands it to ``on_resync(objects, revision)`` -- the
  subscriber replaces its state with it -- then follows the stream from the snapshot
  revision (a snapshot or watch that fails is tried again until it works or ``close()``);
* filtering by scope: an object is delivered if one of its scopes (``scope_of(obj)``; by
  default its ``topic``, the project) is in ``topics``, or it is global (scope ""), or its id
  was added with ``add_ids``. The local controller passes scopes that follow *networks*
  (pipeline/topology.py ``relevance_scopes``). ``add_topics`` delivers the current objects of
  the new scopes as changes at a snapshot revision R and suppresses stream events of those
  scopes at or below R, so the subscriber sees each object's history exactly once from R on;
  ``remove_topics`` stops delivering them (the subscriber forgets what it no longer needs).

All callbacks run under one delivery lock: never two at a time, always in revision order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dragonflow.db.driver import DriverError, Event, Watch
from dragonflow.db.nbapi import NbApi, decode_or_none
from dragonflow.model import NbObject
from dragonflow.model.scopes import relevance_scopes

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Change:
    revision: int
    table: str
    id: str
    obj: NbObject | None  # the new object; None when deleted
    old: NbObject | None  # the previous object, if known

    @property
    def topic(self) -> str:
        cur = self.obj or self.old
        return cur.topic if cur else ""


def topic_scope(obj: NbObject) -> tuple[str, ...]:
    """The default scope of an object: its project ("" = global)."""
    return (obj.topic,)


class Subscription:
    def __init__(
        self,
        nb: NbApi,
        on_change: Callable[[Change], None],
        on_resync: Callable[[list[NbObject], int], None],
        *,
        from_revision: int,
        topics: Iterable[str] | None = None,
        scope_of: Callable[[NbObject], Iterable[str]] = topic_scope,
        scope_id: Callable[[str], str] | None = None,
    ) -> None:
        self._scope_of = scope_of
        # the string every object of a scope contains in its stored form (an id), so
        # add_topics decodes only candidates, not the whole NB (None: decode everything)
        self._scope_id = scope_id
        self._nb = nb
        self._on_change = on_change
        self._on_resync = on_resync
        self._topics: set[str] | None = None if topics is None else set(topics)
        self._topic_since: dict[str, int] = {}
        self._ids: set[str] = set()  # objects wanted whatever their topic
        self._lock = threading.RLock()
        self._watch: Watch | None = None
        self._closed = False
        self.last_revision = from_revision - 1
        self._start_watch(from_revision)

    # --- filtering -------------------------------------------------------------------
    def _wanted(self, obj: NbObject, revision: int) -> bool:
        if self._topics is None or obj.id in self._ids:
            return True
        for scope in self._scope_of(obj):
            if scope == "" or (scope in self._topics
                               and revision > self._topic_since.get(scope, 0)):
                return True
        return False

    def _start_watch(self, from_revision: int) -> None:
        self._watch = self._nb.driver.watch(
            self._nb.obj_prefix, from_revision, self._on_event, self._on_compacted)
        self._filter_on_server()

    def _filter_on_server(self) -> None:
        """Tell a watch that can filter on the server (ovsdb) which tags to send: what this
        subscription wants, when its scopes are the tags writers put on changes (NbApi tags
        every object change with its relevance scopes and id). Called BEFORE a snapshot that
        adds scopes: the watch then holds back until the server sends the new scopes, so
        nothing of them after the snapshot is missed (driver.Watch.set_tags)."""
        set_tags = getattr(self._watch, "set_tags", None)
        if set_tags is None or self._scope_of is not relevance_scopes:
            return
        if self._topics is None:
            set_tags(None)
        else:
            set_tags({"", *self._topics, *(f"id:{i}" for i in self._ids)})

    def _on_event(self, ev: Event) -> None:
        table, obj_id = self._nb.split_key(ev.key)
        # an invalid object is logged and seen as absent: the stream goes on
        obj = decode_or_none(ev.key, table, ev.value) if ev.value is not None else None
        old = decode_or_none(ev.key, table, ev.prev_value) if ev.prev_value is not None else None
        change = Change(ev.revision, table, obj_id, obj, old)
        with self._lock:
            if self._closed or ev.revision <= self.last_revision:
                return
            self.last_revision = ev.revision
            if any(self._wanted(o, ev.revision) for o in (obj, old) if o):
                self._on_change(change)

    def _on_compacted(self, revision: int) -> None:
        LOG.warning("NB history gone up to revision %s: resyncing from a snapshot", revision)
        # The driver's watch has stopped; a new thread resyncs so the driver thread can end.
        threading.Thread(target=self._resync, name="df-nb-resync", daemon=True).start()

    def _resync(self) -> None:
        """Snapshot, hand it over, follow the stream from it -- again and again until that
        works (the database may not be fully back yet) or the subscription is closed."""
        delay = 0.1
        while True:
            with self._lock:
                if self._closed:
                    return
                try:
                    objs, rev = self._nb.snapshot()
                    self._topic_since.clear()
                    wanted = [o for o in objs if self._wanted(o, rev + 1)]
                    self.last_revision = rev
                    self._on_resync(wanted, rev)
                    self._start_watch(rev + 1)
                    return
                except DriverError as e:
                    LOG.warning("NB resync failed (%s); trying again in %.1f s", e, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    # --- topics ----------------------------------------------------------------------
    def add_topics(self, topics: Iterable[str]) -> None:
        with self._lock:
            if self._topics is None:
                return
            new = set(topics) - self._topics
            if not new:
                return
            self._topics |= new
            self._filter_on_server()  # first: the server sends them from before the snapshot
            try:
                objs, rev = self._nb.snapshot(
                    must_contain=None if self._scope_id is None
                    else {self._scope_id(t) for t in new})
            except BaseException:  # not followed after all: the caller tries again
                self._topics -= new
                self._filter_on_server()
                raise
            for t in new:
                self._topic_since[t] = rev
            for o in objs:
                if any(s in new for s in self._scope_of(o)):
                    self._on_change(Change(rev, o.TABLE, o.id, o, None))

    def add_ids(self, ids: Iterable[str]) -> None:
        """Also deliver these objects (any table, any topic), e.g. a port whose VIF is
        plugged here before its topic is known. Their current state is NOT replayed: read
        them after calling this."""
        with self._lock:
            ids = set(ids)
            if not ids <= self._ids:
                self._ids |= ids
                self._filter_on_server()

    def remove_topics(self, topics: Iterable[str]) -> None:
        with self._lock:
            if self._topics is not None:
                self._topics -= set(topics)
                for t in topics:
                    self._topic_since.pop(t, None)
                self._filter_on_server()

    def remove_ids(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._ids -= set(ids)
            self._filter_on_server()

    def wanted(self, obj: NbObject) -> bool:
        """Would ``obj`` be delivered now (by scope or id)?"""
        with self._lock:
            return self._wanted(obj, self.last_revision + 1)

    @property
    def topics(self) -> set[str] | None:
        with self._lock:
            return None if self._topics is None else set(self._topics)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
