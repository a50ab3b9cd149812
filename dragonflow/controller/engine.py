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

Owners too are asked for in proportion to the change: an app that gives most of its owners
by parts (``owner_parts`` / ``part_owners``, e.g. one part per local network: its ports) has
just the part a change touched re-listed -- a new port on a network with 50 ports re-lists
those 50, not every port of every local network.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

from dragonflow.apps.base import App
from dragonflow.controller.flowtable import FlowTable, OwnerKey
from dragonflow.model import Port
from dragonflow.ovs.flows import OfFlow, OfMeter
from dragonflow.pipeline.flow import Flow
from dragonflow.pipeline.lower import PIPELINE_APP, Lowering
from dragonflow.pipeline.stages import Pipeline
from dragonflow.pipeline.topology import DepKey, OwnersView, Topology, View

LOG = logging.getLogger(__name__)
MISS_OWNER: OwnerKey = (PIPELINE_APP, "miss")
COPP_OWNER: OwnerKey = (PIPELINE_APP, "copp")


class Engine:
    def __init__(self, apps: Sequence[App], topo: Topology,
                 pipeline: Pipeline | None = None) -> None:
        self.apps = {a.name: a for a in apps}
        self.topo = topo
        for a in apps:  # an app whose declarations depend on this chassis' config
            configure = getattr(a, "configure", None)
            if callable(configure):
                configure(topo.facts)
        self.pipeline = pipeline if pipeline is not None else Pipeline.assemble(apps)
        self.lowering = Lowering(self.pipeline)
        self.table = FlowTable()
        self.flows: dict[OwnerKey, frozenset[Flow]] = {}
        self.deps: dict[OwnerKey, set[DepKey]] = {}
        self.by_dep: dict[DepKey, set[OwnerKey]] = defaultdict(set)
        self.failed: dict[OwnerKey, str] = {}
        self.touched_owners: set[OwnerKey] = set()
        self._lowered: dict[OwnerKey, dict[Flow, OfFlow]] = {}  # per owner: flow -> lowered
        self.app_failed: dict[str, str] = {}
        self._owners: dict[str, set[str]] = {}       # app -> its owners now
        self._owner_deps: dict[str, set[DepKey]] = {}  # app -> what its owners() read
        # owners an app gives by parts (see App.owner_parts): per app its owners() result,
        # its parts with their owners, what owner_parts() read, and per dep the parts whose
        # part_owners() read it; an owner is the app's while its owners() or a part has it
        self._rest: dict[str, set[str]] = {}
        self._parts: dict[str, dict[str, frozenset[str]]] = {}
        self._parts_deps: dict[str, set[DepKey]] = {}
        self._part_deps: dict[tuple[str, str], set[DepKey]] = {}
        self._by_part_dep: dict[DepKey, set[tuple[str, str]]] = defaultdict(set)
        self._count: dict[str, dict[str, int]] = {}  # app -> owner -> parts (+ rest) naming it
        empty: frozenset[str] = frozenset()
        self._last_diff: tuple[frozenset[str], frozenset[str], tuple[
            frozenset[str], frozenset[str]]] = (empty, empty, (empty, empty))
        self.errors = 0
        self.compiled = 0  # owners compiled since start (work done, for benches)
        self.table.put(MISS_OWNER, self.lowering.miss_flows())
        self.table.put(COPP_OWNER, self.lowering.copp_flows())
        # the apps' declared meters, by the ids the pipeline gave them, and the per-port
        # punt meters of the local ports
        self.meters = {mid: OfMeter(mid, m.rate, m.burst, m.unit)
                       for mid, m in self.pipeline.meters.values() if m.punt}
        self._per_port = self.pipeline.per_port_meters()
        # meter ids added, changed or removed since the reconciler last looked (it compares
        # just those with what it installed: a port's change costs its meters, not all)
        self.meters_dirty: set[int] = set(self.meters)
        self._port_meters: dict[str, dict[int, int]] = {}  # port id -> {app meter: its own}

    # --- control-plane policing: a meter per local port and punt kind ----------------------
    def _copp(self, port_id: str) -> None:
        """(Re)make ``port_id``'s CoPP flows and meters: it has them while it is local and
        known, with a unique key; O(1) per port change."""
        if not self._per_port:
            return
        owner = f"copp/{port_id}"
        port = (self.topo.get(Port, port_id) if port_id in self.topo.facts.ofports
                else None)
        if port is None or not port.unique_key:
            for pmid in self._port_meters.pop(port_id, {}).values():
                self.meters.pop(pmid, None)
                self.meters_dirty.add(pmid)
            self.table.put((PIPELINE_APP, owner), ())
            return
        # the port's meter ids follow from its unique key (same on every run, and the
        # incremental result equals a full recompute); lowering names the same ids for a
        # flow's Meter(name, port=key)
        want = self.pipeline.port_meters(port.unique_key)
        for pmid in set(self._port_meters.get(port_id, {}).values()) - set(want.values()):
            self.meters.pop(pmid, None)
            self.meters_dirty.add(pmid)
        self._port_meters[port_id] = mine = want
        for mid, pmid in mine.items():
            decl = self._per_port[mid]
            meter = OfMeter(pmid, decl.per_port, decl.per_port_burst, "pktps")
            if self.meters.get(pmid) != meter:
                self.meters[pmid] = meter
                self.meters_dirty.add(pmid)
        self.table.put((PIPELINE_APP, owner),
                       self.lowering.copp_port_flows(port.unique_key, mine, owner))

    def _copp_touched(self, touched: set[DepKey]) -> None:
        if not self._per_port:
            return
        local = self.topo.facts.ofports
        for key in touched:
            if key[0] == "ofport":
                self._copp(key[1])
            elif key[:2] == ("obj", "port") and (key[2] in local or key[2] in self._port_meters):
                self._copp(key[2])

    def take_meters_dirty(self) -> set[int]:
        out, self.meters_dirty = self.meters_dirty, set()
        return out

    def take_touched(self) -> set[OwnerKey]:
        """Owners compiled or dropped since the last call (the controller re-checks the
        status of just those ports)."""
        out, self.touched_owners = self.touched_owners, set()
        return out

    def _compile(self, key: OwnerKey) -> None:
        self.touched_owners.add(key)
        self._forget_deps(key)
        view = View(self.topo)
        self.compiled += 1
        # a flow the owner had before is not lowered again (an owner of one flow per host
        # of a network that gained a host lowers one flow, not all of them)
        before = self._lowered.get(key, {})
        try:
            flows = frozenset(self.apps[key[0]].compile(view, key[1]))
            lowered = {f: before[f] if f in before else self.lowering.lower(key[0], f)
                       for f in flows}
            self.failed.pop(key, None)
        except Exception as e:
            LOG.exception("app %s failed to compile %s; it keeps no flows until fixed", *key)
            self.errors += 1
            flows, lowered = frozenset(), {}
            self.failed[key] = f"{type(e).__name__}: {e}"
        self.flows[key] = flows
        self._lowered[key] = lowered
        self.table.put(key, tuple(lowered.values()))
        self.deps[key] = view.deps
        for d in view.deps:
            self.by_dep[d].add(key)

    def _drop(self, key: OwnerKey) -> None:
        self.touched_owners.add(key)
        self._forget_deps(key)
        del self.flows[key]
        self._lowered.pop(key, None)
        self.failed.pop(key, None)
        self.table.put(key, ())

    def _forget_deps(self, key: OwnerKey) -> None:
        for d in self.deps.pop(key, ()):
            owners = self.by_dep.get(d)
            if owners is not None:
                owners.discard(key)
                if not owners:
                    del self.by_dep[d]

    def _app_owners(self, name: str, touched: set[DepKey] | None = None
                    ) -> tuple[set[str], set[str]]:
        """Ask app ``name`` again for what ``touched`` may have changed (None: everything):
        its ``owners()`` if something they read was touched, its parts list likewise, and
        each part whose owners read a touched key. Returns its owners (added, removed).

        An app that raises keeps its previous owners (and is asked again next time)."""
        app = self.apps[name]
        has_parts = callable(getattr(app, "owner_parts", None))
        redo_all = touched is None or name in self.app_failed
        try:
            rest = rest_deps = None
            if redo_all or not touched.isdisjoint(self._owner_deps.get(name, ())):  # type: ignore[union-attr]
                view = OwnersView(self.topo)
                rest, rest_deps = set(app.owners(view)), view.deps
            parts = parts_deps = None
            part_news: dict[str, tuple[frozenset[str], set[DepKey]]] = {}
            if has_parts:
                old_parts = self._parts.get(name, {})
                if redo_all or not touched.isdisjoint(self._parts_deps.get(name, ())):  # type: ignore[union-attr]
                    view = OwnersView(self.topo)
                    parts, parts_deps = set(app.owner_parts(view)), view.deps  # type: ignore[attr-defined]
                redo = set(parts - set(old_parts)) if parts is not None else set()
                if redo_all:
                    redo = set(parts or ())
                else:
                    for d in touched:  # type: ignore[union-attr]
                        redo |= {p for a, p in self._by_part_dep.get(d, ()) if a == name}
                live = parts if parts is not None else set(old_parts)
                for part in redo & live:
                    view = OwnersView(self.topo)
                    part_news[part] = (frozenset(app.part_owners(view, part)),  # type: ignore[attr-defined]
                                       view.deps)
            self.app_failed.pop(name, None)
        except Exception as e:
            if name not in self.app_failed:
                LOG.exception("app %s: owners() failed; keeping its previous owners", name)
            self.errors += 1
            self.app_failed[name] = f"{type(e).__name__}: {e}"
            return set(), set()
        count = self._count.setdefault(name, {})
        changed: set[str] = set()

        def add(owners: Iterable[str], step: int) -> None:
            for o in owners:
                n = count.get(o, 0) + step
                if n:
                    count[o] = n
                else:
                    del count[o]
                changed.add(o)

        if rest is not None:
            old_rest = self._rest.get(name, set())
            add(rest - old_rest, 1)
            add(old_rest - rest, -1)
            self._rest[name] = rest
            self._owner_deps[name] = rest_deps  # type: ignore[assignment]
        if has_parts:
            mine = self._parts.setdefault(name, {})
            if parts is not None:
                self._parts_deps[name] = parts_deps  # type: ignore[assignment]
                for part in set(mine) - parts:
                    add(mine.pop(part), -1)
                    self._forget_part_deps(name, part)
            for part, (owners, deps) in part_news.items():
                before = mine.get(part, frozenset())
                if owners is not before:
                    gained, lost = self._diff(before, owners)
                    add(gained, 1)
                    add(lost, -1)
                mine[part] = owners
                self._forget_part_deps(name, part)
                self._part_deps[(name, part)] = deps
                for d in deps:
                    self._by_part_dep[d].add((name, part))
        now = self._owners.setdefault(name, set())
        added = {o for o in changed if o in count and o not in now}
        removed = {o for o in changed if o not in count and o in now}
        now |= added
        now -= removed
        return added, removed

    def _diff(self, before: frozenset[str], now: frozenset[str]
              ) -> tuple[frozenset[str], frozenset[str]]:
        """(now - before, before - now), remembered for the last pair: apps listing the
        same part (the ports of one network) get the same two sets from the topology."""
        if self._last_diff[0] is before and self._last_diff[1] is now:
            return self._last_diff[2]
        out = (now - before, before - now)
        self._last_diff = (before, now, out)
        return out

    def _forget_part_deps(self, name: str, part: str) -> None:
        for d in self._part_deps.pop((name, part), ()):
            found = self._by_part_dep.get(d)
            if found is not None:
                found.discard((name, part))
                if not found:
                    del self._by_part_dep[d]

    def full(self) -> None:
        for key in list(self.flows):
            self._drop(key)
        self.deps.clear()
        self.by_dep.clear()
        for store in (self._owners, self._owner_deps, self._rest, self._parts,
                      self._parts_deps, self._part_deps, self._by_part_dep, self._count):
            store.clear()
        todo: set[OwnerKey] = set()
        for name in self.apps:
            added, _ = self._app_owners(name)
            todo |= {(name, o) for o in added}
        for key in sorted(todo):
            self._compile(key)
        for pid in sorted(set(self.topo.facts.ofports) | set(self._port_meters)):
            self._copp(pid)

    def changed(self, touched: Iterable[DepKey]) -> int:
        """Recompile what ``touched`` affects; returns how many owners were recompiled.

        Work in proportion to the change: an app is asked for its owners again only when
        something its ``owners()`` read was touched (or it failed last time), and only the
        owners whose compile read a touched key are recompiled."""
        touched = set(touched)
        dirty = set(self.failed)
        part_hit = {a for d in touched for a, _part in self._by_part_dep.get(d, ())}
        for name in self.apps:
            if name in self.app_failed or name in part_hit or not (
                    touched.isdisjoint(self._owner_deps.get(name, ()))
                    and touched.isdisjoint(self._parts_deps.get(name, ()))):
                added, removed = self._app_owners(name, touched)
                for o in removed:
                    if (name, o) in self.flows:
                        self._drop((name, o))
                dirty |= {(name, o) for o in added}
        for d in touched:
            found = self.by_dep.get(d)
            if found:
                dirty |= found
        todo = {k for k in dirty if k[1] in self._owners.get(k[0], ())}
        for key in sorted(todo):
            self._compile(key)
        self._copp_touched(touched)
        return len(todo)

    def desired(self) -> set[Flow]:
        """Every logical flow of every owner (for tests and tools)."""
        out: set[Flow] = set()
        for flows in self.flows.values():
            out |= flows
        return out
