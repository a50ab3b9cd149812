"""NB I/O off the controller loop: the loop owns the state and never waits for the NB.

One worker thread takes requests from the loop and does the talking:

* port status (``set_status``): coalesced per port (the latest wish wins), written with
  optimistic-concurrency retries; only for ports bound to this chassis (or unbound: ACTIVE
  then binds them here); an NB outage keeps the wish pending and retries with back-off;
* floating IP status (``set_fip_status``: ACTIVE once this chassis installed the FIP's NAT,
  DOWN when it no longer has it): the same, coalesced per floating IP; a floating IP that
  no longer exists is dropped silently;
* reading a port plugged here before the stream delivers it (``fetch_port``): the result
  comes back to the loop as an event;
* following new scopes (``follow``): the subscription replays their objects into the loop's
  queue (a snapshot read: never on the loop).

Results go back only through ``deliver`` (the loop's queue).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from dragonflow.db import errors as db_errors
from dragonflow.db.driver import DriverError
from dragonflow.db.nbapi import NbApi
from dragonflow.db.stream import Subscription
from dragonflow.model import Binding, FloatingIP, Port

LOG = logging.getLogger(__name__)
NB_ERRORS = (db_errors.NbError, DriverError, OSError, ValueError)


class NbWorker:
    def __init__(self, nb: NbApi, chassis_id: str,
                 deliver: Callable[[tuple[str, Any]], None],
                 retry_delay: float = 0.5) -> None:
        self.nb = nb
        self.chassis_id = chassis_id
        self.deliver = deliver
        self.retry_delay = retry_delay
        self.sub: Subscription | None = None
        self._cv = threading.Condition()
        self._status: dict[str, str] = {}  # port id -> wanted status (latest wins)
        self._fip_status: dict[str, str] = {}  # floating IP id -> wanted status
        self._fetch: set[str] = set()
        self._follow: set[str] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.writes = 0
        self.failures = 0

    # --- requests from the loop (never block) --------------------------------------------
    def set_status(self, port_id: str, status: str) -> None:
        with self._cv:
            self._status[port_id] = status
            self._cv.notify()

    def set_fip_status(self, fip_id: str, status: str) -> None:
        with self._cv:
            self._fip_status[fip_id] = status
            self._cv.notify()

    def fetch_port(self, port_id: str) -> None:
        with self._cv:
            self._fetch.add(port_id)
            self._cv.notify()

    def follow(self, scopes: set[str]) -> None:
        with self._cv:
            self._follow |= scopes
            self._cv.notify()

    # --- the thread ----------------------------------------------------------------------
    def start(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self._status or self._fip_status
                           or self._fetch or self._follow):
                    self._cv.wait()
                if self._stopping:
                    return
                follow, self._follow = self._follow, set()
                fetch, self._fetch = self._fetch, set()
                status, self._status = self._status, {}
                fip_status, self._fip_status = self._fip_status, {}
            failed = False
            try:
                if follow and self.sub is not None:
                    self.sub.add_topics(follow)
            except NB_ERRORS as e:
                LOG.warning("%s: following %s failed, retrying: %s", self.chassis_id,
                            sorted(follow), e)
                self._requeue(follow=follow)
                failed = True
            for pid in sorted(fetch):
                try:
                    port = self.nb.get(Port, pid)
                except NB_ERRORS as e:
                    LOG.warning("%s: reading port %s failed, retrying: %s", self.chassis_id,
                                pid, e)
                    self._requeue(fetch={pid})
                    failed = True
                    continue
                if port is not None:
                    self.deliver(("fetched", port))
            for pid, st in sorted(status.items()):
                if not self._write_status(pid, st):
                    self._requeue(status={pid: st})
                    failed = True
            for fid, st in sorted(fip_status.items()):
                if not self._write_fip_status(fid, st):
                    self._requeue(fip_status={fid: st})
                    failed = True
            if failed:
                self.failures += 1
                time.sleep(self.retry_delay)

    def _requeue(self, *, follow: set[str] | None = None, fetch: set[str] | None = None,
                 status: dict[str, str] | None = None,
                 fip_status: dict[str, str] | None = None) -> None:
        with self._cv:
            self._follow |= follow or set()
            self._fetch |= fetch or set()
            for pid, st in (status or {}).items():
                self._status.setdefault(pid, st)  # a newer wish meanwhile wins
            for fid, st in (fip_status or {}).items():
                self._fip_status.setdefault(fid, st)

    def _write_status(self, port_id: str, status: str) -> bool:
        """True when done (written, or nothing to write); False to retry later."""
        for _ in range(5):
            try:
                port = self.nb.get(Port, port_id)
                if port is None or (port.binding is not None
                                    and port.binding.chassis_id != self.chassis_id):
                    return True  # gone, or bound elsewhere: that chassis reports it
                changes: dict[str, Any] = {}
                if port.status != status:
                    changes["status"] = status
                if status == "ACTIVE" and port.binding is None:
                    changes["binding"] = Binding(kind="chassis", chassis_id=self.chassis_id)
                if changes:
                    self.nb.update(port.replace(**changes))
                    self.writes += 1
                return True
            except db_errors.StaleVersion:
                continue
            except NB_ERRORS as e:
                LOG.warning("%s: status of port %s not written (retrying): %s",
                            self.chassis_id, port_id, e)
                return False
        return False

    def _write_fip_status(self, fip_id: str, status: str) -> bool:
        """True when done (written, nothing to write, or the floating IP is gone); False to
        retry later."""
        for _ in range(5):
            try:
                fip = self.nb.get(FloatingIP, fip_id)
                if fip is None or fip.status == status:
                    return True
                self.nb.update(fip.replace(status=status))  # based on the version read
                self.writes += 1
                return True
            except (db_errors.StaleVersion, db_errors.NotFound):
                continue  # changed or deleted meanwhile: read it again
            except NB_ERRORS as e:
                LOG.warning("%s: status of floating IP %s not written (retrying): %s",
                            self.chassis_id, fip_id, e)
                return False
        return False
