"""The pipeline, assembled from what the enabled apps declare.

Every app declares the :class:`Stage` s it owns: the name, its place relative to other
stages (``after`` / ``before``), the logical fields (pipeline/fields.py) and header fields its
flows may match (``masked``: which of them may carry a mask or prefix) and set, the stages
other than the next one its flows may ``goto`` (forward) or ``resubmit`` to, whether its
flows may punt to the controller (the app then handles those packet-ins), and what a table
miss does (``drop``, ``next`` or ``controller``). Apps may also declare meters.

:meth:`Pipeline.assemble` orders the stages (the declarations must determine ONE order: two
stages with no declared order between them are an error, so the order never depends on
which app loaded first), numbers the tables, and checks everything: one owner per stage,
gotos only forward and only to declared stages, no unknown field. Every error names the
app and the stage. Lowering (pipeline/lower.py) then checks every flow against its stage
and against the app that produced it: an app cannot put a flow into another app's stage.

The core apps give this pipeline (``df-controller`` logs it at start-up)::

    metadata (metadata) -> classify (physical) -> arp_responder (arp) -> dhcp (dhcp)
      -> nd_responder (nd) -> ra (ra) -> l2_lookup (l2) -> l3_input (icmp)
      -> l3_lookup (l3) -> egress (physical)

Frames to a router interface MAC go l2_lookup -> l3_input; all others l2_lookup -> egress;
frames from a tunnel go classify -> l2_lookup.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from dragonflow.pipeline.fields import (
    HEADER_FIELDS,
    LOGICAL_FIELDS,
    PHYSICAL_FIELDS,
    STATE_FIELDS,
)

Miss = Literal["drop", "next", "controller"]


@dataclass(frozen=True)
class Stage:
    name: str
    after: tuple[str, ...] = ()     # comes after these stages (those not enabled are ignored)
    before: tuple[str, ...] = ()    # comes before these stages (idem)
    matches: frozenset[str] = frozenset()  # logical + header (+ state, physical) fields
    masked: frozenset[str] = frozenset()   # of ``matches``: may be masked / a prefix
    sets: frozenset[str] = frozenset()     # logical + header fields flows may write
    goto: tuple[str, ...] = ()      # stages, beyond the next one, a flow may continue in
    resubmit: tuple[str, ...] = ()  # stages a flow may resubmit to (any direction)
    miss: Miss = "drop"
    punt: bool = False              # flows may send to the controller (app handles them)
    physical: bool = False          # may match ofports/tunnels and output to them
    doc: str = ""


@dataclass(frozen=True)
class MeterDecl:
    """A meter an app declares (``Meter(name)`` in its flows): one drop band.

    ``rate``/``burst`` police everything the app's flows punt through it, on this chassis.
    With ``per_port`` (packets/s, pktps meters only) a punt through it first passes a meter
    of its own source port (``per_port_burst``), then the shared one: one VM flooding the
    controller path uses up its own budget, not its neighbours' (control-plane policing,
    as OVN's CoPP, per port). Lowering sends such punts through the CoPP tables."""

    name: str
    rate: int
    burst: int = 0
    unit: Literal["pktps", "kbps"] = "pktps"
    per_port: int = 0
    per_port_burst: int = 0
    punt: bool = True  # polices punts (CoPP tables); False: Meter(name, port=) on other flows


# Control-plane policing tables, after every stage (Lowering.copp_flows): every punt loads
# the punting table and its meter id (punt_table, punt_meter) and resubmits here;
# COPP_PORT_TABLE drops what the controller re-injected and applies the source port's meter,
# COPP_KIND_TABLE the shared meter of that kind and sends to the controller, which
# dispatches by punt_table.
COPP_PORT_TABLE = 250
COPP_KIND_TABLE = 251
MAX_APP_METERS = 255  # an app meter id must fit punt_meter (8 bits)
PORT_METER_BASE = 0x1000  # per-port meters (Pipeline.port_meters); app meters are 1..255
MAX_METER_ID = 0xFFFF0000  # OpenFlow's last meter id


def fields(*names: str) -> frozenset[str]:
    return frozenset(names)


class PipelineError(Exception):
    pass


@dataclass(frozen=True)
class OwnedStage:
    stage: Stage
    app: str
    table: int


@dataclass
class Pipeline:
    """The assembled pipeline: stages in order, their tables and owners, meters."""

    order: tuple[str, ...]
    stages: dict[str, OwnedStage]
    meters: dict[tuple[str, str], tuple[int, MeterDecl]] = field(default_factory=dict)

    @staticmethod
    def assemble(apps: Iterable[object], base: int = 0) -> Pipeline:
        """Build and check the pipeline of ``apps`` (objects with ``name`` and ``stages``,
        optionally ``meters``)."""
        declared: dict[str, tuple[Stage, str]] = {}
        meters: list[tuple[str, MeterDecl]] = []
        for app in apps:
            app_name = str(getattr(app, "name", "?"))
            for s in getattr(app, "stages", ()):
                if not isinstance(s, Stage):
                    raise PipelineError(f"app {app_name}: {s!r} is not a Stage")
                if s.name in declared:
                    raise PipelineError(f"stage {s.name!r} declared by app {declared[s.name][1]}"
                                        f" and by app {app_name}: one owner per stage")
                declared[s.name] = (s, app_name)
            for m in getattr(app, "meters", ()):
                meters.append((app_name, m))
        order = _order(declared)
        owned = {name: OwnedStage(declared[name][0], declared[name][1], base + i)
                 for i, name in enumerate(order)}
        if base + len(order) > COPP_PORT_TABLE:
            raise PipelineError(f"{len(order)} stages do not fit the OpenFlow tables")
        p = Pipeline(tuple(order), owned)
        seen: set[tuple[str, str]] = set()
        for i, (app_name, m) in enumerate(sorted(meters, key=lambda am: (am[0], am[1].name))):
            if (app_name, m.name) in seen:
                raise PipelineError(f"app {app_name}: meter {m.name!r} declared twice")
            seen.add((app_name, m.name))
            if m.rate <= 0:
                raise PipelineError(f"app {app_name}: meter {m.name!r}: rate must be > 0")
            if m.per_port < 0 or (m.per_port and m.unit != "pktps"):
                raise PipelineError(f"app {app_name}: meter {m.name!r}: per_port must be a "
                                    f"packets/s rate >= 0 (pktps meters only)")
            if i + 1 > MAX_APP_METERS:
                raise PipelineError(f"more than {MAX_APP_METERS} meters declared")
            p.meters[(app_name, m.name)] = (i + 1, m)
        for name in order:
            p._check(owned[name])
        return p

    def _check(self, o: OwnedStage) -> None:
        s = o.stage

        def bad(reason: str) -> PipelineError:
            return PipelineError(f"app {o.app}, stage {s.name}: {reason}")

        for nxt in s.goto:
            if nxt not in self.stages:
                raise bad(f"goto to {nxt!r}, which no enabled app declares")
            if self.stages[nxt].table <= o.table:
                raise bad(f"goto {nxt!r} is not forward (OpenFlow only goes forward)")
        for nxt in s.resubmit:
            if nxt not in self.stages:
                raise bad(f"resubmit to {nxt!r}, which no enabled app declares")
        if s.miss not in ("drop", "next", "controller"):
            raise bad(f"miss must be drop, next or controller, not {s.miss!r}")
        if s.miss == "next" and self.next_stage(s.name) is None:
            raise bad("miss 'next' in the last stage")
        if s.miss == "controller" and not s.punt:
            raise bad("miss 'controller' needs punt=True (the app handles the packet-ins)")
        allowed = set(LOGICAL_FIELDS) | HEADER_FIELDS | STATE_FIELDS
        if s.physical:
            allowed |= set(PHYSICAL_FIELDS)
        unknown = s.matches - allowed
        if unknown:
            raise bad(f"matches unknown field(s) {sorted(unknown)}")
        if s.masked - s.matches:
            raise bad(f"masked field(s) {sorted(s.masked - s.matches)} not in matches")
        unknown = s.sets - (set(LOGICAL_FIELDS) | HEADER_FIELDS)
        if unknown:
            raise bad(f"sets unknown or read-only field(s) {sorted(unknown)}")

    # --- lookups --------------------------------------------------------------------
    def stage(self, name: str) -> OwnedStage:
        try:
            return self.stages[name]
        except KeyError:
            raise PipelineError(f"unknown stage {name!r}") from None

    def table(self, name: str) -> int:
        return self.stage(name).table

    def next_stage(self, name: str) -> str | None:
        i = self.order.index(name)
        return self.order[i + 1] if i + 1 < len(self.order) else None

    def stage_of_table(self, table: int) -> OwnedStage | None:
        for o in self.stages.values():
            if o.table == table:
                return o
        return None

    def meter_id(self, app: str, name: str) -> int | None:
        found = self.meters.get((app, name))
        return found[0] if found else None

    def per_port_meters(self) -> dict[int, MeterDecl]:
        """Meter id -> declaration, of the meters with a per-port budget."""
        return {mid: m for mid, m in self.meters.values() if m.per_port}

    def port_meters(self, port_key: int) -> dict[int, int]:
        """App meter id -> the meter id of local port ``port_key``'s own meter of that kind,
        for every meter declared ``per_port``: a function of the key alone (the same on every
        run, so an incremental compile equals a full one). Empty when the ids would not fit
        OpenFlow's meter ids (2**31 ports): that port is policed by the shared meters only."""
        kinds = sorted(self.per_port_meters())
        want = {mid: PORT_METER_BASE + port_key * len(kinds) + i for i, mid in enumerate(kinds)}
        return want if port_key > 0 and want and max(want.values()) <= MAX_METER_ID else {}

    def describe(self) -> str:
        """One line per stage: table, name, owner, miss (and the CoPP tables, if used)."""
        lines = [f"  table {o.table:>3}  {n:<20} app={o.app:<10} miss={o.stage.miss}"
                 for n in self.order for o in (self.stages[n],)]
        lines += [f"  table {COPP_PORT_TABLE:>3}  {'copp_port':<20} app=pipeline   "
                  f"punts: re-injected dropped, per-port meters",
                  f"  table {COPP_KIND_TABLE:>3}  {'copp_kind':<20} app=pipeline   "
                  f"punts: shared meters -> controller"]
        return "\n".join(lines)


def _order(declared: dict[str, tuple[Stage, str]]) -> list[str]:
    """The one order the after/before declarations allow (Kahn; ambiguity is an error)."""
    succ: dict[str, set[str]] = {n: set() for n in declared}
    for name, (s, _app) in declared.items():
        for a in s.after:
            if a in declared and a != name:
                succ[a].add(name)
        for b in s.before:
            if b in declared and b != name:
                succ[name].add(b)
    indeg = {n: 0 for n in declared}
    for n in declared:
        for m in succ[n]:
            indeg[m] += 1
    ready = sorted(n for n, d in indeg.items() if d == 0)
    order: list[str] = []
    while ready:
        if len(ready) > 1:
            who = ", ".join(f"{n} (app {declared[n][1]})" for n in ready)
            raise PipelineError(f"stages {who} have no declared order between them: "
                                f"declare after=/before= so exactly one order is possible")
        n = ready.pop()
        order.append(n)
        for m in sorted(succ[n]):
            indeg[m] -= 1
            if indeg[m] == 0:
                ready.append(m)
        ready.sort()
    if len(order) != len(declared):
        cycle = sorted(n for n in declared if n not in order)
        raise PipelineError(f"stages {cycle} declare a cycle of after/before")
    return order
