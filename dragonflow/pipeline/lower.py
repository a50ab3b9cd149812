"""Lowering: logical flows (stage names, logical keys) -> OpenFlow flows (tables, registers).

Every flow is checked against its stage's declaration here: a logical field it matches or
sets must be declared by the stage, gotos and resubmits must go where the stage says, and
only physical stages may name ofports or tunnels. A violation is a programming error in an
app and raises :class:`PipelineError` naming the flow.
"""

from __future__ import annotations

from collections.abc import Iterable

from dragonflow.ovs import flows as of
from dragonflow.pipeline import flow as lf
from dragonflow.pipeline.stages import (
    HEADER_FIELDS,
    PIPELINE,
    REGISTERS,
    SCRATCH,
    Pipeline,
    PipelineError,
)

ALL_ONES_64 = 2**64 - 1
PHYSICAL_MATCH = {"in_ofport": "in_port", "tunnel_id": "tunnel_id"}


class Lowering:
    def __init__(self, tunnel_ofports: dict[str, int], pipeline: Pipeline = PIPELINE) -> None:
        self.p = pipeline
        self.tunnel_ofports = tunnel_ofports

    def miss_flows(self) -> list[of.OfFlow]:
        out = []
        for name, stage in self.p.stages.items():
            goto = self.p.table[stage.miss[5:]] if stage.miss.startswith("goto:") else None
            out.append(of.OfFlow(table=self.p.table[name], priority=0, match=of.match(),
                                 goto=goto))
        return out

    def lower_all(self, flows: Iterable[lf.Flow]) -> list[of.OfFlow]:
        return [self.lower(f) for f in flows] + self.miss_flows()

    def lower(self, f: lf.Flow) -> of.OfFlow:
        stage = self.p.stage(f.stage)

        def bad(reason: str) -> PipelineError:
            return PipelineError(f"flow {f}: {reason}")

        fields: dict[str, object] = {}
        for name, value in f.match:
            if name in REGISTERS:
                if name not in stage.matches:
                    raise bad(f"stage {stage.name} does not declare a match on {name!r}")
                fields[REGISTERS[name]] = value
            elif name in PHYSICAL_MATCH:
                if not stage.physical:
                    raise bad(f"{name!r} is physical; stage {stage.name} is not")
                fields[PHYSICAL_MATCH[name]] = value
            elif name in HEADER_FIELDS:
                fields[name] = value
            else:
                raise bad(f"unknown match field {name!r}")
        actions: list[of.Action] = []
        goto: int | None = None
        write_metadata: tuple[int, int] | None = None
        for i, a in enumerate(f.actions):
            if goto is not None:
                raise bad("goto must be the last action")
            if isinstance(a, lf.Goto):
                if a.stage not in stage.goto:
                    raise bad(f"stage {stage.name} may not goto {a.stage!r}")
                goto = self.p.table[a.stage]
            elif isinstance(a, lf.Resubmit):
                if a.stage not in stage.resubmit:
                    raise bad(f"stage {stage.name} may not resubmit to {a.stage!r}")
                actions.append(of.Resubmit(self.p.table[a.stage]))
            elif isinstance(a, lf.SetReg):
                if a.field not in stage.sets:
                    raise bad(f"stage {stage.name} does not declare setting {a.field!r}")
                if REGISTERS[a.field] == "metadata":
                    write_metadata = (a.value, ALL_ONES_64)
                else:
                    actions.append(of.SetField(REGISTERS[a.field], a.value))
            elif isinstance(a, lf.SetField):
                if a.field not in HEADER_FIELDS:
                    raise bad(f"SetField of non-header field {a.field!r}")
                actions.append(of.SetField(a.field, a.value))
            elif isinstance(a, lf.Move):
                for fname in (a.src, a.dst):
                    if fname not in HEADER_FIELDS and fname not in SCRATCH:
                        raise bad(f"move of {fname!r}: only header fields and scratch regs")
                actions.append(of.Move(a.src, a.dst, a.n_bits, a.src_ofs, a.dst_ofs))
            elif isinstance(a, lf.DecTtl):
                actions.append(of.DecTtl())
            elif isinstance(a, lf.OutputInPort):
                actions.append(of.Output(of.OFPP_IN_PORT))
            elif isinstance(a, lf.ToController):
                actions.append(of.Controller())
            elif isinstance(a, (lf.Output, lf.OutputTunnel)):
                if not stage.physical:
                    raise bad(f"action {i} is physical; stage {stage.name} is not")
                if isinstance(a, lf.Output):
                    actions.append(of.Output(a.ofport))
                else:
                    ofport = self.tunnel_ofports.get(a.tunnel_type)
                    if ofport is None:
                        raise bad(f"no {a.tunnel_type} tunnel port on this chassis")
                    actions += [of.SetField("tun_ipv4_dst", a.remote_ip),
                                of.SetField("tunnel_id", a.vni), of.Output(ofport)]
            else:
                raise bad(f"unknown action {a!r}")
        try:
            m = of.match(**fields)
        except ValueError as e:
            raise bad(str(e)) from None
        return of.OfFlow(table=self.p.table[stage.name], priority=f.priority, match=m,
                         actions=tuple(actions), goto=goto, write_metadata=write_metadata,
                         idle_timeout=f.idle_timeout)
