"""Summary of what the Neutron tests did to the NB (failed NB writes, NB != Neutron at the
end of a test), printed after the run; upstream tests pass or fail on Neutron's own terms,
this shows whether the NB kept up."""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from typing import Any

import pytest

_FROM_WORKERS: list[dict[str, Any]] = []  # with pytest-xdist: the workers' records


def _local_records() -> list[Any]:
    base = sys.modules.get("tests.neutron.server.base")  # not imported: nothing ran here
    return list(getattr(base, "RECORDS", None) or [])


def pytest_sessionfinish(session: Any) -> None:
    """An xdist worker hands its records to the controller (workeroutput)."""
    out = getattr(session.config, "workeroutput", None)
    if out is not None:
        out["df_nb_records"] = [dataclasses.asdict(r) for r in _local_records()]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    _FROM_WORKERS.extend(getattr(node, "workeroutput", {}).get("df_nb_records", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    records = _local_records()
    if _FROM_WORKERS:
        from tests.neutron.server.base import Record

        records += [Record(**r) for r in _FROM_WORKERS]
    if not records:
        return
    failed = [r for r in records if r.failures]
    diverged = [r for r in records if r.diverged]
    errors = [r for r in records if r.diff_error]
    by_table: Counter[str] = Counter()
    for r in failed:
        by_table.update(r.failures)
    div_tables: Counter[str] = Counter()
    for r in diverged:
        div_tables.update(r.diverged)
    tr = terminalreporter
    tr.section("Dragonflow NB during the Neutron tests")
    tr.write_line(f"{len(records)} tests; {len(failed)} with failed NB writes "
                  f"{dict(by_table)}; {len(diverged)} ended with NB != Neutron "
                  f"{dict(div_tables)}; {len(errors)} could not be compared")
    reasons: Counter[str] = Counter()
    for r in failed:
        for e in r.errors:
            kind, _, why = e.partition(": ")
            reasons[f"{kind.rsplit(' ', 1)[0]}: {_generic(why)}"] += 1
    for reason, n in reasons.most_common(30):
        tr.write_line(f"  {n:4d} x {reason}")
    if verbose := terminalreporter.config.getoption("verbose") > 0:
        for r in (failed + diverged)[:60 if verbose else 0]:
            tr.write_line(f"  {r.test.rsplit('.', 2)[-2:]} failures={r.failures} "
                          f"diverged={r.diverged}")


def _generic(why: str) -> str:
    """The reason without ids and addresses, so equal causes count together."""
    import re

    why = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", why)
    why = re.sub(r"'[^']*'", "'…'", why)
    return why[:160]
