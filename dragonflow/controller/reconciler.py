"""Desired vs installed flows: only the difference goes to the switch, in one atomic bundle.

The reconciler remembers what it installed (never dumps the switch in steady state). On
(re)connect it sends one bundle that deletes every flow and adds the whole desired set, so a
restarted controller or a restarted ovs-vswitchd never sees a window without flows, and stale
flows left by a previous controller are gone in the same atomic step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal, Protocol

from dragonflow.ovs.flows import OfFlow

LOG = logging.getLogger(__name__)
FlowKey = tuple
Ops = list[tuple[Literal["add", "modify_strict", "delete_strict"], OfFlow]]


class FlowSink(Protocol):
    def install(self, ops: Ops, replace_all: bool = False) -> None: ...


class Reconciler:
    def __init__(self) -> None:
        self.installed: dict[FlowKey, OfFlow] = {}
        self.need_full = True  # switch state unknown: the next sync replaces everything
        self.bundles = 0
        self.flow_mods = 0

    @staticmethod
    def index(flows: Iterable[OfFlow]) -> dict[FlowKey, OfFlow]:
        out: dict[FlowKey, OfFlow] = {}
        for f in flows:
            other = out.get(f.key)
            if other is not None and other != f:
                LOG.error("two flows with one match, keeping the first:\n  %s\n  %s", other, f)
                continue
            out[f.key] = f
        return out

    def diff(self, desired: dict[FlowKey, OfFlow]) -> Ops:
        ops: Ops = []
        for key, old in self.installed.items():
            if key not in desired:
                ops.append(("delete_strict", old))
        for key, f in desired.items():
            cur = self.installed.get(key)
            if cur is None:
                ops.append(("add", f))
            elif cur != f:
                ops.append(("modify_strict", f))
        return ops

    def sync(self, sink: FlowSink, desired: dict[FlowKey, OfFlow], *, full: bool = False) -> int:
        """Make the switch hold exactly ``desired``; returns the number of flow-mods sent.
        Raises whatever the sink raises (the switch state is then unknown: next sync is full).
        """
        full = full or self.need_full
        if full:
            ops: Ops = [("add", f) for f in desired.values()]
        else:
            ops = self.diff(desired)
            if not ops:
                return 0
        try:
            sink.install(ops, replace_all=full)
        except Exception:
            self.need_full = True
            raise
        self.installed = dict(desired)
        self.need_full = False
        self.bundles += 1
        self.flow_mods += len(ops)
        return len(ops)
