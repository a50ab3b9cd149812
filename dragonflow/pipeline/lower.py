"""Lowering: logical flows (stage names, logical fields) -> OpenFlow flows (tables, registers).

Every flow is checked here against its stage's declaration AND the app that produced it: the
stage must be that app's, a field it matches or sets must be declared by the stage (a masked
value only where the stage allows a mask), gotos and resubmits must go where the stage says,
only physical stages may name ofports or tunnels, only punting stages may send to the
controller. A violation raises :class:`PipelineError` naming the app, the owner and the flow
(the engine then marks that owner failed; the rest of the chassis goes on).

Logical fields become masked register matches and partial writes (reg_load / masked
write-metadata); several fields of one register merge into one match entry.

The cookie of every flow names its producer: ``cookie(app, owner)`` is 16 bits of a hash of
the app name and 48 bits of a hash of the owner (hashlib: the same on every run and node),
so a flow seen in ``ovs-ofctl dump-flows`` maps back to its app and NB object
(``Lowering.owner_of_cookie`` and the controller's status file do the reverse lookup).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache

from dragonflow.ovs import flows as of
from dragonflow.pipeline import flow as lf
from dragonflow.pipeline.fields import (
    HEADER_FIELDS,
    LOGICAL_FIELDS,
    PHYSICAL_FIELDS,
    SCRATCH,
    STATE_FIELDS,
)
from dragonflow.pipeline.stages import (
    COPP_KIND_TABLE,
    COPP_PORT_TABLE,
    OwnedStage,
    Pipeline,
    PipelineError,
)

PIPELINE_APP = "pipeline"  # owner app of the table-miss flows


@lru_cache(maxsize=1 << 16)
def _h(text: str, nbytes: int) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=nbytes).digest(), "big")


def cookie(app: str, owner: str) -> int:
    """64-bit flow cookie: app hash (16 bits) << 48 | owner hash (48 bits)."""
    return (_h(app, 2) << 48) | _h(owner, 6)


def app_cookie(app: str) -> int:
    """The top 16 bits of every cookie of ``app``'s flows."""
    return _h(app, 2)


def app_of_cookie(value: int, apps: Iterable[str]) -> str | None:
    return next((a for a in apps if _h(a, 2) == value >> 48), None)


def _contiguous(mask: int) -> tuple[int, int]:
    """(ofs, nbits) of a mask whose set bits are contiguous."""
    if mask <= 0:
        raise ValueError("empty mask")
    ofs = (mask & -mask).bit_length() - 1
    nbits = (mask >> ofs).bit_length()
    if (mask >> ofs) != (1 << nbits) - 1:
        raise ValueError(f"mask {mask:#x} is not one contiguous run of bits")
    return ofs, nbits


PUNT_TABLE = LOGICAL_FIELDS["punt_table"]
PUNT_METER = LOGICAL_FIELDS["punt_meter"]
IN_PORT = LOGICAL_FIELDS["in_port"]
REINJECTED = LOGICAL_FIELDS["reinjected"]


def _punt_meter_match(mid: int) -> of.Match:
    return of.match(**{PUNT_METER.register: (mid << PUNT_METER.ofs, PUNT_METER.mask)})


def punt_origin(match: dict) -> int | None:
    """The table that punted a packet-in from the CoPP tables (from its registers)."""
    raw = match.get(PUNT_TABLE.register)
    value = raw[0] if isinstance(raw, tuple) else raw
    if not isinstance(value, int):
        return None
    return (value >> PUNT_TABLE.ofs) & ((1 << PUNT_TABLE.nbits) - 1)


ACTION_MEMO = 16384  # lowered action lists remembered (forgotten all at once when full)


# actions after which the packet goes on elsewhere before the flow's instructions apply
_LEAVES = (lf.Ct, lf.ToController, lf.Resubmit)

class Lowering:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self._punt_meters = {mid for mid, m in pipeline.meters.values() if m.punt}
        # (stage, logical actions) -> their lowering: most flows share their actions
        self._actions: dict[tuple[str, tuple[lf.Action, ...]], tuple[
            tuple[of.Action, ...], int | None, int, int, int | None]] = {}

    # --- control-plane policing (CoPP) -------------------------------------------------
    # Every punt goes through two tables after the pipeline: it loads the table that
    # punted and its meter id (0: none) and resubmits to COPP_PORT_TABLE, which drops a
    # packet the controller re-injected (it never comes back for the same reason) and
    # applies the source port's own meter; COPP_KIND_TABLE applies the kind's shared meter
    # and sends to the controller, which dispatches by the punting table.
    def punt(self, table: int, meter: int | None) -> list[of.Action]:
        return [of.Load(PUNT_TABLE.register, table, PUNT_TABLE.ofs, PUNT_TABLE.nbits),
                of.Load(PUNT_METER.register, meter or 0, PUNT_METER.ofs, PUNT_METER.nbits),
                of.Resubmit(COPP_PORT_TABLE)]

    def copp_flows(self) -> list[of.OfFlow]:
        """The CoPP tables' shared flows."""
        own = cookie(PIPELINE_APP, "copp")
        out = [of.OfFlow(table=COPP_PORT_TABLE, priority=200,
                         match=of.match(**{REINJECTED.register: (REINJECTED.mask,
                                                                 REINJECTED.mask)}),
                         cookie=own),
               of.OfFlow(table=COPP_PORT_TABLE, priority=0, match=of.match(),
                         actions=(of.Resubmit(COPP_KIND_TABLE),), cookie=own),
               of.OfFlow(table=COPP_KIND_TABLE, priority=0, match=of.match(),
                         actions=(of.Controller(),), cookie=own)]
        for _key, (mid, decl) in sorted(self.p.meters.items()):
            if not decl.punt:
                continue
            out.append(of.OfFlow(table=COPP_KIND_TABLE, priority=10,
                                 match=_punt_meter_match(mid), actions=(of.Controller(),),
                                 meter=mid, cookie=own))
        return out

    def copp_port_flows(self, port_key: int, port_meters: dict[int, int], owner: str
                        ) -> list[of.OfFlow]:
        """A local port's own punt budget: per kind (app meter id -> this port's meter id),
        its punts pass its meter before the shared one."""
        return [of.OfFlow(table=COPP_PORT_TABLE, priority=100,
                          match=of.match(**{IN_PORT.register: port_key,
                                            PUNT_METER.register: (mid << PUNT_METER.ofs,
                                                                  PUNT_METER.mask)}),
                          actions=(of.Resubmit(COPP_KIND_TABLE),), meter=pmid,
                          cookie=cookie(PIPELINE_APP, owner))
                for mid, pmid in sorted(port_meters.items()) if mid in self._punt_meters]

    def miss_flows(self) -> list[of.OfFlow]:
        out = []
        for name in self.p.order:
            o = self.p.stages[name]
            actions: tuple[of.Action, ...] = ()
            goto = None
            if o.stage.miss == "next":
                nxt = self.p.next_stage(name)
                assert nxt is not None
                goto = self.p.table(nxt)
            elif o.stage.miss == "controller":
                actions = tuple(self.punt(o.table, None))
            out.append(of.OfFlow(table=o.table, priority=0, match=of.match(),
                                 actions=actions, goto=goto,
                                 cookie=cookie(PIPELINE_APP, f"miss/{name}")))
        return out

    def lower(self, app: str, f: lf.Flow) -> of.OfFlow:
        def bad(reason: str) -> PipelineError:
            return PipelineError(f"app {app}: flow {f}: {reason}")

        try:
            o = self.p.stage(f.stage)
        except PipelineError as e:
            raise bad(str(e)) from None
        if o.app != app:
            raise bad(f"stage {f.stage} belongs to app {o.app}")
        stage = o.stage
        fields: dict[str, object] = {}
        regs: dict[str, tuple[int, int]] = {}  # register -> (value, mask) of logical fields
        for name, value in f.match:
            masked = isinstance(value, tuple) or (isinstance(value, str) and "/" in value)
            if name not in stage.matches:
                raise bad(f"stage {stage.name} does not declare a match on {name!r}")
            if masked and name not in stage.masked:
                raise bad(f"stage {stage.name} does not declare {name!r} maskable")
            if name in LOGICAL_FIELDS:
                lfd = LOGICAL_FIELDS[name]
                v, m = value if isinstance(value, tuple) else (value, (1 << lfd.nbits) - 1)
                if not isinstance(v, int) or not isinstance(m, int) or not (
                        0 <= v < 1 << lfd.nbits and 0 <= m < 1 << lfd.nbits):
                    raise bad(f"{name}={value!r} does not fit {lfd.nbits} bits")
                rv, rm = regs.get(lfd.register, (0, 0))
                regs[lfd.register] = (rv | (v & m) << lfd.ofs, rm | m << lfd.ofs)
            elif name in PHYSICAL_FIELDS:
                if not stage.physical:
                    raise bad(f"{name!r} is physical; stage {stage.name} is not")
                fields[PHYSICAL_FIELDS[name]] = value
            elif name in HEADER_FIELDS or name in STATE_FIELDS:
                fields[name] = value
            else:
                raise bad(f"unknown match field {name!r}")
        for reg, vm in regs.items():
            fields[reg] = vm
        done = self._actions.get((f.stage, f.actions))
        if done is None:
            done = self._lower_actions(app, o, f, bad)
            if len(self._actions) >= ACTION_MEMO:
                self._actions.clear()
            self._actions[(f.stage, f.actions)] = done
        actions, goto, meta_value, meta_mask, meter = done
        try:
            return of.OfFlow(table=o.table, priority=f.priority, match=of.match(**fields),
                             actions=actions, goto=goto,
                             write_metadata=(meta_value, meta_mask) if meta_mask else None,
                             meter=meter, cookie=cookie(app, f.owner),
                             idle_timeout=f.idle_timeout)
        except ValueError as e:
            raise bad(str(e)) from None

    def _lower_actions(self, app: str, o: OwnedStage, f: lf.Flow, bad  # type: ignore[no-untyped-def]
                       ) -> tuple[tuple[of.Action, ...], int | None, int, int, int | None]:
        """A flow's actions in OpenFlow: (actions, goto, metadata value, mask, meter). They
        follow from the stage and the logical actions alone (the stage names its app)."""
        stage = o.stage
        actions: list[of.Action] = []
        goto: int | None = None
        meta_value = meta_mask = 0
        meter: int | None = None
        for i, a in enumerate(f.actions):
            if goto is not None:
                raise bad("goto must be the last action")
            if isinstance(a, lf.Next):
                nxt = self.p.next_stage(stage.name)
                if nxt is None:
                    raise bad(f"stage {stage.name} is the last one: no next stage")
                goto = self.p.table(nxt)
            elif isinstance(a, lf.Goto):
                if a.stage not in stage.goto:
                    raise bad(f"stage {stage.name} may not goto {a.stage!r}")
                goto = self.p.table(a.stage)
            elif isinstance(a, lf.Resubmit):
                if a.stage not in stage.resubmit:
                    raise bad(f"stage {stage.name} may not resubmit to {a.stage!r}")
                actions.append(of.Resubmit(self.p.table(a.stage)))
            elif isinstance(a, lf.SetReg):
                target = LOGICAL_FIELDS.get(a.field)
                if target is None or a.field not in stage.sets:
                    raise bad(f"stage {stage.name} does not declare setting {a.field!r}")
                if not isinstance(a.value, int) or not 0 <= a.value < 1 << target.nbits:
                    raise bad(f"{a.field}={a.value!r} does not fit {target.nbits} bits")
                if target.register == "metadata" and not any(
                        isinstance(x, _LEAVES) for x in f.actions[i:]):
                    meta_value |= a.value << target.ofs
                    meta_mask |= target.mask
                elif target.register == "metadata":  # a ct() / punt / resubmit after it
                    # takes the packet on before the write_metadata instruction (applied
                    # at the end of the flow): written as an action instead
                    actions.append(of.Load(target.register, a.value, target.ofs,
                                           target.nbits))
                elif target.whole:
                    actions.append(of.SetField(target.register, a.value))
                else:
                    actions.append(of.Load(target.register, a.value, target.ofs,
                                           target.nbits))
            elif isinstance(a, lf.SetField):
                if a.field not in HEADER_FIELDS or a.field not in stage.sets:
                    raise bad(f"stage {stage.name} does not declare setting {a.field!r}")
                actions.append(self._of(bad, of.SetField, a.field, a.value))
            elif isinstance(a, lf.Move):
                for fname, role in ((a.src, "src"), (a.dst, "dst")):
                    ok = fname in SCRATCH or (fname in HEADER_FIELDS and (
                        fname in stage.sets if role == "dst" else True))
                    if not ok:
                        raise bad(f"move {role} {fname!r}: only scratch registers and "
                                  f"header fields the stage declares")
                actions.append(self._of(bad, of.Move, a.src, a.dst, a.n_bits, a.src_ofs,
                                        a.dst_ofs))
            elif isinstance(a, lf.DecTtl):
                actions.append(of.DecTtl())
            elif isinstance(a, lf.OutputInPort):
                actions.append(of.Output(of.OFPP_IN_PORT))
            elif isinstance(a, lf.ToController):
                if not stage.punt:
                    raise bad(f"stage {stage.name} is not declared punt: no packet-in handler")
                actions.append(of.Controller())
            elif isinstance(a, lf.Meter):
                if meter is not None:
                    raise bad("one meter per flow")
                meter = self.p.meter_id(app, a.name)
                if meter is None:
                    raise bad(f"app {app} declares no meter {a.name!r}")
                if a.port:
                    if lf.ToController() in f.actions:
                        raise bad("a punt is policed per port in the CoPP tables: "
                                  "Meter(name) without port")
                    if meter not in self.p.per_port_meters():
                        raise bad(f"meter {a.name!r} is not declared per_port")
                    # the port's own meter (Engine makes it while the port is local); a
                    # key too large for per-port meter ids falls back to the shared one
                    meter = self.p.port_meters(a.port).get(meter, meter)
            elif isinstance(a, lf.Ct):
                actions.append(self._ct(bad, o, a))
            elif isinstance(a, (of.CtClear, of.Conjunction, of.SetQueue)):
                actions.append(a)
            elif isinstance(a, (of.PushVlan, of.PopVlan)):
                if not stage.physical:  # a VLAN tag exists only on the wire
                    raise bad(f"action {i} is physical; stage {stage.name} is not")
                actions.append(a)
            elif isinstance(a, (lf.Output, lf.OutputTunnel)):
                if not stage.physical:
                    raise bad(f"action {i} is physical; stage {stage.name} is not")
                if isinstance(a, lf.Output):
                    actions.append(of.Output(a.ofport))
                else:
                    actions += [self._of(bad, of.SetField, "tun_ipv4_dst", a.remote_ip),
                                self._of(bad, of.SetField, "tunnel_id", a.vni),
                                of.Output(a.ofport)]
            else:
                raise bad(f"unknown action {a!r}")
        if of.Controller() in actions:
            # policed (per source port, then per kind) in the CoPP tables: copp_flows
            at = actions.index(of.Controller())
            actions[at:at + 1] = self.punt(o.table, meter)
            meter = None
        if any(isinstance(a, of.Conjunction) for a in actions) and (
                goto is not None or meta_mask or meter is not None
                or not all(isinstance(a, of.Conjunction) for a in actions)):
            raise bad("a conjunction clause flow has only conjunction actions")
        return tuple(actions), goto, meta_value, meta_mask, meter

    @staticmethod
    def _of(bad, cls, *args):  # type: ignore[no-untyped-def]
        try:
            return cls(*args)
        except ValueError as e:
            raise bad(str(e)) from None

    def _ct(self, bad, o: OwnedStage, a: lf.Ct) -> of.Ct:  # type: ignore[no-untyped-def]
        stage = o.stage
        table: int | None = None
        if a.table is not None:
            target = self.p.next_stage(stage.name) if a.table == lf.NEXT else a.table
            if target is None:
                raise bad(f"ct(table=next) in the last stage {stage.name}")
            if a.table != lf.NEXT and target not in stage.goto:
                raise bad(f"stage {stage.name} may not continue ct() in {target!r}")
            table = self.p.table(target)
        zone_field, zone_ofs, zone = None, 0, 0
        if isinstance(a.zone, str):
            lfd = LOGICAL_FIELDS.get(a.zone)
            if lfd is None or lfd.nbits != 16:
                raise bad(f"ct zone {a.zone!r} is not a 16-bit logical field")
            zone_field, zone_ofs = lfd.register, lfd.ofs
        else:
            zone = a.zone
        execs: list[of.Load | of.SetField] = []
        for fname, vm, width in (("ct_mark", a.mark, 32), ("ct_label", a.label, 128)):
            if vm is None:
                continue
            value, mask = vm
            try:
                ofs, nbits = _contiguous(mask)
            except ValueError as e:
                raise bad(f"{fname}: {e}") from None
            if ofs + nbits > width or nbits > 64 or value & ~mask:
                raise bad(f"{fname} value {value:#x}/{mask:#x} does not fit")
            execs.append(of.Load(fname, value >> ofs, ofs, nbits))
        return self._of(bad, of.Ct, a.commit, zone, zone_field, zone_ofs, table, a.nat,
                        tuple(execs), a.force)
