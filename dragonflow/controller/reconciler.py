"""Desired vs installed flows: only the difference goes to the switch, in one atomic bundle.

The reconciler remembers what it installed (never dumps the switch in steady state) and
which keys of the desired table changed since the last install, so a sync costs what the
change costs. On (re)connect it sends one bundle that deletes every flow and adds the whole
desired set, so a restarted controller or a restarted ovs-vswitchd never sees a window
without flows, and stale flows left by a previous controller are gone in the same atomic
step. A flow whose cookie changed (another owner now wins its key) is re-added, since a
modify keeps the old cookie.

A rejected flow never freezes the chassis: when OVS refuses flow-mods of a bundle (the
bundle is discarded, the switch unchanged), every refused flow-mod is traced to the owners
that want that flow; they are left out of the desired table (logged, in the status) and
the rest is installed in a new atomic bundle right away. Those owners are tried again after
their next change. Only an error that names no flow-mod makes the next sync a full one.

Meters (declared by apps) are installed before the bundle that uses them.
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol

from dragonflow.controller.flowtable import FlowKey, FlowTable
from dragonflow.ovs.flows import OfFlow, OfMeter

LOG = logging.getLogger(__name__)
Ops = list[tuple[Literal["add", "modify_strict", "delete_strict"], OfFlow]]
MAX_REJECT_ROUNDS = 8


class FlowSink(Protocol):
    def install(self, ops: Ops, replace_all: bool = False) -> None: ...


class Reconciler:
    def __init__(self) -> None:
        self.installed: dict[FlowKey, OfFlow] = {}
        self.need_full = True  # switch state unknown: the next sync replaces everything
        self.pending: set[FlowKey] = set()  # desired keys that may differ from installed
        self.meters_installed: dict[int, OfMeter] = {}
        self.bundles = 0
        self.flow_mods = 0
        self.rejections = 0
        self.full_syncs = 0  # whole-table reinstalls (first connect, reconnects, errors)

    def removed(self, key: FlowKey) -> None:
        """The switch removed this flow by itself (idle/hard timeout): forget it, and
        look at its key on the next sync (added again if still desired)."""
        if self.installed.pop(key, None) is not None:
            self.pending.add(key)

    def diff(self, table: FlowTable, keys: set[FlowKey]) -> Ops:
        ops: Ops = []
        desired = table.desired
        for key in keys:
            old = self.installed.get(key)
            f = desired.get(key)
            if f is None:
                if old is not None:
                    ops.append(("delete_strict", old))
            elif old is None or old.cookie != f.cookie:
                ops.append(("add", f))  # add replaces an existing flow, cookie included
            elif old != f:
                ops.append(("modify_strict", f))
        # deletes first: a flow moving between keys never coexists with its old self
        ops.sort(key=lambda op: op[0] != "delete_strict")
        return ops

    def sync(self, sink: FlowSink, table: FlowTable, *, full: bool = False,
             meters: dict[int, OfMeter] | None = None,
             meters_dirty: set[int] | None = None) -> int:
        """Make the switch hold exactly ``table.desired``; returns the flow-mods sent.
        Raises whatever the sink raises when it cannot be traced to owners (the switch
        state is then unknown: the next sync is full). New and changed meters go in the
        same round trip as the flows (before them: a flow naming a missing meter is
        refused); meters no longer wanted are deleted after the flows that used them.
        ``meters_dirty``: the only meter ids that may differ from what was installed (None:
        compare them all)."""
        full = full or self.need_full
        if full or meters_dirty is None:
            meters_dirty = None
        pre = (self._meter_changes(sink, meters, full, meters_dirty) if meters is not None
               else [])
        self.pending |= table.resolve()
        for _ in range(MAX_REJECT_ROUNDS):
            if full:
                ops: Ops = [("add", f) for f in table.desired.values()]
            else:
                ops = self.diff(table, self.pending)
                if not ops:
                    self.pending.clear()
                    self._finish_meters(sink, pre, meters, dirty=meters_dirty)
                    return 0
            try:
                if pre:  # only a meter-capable sink (OfChannel) has meter changes
                    sink.install(ops, replace_all=full, meters=pre)  # type: ignore[call-arg]
                else:
                    sink.install(ops, replace_all=full)
            except Exception as e:
                if pre and getattr(e, "meter", None) is not None:
                    self.need_full = True  # which meter-mods went in is not known
                    raise
                if pre and getattr(e, "errors", None):  # OVS took every meter-mod
                    self._meters_in(pre)
                    pre = []
                if not self._reject(table, e):
                    self.need_full = True
                    raise
                self.pending |= table.resolve()
                continue
            if full:
                self.full_syncs += 1
                self.installed = dict(table.desired)
            else:
                for op, f in ops:
                    if op == "delete_strict":
                        self.installed.pop(f.key, None)
                    else:
                        self.installed[f.key] = f
            self.pending.clear()
            self.need_full = False
            self.bundles += 1
            self.flow_mods += len(ops)
            self._finish_meters(sink, pre, meters, sent=True, dirty=meters_dirty)
            return len(ops)
        self.need_full = True
        raise RuntimeError(f"flows still rejected after {MAX_REJECT_ROUNDS} rounds")

    def _reject(self, table: FlowTable, exc: Exception) -> bool:
        """Leave out the owners of every flow-mod OVS refused; False if none is known."""
        failed = getattr(exc, "failed", ())
        owners = set()
        for op, flow, error in failed:
            if op == "delete_strict":
                continue  # a delete is never what was wrong with the desired table
            for owner in table.owners_of(flow.key):
                owners.add(owner)
                table.reject(owner, f"{error} for {flow}")
        if owners:
            self.rejections += 1
        return bool(owners)

    def _meter_changes(self, sink: FlowSink, desired: dict[int, OfMeter],
                       full: bool, dirty: set[int] | None = None
                       ) -> list[tuple[str, OfMeter]]:
        """The meter adds / modifies to send with the flows (meter-mods cannot go into a
        bundle: OVS refuses them there). A full sync (a (re)connect: the switch may hold
        meters of the last run) deletes every meter first -- only the punt flows use
        meters, and the full flow install that follows replaces those anyway -- so every
        meter is then simply added."""
        if getattr(sink, "install_meters", None) is None:
            return []
        if full:  # a switch that can install meters can delete them all (OfChannel)
            sink.delete_all_meters()  # type: ignore[attr-defined]
            self.meters_installed = {}
        elif dirty is not None:
            ids = sorted(mid for mid in dirty if mid in desired)
            return [("add" if mid not in self.meters_installed else "modify", desired[mid])
                    for mid in ids if self.meters_installed.get(mid) != desired[mid]]
        elif desired == self.meters_installed:
            return []
        # after a full sync the switch holds none but ours: no add can collide
        return [("add" if mid not in self.meters_installed else "modify", m)
                for mid, m in sorted(desired.items()) if self.meters_installed.get(mid) != m]

    def _meters_in(self, ops: list[tuple[str, OfMeter]]) -> None:
        for _, m in ops:
            self.meters_installed[m.meter_id] = m

    def _finish_meters(self, sink: FlowSink, pre: list[tuple[str, OfMeter]],
                       desired: dict[int, OfMeter] | None, sent: bool = False,
                       dirty: set[int] | None = None) -> None:
        """Record the meter changes the flows carried (or send them alone when no flow
        changed), then delete the meters no longer wanted -- after the flows that used
        them are gone (withdrawn with their owners)."""
        if pre:
            if not sent:
                sink.install_meters(pre)  # type: ignore[attr-defined]
            self._meters_in(pre)
        if (desired is None or getattr(sink, "install_meters", None) is None
                or len(desired) == len(self.meters_installed)):  # all desired are in: none gone
            return
        candidates = self.meters_installed if dirty is None else {
            mid: self.meters_installed[mid] for mid in dirty if mid in self.meters_installed}
        gone = [m for mid, m in sorted(candidates.items()) if mid not in desired]
        if gone:
            sink.install_meters([("delete", m) for m in gone])  # type: ignore[attr-defined]
            for m in gone:
                del self.meters_installed[m.meter_id]
