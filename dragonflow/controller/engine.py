"""Incremental compile engine: which owners changed, recompile only those.

Every (app, owner) pair remembers its flows and the dependency keys it read while compiling
them (see topology.View). A change reports the keys it touched; the owners whose
dependencies intersect them are recompiled, new owners compiled, vanished owners dropped.
``full()`` recompiles everything from scratch: the fallback, and the oracle the tests compare
the incremental result against.

An app that raises while compiling an owner is never silenced: the error is logged with the
owner, that owner keeps no flows, and it is retried on the next change (it stays dirty).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

from dragonflow.apps.base import App
from dragonflow.controller.topology import DepKey, Topology, View
from dragonflow.pipeline.flow import Flow

LOG = logging.getLogger(__name__)
OwnerKey = tuple[str, str]  # (app name, owner)


class Engine:
    def __init__(self, apps: Sequence[App], topo: Topology) -> None:
        self.apps = {a.name: a for a in apps}
        self.topo = topo
        self.flows: dict[OwnerKey, frozenset[Flow]] = {}
        self.deps: dict[OwnerKey, set[DepKey]] = {}
        self.by_dep: dict[DepKey, set[OwnerKey]] = defaultdict(set)
        self.failed: set[OwnerKey] = set()
        self.errors = 0

    def _compile(self, key: OwnerKey) -> None:
        self._forget_deps(key)
        view = View(self.topo)
        try:
            flows = frozenset(self.apps[key[0]].compile(view, key[1]))
            self.failed.discard(key)
        except Exception:
            LOG.exception("app %s failed to compile %s; it keeps no flows until fixed", *key)
            self.errors += 1
            flows = frozenset()
            self.failed.add(key)
        self.flows[key] = flows
        self.deps[key] = view.deps
        for d in view.deps:
            self.by_dep[d].add(key)

    def _forget_deps(self, key: OwnerKey) -> None:
        for d in self.deps.pop(key, ()):
            owners = self.by_dep.get(d)
            if owners is not None:
                owners.discard(key)
                if not owners:
                    del self.by_dep[d]

    def _current_owners(self) -> set[OwnerKey]:
        return {(name, o) for name, app in self.apps.items() for o in app.owners(self.topo)}

    def full(self) -> None:
        self.flows.clear()
        self.deps.clear()
        self.by_dep.clear()
        for key in sorted(self._current_owners()):
            self._compile(key)

    def changed(self, touched: Iterable[DepKey]) -> int:
        """Recompile what ``touched`` affects; returns how many owners were recompiled."""
        owners = self._current_owners()
        dirty = set(self.failed)
        for d in touched:
            dirty |= self.by_dep.get(d, set())
        for key in set(self.flows) - owners:
            self._forget_deps(key)
            del self.flows[key]
            self.failed.discard(key)
        todo = (dirty & owners) | (owners - set(self.flows))
        for key in sorted(todo):
            self._compile(key)
        return len(todo)

    def desired(self) -> set[Flow]:
        out: set[Flow] = set()
        for flows in self.flows.values():
            out |= flows
        return out
