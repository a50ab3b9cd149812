"""NbWriter: how the Neutron side writes the NB, with Neutron's revision as the NB version.

``put(build, fresh)`` writes one object:

* ``build()`` translates the Neutron dict of the event (an ML2 context's ``current`` or an
  L3 method's result); its ``version`` is the Neutron ``revision_number`` + 1 (NB versions
  start at 1): "the revision" below.
* Stored version older than that revision: ``update(force_version=revision)``.
* Stored version not older (a stale, out-of-order event -- or a version a local controller
  bumped when it wrote a port's or floating IP's status, or a change Neutron made without
  bumping the revision, e.g. rules removed by a cascade): the event's dict is not trusted.
  ``fresh()`` reads the object from Neutron *now*; if that differs from the NB it is written
  with version ``max(revision, stored + 1)``. A stale event therefore never overwrites newer
  content, and a real change is never lost to a version conflict.
* Equal content (ignoring version, NB-allocated unique keys and NB-owned status -- see
  translate.same): only the version is raised to the revision (so a late event of an older
  revision is recognised as stale).
* A write the NB refuses because a referenced object is missing (Neutron changed a port
  before the driver heard of its new subnet) first writes that object from Neutron.

Every failure (translation, validation, NB down) is logged with the object and counted in
``failures``; it never propagates into the Neutron API call. sync.py repairs the NB later.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any

from dragonflow.db import errors
from dragonflow.db.nbapi import NbApi, table_of
from dragonflow.model import REFERENCED_BY, NbObject, ValidationError
from dragonflow.neutron import translate

LOG = logging.getLogger(__name__)
_RETRIES = 5

Build = Callable[[], NbObject | None]


class Outcome(Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    STALE = "stale"  # an out-of-order event; the NB already has newer content
    SKIPPED = "skipped"  # nothing to write (e.g. a router interface port)
    DELETED = "deleted"
    ABSENT = "absent"  # delete of an object the NB does not have
    FAILED = "failed"


class NbWriter:
    """``fresh_for(table, id)``: a reader of Neutron's current object (source.fresh), used to
    write an object's missing references (a subnet a port names) before the object itself;
    Neutron sometimes updates ports before the driver hears of their new subnet."""

    def __init__(self, nb: NbApi, fresh_for: Callable[[str, str], Build] | None = None) -> None:
        self.nb = nb
        self.fresh_for = fresh_for
        self.failures: Counter[str] = Counter()  # table -> failed writes (for tests, metrics)
        self.errors: deque[str] = deque(maxlen=50)  # the latest failure messages

    @contextmanager
    def _guard(self, op: str, table: str, obj_id: str, source: Any,
               outcome: list[Outcome]) -> Iterator[None]:
        try:
            yield
        except Exception as e:  # noqa: BLE001 -- logged with the object, repaired by sync
            self.failures[table] += 1
            self.errors.append(f"{op} {table} {obj_id}: {type(e).__name__}: {e}")
            outcome[:] = [Outcome.FAILED]
            LOG.error("NB %s of %s %s failed: %s: %s; Neutron object: %r", op, table, obj_id,
                      type(e).__name__, e, source)

    # --- writes --------------------------------------------------------------------------
    def put(self, table: str, obj_id: str, build: Build, fresh: Build | None = None,
            source: Any = None) -> Outcome:
        """Write what ``build()`` returns (None: nothing to write). ``source`` (the Neutron
        dict) is only used in the log line of a failure."""
        outcome = [Outcome.FAILED]
        with self._guard("write", table, obj_id, source, outcome):
            obj = build()
            outcome[:] = [Outcome.SKIPPED if obj is None else self._put(obj, fresh)]
        return outcome[0]

    def _put(self, obj: NbObject, fresh: Build | None, depth: int = 0) -> Outcome:
        authoritative = False  # True once obj was read from Neutron just now
        for _ in range(_RETRIES):
            cur = self.nb.get(obj.TABLE, obj.id)
            if cur is None:
                try:
                    self.nb.create(obj.replace(version=max(obj.version, 1)))
                    return Outcome.CREATED
                except errors.AlreadyExists:
                    continue
                except ValidationError:
                    if not self._write_missing_refs(obj, depth):
                        raise
                    continue
            new = translate.merge(cur, obj)
            if translate.same(cur, new):
                if obj.version <= cur.version or authoritative:
                    return Outcome.UNCHANGED
                try:  # keep NB version == revision, so a late older event is seen as stale
                    self.nb.update(cur, force_version=obj.version, expect_version=cur.version)
                    return Outcome.UNCHANGED
                except errors.StaleVersion:
                    continue
            if obj.version > cur.version:
                target = obj.version
            elif authoritative:
                target = cur.version + 1
            elif fresh is not None:
                latest = fresh()
                if latest is None:
                    return Outcome.STALE  # gone from Neutron: its delete will follow
                obj, authoritative = latest, True
                continue
            else:
                return Outcome.STALE
            try:
                self.nb.update(new, force_version=target, expect_version=cur.version)
                return Outcome.UPDATED
            except ValidationError:
                if not self._write_missing_refs(new, depth):
                    raise
                continue
            except errors.StaleVersion:
                if authoritative and fresh is not None:
                    latest = fresh()
                    if latest is None:
                        return Outcome.STALE
                    obj = latest
                continue
        raise errors.ConcurrentUpdate(obj.TABLE, obj.id, "version",
                                      f"gave up after {_RETRIES} conflicting writes")

    def _write_missing_refs(self, obj: NbObject, depth: int) -> bool:
        """Write, from Neutron, the objects ``obj`` refers to that the NB lacks; True if any
        was written (then ``obj`` is worth another try)."""
        if self.fresh_for is None or depth >= 2:  # port -> subnet -> network at most
            return False
        wrote = False
        for table, ref_id, _ in obj.references():
            if (table, ref_id) == (obj.TABLE, obj.id) or self.nb.get(table, ref_id) is not None:
                continue
            fresh = self.fresh_for(table, ref_id)
            try:
                ref = fresh()
                if ref is None:
                    continue
                outcome = self._put(ref, fresh, depth + 1)
            except (errors.NbError, ValueError) as e:  # ValidationError, Untranslatable
                LOG.warning("NB %s %s, needed by %s %s, could not be written: %s", table,
                            ref_id, obj.TABLE, obj.id, e)
                continue
            if outcome in (Outcome.CREATED, Outcome.UPDATED):
                LOG.info("NB %s %s was missing for %s %s: written from Neutron", table,
                         ref_id, obj.TABLE, obj.id)
                wrote = True
        return wrote

    def delete(self, table: type[NbObject] | str, obj_id: str) -> Outcome:
        name = table_of(table)
        outcome = [Outcome.FAILED]
        with self._guard("delete", name, obj_id, None, outcome):
            try:
                self.nb.delete(name, obj_id)
                outcome[:] = [Outcome.DELETED]
            except errors.NotFound:
                outcome[:] = [Outcome.ABSENT]
        return outcome[0]

    # --- objects that refer to one about to be deleted ------------------------------------
    def refresh_referrers(self, table: str, obj_id: str,
                          fresh_for: Callable[[str, str], Build]) -> None:
        """Rewrite, as Neutron has them now (``fresh_for(table, id)``), the NB objects that
        still refer to ``table/obj_id``; delete those Neutron no longer has."""
        outcome = [Outcome.FAILED]
        objs: list[NbObject] = []
        with self._guard("lookup of referrers of", table, obj_id, None, outcome):
            objs = self.referrers(table, obj_id)
        for obj in objs:
            fresh = fresh_for(obj.TABLE, obj.id)
            if self.put(obj.TABLE, obj.id, fresh, fresh) is Outcome.SKIPPED:
                self.delete(obj.TABLE, obj.id)

    def referrers(self, table: str, obj_id: str) -> list[NbObject]:
        """NB objects that refer to ``table/obj_id`` (the references that make the NB refuse
        its delete), floating IPs first, networks last (the order they can be deleted in).
        Neutron drops some such references without telling a driver: the floating IPs of a
        deleted port, rules of other groups naming a deleted group, addresses of ports on a
        deleted subnet."""
        found: dict[tuple[str, str], NbObject] = {}
        for ref_table, index in REFERENCED_BY.get(table, ()):
            objs: list[NbObject] = self.nb.by_index(ref_table, index, obj_id)
            for obj in objs:
                if (obj.TABLE, obj.id) != (table, obj_id):
                    found[(obj.TABLE, obj.id)] = obj
        return sorted(found.values(), key=lambda o: (_DELETE_ORDER.get(o.TABLE, 0), o.id))


_DELETE_ORDER = {t: i for i, t in enumerate(
    ("floatingip", "router", "port", "subnet", "securitygroup", "network", "qospolicy"))}
