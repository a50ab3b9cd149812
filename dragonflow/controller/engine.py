"""Incremental compile engine: which owners changed, recompile and lower only those.

Every (app, owner) pair remembers its flows and the dependency keys it read while compiling
them (see pipeline/topology.View). A change reports the keys it touched; the owners whose
dependencies intersect them are recompiled, new owners compiled, vanished owners dropped.
Each recompiled owner's flows are lowered (checked against the assembled pipeline: its
app's stages, declared fields) and handed to the :class:`FlowTable`, which resolves many
owners per flow; so the work of a change is proportional to the owners it touched.
``full()`` recompiles everything from scratch: the fallback, and the oracle the tests
compare the incremental result against.

Nothing an app does can stop the others: an app that raises in ``compile()`` or whose flow
fails lowering marks that owner failed (logged with the owner; it keeps no flows and is
retried on the next change); an app whose ``owners()`` raises keeps its previous owners and
is asked again on the next change. ``failed`` / ``app_failed`` say why, for the status.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

from dragonflow.apps.base import App
from dragonflow.controller.flowtable import FlowTable, OwnerKey
from dragonflow.ovs.flows import OfMeter
from dragonflow.pipeline.flow import Flow
from dragonflow.pipeline.lower import PIPELINE_APP, Lowering
from dragonflow.pipeline.stages import Pipeline
from dragonflow.pipeline.topology import DepKey, Topology, View

LOG = logging.getLogger(__name__)
MISS_OWNER: OwnerKey = (PIPELINE_APP, "miss")


class Engine:
    def __init__(self, apps: Sequence[App], topo: Topology,
                 pipeline: Pipeline | None = None) -> None:
        self.apps = {a.name: a for a in apps}
        self.topo = topo
        self.pipeline = pipeline if pipeline is not None else Pipeline.assemble(apps)
        self.lowering = Lowering(self.pipeline)
        self.table = FlowTable()
        self.flows: dict[OwnerKey, frozenset[Flow]] = {}
        self.deps: dict[OwnerKey, set[DepKey]] = {}
        self.by_dep: dict[DepKey, set[OwnerKey]] = defaultdict(set)
        self.failed: dict[OwnerKey, str] = {}
        self.app_failed: dict[str, str] = {}
        self._owners: dict[str, set[str]] = {}
        self.errors = 0
        self.compiled = 0  # owners compiled since start (work done, for benches)
        self.table.put(MISS_OWNER, self.lowering.miss_flows())
        # the apps' declared meters, by the ids the pipeline gave them
        self.meters = {mid: OfMeter(mid, m.rate, m.burst, m.unit)
                       for mid, m in self.pipeline.meters.values()}

    def _compile(self, key: OwnerKey) -> None:
        self._forget_deps(key)
        view = View(self.topo)
        self.compiled += 1
        try:
            flows = frozenset(self.apps[key[0]].compile(view, key[1]))
            lowered = [self.lowering.lower(key[0], f) for f in flows]
            self.failed.pop(key, None)
        except Exception as e:
            LOG.exception("app %s failed to compile %s; it keeps no flows until fixed", *key)
            self.errors += 1
            flows, lowered = frozenset(), []
            self.failed[key] = f"{type(e).__name__}: {e}"
        self.flows[key] = flows
        self.table.put(key, lowered)
        self.deps[key] = view.deps
        for d in view.deps:
            self.by_dep[d].add(key)

    def _drop(self, key: OwnerKey) -> None:
        self._forget_deps(key)
        del self.flows[key]
        self.failed.pop(key, None)
        self.table.put(key, ())

    def _forget_deps(self, key: OwnerKey) -> None:
        for d in self.deps.pop(key, ()):
            owners = self.by_dep.get(d)
            if owners is not None:
                owners.discard(key)
                if not owners:
                    del self.by_dep[d]

    def _current_owners(self) -> set[OwnerKey]:
        out: set[OwnerKey] = set()
        for name, app in self.apps.items():
            try:
                owners = set(app.owners(self.topo))
                self.app_failed.pop(name, None)
                self._owners[name] = owners
            except Exception as e:
                if name not in self.app_failed:
                    LOG.exception("app %s: owners() failed; keeping its previous owners",
                                  name)
                self.errors += 1
                self.app_failed[name] = f"{type(e).__name__}: {e}"
                owners = self._owners.get(name, set())
            out |= {(name, o) for o in owners}
        return out

    def full(self) -> None:
        for key in list(self.flows):
            self._drop(key)
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
            self._drop(key)
        todo = (dirty & owners) | (owners - set(self.flows))
        for key in sorted(todo):
            self._compile(key)
        return len(todo)

    def desired(self) -> set[Flow]:
        """Every logical flow of every owner (for tests and tools)."""
        out: set[Flow] = set()
        for flows in self.flows.values():
            out |= flows
        return out
