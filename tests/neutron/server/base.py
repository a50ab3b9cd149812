"""Shared set-up for the Neutron tests: a fresh in-memory NB per test, reached by the
mechanism driver ``df`` and the L3 plugin ``df-l3`` through ``[df] nb_db_url``.

``DfNbMixin.df_setup()`` must run before the upstream ``setUp`` loads the plugins; it

* registers Dragonflow's options and points ``[df] nb_db_url`` at ``memory://<unique>``,
* selects ``[ml2] mechanism_drivers = logger, df`` (also for upstream classes whose setUp
  bypasses Ml2PluginV2TestCase's, e.g. the allowed-address-pairs one),
* drops the memory NB when the test ends.

``self.nb`` is an NbApi on the same in-memory database the plugins write.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from neutron_lib import context as n_context
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from oslo_config import cfg

from dragonflow.db.drivers import memory
from dragonflow.db.nbapi import NbApi
from dragonflow.neutron import config, sync
from dragonflow.neutron.l3.plugin import DfL3RouterPlugin

MECH_DRIVERS = ["logger", "df"]


@dataclass
class Record:
    """What one test left in the NB: failed NB writes and differences from Neutron."""

    test: str
    failures: dict[str, int]
    errors: list[str] = field(default_factory=list)
    diverged: dict[str, int] = field(default_factory=dict)
    diff_error: str = ""


RECORDS: list[Record] = []  # summarised by tests/neutron/conftest.py
L3_PLUGIN = "dragonflow.neutron.l3.plugin.DfL3RouterPlugin"


class DfNbMixin:
    """Mix into a Neutron test case (before it in the bases); call df_setup() first."""

    _mechanism_drivers = MECH_DRIVERS
    l3_plugin = L3_PLUGIN
    nb: NbApi

    addCleanup: Any  # provided by the unittest TestCase it is mixed with

    def setUp(self, *args: Any, **kwargs: Any) -> None:
        self.df_setup()
        super().setUp(*args, **kwargs)  # type: ignore[misc]
        self.addCleanup(self._df_record)  # runs before the upstream DB teardown

    def df_setup(self) -> None:
        config.register_opts(cfg.CONF)
        name = f"neutron-{uuid.uuid4().hex[:12]}"
        url = f"memory://{name}"
        cfg.CONF.set_override("nb_db_url", url, group="df")
        cfg.CONF.set_override("mechanism_drivers", MECH_DRIVERS, group="ml2")
        driver = memory.MemoryDriver.shared(url)
        self.nb = NbApi(driver, root=cfg.CONF.df.nb_db_root)
        self.addCleanup(_forget_memory_nb, name, driver)

    # Upstream tests that write standard-attribute rows behind the ORM's back and so break
    # when the revisions plugin is loaded (they fail with upstream's own drivers too).
    WITHOUT_REVISIONS: frozenset[str] = frozenset()

    def get_additional_service_plugins(self) -> dict[str, str]:
        """Ml2PluginV2TestCase hook: load the revisions plugin, as every real server does
        (NB versions follow revision_number)."""
        if getattr(self, "_testMethodName", "") in self.WITHOUT_REVISIONS:
            return {}
        return {"revisions": "revisions"}

    # --- what the NB made of the test ------------------------------------------------------
    def df_writers(self) -> list[Any]:
        out = []
        mech = self.core.mechanism_manager.mech_drivers.get("df") if hasattr(
            self.core, "mechanism_manager") else None
        if mech is not None:
            out.append(mech.obj.writer)
        if isinstance(self.l3, DfL3RouterPlugin):
            out.append(self.l3.writer)
        return out

    def df_failures(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for w in self.df_writers():
            total.update(w.failures)
        return total

    def df_diff(self) -> sync.Diff:
        return sync.diff(self.nb, self.admin())

    def _df_record(self) -> None:
        rec = Record(test=self.id(), failures=dict(self.df_failures()),
                     errors=[e for w in self.df_writers() for e in w.errors])
        try:
            d = self.df_diff()
            rec.diverged = {t: len(d.missing[t]) + len(d.differing[t]) + len(d.stray[t])
                            for t in sync.TABLES}
            rec.diverged = {t: n for t, n in rec.diverged.items() if n}
        except Exception as e:  # noqa: BLE001 -- e.g. the test left a mock in place
            rec.diff_error = f"{type(e).__name__}: {e}"
        RECORDS.append(rec)

    # --- handy accessors ------------------------------------------------------------------
    @property
    def core(self) -> Any:
        return directory.get_plugin()

    @property
    def l3(self) -> Any:
        return directory.get_plugin(plugin_constants.L3)

    @property
    def mech(self) -> Any:
        return self.core.mechanism_manager.mech_drivers["df"].obj

    @staticmethod
    def admin() -> Any:
        return n_context.get_admin_context()


def _forget_memory_nb(name: str, driver: memory.MemoryDriver) -> None:
    driver.close()
    # The registry of named memory NBs has no public removal; without this every test's
    # database would live until the process ends.
    with memory._INSTANCES_LOCK:
        memory._INSTANCES.pop(name, None)
