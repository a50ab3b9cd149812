"""Status in the Neutron server: NB port status -> Neutron provisioning blocks, NB floating IP
status -> Neutron floating IP status.

Ports. A local controller writes ``Port.status = "ACTIVE"`` into the NB once the port's flows
are confirmed by a barrier, and ``"DOWN"`` when the VIF goes (the mechanism driver also
resets it to DOWN when Neutron moves the port to another chassis). The follower tells
Neutron:

* -> ACTIVE: ``provisioning_complete(port, entity "DF")``; ML2 sets the port ACTIVE once no
  other entity blocks it (and notifies Nova: network-vif-plugged).
* ACTIVE -> DOWN: a new ``DF`` provisioning block (so the next ACTIVE again waits for the
  controller), then ``update_port_status(DOWN)``.

Floating IPs. df-l3 creates them DOWN; the local controller of the chassis hosting the
floating IP's port writes ``FloatingIP.status = "ACTIVE"`` once its NAT flows are installed
and ``"DOWN"`` when it no longer has them (the NB writer resets it to DOWN when Neutron
re-associates the floating IP). Every change of the NB status (and every floating IP the
NB creates) is applied with the L3 plugin's ``update_floatingip_status``, unless Neutron
already has that status; a floating IP Neutron no longer has is skipped.

It starts from a snapshot (every port already ACTIVE is completed, every floating IP gets
its NB status, so nothing is lost across a server restart or a stream gap) and then follows
the stream from the snapshot's revision. Neutron calls run on one worker thread, in NB
order, so the driver's watch thread is never blocked by the Neutron database; a failed call
is retried a few times with growing pauses. With ``threaded=False`` they run in whichever
thread calls :meth:`drain` (or :meth:`wait_for`): tests on an in-memory sqlite database,
whose one connection cannot serve two threads' transactions at once, use that.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from neutron.db import provisioning_blocks
from neutron_lib import constants as n_const
from neutron_lib import context as n_context
from neutron_lib.callbacks import resources
from neutron_lib.exceptions import l3 as l3_exc
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory

from dragonflow.db.nbapi import NbApi
from dragonflow.db.stream import Change, Subscription
from dragonflow.model import FloatingIP, NbObject, Port

LOG = logging.getLogger(__name__)
_RETRY_PAUSES = (0.1, 0.5, 2.0, 0.0)  # pause after each failed attempt (last: none)

DF_ENTITY = "DF"  # the provisioning-block entity of Dragonflow's local controllers

Item = tuple[str, str, str]  # (NB table, object id, status)


class PortStatusFollower:
    """Ports' and floating IPs' NB status into Neutron (see the module docstring)."""

    def __init__(self, nb: NbApi) -> None:
        self.nb = nb
        self._queue: queue.Queue[Item | None] = queue.Queue()
        self._sub: Subscription | None = None
        self._worker: threading.Thread | None = None
        self._pending = 0
        self._seen = 0  # NB revision of the last change looked at
        self._idle = threading.Condition()
        self.errors = 0

    # --- lifecycle -----------------------------------------------------------------------
    def start(self, threaded: bool = True) -> None:
        if threaded:
            self._worker = threading.Thread(target=self._run, name="df-status",
                                            daemon=True)
            self._worker.start()
        objs, rev = self.nb.snapshot()
        self._resync(objs, rev)
        self._sub = Subscription(self.nb, self._on_change, self._resync, from_revision=rev + 1)

    def stop(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None

    def wait_for(self, revision: int, timeout: float) -> bool:
        """Until the NB change at ``revision`` has been seen and every status change up to it
        applied to Neutron (tests, benchmarks). False on timeout."""
        threaded = self._worker is not None
        with self._idle:
            ok = self._idle.wait_for(
                lambda: self._seen >= revision and (self._pending == 0 or not threaded),
                timeout)
        if ok and not threaded:
            self.drain()
        return ok

    def drain(self) -> None:
        """Apply the queued status changes in this thread (``threaded=False``)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._apply(*item)

    def _saw(self, revision: int) -> None:
        with self._idle:
            self._seen = max(self._seen, revision)
            self._idle.notify_all()

    # --- NB side (driver watch thread) -----------------------------------------------------
    def _submit(self, table: str, obj_id: str, status: str) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put((table, obj_id, status))

    def _resync(self, objs: list[NbObject], revision: int) -> None:
        for o in objs:
            if isinstance(o, Port) and o.status == n_const.PORT_STATUS_ACTIVE:
                self._submit(Port.TABLE, o.id, n_const.PORT_STATUS_ACTIVE)
            elif isinstance(o, FloatingIP):
                self._submit(FloatingIP.TABLE, o.id, o.status)
        self._saw(revision)

    def _on_change(self, change: Change) -> None:
        if change.table == Port.TABLE and isinstance(change.obj, Port):
            new = change.obj.status
            old = change.old.status if isinstance(change.old, Port) else None
            if new != old and (new == n_const.PORT_STATUS_ACTIVE or
                               (new == n_const.PORT_STATUS_DOWN
                                and old == n_const.PORT_STATUS_ACTIVE)):
                self._submit(Port.TABLE, change.id, new)
        elif change.table == FloatingIP.TABLE and isinstance(change.obj, FloatingIP):
            new = change.obj.status
            old = change.old.status if isinstance(change.old, FloatingIP) else None
            if new != old:  # a new one too: Neutron may hold another status (a re-creation)
                self._submit(FloatingIP.TABLE, change.id, new)
        self._saw(change.revision)

    # --- Neutron side (worker thread) -------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._apply(*item)

    def _apply(self, table: str, obj_id: str, status: str) -> None:
        kind = "floating IP" if table == FloatingIP.TABLE else "port"
        try:
            for attempt, pause in enumerate(_RETRY_PAUSES):  # e.g. a locked DB: try again
                try:
                    if table == FloatingIP.TABLE:
                        self.fip_status(obj_id, status)
                    elif status == n_const.PORT_STATUS_ACTIVE:
                        self.port_up(obj_id)
                    else:
                        self.port_down(obj_id)
                    return
                except Exception:  # noqa: BLE001 -- logged with its traceback, retried
                    self.errors += 1
                    last = attempt == len(_RETRY_PAUSES) - 1
                    LOG.exception("%s %s: applying NB status %s to Neutron failed%s", kind,
                                  obj_id, status, "; giving up" if last else "; retrying")
                    if not last:
                        time.sleep(pause)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    @staticmethod
    def port_up(port_id: str) -> None:
        ctx = n_context.get_admin_context()
        LOG.info("port %s is ACTIVE on its chassis: provisioning complete", port_id)
        provisioning_blocks.provisioning_complete(ctx, port_id, resources.PORT, DF_ENTITY)

    @staticmethod
    def port_down(port_id: str) -> None:
        ctx = n_context.get_admin_context()
        plugin: Any = directory.get_plugin()
        LOG.info("port %s went DOWN on its chassis", port_id)
        provisioning_blocks.add_provisioning_component(ctx, port_id, resources.PORT,
                                                       DF_ENTITY)
        plugin.update_port_status(ctx, port_id, n_const.PORT_STATUS_DOWN)

    @staticmethod
    def fip_status(fip_id: str, status: str) -> None:
        plugin: Any = directory.get_plugin(plugin_constants.L3)
        if plugin is None:
            return  # no L3 plugin in this server: nobody to tell
        ctx = n_context.get_admin_context()
        try:
            current = plugin.get_floatingip(ctx, fip_id, fields=["status"])["status"]
        except l3_exc.FloatingIPNotFound:
            return  # deleted meanwhile: its NB delete follows
        if current == status:
            return
        LOG.info("floating IP %s is %s on its chassis (Neutron had %s)", fip_id, status,
                 current)
        plugin.update_floatingip_status(ctx, fip_id, status)
