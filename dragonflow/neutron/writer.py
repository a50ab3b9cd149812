"""NbWriter: how the Neutron side writes the NB, with Neutron's revision as the NB version.

``put(build, fresh)`` writes one object:

* ``build()`` translates the Neutron dict of the event (an ML2 context's ``current`` or an
  L3 method's result); its ``version`` is the Neutron ``revision_number``.
* Stored version older than that revision: ``update(force_version=revision)``.
* Stored version not older (a stale, out-of-order event -- or a version a local controller
  bumped when it wrote the port status, or a change Neutron made without bumping the
  revision, e.g. rules removed by a cascade): the event's dict is not trusted. ``fresh()``
  reads the object from Neutron *now*; if that differs from the NB it is written with
  version ``max(revision, stored + 1)``. A stale event therefore never overwrites newer
  content, and a real change is never lost to a version conflict.
* Equal content (ignoring version and NB-allocated unique keys): nothing is written.

Every failure (translation, validation, NB down) is logged with the object and counted in
``failures``; it never propagates into the Neutron API call. sync.py repairs the NB later.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any

from dragonflow.db import errors
from dragonflow.db.nbapi import NbApi, table_of
from dragonflow.model import FloatingIP, NbObject, SecurityGroup
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
    def __init__(self, nb: NbApi) -> None:
        self.nb = nb
        self.failures: Counter[str] = Counter()  # table -> failed writes (for tests, metrics)

    @contextmanager
    def _guard(self, op: str, table: str, obj_id: str, source: Any,
               outcome: list[Outcome]) -> Iterator[None]:
        try:
            yield
        except Exception as e:  # noqa: BLE001 -- logged with the object, repaired by sync
            self.failures[table] += 1
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

    def _put(self, obj: NbObject, fresh: Build | None) -> Outcome:
        authoritative = False  # True once obj was read from Neutron just now
        for _ in range(_RETRIES):
            cur = self.nb.get(obj.TABLE, obj.id)
            if cur is None:
                try:
                    self.nb.create(obj.replace(version=max(obj.version, 1)))
                    return Outcome.CREATED
                except errors.AlreadyExists:
                    continue
            new = translate.merge(cur, obj)
            if translate.same(cur, new):
                return Outcome.UNCHANGED
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
                self.nb.update(new, force_version=target)
                return Outcome.UPDATED
            except errors.StaleVersion:
                if authoritative and fresh is not None:
                    latest = fresh()
                    if latest is None:
                        return Outcome.STALE
                    obj = latest
                continue
        raise errors.ConcurrentUpdate(obj.TABLE, obj.id, "version",
                                      f"gave up after {_RETRIES} conflicting writes")

    def put_authoritative(self, obj: NbObject) -> Outcome:
        """Write ``obj`` read from Neutron just now (sync): it wins over any stored version."""
        outcome = [Outcome.FAILED]
        with self._guard("write", obj.TABLE, obj.id, obj, outcome):
            outcome[:] = [self._put(obj, lambda: obj)]
        return outcome[0]

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
    def referrers(self, table: str, obj_id: str) -> list[NbObject]:
        """NB objects whose references to ``table/obj_id`` Neutron removes without telling a
        mechanism driver (floating IPs of a deleted port or router, rules of other security
        groups naming a deleted group): refresh them before the delete."""
        out: list[NbObject] = []
        if table == "port":
            out += self.nb.by_index(FloatingIP, "port_id", obj_id)
        elif table == "router":
            out += self.nb.by_index(FloatingIP, "router_id", obj_id)
        elif table == "securitygroup":
            out += [g for g in self.nb.by_index(SecurityGroup, "remote_group", obj_id)
                    if g.id != obj_id]
        return out
