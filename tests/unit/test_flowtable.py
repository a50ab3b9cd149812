"""Flows with many owners: installed once, kept until the last owner goes; conjunction
clauses merged; conflicts resolved by a documented rule that no hash seed changes; rejected
owners left out while the rest converges."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dragonflow.controller.flowtable import FlowTable
from dragonflow.controller.reconciler import Ops, Reconciler
from dragonflow.ovs import flows as of


def flow(prio: int, owner_cookie: int, *actions: of.Action, port: int = 1,
         goto: int | None = None) -> of.OfFlow:
    return of.OfFlow(table=3, priority=prio, match=of.match(reg6=port), actions=actions,
                     goto=goto, cookie=owner_cookie)


class RecordingSink:
    """A switch that keeps what it was told and refuses flow-mods it is told to refuse,
    the way OVS does: the whole bundle is discarded, the error names the flow-mod."""

    def __init__(self, refuse: set[int] | None = None) -> None:
        self.flows: dict[tuple, of.OfFlow] = {}
        self.refuse_ports = refuse or set()
        self.bundles = 0

    def install(self, ops: Ops, replace_all: bool = False) -> None:
        bad = [(op, f, "BAD") for op, f in ops if op != "delete_strict"
               and any(v in self.refuse_ports for n, v, _ in f.match if n == "reg6")]
        if bad:
            err = RuntimeError(f"{len(bad)} flow-mods refused")
            err.failed = bad  # type: ignore[attr-defined]
            raise err
        if replace_all:
            self.flows = {}
        for op, f in ops:
            if op == "delete_strict":
                self.flows.pop(f.key, None)
            else:
                self.flows[f.key] = f
        self.bundles += 1


def test_identical_flow_from_two_owners_is_installed_once_until_the_last_goes() -> None:
    t, r, sink = FlowTable(), Reconciler(), RecordingSink()
    t.put(("l2", "port/a"), [flow(10, 0xA, of.Output(1))])
    t.put(("l2", "port/b"), [flow(10, 0xB, of.Output(1))])
    r.sync(sink, t)
    assert list(sink.flows.values()) == [flow(10, 0xA, of.Output(1))]  # first owner's cookie
    t.put(("l2", "port/a"), [])
    r.sync(sink, t)  # b still wants it: stays, now under b's cookie
    assert list(sink.flows.values()) == [flow(10, 0xB, of.Output(1))]
    t.put(("l2", "port/b"), [])
    r.sync(sink, t)
    assert sink.flows == {}
    assert not t.conflicts


def test_conjunction_clauses_of_several_owners_merge_into_one_flow() -> None:
    t = FlowTable()
    t.put(("sg", "rule/1"), [flow(5, 1, of.Conjunction(10, 1, 2))])
    t.put(("sg", "rule/2"), [flow(5, 2, of.Conjunction(11, 1, 2))])
    t.put(("sg", "rule/3"), [flow(5, 3, of.Conjunction(10, 1, 2))])  # same clause again
    t.resolve()
    (merged,) = t.desired.values()
    assert merged.actions == (of.Conjunction(10, 1, 2), of.Conjunction(11, 1, 2))
    assert not t.conflicts
    t.put(("sg", "rule/2"), [])
    t.resolve()
    (merged,) = t.desired.values()
    assert merged.actions == (of.Conjunction(10, 1, 2),)


def test_conflict_is_resolved_by_the_rule_counted_and_cleared() -> None:
    t = FlowTable()
    t.put(("l3", "router/r2"), [flow(100, 2, goto=6)])
    t.put(("l3", "router/r1"), [flow(100, 1)])  # drop
    t.resolve()
    (installed,) = t.desired.values()
    assert installed == flow(100, 1)  # router/r1 sorts first
    assert list(t.conflicts.values()) == [(("l3", "router/r1"), ("l3", "router/r2"))]
    assert t.conflicts_total == 1
    t.put(("l3", "router/r1"), [])
    t.resolve()
    assert list(t.desired.values()) == [flow(100, 2, goto=6)] and not t.conflicts


CONFLICT_SCRIPT = r"""
import json
from dragonflow.controller.flowtable import FlowTable
from dragonflow.ovs import flows as of
t = FlowTable()
owners = [("app%d" % (i % 3), "obj/%d" % i) for i in range(40)]
for o in set(owners):  # the order owners arrive in differs with the hash seed
    i = owners.index(o)
    t.put(o, [of.OfFlow(table=2, priority=7, match=of.match(reg7=i % 4),
                        actions=(of.Output(i),), cookie=i),
              of.OfFlow(table=2, priority=8, match=of.match(reg7=1), actions=(of.Output(i),),
                        cookie=i)])
t.resolve()
print(json.dumps(sorted(str(f) for f in t.desired.values())))
"""


def test_conflicts_install_the_same_flows_under_any_hash_seed() -> None:
    results = set()
    for seed in ("0", "1", "42", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", CONFLICT_SCRIPT], env=env, check=True,
                             capture_output=True, text=True).stdout
        results.add(out)
        assert len(json.loads(out)) == 5
    assert len(results) == 1, results


def test_a_rejected_flow_leaves_out_its_owner_and_installs_everything_else() -> None:
    t, r = FlowTable(), Reconciler()
    sink = RecordingSink(refuse={13})
    for i in range(20):
        t.put(("l2", f"port/{i}"), [flow(10, i, of.Output(i), port=i)])
    sent = r.sync(sink, t)
    assert sent == 19 and len(sink.flows) == 19 and sink.bundles == 1
    assert set(t.rejected) == {("l2", "port/13")}
    assert r.need_full is False
    # later changes keep converging around it
    t.put(("l2", "port/99"), [flow(10, 99, of.Output(99), port=99)])
    assert r.sync(sink, t) == 1 and len(sink.flows) == 20
    # the owner's next change retries it: fixed now, it goes in
    t.put(("l2", "port/13"), [flow(10, 13, of.Output(13), port=113)])
    r.sync(sink, t)
    assert not t.rejected and len(sink.flows) == 21


def test_an_error_naming_no_flow_makes_the_next_sync_full() -> None:
    class Broken(RecordingSink):
        def install(self, ops: Ops, replace_all: bool = False) -> None:
            raise ConnectionError("switch went away")

    t, r = FlowTable(), Reconciler()
    t.put(("l2", "port/1"), [flow(10, 1, of.Output(1))])
    r.need_full = False
    try:
        r.sync(Broken(), t)
    except ConnectionError:
        pass
    assert r.need_full
    sink = RecordingSink()
    r.sync(sink, t)
    assert len(sink.flows) == 1


def test_a_new_winning_owner_re_adds_the_flow_so_the_cookie_follows() -> None:
    t, r = FlowTable(), Reconciler()
    sink = RecordingSink()
    t.put(("l2", "port/b"), [flow(10, 0xB, of.Output(1))])
    r.sync(sink, t)
    t.put(("l2", "port/a"), [flow(10, 0xA, of.Output(1))])
    ops: list = []

    class Spy(RecordingSink):
        def install(self, o: Ops, replace_all: bool = False) -> None:
            ops.extend(o)
            sink.install(o, replace_all)

    r.sync(Spy(), t)
    assert [op for op, _ in ops] == ["add"] and ops[0][1].cookie == 0xA
