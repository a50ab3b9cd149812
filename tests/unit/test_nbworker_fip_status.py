"""NbWorker.set_fip_status on the embedded (memory://) NB: the chassis' wish for a floating
IP's status is coalesced (latest wins), written off the caller's thread with optimistic
concurrency (a concurrent writer costs a re-read, not its change), skipped when already
equal, dropped when the floating IP is gone, and kept pending through an NB outage."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dragonflow.controller.nbworker import NbWorker
from dragonflow.db.connect import open_nb
from dragonflow.db.nbapi import NbApi
from dragonflow.model import FloatingIP, Network
from tests.fixtures.wait import eventually

WAIT = 10.0


class FlakyNb:
    """The worker's view of the NB: the real NbApi, with hooks to fail or race its calls."""

    def __init__(self, nb: NbApi) -> None:
        self.nb = nb
        self.down = False  # every call raises OSError (an NB outage)
        self.before_update: list[Any] = []  # run once each, just before an update
        self.gets = 0

    def get(self, table: Any, obj_id: str) -> Any:
        self.gets += 1
        if self.down:
            raise OSError("connection refused")
        return self.nb.get(table, obj_id)

    def update(self, obj: Any, **kw: Any) -> Any:
        if self.down:
            raise OSError("connection refused")
        if self.before_update:
            self.before_update.pop(0)()
        return self.nb.update(obj, **kw)


@pytest.fixture
def nb() -> Iterator[NbApi]:
    api = open_nb(f"memory://fipw-{uuid.uuid4().hex}")
    try:
        api.create(Network(id="ext", network_type="flat", physical_network="public",
                           external=True))
        api.create(FloatingIP(id="fip1", topic="t1", floating_ip_address="172.24.4.10",
                              floating_network_id="ext"))
        yield api
    finally:
        api.driver.close()


def worker(nb: Any) -> NbWorker:
    delivered: list[Any] = []
    return NbWorker(nb, "hv1", delivered.append, retry_delay=0.05)


def status_of(nb: NbApi, fip_id: str = "fip1") -> str | None:
    fip = nb.get(FloatingIP, fip_id)
    return None if fip is None else fip.status


def idle(w: NbWorker) -> bool:
    with w._cv:
        return not w._fip_status


def test_active_then_down_written_once_each(nb: NbApi) -> None:
    w = worker(nb)
    w.start("test-nbw")
    try:
        v0 = nb.get_or_raise(FloatingIP, "fip1").version
        w.set_fip_status("fip1", "ACTIVE")
        assert eventually(lambda: status_of(nb) == "ACTIVE", WAIT)
        fip = nb.get_or_raise(FloatingIP, "fip1")
        assert (fip.version, w.writes) == (v0 + 1, 1)
        w.set_fip_status("fip1", "ACTIVE")  # already so: nothing written
        assert eventually(lambda: idle(w), WAIT)
        w.set_fip_status("fip1", "DOWN")
        assert eventually(lambda: status_of(nb) == "DOWN", WAIT)
        assert w.writes == 2 and w.failures == 0
        assert nb.get_or_raise(FloatingIP, "fip1").version == v0 + 2
    finally:
        w.stop()


def test_wishes_are_coalesced_latest_wins(nb: NbApi) -> None:
    w = worker(nb)  # not started yet: the wishes pile up
    w.set_fip_status("fip1", "ACTIVE")
    w.set_fip_status("fip1", "ERROR")
    w.set_fip_status("fip1", "DOWN")  # what it already is
    w.start("test-nbw")
    try:
        assert eventually(lambda: idle(w), WAIT)
        w.stop()
        assert (status_of(nb), w.writes) == ("DOWN", 0)
        w2 = worker(nb)
        w2.set_fip_status("fip1", "DOWN")
        w2.set_fip_status("fip1", "ACTIVE")
        w2.start("test-nbw2")
        assert eventually(lambda: status_of(nb) == "ACTIVE", WAIT)
        w2.stop()
        assert w2.writes == 1
    finally:
        w.stop()


def test_a_concurrent_writer_costs_a_reread_not_its_change(nb: NbApi) -> None:
    flaky = FlakyNb(nb)

    def rename() -> None:  # Neutron rewrites the FIP between the worker's read and write
        cur = nb.get_or_raise(FloatingIP, "fip1")
        nb.update(cur.replace(name="web"), force_version=cur.version + 5)

    flaky.before_update.append(rename)
    w = worker(flaky)
    w.start("test-nbw")
    try:
        w.set_fip_status("fip1", "ACTIVE")
        assert eventually(lambda: status_of(nb) == "ACTIVE", WAIT)
        fip = nb.get_or_raise(FloatingIP, "fip1")
        assert (fip.name, fip.status) == ("web", "ACTIVE")
        assert flaky.gets == 2 and w.failures == 0  # read, stale write, read again, write
    finally:
        w.stop()


def test_a_floating_ip_that_is_gone_is_dropped_silently(nb: NbApi) -> None:
    flaky = FlakyNb(nb)
    flaky.before_update.append(lambda: nb.delete(FloatingIP, "fip1"))  # deleted meanwhile
    w = worker(flaky)
    w.start("test-nbw")
    try:
        w.set_fip_status("never-existed", "ACTIVE")
        w.set_fip_status("fip1", "ACTIVE")
        assert eventually(lambda: idle(w) and nb.get(FloatingIP, "fip1") is None, WAIT)
        assert eventually(lambda: flaky.gets >= 3, WAIT)  # never-existed, fip1 twice
        assert (w.writes, w.failures) == (0, 0)
        assert nb.get(FloatingIP, "never-existed") is None
    finally:
        w.stop()


def test_an_nb_outage_keeps_the_wish_and_retries_with_back_off(nb: NbApi) -> None:
    flaky = FlakyNb(nb)
    flaky.down = True
    w = worker(flaky)
    w.start("test-nbw")
    try:
        w.set_fip_status("fip1", "ERROR")
        assert eventually(lambda: w.failures >= 2, WAIT, poll=0.01)  # retrying, with pauses
        w.set_fip_status("fip1", "ACTIVE")  # a newer wish during the outage wins
        seen = w.failures
        assert eventually(lambda: w.failures >= seen + 2, WAIT, poll=0.01)
        assert status_of(nb) == "DOWN"
        flaky.down = False
        assert eventually(lambda: status_of(nb) == "ACTIVE", WAIT)
        assert eventually(lambda: idle(w), WAIT)
        assert w.writes == 1  # never ERROR: the older wish did not come back
    finally:
        w.stop()


def test_requests_never_block_on_the_nb(nb: NbApi) -> None:
    flaky = FlakyNb(nb)
    gate = threading.Event()
    flaky.before_update.append(lambda: gate.wait(WAIT))  # the worker is stuck in a write
    w = worker(flaky)
    w.start("test-nbw")
    try:
        w.set_fip_status("fip1", "ACTIVE")
        assert eventually(lambda: not flaky.before_update, WAIT, poll=0.01)
        done = threading.Event()
        threading.Thread(target=lambda: (w.set_fip_status("fip1", "DOWN"), done.set()),
                         daemon=True).start()
        assert done.wait(1.0), "set_fip_status waited for the NB"
        gate.set()
        assert eventually(lambda: idle(w) and status_of(nb) == "DOWN", WAIT)
        assert w.writes == 2
    finally:
        gate.set()
        w.stop()
