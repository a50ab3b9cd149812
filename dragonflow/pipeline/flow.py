"""Logical flows: what apps return. Stage names and logical fields, never table numbers.

A :class:`Flow` is a value (hashable, comparable): the same model snapshot always compiles
to the same set of flows, which is what makes "incremental == full recompute" testable and
lets the reconciler send only differences. Physical details (ofports, tunnel ports) appear
only in flows of stages declared ``physical`` (see stages.py), produced by apps/physical.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dragonflow.ovs.flows import Conjunction, CtClear, Nat, PopVlan, PushVlan, SetQueue

# ovs values valid as logical too
__all__ = ["Conjunction", "CtClear", "Nat", "PopVlan", "PushVlan", "SetQueue"]

MatchValue = int | str | tuple[int, int] | tuple[str, str]
MatchSpec = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Goto:
    """Continue in ``stage`` (declared in the flow's stage ``goto``; forward only)."""

    stage: str


@dataclass(frozen=True, slots=True)
class Next:
    """Continue in the stage that follows this one in the assembled pipeline (whichever
    app owns it): how an app says "go on" without naming anyone else's stage."""


@dataclass(frozen=True, slots=True)
class Resubmit:
    stage: str


@dataclass(frozen=True, slots=True)
class SetReg:
    """Set a logical field (pipeline/fields.py: ``out_port``, ``network``, ``from_tunnel``
    ...): only its bits of the register are written."""

    field: str
    value: int


@dataclass(frozen=True, slots=True)
class SetField:
    """Set a header field (OXM name), e.g. eth_src."""

    field: str
    value: int | str


@dataclass(frozen=True, slots=True)
class Move:
    """Copy ``n_bits`` of field ``src`` (from bit ``src_ofs``) into ``dst`` (from bit
    ``dst_ofs``): header fields, or the stage-local SCRATCH registers (stages.py)."""

    src: str
    dst: str
    n_bits: int
    src_ofs: int = 0
    dst_ofs: int = 0


@dataclass(frozen=True, slots=True)
class DecTtl:
    """Decrement TTL / hop limit; an expiring packet goes to the controller instead."""


@dataclass(frozen=True, slots=True)
class OutputInPort:
    """Send the packet back where it came from (responders)."""


@dataclass(frozen=True, slots=True)
class Output:
    """Physical stages only: output to an ofport."""

    ofport: int


@dataclass(frozen=True, slots=True)
class OutputTunnel:
    """Physical stages only: encapsulate towards ``remote_ip`` with ``vni`` out of the
    tunnel port ``ofport``."""

    ofport: int
    remote_ip: str
    vni: int


@dataclass(frozen=True, slots=True)
class ToController:
    """Punt to the local controller: only in stages declared ``punt`` (their app handles
    the packet-in)."""


@dataclass(frozen=True, slots=True)
class Meter:
    """Police the flow's packets with the app's declared meter ``name``. With ``port`` (a
    local port's unique key; the meter must be declared ``per_port``) a flow that does not
    punt is policed by that port's own meter of this kind instead of the shared one (e.g.
    one VM's TCP SYNs to a local service); punts are policed per port in the CoPP tables
    and take no ``port``."""

    name: str
    port: int = 0


@dataclass(frozen=True, slots=True)
class Ct:
    """Send the packet through conntrack in ``zone`` (a logical field, or an immediate
    zone number) and, with ``table``, continue in that stage (a stage name or ``NEXT``)
    with ct_state set; without ``table`` the packet continues in this flow's actions.
    ``commit`` records the connection; with it ``mark`` / ``label`` = (value, mask) are
    written into ct_mark / ct_label (the mask's set bits must be contiguous)."""

    commit: bool = False
    zone: str | int = "zone"
    table: str | None = None
    nat: Nat | None = None
    mark: tuple[int, int] | None = None
    label: tuple[int, int] | None = None
    force: bool = False


NEXT = "<next>"  # Ct(table=NEXT): recirculate into the next stage

Action = (Goto | Next | Resubmit | SetReg | SetField | Move | DecTtl | OutputInPort | Output
          | OutputTunnel | ToController | Meter | Ct | CtClear | Conjunction | SetQueue
          | PushVlan | PopVlan)


@dataclass(frozen=True, slots=True)
class Flow:
    stage: str
    priority: int
    match: tuple[tuple[str, MatchValue], ...]
    actions: tuple[Action, ...]
    owner: str  # "<table>/<id>" of the model object (or chassis fact) that produced it
    idle_timeout: int = 0  # seconds; OVS expires an idle flow (reactive L3)
    # computed once: flows are hashed many times on their way (sets, the lowering memo)
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.stage, self.priority, self.match,
                                                self.actions, self.owner,
                                                self.idle_timeout)))

    def __hash__(self) -> int:
        return self._hash

    @staticmethod
    def make(stage: str, priority: int, match: MatchSpec,
             actions: tuple[Action, ...] | list[Action], owner: str,
             idle_timeout: int = 0) -> Flow:
        return Flow(stage, priority, tuple(sorted(match.items())), tuple(actions), owner,
                    idle_timeout)

    def __str__(self) -> str:
        m = ",".join(f"{k}={v}" for k, v in self.match)
        a = ",".join(_fmt_action(x) for x in self.actions) or "drop"
        return f"{self.stage} prio={self.priority} {m} -> {a}  [{self.owner}]"


def _fmt_action(a: Action) -> str:
    name = type(a).__name__
    fields = ",".join(str(getattr(a, f)) for f in a.__dataclass_fields__)
    return f"{name}({fields})"
