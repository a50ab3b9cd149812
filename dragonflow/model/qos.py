"""QoS policies of the NB model: bandwidth-limit and DSCP-marking rules (Neutron semantics).

A policy holds at most one rule per (type, direction); the properties ``max_kbps``,
``max_burst_kbps`` and ``dscp_mark`` give the egress values apps need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dragonflow.model.base import NbObject, Record
from dragonflow.model.fields import ID, Int, Invalid, Nested, OneOf, Opt, TupleOf, fld

# neutron_lib.services.qos.constants.VALID_DSCP_MARKS
VALID_DSCP_MARKS = (0, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40,
                    46, 48, 56)
MAX_KBPS = 2**31 - 1  # Neutron's DB integer limit
BANDWIDTH_LIMIT = "bandwidth_limit"
DSCP_MARKING = "dscp_marking"


@dataclass(frozen=True, kw_only=True, slots=True)
class QosRule(Record):
    TABLE: ClassVar[str] = "qos_rule"

    id: str = fld(ID)
    type: str = fld(OneOf(BANDWIDTH_LIMIT, DSCP_MARKING))
    direction: str = fld(OneOf("egress", "ingress"), "egress")
    max_kbps: int | None = fld(Opt(Int(1, MAX_KBPS)), None)
    max_burst_kbps: int | None = fld(Opt(Int(0, MAX_KBPS)), None)
    dscp_mark: int | None = fld(Opt(OneOf(*VALID_DSCP_MARKS)), None)

    def _check(self) -> None:
        if self.type == BANDWIDTH_LIMIT:
            if self.max_kbps is None:
                raise Invalid("max_kbps", "required for a bandwidth_limit rule")
            if self.dscp_mark is not None:
                raise Invalid("dscp_mark", "must be null for a bandwidth_limit rule")
        else:
            if self.dscp_mark is None:
                raise Invalid("dscp_mark", "required for a dscp_marking rule")
            for name in ("max_kbps", "max_burst_kbps"):
                if getattr(self, name) is not None:
                    raise Invalid(name, "must be null for a dscp_marking rule")
            if self.direction != "egress":
                raise Invalid("direction", "dscp_marking rules are egress only")


@dataclass(frozen=True, kw_only=True, slots=True)
class QosPolicy(NbObject):
    TABLE: ClassVar[str] = "qospolicy"

    rules: tuple[QosRule, ...] = fld(TupleOf(Nested(QosRule)), ())

    def _check(self) -> None:
        ids: set[str] = set()
        kinds: set[tuple[str, str]] = set()
        for i, rule in enumerate(self.rules):
            if rule.id in ids:
                raise Invalid(f"rules[{i}].id", f"duplicate rule id {rule.id!r}")
            ids.add(rule.id)
            if (rule.type, rule.direction) in kinds:
                raise Invalid(f"rules[{i}].type", f"a {rule.type} rule for direction "
                                                  f"{rule.direction} already exists")
            kinds.add((rule.type, rule.direction))

    def rule(self, type: str, direction: str = "egress") -> QosRule | None:
        return next((r for r in self.rules if r.type == type and r.direction == direction),
                    None)

    @property
    def max_kbps(self) -> int | None:
        rule = self.rule(BANDWIDTH_LIMIT)
        return None if rule is None else rule.max_kbps

    @property
    def max_burst_kbps(self) -> int | None:
        rule = self.rule(BANDWIDTH_LIMIT)
        return None if rule is None else rule.max_burst_kbps

    @property
    def dscp_mark(self) -> int | None:
        rule = self.rule(DSCP_MARKING)
        return None if rule is None else rule.dscp_mark
