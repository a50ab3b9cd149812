"""Neutron -> NB consistency: find and repair what failed or lost NB writes left behind.

Neutron's database is the source of truth. :func:`run` (inside the Neutron server process,
where the core and L3 plugins are loaded) lists Neutron's networks, subnets, address groups,
security groups, ports, routers and floating IPs, translates them, compares them with the NB
and:

* creates what the NB lacks, rewrites what differs (ignoring version, the NB-allocated unique
  keys and the controller-owned status of ports and floating IPs), deletes NB objects
  Neutron does not have;
* re-reads every object from Neutron just before touching it (NbWriter with a fresh
  reader), so a change that raced with the sync is never undone, and an object created
  after the listing is never taken for a stray;
* works in rounds (deletes in reverse dependency order, then writes in dependency order)
  until nothing changes, since a stray can hold an IP or MAC a missing object needs;
* creates missing security groups first without rules naming groups (or address groups)
  the NB lacks, so groups that name each other can be restored.

Chassis and QoS tables are not Neutron's and are left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from dragonflow.db import errors
from dragonflow.db.nbapi import NbApi
from dragonflow.model import NbObject, SecurityGroup
from dragonflow.neutron import source, translate
from dragonflow.neutron.writer import NbWriter, Outcome

LOG = logging.getLogger(__name__)

TABLES = source.SYNC_TABLES  # creation order; deletion runs in reverse


@dataclass
class Report:
    created: list[tuple[str, str]] = field(default_factory=list)
    updated: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # NB write refused
    untranslatable: list[tuple[str, str, str]] = field(default_factory=list)  # (table,id,why)
    rounds: int = 0

    @property
    def repaired(self) -> int:
        return len(self.created) + len(self.updated) + len(self.deleted)

    def summary(self) -> str:
        return (f"{len(self.created)} created, {len(self.updated)} updated, "
                f"{len(self.deleted)} deleted, {len(self.failed)} failed, "
                f"{len(self.untranslatable)} untranslatable, in {self.rounds} round(s)")


@dataclass
class Diff:
    missing: dict[str, dict[str, NbObject]]  # table -> id -> Neutron's version
    differing: dict[str, dict[str, NbObject]]
    stray: dict[str, list[str]]  # table -> NB ids Neutron does not have
    # Neutron objects the NB model cannot carry: a difference too, reported, never hidden
    untranslatable: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(self.missing.values()) and not any(self.differing.values()) \
            and not any(self.stray.values()) and not self.untranslatable


def diff(nb: NbApi, ctx: Any, report: Report | None = None) -> Diff:
    """Compare Neutron (listed in ``ctx``) with the NB; untranslatable objects go to report."""
    untranslatable: list[tuple[str, str, str]] = []

    def on_error(table: str, obj_id: str, e: Exception) -> None:
        LOG.error("sync: Neutron %s %s cannot be translated: %s", table, obj_id, e)
        untranslatable.append((table, obj_id, str(e)))
        if report is not None:
            report.untranslatable.append((table, obj_id, str(e)))

    neutron = source.list_all(ctx, on_error)
    bad = {(t, i) for t, i, _ in untranslatable}
    objs, _ = nb.snapshot()
    stored: dict[str, dict[str, NbObject]] = {t: {} for t in TABLES}
    for o in objs:
        if o.TABLE in stored:
            stored[o.TABLE][o.id] = o
    d = Diff({t: {} for t in TABLES}, {t: {} for t in TABLES}, {t: [] for t in TABLES},
             untranslatable)
    for table in TABLES:
        if table in ("router", "floatingip") and source.l3_plugin() is None:
            continue  # not ours to manage without df-l3
        for obj_id, obj in neutron[table].items():
            cur = stored[table].get(obj_id)
            if cur is None:
                d.missing[table][obj_id] = obj
            elif not translate.same(cur, translate.merge(cur, obj)):
                d.differing[table][obj_id] = obj
        d.stray[table] = sorted(i for i in stored[table]
                                if i not in neutron[table] and (table, i) not in bad)
    return d


def run(nb: NbApi, ctx: Any = None, *, max_rounds: int = 4) -> Report:
    """Repair the NB until it matches Neutron (or nothing more can be repaired)."""
    ctx = ctx if ctx is not None else source.admin_context()
    writer = NbWriter(nb, source.fresh)
    report = Report()
    for _ in range(max_rounds):
        report.untranslatable.clear()
        report.failed.clear()
        d = diff(nb, ctx, report)
        if d.empty:
            break
        report.rounds += 1
        progress = _delete_strays(writer, d, report)
        progress += _create_sg_stubs(nb, d)
        progress += _write(writer, d, report)
        if not progress:
            break
    LOG.info("sync Neutron -> NB: %s", report.summary())
    return report


def _delete_strays(writer: NbWriter, d: Diff, report: Report) -> int:
    done = 0
    for table in reversed(TABLES):
        for obj_id in d.stray[table]:
            if source.fresh(table, obj_id)() is not None:
                continue  # created in Neutron after the listing
            if table in ("port", "router", "securitygroup", "addressgroup"):
                writer.refresh_referrers(table, obj_id, source.fresh)
            outcome = writer.delete(table, obj_id)
            if outcome is Outcome.DELETED:
                report.deleted.append((table, obj_id))
                done += 1
            elif outcome is Outcome.FAILED:
                report.failed.append((table, obj_id))
    return done


def _create_sg_stubs(nb: NbApi, d: Diff) -> int:
    """Missing groups without the rules that name groups the NB does not have yet (and
    without the rules naming address groups still missing: those are written later)."""
    done = 0
    missing = d.missing["securitygroup"]
    missing_ags = d.missing["addressgroup"]
    for sg in missing.values():
        assert isinstance(sg, SecurityGroup)
        if not any(g in missing for g in sg.remote_groups()):
            continue
        rules = tuple(r for r in sg.rules
                      if (r.remote_group_id is None or r.remote_group_id not in missing
                          or r.remote_group_id == sg.id)
                      and r.remote_address_group_id not in missing_ags)
        try:
            nb.create(sg.replace(rules=rules, version=max(sg.version - 1, 1)))
            done += 1
        except (errors.NbError, ValueError) as e:
            LOG.warning("sync: stub of security group %s not created: %s", sg.id, e)
    return done


def _write(writer: NbWriter, d: Diff, report: Report) -> int:
    done = 0
    for table in TABLES:
        for kind, objs in (("missing", d.missing[table]), ("differing", d.differing[table])):
            for obj_id in objs:
                fresh = source.fresh(table, obj_id)
                outcome = writer.put(table, obj_id, fresh, fresh)
                if outcome is Outcome.CREATED or (kind == "missing"
                                                  and outcome is Outcome.UPDATED):
                    report.created.append((table, obj_id))
                    done += 1
                elif outcome is Outcome.UPDATED:
                    report.updated.append((table, obj_id))
                    done += 1
                elif outcome is Outcome.FAILED:
                    report.failed.append((table, obj_id))
    return done
