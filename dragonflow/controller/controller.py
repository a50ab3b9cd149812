"""The local controller of one compute node.

One thread owns the state. The NB change stream, the OVSDB interface monitor, the OpenFlow
channel and the heartbeat timer only put events on a queue; the loop takes a batch, applies
it to the topology, recompiles the affected owners, and reconciles the switch in one bundle
(+ barrier). Ports become ACTIVE in the NB only after that barrier confirmed their flows.

Start-up order guarantees no window without flows on a running node: the NB snapshot and
the local interfaces are read first, the full desired flow set is compiled, and only then
the OpenFlow connection replaces the switch's flows in one atomic bundle.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dragonflow.apps.base import App
from dragonflow.apps.registry import default_apps
from dragonflow.controller.engine import Engine
from dragonflow.controller.nbworker import NbWorker
from dragonflow.controller.reconciler import Reconciler
from dragonflow.db import errors as db_errors
from dragonflow.db.driver import DriverError
from dragonflow.db.nbapi import NbApi
from dragonflow.db.stream import Change, Subscription
from dragonflow.model import Chassis, Port
from dragonflow.ovs.flows import OFPP_CONTROLLER, OFPP_TABLE, Load, Output
from dragonflow.ovs.flows import match as of_match
from dragonflow.ovs.ofchannel import FlowRemoved, OfChannel, PacketIn
from dragonflow.ovs.ovsdb import IfaceChange, Ovsdb
from dragonflow.pipeline.fields import LOGICAL_FIELDS
from dragonflow.pipeline.lower import app_cookie, punt_origin
from dragonflow.pipeline.punt import Answer
from dragonflow.pipeline.stages import COPP_KIND_TABLE, OwnedStage
from dragonflow.pipeline.topology import (
    ChassisFacts,
    DepKey,
    Topology,
    chassis_mac,
    relevance_scope_id,
    relevance_scopes,
)

LOG = logging.getLogger(__name__)
PIN_QUEUE = 1000   # packet-ins waiting at most (more are dropped and counted)
PIN_BUDGET = 64    # packet-ins handled per loop iteration
MAX_BATCH = 2000   # events per loop iteration


class RateLimitedLog:
    """At most one line per ``interval`` seconds (the rest are counted in the next one)."""

    def __init__(self, log: logging.Logger, interval: float) -> None:
        self.log, self.interval = log, interval
        self.last = -interval
        self.suppressed = 0

    def warning(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        if self.suppressed:
            fmt += f" [{self.suppressed} similar lines suppressed]"
        self.last, self.suppressed = now, 0
        self.log.warning(fmt, *args)


@dataclass
class ControllerConfig:
    chassis_id: str
    tunnel_ip: str
    tunnel_types: tuple[str, ...] = ("vxlan", "geneve", "gre")
    integration_bridge: str = "br-int"
    datapath_type: str = "system"
    ovsdb_connection: str = "unix:/var/run/openvswitch/db.sock"
    ovs_rundir: str = "/var/run/openvswitch"
    heartbeat_interval: float = 10.0
    external_host_ip: str | None = None
    bridge_mappings: dict[str, str] = field(default_factory=dict)
    gateway: bool = False  # may host routers' external gateways (SNAT)
    gateway_heartbeat_interval: float = 0.5
    gateway_dead_time: float = 2.0
    datapath_id: str | None = None
    l3_mode: str = "proactive"
    reactive_idle_timeout: int = 30
    dhcp_lease_time: int = 86400
    dhcp_dns_servers: tuple[str, ...] = ()
    dhcp_domain: str = "openstacklocal"
    ra_interval: float = 30.0
    dhcp_rate_per_port: int = 50
    dhcp_burst_per_port: int = 20
    rs_rate_per_port: int = 10
    rs_burst_per_port: int = 5
    metadata_interface: str = "df-metadata"  # where df-metadata listens (apps/metadata.py)
    metadata_syn_rate: int = 20
    metadata_syn_burst: int = 40
    status_file: str | None = None  # default: <ovs_rundir>/<bridge>.df-status.json

    @property
    def of_socket(self) -> str:
        return f"{self.ovs_rundir}/{self.integration_bridge}.df"

    @property
    def status_path(self) -> str:
        return self.status_file or f"{self.ovs_rundir}/{self.integration_bridge}.df-status.json"


STATUS_EVERY = 0.5  # seconds: routine status-file updates are coalesced to this rate
_RF = LOGICAL_FIELDS["reinjected"]
REINJECT_FLAG = Load(_RF.register, 1, _RF.ofs, _RF.nbits)  # on every packet re-injected


def _describe_event(kind: str, payload: Any) -> str:
    if kind == "nb":
        return f"NB change of {payload.table} {payload.id!r} at revision {payload.revision}"
    if kind == "iface":
        return f"interface {getattr(payload, 'name', '?')!r}"
    return f"{kind} {str(payload)[:200]}"


class LocalController:
    def __init__(self, cfg: ControllerConfig, nb: NbApi,
                 apps: Callable[[], list[App]] = default_apps,
                 own_process: bool = False) -> None:
        self.cfg = cfg
        # the process is this controller's alone (df-controller): after each full compile
        # its objects are moved out of the garbage collector's sight (gc.freeze), so later
        # collections walk what changed since, not the whole topology and flow table
        self.own_process = own_process
        self.nb = nb
        self.topo = Topology(ChassisFacts(cfg.chassis_id, cfg.tunnel_ip, cfg.tunnel_types,
                                          l3_mode=cfg.l3_mode,
                                          reactive_idle_timeout=cfg.reactive_idle_timeout,
                                          dhcp_lease_time=cfg.dhcp_lease_time,
                                          dhcp_dns_servers=tuple(cfg.dhcp_dns_servers),
                                          dhcp_domain=cfg.dhcp_domain,
                                          ra_interval=cfg.ra_interval,
                                          dhcp_rate_per_port=cfg.dhcp_rate_per_port,
                                          dhcp_burst_per_port=cfg.dhcp_burst_per_port,
                                          rs_rate_per_port=cfg.rs_rate_per_port,
                                          rs_burst_per_port=cfg.rs_burst_per_port,
                                          metadata_syn_rate=cfg.metadata_syn_rate,
                                          metadata_syn_burst=cfg.metadata_syn_burst,
                                          chassis_mac=chassis_mac(cfg.chassis_id),
                                          gateway=cfg.gateway))
        self.engine = Engine(apps(), self.topo)  # assembles + checks the pipeline
        self.pipeline = self.engine.pipeline
        LOG.info("%s: pipeline\n%s", cfg.chassis_id, self.pipeline.describe())
        self.reconciler = Reconciler()
        self.punt_errors = 0
        self._status_text = ""
        self._status_due = False  # a routine status change waits for the next write
        self._status_at = 0.0  # monotonic time of the last status write
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._ifaces: dict[str, IfaceChange] = {}  # interface name -> last state
        self._active: set[str] = set()  # port ids reported ACTIVE by this controller
        # local ports whose NB status must be looked at after the next install (None: all)
        self._recheck: set[str] | None = set()
        self._beat_now = threading.Event()  # wakes the heartbeat thread early
        self._watch_gateways = False  # a local router has a gateway: watch liveness
        self._sub: Subscription | None = None
        self.nbw = NbWorker(nb, cfg.chassis_id, self._q.put)
        # packet-ins have their own bounded queue and a per-iteration budget: a storm of
        # them never delays NB changes, flow installs or other ports (the meters in OVS
        # are the first line; this is the second)
        self._pins: queue.Queue[PacketIn] = queue.Queue(maxsize=PIN_QUEUE)
        self.pins_dropped = 0
        self.pins_handled = 0
        self._pin_log = RateLimitedLog(LOG, 10.0)
        self._ovsdb: Ovsdb | None = None
        self._of: OfChannel | None = None
        self._of_up = False
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._of_wanted = threading.Event()  # the loop asks the connector to dial
        self._of_wanted.set()
        self._pin_signalled = threading.Event()
        self.dead = threading.Event()  # the loop thread died (df-controller exits 1)
        self.loop_errors = 0
        self.full_compile_ms = 0.0
        self._marks: tuple[int, ...] = ()
        self._scopes_version = 0
        self._follow_pending = False
        self.ready = threading.Event()  # set after the first full install
        self.synced = threading.Condition()
        self.generation = 0  # bumped after every loop iteration that reached the switch

    # --- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        self._register_chassis()
        self._ovsdb = Ovsdb(self.cfg.ovsdb_connection)
        tunnels = self._ovsdb.ensure_integration_bridge(
            self.cfg.integration_bridge, self.cfg.datapath_type, self.cfg.tunnel_types,
            f"punix:{self.cfg.of_socket}", self.cfg.datapath_id)
        self._apply_touched(self.topo.set_tunnel_ofports(tunnels))
        self._apply_touched(self.topo.set_phys_ofports(self._ovsdb.ensure_physical_bridges(
            self.cfg.integration_bridge, self.cfg.datapath_type, self.cfg.bridge_mappings)))
        self._initial_sync()
        self.nbw.sub = self._sub
        self.nbw.start(f"df-{self.cfg.chassis_id}-nb")
        self._ovsdb.watch_interfaces(lambda ch: self._q.put(("iface", ch)))
        self._spawn(self._loop, "loop")
        self._spawn(self._heartbeat, "heartbeat")
        self._spawn(self._gateway_watch, "gateways")
        for name, app in self.engine.apps.items():
            if callable(getattr(app, "periodic", None)):
                self._spawn(functools.partial(self._ticker, name, app), f"tick-{name}")
        self._spawn(self._of_connector, "of-connect")

    def stop(self) -> None:
        self._stopping.set()
        self._beat_now.set()
        self._q.put(("stop", None))
        self._of_wanted.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=10)
        self.nbw.stop()
        if self._sub is not None:
            self._sub.close()
        if self._of is not None:
            self._of.close()
        if self._ovsdb is not None:
            self._ovsdb.close()

    def _spawn(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=f"df-{self.cfg.chassis_id}-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    # --- NB ----------------------------------------------------------------------------
    def _register_chassis(self) -> None:
        c = Chassis.from_dict({
            "id": self.cfg.chassis_id, "ip": self.cfg.tunnel_ip,
            "tunnel_types": list(self.cfg.tunnel_types),
            "external_host_ip": self.cfg.external_host_ip,
            "bridge_mappings": dict(self.cfg.bridge_mappings), "gateway": self.cfg.gateway})
        for _ in range(5):
            cur = self.nb.get(Chassis, c.id)
            try:
                if cur is None:
                    self.nb.create(c)
                elif cur.replace(version=0) != c:  # unchanged: no write, no event
                    self.nb.update(c.replace(version=cur.version))
                self.nb.beat(c.id, time.time())
                return
            except (db_errors.AlreadyExists, db_errors.StaleVersion):
                continue
        raise RuntimeError(f"could not register chassis {c.id}")

    def _full(self) -> None:
        """Recompile everything; in a process of its own, then hide what survived from the
        garbage collector (gc.freeze: later collections walk only what changed since)."""
        if self.own_process:
            gc.unfreeze()  # what the last full compile froze may be garbage by now
        self.engine.full()
        if self.own_process:
            gc.collect()
            gc.freeze()

    def _initial_sync(self) -> None:
        """Snapshot of what this node needs, then the stream from just after it."""
        assert self._ovsdb is not None
        ifaces = self._ovsdb.interfaces()
        local_ids = {i.iface_id for i in ifaces.values() if i.iface_id}
        objs, rev = self.nb.snapshot()
        self.topo.replace_all(objs)  # all of it, for a moment: to find what is relevant
        for ch in ifaces.values():
            self._iface_to_topology(ch)
        self._sub = Subscription(
            self.nb, lambda c: self._q.put(("nb", c)),
            lambda objs, rev: self._q.put(("resync", objs)),
            from_revision=rev + 1, topics=self.topo.scopes_needed(),
            scope_of=relevance_scopes, scope_id=relevance_scope_id)
        self._sub.add_ids(local_ids)
        self.topo.replace_all(o for o in objs if self._sub.wanted(o))
        t0 = time.perf_counter()
        self._full()
        self.full_compile_ms = (time.perf_counter() - t0) * 1000
        LOG.info("%s: full compile of %d owners in %.0f ms (%d NB objects followed of %d)",
                 self.cfg.chassis_id, len(self.engine.flows), self.full_compile_ms,
                 sum(len(v) for v in self.topo.objs.values()), len(objs))

    def _scopes_dirty(self, touched: set[DepKey]) -> bool:
        """Can ``touched`` change what this chassis must follow? (local networks, routers,
        the local ports themselves, or a follow request still in flight)"""
        if self._follow_pending or not touched:
            return self._follow_pending
        local = self.topo.facts.ofports
        for key in touched:
            kind = key[0]
            if kind in ("local_networks", "l3_scope", "ofport"):
                return True
            if kind == "obj" and (key[1] == "router" or (key[1] == "port" and key[2] in local)):
                return True
            if kind == "obj" and key[1] == "network" and self.topo.facts.gateway:
                return True  # an external network of its physnets: followed
        return False

    def _ensure_scopes(self, touched: set[DepKey]) -> set[DepKey]:
        """Follow what the local ports need now (networks, not projects), forget the rest:
        new scopes are replayed by the stream (as changes, next iteration); objects of
        scopes no longer needed leave the topology (their owners recompile)."""
        if self._sub is None:
            return set()
        if not self._scopes_dirty(touched):
            return set()
        needed = self.topo.scopes_needed()
        have = self._sub.topics or set()
        if needed != have or self._follow_pending:
            # (a follow that completed since is in ``have`` now: the status says so)
            self._scopes_version += 1
        self._follow_pending = bool(needed - have)
        if needed - have:
            self.nbw.follow(needed - have)  # replayed into the queue by the NB worker
        forgotten: set[DepKey] = set()
        if have - needed:
            self._sub.remove_topics(have - needed)
            for o in self.topo.irrelevant(self._sub.wanted):
                forgotten |= self.topo.apply(o.TABLE, o.id, None) or set()
        return forgotten

    # --- OVSDB -------------------------------------------------------------------------
    def _iface_to_topology(self, ch: IfaceChange) -> set[DepKey]:
        old = self._ifaces.get(ch.name)
        touched: set[DepKey] = set()
        if ch.name == self.cfg.metadata_interface:  # the metadata service's port
            touched |= (self.topo.set_metadata_port(None, None) if ch.kind == "removed"
                        else self.topo.set_metadata_port(ch.ofport, ch.mac))
        gone = old is not None and (ch.kind == "removed" or old.iface_id != ch.iface_id)
        if old is not None and old.iface_id and gone:
            touched |= self.topo.set_ofport(old.iface_id, None)
            if self._sub is not None:
                self._sub.remove_ids({old.iface_id})
        if ch.kind == "removed":
            self._ifaces.pop(ch.name, None)
        else:
            self._ifaces[ch.name] = ch
            if ch.iface_id and ch.ofport is not None and ch.ofport > 0:
                touched |= self.topo.set_ofport(ch.iface_id, ch.ofport)
                if self._sub is not None:
                    self._sub.add_ids({ch.iface_id})
                if self.topo.get(Port, ch.iface_id) is None:
                    # plugged before its network is followed: read it once (off the
                    # loop), the stream does the rest (add_ids above came first)
                    if self._sub is None:
                        port = self.nb.get(Port, ch.iface_id)  # start-up, before the loop
                        if port is not None:
                            touched |= self.topo.apply("port", port.id, port) or set()
                    else:
                        self.nbw.fetch_port(ch.iface_id)
        return touched

    def _local_port_ids(self) -> set[str]:
        return set(self.topo.facts.ofports)

    # --- OpenFlow ------------------------------------------------------------------------
    def _of_connector(self) -> None:
        """Dials when the loop asks (``_of_wanted``); the loop owns ``_of``/``_of_up``."""
        delay = 0.02
        while not self._stopping.is_set():
            self._of_wanted.wait()
            if self._stopping.is_set():
                return
            try:
                ch = OfChannel(f"unix:{self.cfg.of_socket}")
                ch.on_disconnect = lambda exc, ch=ch: self._q.put(("of_down", ch))
                ch.on_packet_in = self._on_packet_in
                ch.on_flow_removed = lambda msg: self._q.put(("flow_removed", msg))
                ch.connect()
            except Exception as e:  # OVS not up yet, restarting...: retry
                LOG.debug("%s: OpenFlow connect failed: %s", self.cfg.chassis_id, e)
                self._stopping.wait(delay)
                delay = min(delay * 2, 0.25)  # a local socket: dialing is cheap
                continue
            delay = 0.02
            self._of_wanted.clear()
            self._q.put(("of_up", ch))

    def _on_packet_in(self, pin: PacketIn) -> None:
        """Reader thread: into the bounded packet-in queue (full: dropped and counted)."""
        try:
            self._pins.put_nowait(pin)
        except queue.Full:
            self.pins_dropped += 1
            return
        if not self._pin_signalled.is_set():
            self._pin_signalled.set()
            self._q.put(("pins", None))

    def _ticker(self, name: str, app: Any) -> None:
        """Asks the loop to run ``app.periodic`` every ``app.periodic_interval(facts)``
        seconds (e.g. unsolicited router advertisements)."""
        while not self._stopping.wait(app.periodic_interval(self.topo.facts)):
            self._q.put(("periodic", name))

    def _heartbeat(self) -> None:
        """Liveness, written from this thread (never through the loop); early when the loop
        saw our chassis record go (``_beat_now``)."""
        every = self.cfg.heartbeat_interval
        if self.cfg.gateway:  # its liveness decides SNAT failover: beat faster
            every = min(every, self.cfg.gateway_heartbeat_interval)
        while True:
            self._beat_now.wait(every)
            self._beat_now.clear()
            if self._stopping.is_set():
                return
            try:
                self._beat()
            except Exception:  # never let liveness die with one bad beat
                LOG.exception("%s: heartbeat failed; next beat retries", self.cfg.chassis_id)

    def _gateway_watch(self) -> None:
        """While a local router has an external gateway: which chassis are alive, from the
        NB's liveness records, for the gateway ranking (apps/nat.py). A chassis is alive
        while its heartbeat value keeps changing (judged by this node's clock: no clock
        sync needed); one not seen changing for ``gateway_dead_time`` is dead. Changes go
        to the loop as ("live", chassis ids)."""
        dead_after = self.cfg.gateway_dead_time
        seen: dict[str, tuple[float, float]] = {}  # chassis -> (beat value, when it moved)
        alive: frozenset[str] | None = None
        while not self._stopping.wait(min(0.25, dead_after / 4)):
            if not self._watch_gateways:
                alive = None
                continue
            try:
                beats = self.nb.liveness()
            except Exception as e:  # NB away: judge nobody until it answers again
                LOG.warning("%s: gateway liveness not read: %s", self.cfg.chassis_id, e)
                continue
            now, wall = time.monotonic(), time.time()
            for cid, at in beats.items():
                old = seen.get(cid)
                if old is None:  # first sight: as old as its (wall clock) beat says
                    seen[cid] = (at, now - max(0.0, wall - at))
                elif old[0] != at:
                    seen[cid] = (at, now)
            now_alive = frozenset(c for c, (_, moved) in seen.items()
                                  if now - moved < dead_after)
            if now_alive != alive:
                alive = now_alive
                self._q.put(("live", now_alive))

    # --- the loop --------------------------------------------------------------------
    def _loop(self) -> None:
        """Never a live process with a dead loop: an iteration that raises is logged and
        followed by a full recompute; if even that raises, the loop goes on (the next
        event retries); a BaseException marks the controller dead (df-controller exits
        non-zero)."""
        try:
            while True:
                wait = self._status_wait()
                if wait == 0.0:  # the deferred status file is due (even when busy)
                    self._write_status()
                    wait = None
                try:
                    events = [self._q.get(timeout=wait)]
                except queue.Empty:  # nothing happened meanwhile: write it now
                    self._write_status()
                    continue
                while len(events) < MAX_BATCH:
                    try:
                        events.append(self._q.get_nowait())
                    except queue.Empty:
                        break
                try:
                    if not self._handle(events):
                        return
                except Exception:
                    self.loop_errors += 1
                    LOG.exception("%s: controller loop iteration failed; full recompute "
                                  "next", self.cfg.chassis_id)
                    self.reconciler.need_full = True
                    try:
                        self._full()
                    except Exception:
                        LOG.exception("%s: full recompute failed too; retrying on the next "
                                      "event", self.cfg.chassis_id)
        except BaseException as e:
            LOG.critical("%s: controller loop died: %r", self.cfg.chassis_id, e)
            self.dead.set()
            raise

    def _handle(self, events: list[tuple[str, Any]]) -> bool:
        """One iteration: apply every event (one that raises never takes the rest of the
        batch with it: it is retried once in the next iteration, then dropped with a
        log line naming it), recompile what they touched, install, answer packet-ins."""
        touched: set[DepKey] = set()
        full_compile = False
        answers: list[Answer] = []
        for kind, payload in events:
            if kind == "stop":
                return False
            retried = kind == "retry"
            if retried:
                kind, payload = payload
            try:
                got = self._apply_event(kind, payload, answers)
            except Exception as e:
                self.loop_errors += 1
                full_compile = True  # whatever it half-applied is recompiled from scratch
                if not retried:
                    LOG.warning("%s: %s event failed (%r); retrying it next iteration",
                                self.cfg.chassis_id, kind, e)
                    self._q.put(("retry", (kind, payload)))
                else:
                    LOG.exception("%s: %s event failed again; dropped: %s",
                                  self.cfg.chassis_id, kind, _describe_event(kind, payload))
                continue
            if got is None:
                full_compile = True
            else:
                touched |= got
        touched |= self._ensure_scopes(touched | ({("local_networks",)} if full_compile
                                                  else set()))
        if full_compile:
            self._full()
        elif touched:
            self.engine.changed(touched)
        self._sync_switch()
        for answer in answers:  # sent with the flows of this very iteration installed
            self._send(answer)
        self._watch_gateways = bool(self.topo.facts.nat_zones)
        return True

    def _apply_event(self, kind: str, payload: Any, answers: list[Answer]
                     ) -> set[DepKey] | None:
        """Apply one event to the loop's state: the keys it touched (None: recompile
        everything)."""
        if kind == "nb":
            return self._apply_change(payload)
        if kind == "resync":
            self.topo.replace_all(payload)
            # a new NB (restored, or restarted empty): report every local port again, and
            # register our chassis at once if the new NB does not have it
            self._active.clear()
            self._recheck = None
            if self.topo.get(Chassis, self.cfg.chassis_id) is None:
                self._beat_now.set()
            return None
        if kind == "iface":
            return self._iface_to_topology(payload)
        if kind == "of_up":
            if self._of is not None:
                self._of.close()
            self._of = payload
            self._of_up = payload.connected  # it may have died before we got here
            if not self._of_up:
                self._of_wanted.set()
            self.reconciler.need_full = True
        elif kind == "of_down":
            if payload is self._of:  # not an old channel's late goodbye
                self._of_up = False
                self._of_wanted.set()
        elif kind == "fetched":
            return self.topo.apply("port", payload.id, payload) or set()
        elif kind == "pins":
            self._pin_signalled.clear()
            touched: set[DepKey] = set()
            for _ in range(PIN_BUDGET):
                try:
                    pin = self._pins.get_nowait()
                except queue.Empty:
                    break
                answers.append(self._packet_in(pin))
                touched |= answers[-1].touched
            if not self._pins.empty() and not self._pin_signalled.is_set():
                self._pin_signalled.set()  # the rest after the other events queued
                self._q.put(("pins", None))
            return touched
        elif kind == "flow_removed":
            return self._flow_removed(payload)
        elif kind == "live":
            return self.topo.set_live(payload)
        elif kind == "periodic":
            app = self.engine.apps.get(payload)
            if app is not None and self._of_up:
                answers.append(app.periodic(self.topo))  # type: ignore[attr-defined]
        return set()

    def _send(self, answer: Answer) -> None:
        if self._of is None:
            return
        try:
            for ofport, frame in answer.frames:
                self._of.packet_out(OFPP_CONTROLLER, frame, [Output(ofport)])
            for in_port, frame in answer.reinject:  # through the whole pipeline again,
                # flagged: if it reaches a punt again it is dropped, never looped back
                self._of.packet_out(in_port, frame, [REINJECT_FLAG, Output(OFPP_TABLE)])
            for in_port, frame in answer.replay:  # held before its port's flows existed
                self._of.packet_out(in_port, frame, [Output(OFPP_TABLE)])
        except Exception as e:  # the channel went away: the sender will retry
            LOG.warning("%s: packet-out failed: %s", self.cfg.chassis_id, e)

    def _handler(self, table_id: int, method: str) -> tuple[OwnedStage, Any] | None:
        """The stage of ``table_id`` and its app's ``method`` (None if it has none)."""
        owned = self.pipeline.stage_of_table(table_id)
        app = self.engine.apps.get(owned.app) if owned is not None else None
        handler = getattr(app, method, None)
        return (owned, handler) if owned is not None and handler is not None else None

    def _packet_in(self, pin: PacketIn) -> Answer:
        """Dispatched by table to the app owning that stage (declared punt=True); a punt
        policed in the CoPP tables says in its registers which table punted it."""
        self.pins_handled += 1
        table = punt_origin(pin.match) if pin.table_id == COPP_KIND_TABLE else pin.table_id
        found = self._handler(table, "packet_in") if table is not None else None
        if found is None or not found[0].stage.punt:
            LOG.warning("%s: unexpected packet-in from table %s", self.cfg.chassis_id,
                        pin.table_id)
            return Answer()
        owned, handler = found
        try:
            answer: Answer = handler(self.topo, owned.stage.name, pin)
            return answer
        except Exception as e:  # one bad packet never stops the loop, nor floods the log
            self.punt_errors += 1
            self._pin_log.warning(
                "%s: app %s: a packet-in from %s could not be handled (%d so far): %r",
                self.cfg.chassis_id, owned.app, owned.stage.name, self.punt_errors, e)
            return Answer()

    def _flow_removed(self, msg: FlowRemoved) -> set[DepKey]:
        """The switch removed a flow (idle timeout): it is no longer installed -- if it is
        still (or again) wanted, the next sync adds it back; then its app is told."""
        try:
            key = (msg.table_id, msg.priority, of_match(**msg.match))
        except (ValueError, TypeError, KeyError) as e:
            LOG.warning("%s: flow-removed with a match we cannot read (%s): full reinstall",
                        self.cfg.chassis_id, e)
            self.reconciler.need_full = True
        else:
            self.reconciler.removed(key)
        found = self._handler(msg.table_id, "flow_removed")
        if found is None:
            return set()
        owned, handler = found
        try:
            touched: set[DepKey] = handler(self.topo, owned.stage.name, msg)
            return touched
        except Exception:
            self.punt_errors += 1
            LOG.exception("%s: app %s: flow-removed from %s not handled",
                          self.cfg.chassis_id, owned.app, owned.stage.name)
            return set()

    def _apply_change(self, ch: Change) -> set[DepKey]:
        if ch.table == "port" and ch.id in self.topo.facts.ofports:
            # someone else wrote a local port's status (Neutron, a re-created port): if it
            # is not what we reported, look at that port again after the next install
            st = ch.obj.status if isinstance(ch.obj, Port) else None
            if (st == "ACTIVE") != (ch.id in self._active):
                self._active.discard(ch.id)
                if self._recheck is not None:
                    self._recheck.add(ch.id)
        elif ch.table == "chassis" and ch.id == self.cfg.chassis_id and ch.obj is None:
            self._beat_now.set()  # our own chassis record went away: register again now
        return self.topo.apply(ch.table, ch.id, ch.obj) or set()

    def _apply_touched(self, touched: set[DepKey]) -> None:
        if touched:
            self.engine.changed(touched)

    def _sync_switch(self) -> None:
        if self._of is None or not self._of_up:
            return
        first = not self.ready.is_set()
        try:
            sent = self.reconciler.sync(self._of, self.engine.table, meters=self.engine.meters,
                                        meters_dirty=self.engine.take_meters_dirty())
        except Exception as e:
            LOG.error("%s: flow install failed (%s); full reinstall on next event",
                      self.cfg.chassis_id, e)
            if not self._of.connected:  # its goodbye may have been ignored as stale
                self._of_up = False
                self._of_wanted.set()
            self._write_status()
            return
        self.ready.set()
        # per-iteration work in proportion to the change: port status and the status file
        # can only change when flows went in or out, or owners failed / were refused
        marks = (self.engine.errors, self.reconciler.rejections,
                 self.engine.table.conflicts_total, len(self.engine.table.rejected),
                 len(self.engine.failed), self._scopes_version)
        touched = self.engine.take_touched()
        recheck, self._recheck = self._recheck, set()
        if sent or first or marks != self._marks or recheck != set():
            problems = first or marks != self._marks
            everything = problems or recheck is None
            self._marks = marks
            if problems:  # written at once; routine changes (flow counts) coalesced
                self._write_status()
            else:
                self._status_due = True
            ports = None if everything else touched | {("physical", f"port/{p}")
                                                       for p in recheck or ()}
            self._report_port_status(ports)
            self._installed(None if everything else touched)
        with self.synced:
            self.generation += 1
            self.synced.notify_all()

    def status(self) -> dict[str, Any]:
        """What an operator asks first: is this chassis converged, and if not, who is to
        blame. Conflicts, failed owners (app error, lowering error, flows OVS refused)."""
        table = self.engine.table
        apps = list(self.engine.apps) + ["pipeline"]

        def flow_info(key: tuple) -> str:
            f = table.desired.get(key) or self.reconciler.installed.get(key)
            return str(f) if f is not None else repr(key)

        return {
            "chassis": self.cfg.chassis_id,
            "generation": self.generation,
            "pipeline": [{"table": o.table, "stage": n, "app": o.app, "miss": o.stage.miss}
                         for n in self.pipeline.order for o in (self.pipeline.stages[n],)],
            "flows_installed": len(self.reconciler.installed),
            "owners": len(self.engine.flows),
            "objects_followed": sum(len(v) for v in self.topo.objs.values()),
            "full_compile_ms": round(self.full_compile_ms, 1),
            "conflicts_total": table.conflicts_total,
            "conflicts": [{"flow": flow_info(k), "owners": [f"{a} {o}" for a, o in owners]}
                          for k, owners in sorted(table.conflicts.items(),
                                                  key=lambda kv: str(kv[0]))],
            "failed": [{"app": a, "owner": o, "reason": why}
                       for (a, o), why in sorted(self.engine.failed.items())]
                      + [{"app": a, "owner": "owners()", "reason": why}
                         for a, why in sorted(self.engine.app_failed.items())],
            "rejected": [{"app": a, "owner": o, "reason": why}
                         for (a, o), why in sorted(table.rejected.items())],
            "punt_errors": self.punt_errors,
            # what the change stream delivers: networks (net:), projects (project:)
            "following": sorted(self._sub.topics or ()) if self._sub is not None else [],
            "cookie_apps": {a: f"{app_cookie(a):#06x}" for a in apps},
        }

    def _status_wait(self) -> float | None:
        """How long the loop may wait for an event before the deferred status file is due
        (None: nothing deferred)."""
        if not self._status_due:
            return None
        return max(0.0, self._status_at + STATUS_EVERY - time.monotonic())

    def _write_status(self) -> None:
        """The status as JSON in ``cfg.status_path`` (``df status`` prints it); written
        only when it changed, atomically; at most every STATUS_EVERY seconds for routine
        changes (flow counts), at once for problems."""
        self._status_due = False
        self._status_at = time.monotonic()
        st = self.status()
        st.pop("generation")
        text = json.dumps(st, indent=1, sort_keys=True)
        if text == self._status_text:
            return
        path = self.cfg.status_path
        try:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, path)
            self._status_text = text
        except OSError as e:
            LOG.warning("%s: status not written to %s: %s", self.cfg.chassis_id, path, e)

    def wait_synced(self, timeout: float = 10.0, nb_revision: int | None = None) -> bool:
        """Block until the loop has reached the switch after everything queued so far --
        and, with ``nb_revision``, after the NB stream delivered that revision."""
        deadline = time.monotonic() + timeout
        if nb_revision is not None:
            while self._sub is None or self._sub.last_revision < nb_revision:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.002)
        with self.synced:
            target = self.generation + 1
        self._q.put(("noop", None))
        with self.synced:
            while self.generation < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.synced.wait(left)
        return True

    def _beat(self) -> None:
        """Liveness beside the Chassis record, not in it: no controller's change stream
        carries it (see NbApi.beat). A chassis record that went away is registered again."""
        try:
            if self.nb.get(Chassis, self.cfg.chassis_id) is None:
                self._register_chassis()
                return
            self.nb.beat(self.cfg.chassis_id, time.time())
        except (db_errors.NbError, DriverError) as e:  # NB down: the next beat retries
            LOG.warning("%s: heartbeat not written: %s", self.cfg.chassis_id, e)

    def _report_port_status(self, touched: set[tuple[str, str]] | None = None) -> None:
        """ACTIVE for local ports whose flows are installed (we are after the barrier);
        DOWN for ports this controller reported ACTIVE whose VIF went away or whose flows
        failed. Only the ports whose owners were just (re)compiled or dropped are looked at
        (``touched``); all local ports when failures changed or on the first install."""
        table, engine = self.engine.table, self.engine
        apps = list(engine.apps)

        def works(pid: str) -> bool:  # its flows are in, and no app failed on it
            owner = f"port/{pid}"
            return ("physical", owner) in table.contrib and not any(
                (a, owner) in table.rejected or (a, owner) in engine.failed for a in apps)

        if touched is None:
            candidates = self._local_port_ids() | self._active
        else:
            candidates = {o[5:] for _, o in touched if o.startswith("port/")}
        local = self.topo.facts.ofports
        wired = [h for app in self.engine.apps.values()
                 if (h := getattr(app, "port_wired", None)) is not None]
        for pid in sorted(candidates):
            ok = pid in local and works(pid)
            if ok:  # its flows are in (after the barrier): what it sent before, through them
                for hook in wired:
                    try:
                        self._send(hook(self.topo, pid))
                    except Exception:
                        LOG.exception("%s: port_wired of %s failed", self.cfg.chassis_id, pid)
            if ok and pid not in self._active:
                self._set_status(pid, "ACTIVE")
            elif not ok and pid in self._active:
                self._set_status(pid, "DOWN")

    def _installed(self, touched: set[tuple[str, str]] | None) -> None:
        """Tell the apps with an ``installed`` hook which of their owners were just
        (re)compiled (all of them after a full install) and are now in the switch: e.g.
        NAT announces the addresses it now answers for and reports floating IPs."""
        table, engine = self.engine.table, self.engine
        for name, app in engine.apps.items():
            hook = getattr(app, "installed", None)
            if hook is None:
                continue
            mine = ({o for a, o in touched if a == name} if touched is not None
                    else {o for a, o in table.contrib if a == name})
            if not mine:
                continue

            def works(owner: str, name: str = name) -> bool:
                return (name, owner) in table.contrib and (name, owner) not in \
                    table.rejected and (name, owner) not in engine.failed
            try:
                answer: Answer = hook(self.topo, mine, works)
            except Exception:
                LOG.exception("%s: %s.installed failed", self.cfg.chassis_id, name)
                continue
            self._send(answer)
            for tbl, obj_id, status in answer.statuses:
                # DOWN only from the chassis that still serves it (a floating IP moving
                # with its VM: the old chassis' goodbye must not undo the new one's ACTIVE)
                gone = status != "ACTIVE" and (name, f"fip/{obj_id}") not in engine.flows
                if tbl == "floatingip" and not gone:
                    self.nbw.set_fip_status(obj_id, status)

    def _set_status(self, port_id: str, status: str) -> None:
        """The loop's wish; the NB worker writes it (coalesced, retried, off the loop)."""
        self.nbw.set_status(port_id, status)
        if status == "ACTIVE":
            self._active.add(port_id)
        else:
            self._active.discard(port_id)
