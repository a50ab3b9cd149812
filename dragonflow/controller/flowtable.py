"""The desired flow table: every lowered flow with ALL the owners that want it.

Owners are ``(app, owner)`` pairs (the app and the NB object or chassis fact it compiled).
Per flow key -- ``(table, priority, match)``, OpenFlow's identity of a flow -- the table
keeps which owners want which flow and resolves them into the one flow to install:

* identical flows (same actions, instructions and timeouts) from several owners: installed
  once, and kept until the LAST owner withdraws it;
* conjunction clauses (flows whose only actions are ``conjunction(...)``) from several
  owners on one match: merged into one flow carrying every owner's clauses;
* different flows for one key (a conflict): the deterministic rule is "the flow of the owner
  that sorts first by (app, owner) wins; within one owner, the flow whose ovs-ofctl text
  sorts first" -- never set or dict order, so every PYTHONHASHSEED installs the same flows.
  Conflicts are counted, logged once with both owners, and listed in the status.

The installed flow's cookie is its winning (first) owner's, so ``dump-flows`` names it.

Owners whose flows OVS rejected are excluded (:meth:`reject`) until their next change
(:meth:`put`): everything else keeps being installed around them.

The table works in proportion to the change: :meth:`put` marks the keys an owner touched,
:meth:`resolve` re-resolves only those and returns the keys whose desired flow changed.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable

from dragonflow.ovs.flows import Conjunction, OfFlow

LOG = logging.getLogger(__name__)
OwnerKey = tuple[str, str]  # (app name, owner)
FlowKey = tuple


def _body(f: OfFlow) -> tuple:
    return (f.actions, f.goto, f.write_metadata, f.meter, f.idle_timeout, f.hard_timeout)


def _conj_only(f: OfFlow) -> bool:
    return (bool(f.actions) and all(type(a) is Conjunction for a in f.actions)
            and f.goto is None and f.write_metadata is None and f.meter is None)


class FlowTable:
    def __init__(self) -> None:
        self.contrib: dict[OwnerKey, tuple[OfFlow, ...]] = {}
        self.by_key: dict[FlowKey, dict[OwnerKey, list[OfFlow]]] = defaultdict(dict)
        self.rejected: dict[OwnerKey, str] = {}  # owner -> why OVS refused its flow
        self.desired: dict[FlowKey, OfFlow] = {}
        self.conflicts: dict[FlowKey, tuple[OwnerKey, ...]] = {}
        self.conflicts_total = 0
        self._dirty: set[FlowKey] = set()

    # --- owners ------------------------------------------------------------------------
    def put(self, owner: OwnerKey, flows: Iterable[OfFlow]) -> None:
        """``owner`` now wants exactly ``flows`` (a rejected owner gets a new chance)."""
        new = tuple(flows)
        old = self.contrib.get(owner, ())
        if owner in self.rejected:
            del self.rejected[owner]
            self._dirty.update(f.key for f in old)
        elif old == new:
            return
        # only the flows that differ touch their keys: an owner of 50 flows that gained
        # one re-resolves one key, not 51
        gone, came = Counter(old), Counter(new)
        gone.subtract(new)
        came.subtract(old)
        for f, n in gone.items():
            entry = self.by_key.get(f.key)
            mine = entry.get(owner) if entry is not None else None
            for _ in range(n if mine else 0):
                if f in mine:  # type: ignore[operator]
                    mine.remove(f)  # type: ignore[union-attr]
            if entry is not None and mine is not None and n > 0:
                self._dirty.add(f.key)
                if not mine:
                    del entry[owner]
                    if not entry:
                        del self.by_key[f.key]
        for f, n in came.items():
            for _ in range(n):
                self.by_key[f.key].setdefault(owner, []).append(f)
                self._dirty.add(f.key)
        if new:
            self.contrib[owner] = new
        else:
            self.contrib.pop(owner, None)

    def reject(self, owner: OwnerKey, reason: str) -> None:
        """Leave ``owner``'s flows out until its next :meth:`put`."""
        if owner not in self.rejected:
            LOG.error("flows of %s/%s rejected by the switch, left out until it changes: %s",
                      owner[0], owner[1], reason)
        self.rejected[owner] = reason
        self._dirty.update(f.key for f in self.contrib.get(owner, ()))

    def owners_of(self, key: FlowKey) -> list[OwnerKey]:
        return sorted(self.by_key.get(key, {}))

    # --- resolution --------------------------------------------------------------------
    def resolve(self) -> set[FlowKey]:
        """Re-resolve the keys touched since the last call; the keys whose desired flow
        changed (added, modified or gone)."""
        changed: set[FlowKey] = set()
        dirty, self._dirty = self._dirty, set()
        for key in dirty:
            want = self._resolve(key)
            cur = self.desired.get(key)
            if want is None:
                if cur is not None:
                    del self.desired[key]
                    changed.add(key)
            elif want != cur:
                self.desired[key] = want
                changed.add(key)
        return changed

    def _resolve(self, key: FlowKey) -> OfFlow | None:
        entry = self.by_key.get(key)
        cands = [(o, f) for o, fs in (entry or {}).items() if o not in self.rejected
                 for f in fs]
        if not cands:
            self.conflicts.pop(key, None)
            return None
        if len(cands) > 1:  # stable text order within one owner
            cands.sort(key=lambda of: (of[0], str(of[1])))
        first = cands[0][1]
        if len(cands) == 1 or all(_body(f) == _body(first) for _, f in cands[1:]):
            self.conflicts.pop(key, None)
            return first
        if all(_conj_only(f) for _, f in cands):
            self.conflicts.pop(key, None)
            clauses = sorted({a for _, f in cands for a in f.actions
                              if isinstance(a, Conjunction)},
                             key=lambda a: (a.conj_id, a.clause, a.n_clauses))
            return OfFlow(table=first.table, priority=first.priority, match=first.match,
                          actions=tuple(clauses), cookie=first.cookie)
        owners = tuple(sorted({o for o, _ in cands}))
        if self.conflicts.get(key) != owners:
            self.conflicts_total += 1
            LOG.error("flow conflict: %d flows for one match, installed the first owner's "
                      "(rule: first by app/owner, then flow text):\n%s", len(cands),
                      "\n".join(f"  {o[0]} {o[1]}: {f}" for o, f in cands))
        self.conflicts[key] = owners
        return first
