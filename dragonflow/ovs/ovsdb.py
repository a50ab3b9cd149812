"""OVSDB access for the local controller: the integration bridge and the Interface monitor.

One :class:`Ovsdb` holds one ovsdbapp IDL connection (``unix:<rundir>/db.sock`` or
``tcp:host:port``). ovsdbapp runs one thread per connection; that thread executes every
transaction and processes every update from ovsdb-server.

* :meth:`Ovsdb.ensure_integration_bridge` writes the whole integration bridge (bridge,
  flow-based tunnel ports, a passive OpenFlow target) in ONE transaction that only writes what
  differs: called again with the same arguments it sends nothing at all, so a controller
  restart never disturbs the datapath (the bridge keeps its single controller target, so
  ovs-vswitchd never flushes its flows).
* :meth:`Ovsdb.watch_interfaces` delivers :class:`IfaceChange` events for every Interface row:
  first every existing row as ``added``, then ``added``/``updated``/``removed`` as they happen.
  ``updated`` is only emitted when a reported field changed. After a reconnection to
  ovsdb-server the rows are compared again and rows that vanished meanwhile are ``removed``.

THREADING: the ``on_iface`` callback runs on the ovsdbapp connection thread, while that thread
holds the IDL lock. It must only hand the event to the caller's own queue (e.g.
``queue.Queue.put``) and return at once: doing work there stalls every OVSDB transaction, and
calling back into this object's transactions from it deadlocks. An exception raised by the
callback is logged with its traceback and does not stop delivery of later events.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ovs.db import idl as ovs_idl
from ovsdbapp.backend.ovs_idl import command, connection, idlutils, transaction
from ovsdbapp.schema.open_vswitch import impl_idl

from dragonflow.ovs import fastjson

fastjson.install()  # the PyPI ovs package parses JSON in pure Python
LOG = logging.getLogger(__name__)

#: Tunnel type -> name of the flow-based tunnel port on the integration bridge.
TUNNEL_PORT_NAMES: Mapping[str, str] = {
    "vxlan": "df-vxlan",
    "geneve": "df-geneve",
    "gre": "df-gre",
}
TUNNEL_OPTIONS: Mapping[str, str] = {"remote_ip": "flow", "key": "flow"}
OPENFLOW_PROTOCOLS = ("OpenFlow13", "OpenFlow15")
# Interface columns we monitor; 'statistics' and friends are left out on purpose (ovs-vswitchd
# rewrites them every few seconds).
_IFACE_COLUMNS = ("name", "type", "ofport", "external_ids", "mac_in_use", "error", "options",
                  "mac")
# Only the columns we read or write of the other tables: their status/statistics columns
# (Controller.status, Port/Open_vSwitch statistics, ...) change every few seconds, and every
# change would be parsed here for nothing.
_COLUMNS = {
    "Open_vSwitch": ("bridges", "external_ids", "next_cfg", "cur_cfg"),
    "Bridge": ("name", "ports", "controller", "datapath_type", "fail_mode", "protocols",
               "other_config"),
    "Port": ("name", "interfaces"),
    "Controller": ("target", "connection_mode"),
}
_DPID_RE = re.compile(r"^[0-9a-fA-F]{16}$")

IfaceKind = Literal["added", "updated", "removed"]
IfaceCallback = Callable[["IfaceChange"], None]


class OvsdbError(Exception):
    """OVSDB could not be reached, refused a transaction, or OVS did not do what was asked."""


@dataclass(frozen=True)
class IfaceChange:
    """One Interface row as the controller needs it.

    ``ofport`` is None while ovs-vswitchd has not assigned one yet and -1 if it failed to
    create the interface (``error`` then says why). ``mac`` is external_ids:attached-mac if
    set, else mac_in_use.
    """

    name: str
    iface_id: str | None
    ofport: int | None
    mac: str | None
    kind: IfaceKind
    type: str
    error: str | None = None


def _first(value: Sequence[Any]) -> Any:
    return value[0] if value else None


def _iface_from_row(row: Any, kind: IfaceKind) -> IfaceChange:
    ext: dict[str, str] = dict(row.external_ids)
    return IfaceChange(
        name=row.name,
        iface_id=ext.get("iface-id") or None,
        ofport=_first(row.ofport),
        mac=ext.get("attached-mac") or _first(row.mac_in_use) or None,
        kind=kind,
        type=row.type,
        error=_first(row.error) or None,
    )


class _IfaceTracker:
    """Last known state of every Interface row; emits changes to one callback.

    Called only from the thread that runs the IDL (under the connection lock); readers in
    other threads go through ``cond``.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rows: dict[uuid.UUID, IfaceChange] = {}
        self.callback: IfaceCallback | None = None

    def on_row(self, event: str, row: Any) -> None:
        with self.cond:
            prev = self.rows.get(row.uuid)
            if event == ovs_idl.ROW_DELETE:
                if prev is None:
                    return
                del self.rows[row.uuid]
                change = dataclasses.replace(prev, kind="removed")
            else:
                change = _iface_from_row(row, "added" if prev is None else "updated")
                if prev is not None and dataclasses.replace(prev, kind="updated") == change:
                    return
                self.rows[row.uuid] = change
            self.cond.notify_all()
        self._emit(change)

    def reconcile(self, live_rows: Mapping[uuid.UUID, Any]) -> None:
        """After a (re)connection: rows we knew that are gone were removed meanwhile."""
        with self.cond:
            gone = [u for u in self.rows if u not in live_rows]
            changes = [dataclasses.replace(self.rows.pop(u), kind="removed") for u in gone]
            if changes:
                self.cond.notify_all()
        for change in changes:
            self._emit(change)

    def start(self, callback: IfaceCallback) -> None:
        with self.cond:
            if self.callback is not None:
                raise OvsdbError("an Interface monitor is already registered")
            self.callback = callback
            snapshot = list(self.rows.values())
        for change in snapshot:
            self._emit(dataclasses.replace(change, kind="added"))

    def by_name(self) -> dict[str, IfaceChange]:
        with self.cond:
            return {c.name: c for c in self.rows.values()}

    def _emit(self, change: IfaceChange) -> None:
        callback = self.callback
        if callback is None:
            return
        try:
            callback(change)
        except Exception:
            LOG.exception("on_iface callback failed for %s", change)


class _Idl(connection.OvsdbIdl):  # type: ignore[misc]
    """The IDL with our hooks: feeds Interface rows to the tracker, reconciles on reconnect."""

    def __init__(self, remote: str, helper: Any, tracker: _IfaceTracker) -> None:
        super().__init__(remote, helper)
        self._tracker = tracker
        self._resync = True

    def cooperative_yield(self) -> None:
        """Nothing: ovsdbapp's time.sleep(0) per parsed row is for eventlet, which we do not
        use; with threads it only costs a GIL round trip per row (measured: ~9 % of a
        controller's CPU while ports are being plugged)."""

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        if row._table.name == "Interface":
            self._tracker.on_row(event, row)

    def run(self) -> bool:
        changed = bool(super().run())
        if self.state != self.IDL_S_MONITORING:
            self._resync = True
        elif self._resync:
            self._resync = False
            self._tracker.reconcile(self.tables["Interface"].rows)
        return changed


class _Api(impl_idl.OvsdbIdl):  # type: ignore[misc]
    """ovsdbapp's Open_vSwitch API with a per-instance connection.

    (ovsdbapp keeps the connection in a class attribute: one per process. We need one per
    node, e.g. several test-bed nodes in one test.)
    """

    @property
    def ovsdb_connection(self) -> Any:
        return self.__dict__.get("_df_connection")

    @ovsdb_connection.setter
    def ovsdb_connection(self, conn: Any) -> None:
        self.__dict__["_df_connection"] = conn


class _Call(command.BaseCommand):  # type: ignore[misc]
    """Run a function with the IDL inside a transaction, on the ovsdbapp thread."""

    def __init__(self, api: Any, fn: Callable[[Any, Any], Any]) -> None:
        super().__init__(api)
        self._fn = fn

    def run_idl(self, txn: Any) -> None:
        self.result = self._fn(self.api, txn)


@dataclass(frozen=True)
class _BridgeSpec:
    name: str
    datapath_type: str
    tunnel_types: tuple[str, ...]
    controller_target: str
    datapath_id: str | None


def _add_port(api: Any, txn: Any, br: Any, name: str, iface_cols: Mapping[str, Any]) -> None:
    port = txn.insert(api.tables["Port"])
    port.name = name
    iface = txn.insert(api.tables["Interface"])
    iface.name = name
    for col, val in iface_cols.items():
        setattr(iface, col, val)
    port.interfaces = [iface]
    br.addvalue("ports", port)


def _ensure_bridge(spec: _BridgeSpec) -> Callable[[Any, Any], None]:
    """The body of the one ensure transaction: write only what differs (re-run on TRY_AGAIN)."""

    def run(api: Any, txn: Any) -> None:
        ovs_rows = list(api.tables["Open_vSwitch"].rows.values())
        if not ovs_rows:
            raise OvsdbError("the Open_vSwitch table has no row (ovs-vsctl init not run?)")
        br = idlutils.row_by_value(api.idl, "Bridge", "name", spec.name, None)
        is_new = br is None
        if br is None:
            br = txn.insert(api.tables["Bridge"])
            br.name = spec.name
            ovs_rows[0].addvalue("bridges", br)
            _add_port(api, txn, br, spec.name, {"type": "internal"})
        br.datapath_type = spec.datapath_type
        br.fail_mode = ["secure"]
        br.protocols = list(OPENFLOW_PROTOCOLS)
        wanted_cfg = {"disable-in-band": "true"}
        if spec.datapath_id is not None:
            wanted_cfg["datapath-id"] = spec.datapath_id.lower()
        other_config = {} if is_new else dict(br.other_config)
        if any(other_config.get(k) != v for k, v in wanted_cfg.items()):
            if not is_new:
                br.verify("other_config")
            br.other_config = {**other_config, **wanted_cfg}
        _ensure_tunnels(api, txn, br, {} if is_new else {p.name: p for p in br.ports},
                        spec.tunnel_types)
        ctrls = [] if is_new else list(br.controller)
        if len(ctrls) == 1 and ctrls[0].target == spec.controller_target:
            ctrl = ctrls[0]
        else:
            ctrl = txn.insert(api.tables["Controller"])
            ctrl.target = spec.controller_target
            br.controller = [ctrl]
        ctrl.connection_mode = ["out-of-band"]

    return run


def _ensure_tunnels(api: Any, txn: Any, br: Any, on_bridge: Mapping[str, Any],
                    tunnel_types: Sequence[str]) -> None:
    wanted = {TUNNEL_PORT_NAMES[t]: t for t in tunnel_types}
    for name, ttype in wanted.items():
        port = on_bridge.get(name)
        if port is None:
            if idlutils.row_by_value(api.idl, "Port", "name", name, None) is not None:
                raise OvsdbError(f"port {name} exists on another bridge than {br.name}")
            _add_port(api, txn, br, name, {"type": ttype, "options": dict(TUNNEL_OPTIONS)})
            continue
        if len(port.interfaces) != 1:
            raise OvsdbError(f"port {name} has {len(port.interfaces)} interfaces, expected 1")
        iface = port.interfaces[0]
        iface.type = ttype
        iface.options = dict(TUNNEL_OPTIONS)
    for name in set(TUNNEL_PORT_NAMES.values()) - set(wanted):
        if name in on_bridge:
            br.delvalue("ports", on_bridge[name])


class Ovsdb:
    """One connection to one ovsdb-server (Open_vSwitch schema), see the module docstring."""

    def __init__(self, target: str, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self._tracker = _IfaceTracker()
        try:
            helper = idlutils.get_schema_helper(target, "Open_vSwitch")
        except Exception as e:
            raise OvsdbError(f"cannot read the Open_vSwitch schema from {target}: {e}") from e
        for table, columns in _COLUMNS.items():
            helper.register_columns(table, list(columns))
        helper.register_columns("Interface", list(_IFACE_COLUMNS))
        self._conn = connection.Connection(_Idl(target, helper, self._tracker), int(timeout))
        try:
            self._api = _Api(self._conn)
        except Exception as e:
            raise OvsdbError(f"cannot connect to OVSDB at {target}: {e}") from e

    # -- transactions ------------------------------------------------------------------
    def _run(self, fn: Callable[[Any, Any], Any], wait_vswitchd: bool = False) -> Any:
        """Run ``fn(api, txn)`` in one transaction on the ovsdbapp thread; return its result.

        ``wait_vswitchd`` uses ovsdbapp's vsctl-style transaction: if anything was written it
        bumps next_cfg and waits until ovs-vswitchd has applied it.
        """
        if wait_vswitchd:
            txn = self._api.create_transaction(check_error=True, log_errors=False)
        else:
            txn = transaction.Transaction(self._api, self._conn, self.timeout, check_error=True,
                                          log_errors=False)
        cmd = txn.add(_Call(self._api, fn))
        try:
            txn.commit()
        except OvsdbError:
            raise
        except Exception as e:
            raise OvsdbError(f"OVSDB transaction on {self.target} failed: {e}") from e
        return cmd.result

    def _read(self, fn: Callable[[Any], Any]) -> Any:
        with self._conn.lock:
            return fn(self._api)

    # -- integration bridge ------------------------------------------------------------
    def ensure_integration_bridge(
        self,
        name: str,
        datapath_type: str,
        tunnel_types: Iterable[str],
        controller_target: str,
        datapath_id: str | None = None,
    ) -> dict[str, int]:
        """Create or fix the integration bridge in one idempotent transaction.

        The bridge gets fail_mode=secure, OpenFlow13+15, in-band control disabled,
        other_config:datapath-id (16 hex digits) if given, one flow-based tunnel port per type
        (``df-<type>``, options remote_ip=flow key=flow; ``df-*`` ports of types not asked
        for are removed) and exactly one controller target, typically the passive
        ``punix:<rundir>/<bridge>.df`` that the local controller dials. Waits until every
        tunnel port has an ofport and returns {tunnel type: ofport}.
        """
        types = tuple(dict.fromkeys(tunnel_types))
        unknown = [t for t in types if t not in TUNNEL_PORT_NAMES]
        if unknown:
            raise ValueError(f"unknown tunnel types {unknown}; known: {sorted(TUNNEL_PORT_NAMES)}")
        if datapath_id is not None and not _DPID_RE.match(datapath_id):
            raise ValueError(f"datapath_id must be 16 hex digits, got {datapath_id!r}")
        spec = _BridgeSpec(name, datapath_type, types, controller_target, datapath_id)
        self._run(_ensure_bridge(spec), wait_vswitchd=True)
        return self._wait_tunnel_ofports(types)

    def ensure_physical_bridges(self, integration: str, datapath_type: str,
                                mappings: Mapping[str, str]) -> dict[str, int]:
        """For each ``physnet -> bridge`` mapping: the bridge (created if missing, as a
        standalone learning switch of ``datapath_type``; an existing one is left as the
        operator made it, never flushed) and a patch-port pair between it and the
        integration bridge (``dfi-<bridge>`` on the integration side, external_ids
        df-physnet=<physnet>; ``dfp-<integration>`` on the other). One transaction, only
        what differs; waits for the ofports and returns {physnet: ofport on integration}."""
        names = {phys: (f"dfi-{br}"[:15], f"dfp-{integration}"[:15], br)
                 for phys, br in mappings.items()}

        def run(api: Any, txn: Any) -> None:
            ovs_rows = list(api.tables["Open_vSwitch"].rows.values())
            brint = idlutils.row_by_value(api.idl, "Bridge", "name", integration, None)
            if brint is None or not ovs_rows:
                raise OvsdbError(f"integration bridge {integration} does not exist")
            for phys, (int_side, phy_side, brname) in sorted(names.items()):
                br = idlutils.row_by_value(api.idl, "Bridge", "name", brname, None)
                if br is None:
                    br = txn.insert(api.tables["Bridge"])
                    br.name = brname
                    br.datapath_type = datapath_type
                    ovs_rows[0].addvalue("bridges", br)
                    _add_port(api, txn, br, brname, {"type": "internal"})
                for bridge, name, peer, ids in ((brint, int_side, phy_side,
                                                 {"df-physnet": phys}),
                                                (br, phy_side, int_side, {})):
                    port = idlutils.row_by_value(api.idl, "Port", "name", name, None)
                    cols = {"type": "patch", "options": {"peer": peer}, "external_ids": ids}
                    if port is None:
                        _add_port(api, txn, bridge, name, cols)
                        continue
                    if port not in bridge.ports:
                        raise OvsdbError(f"port {name} exists on another bridge than "
                                         f"{bridge.name}")
                    iface = port.interfaces[0]
                    if iface.type != "patch":
                        iface.type = "patch"
                    if dict(iface.options) != cols["options"]:
                        iface.options = cols["options"]
                    if dict(iface.external_ids) != ids:
                        iface.external_ids = ids

        if names:
            self._run(run, wait_vswitchd=True)
        return {phys: self._wait_ofport(int_side) for phys, (int_side, _, _) in names.items()}

    def _wait_tunnel_ofports(self, types: Sequence[str]) -> dict[str, int]:
        deadline = time.monotonic() + self.timeout
        names = {TUNNEL_PORT_NAMES[t]: t for t in types}
        with self._tracker.cond:
            while True:
                by_name = {c.name: c for c in self._tracker.rows.values()}
                failed = [by_name[n] for n in names if n in by_name and by_name[n].ofport == -1]
                if failed:
                    errors = "; ".join(f"{c.name}: {c.error}" for c in failed)
                    raise OvsdbError(f"ovs-vswitchd could not create tunnel ports: {errors}")
                got = {
                    names[n]: c.ofport
                    for n, c in by_name.items()
                    if n in names and c.ofport is not None and c.ofport > 0
                }
                if len(got) == len(names):
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(n for n in names if names[n] not in got)
                    raise OvsdbError(f"no ofport after {self.timeout}s for {missing}")
                self._tracker.cond.wait(left)

    # -- a service's own internal port ---------------------------------------------------
    def bridge_exists(self, name: str) -> bool:
        return bool(self._read(
            lambda api: idlutils.row_by_value(api.idl, "Bridge", "name", name, None) is not None))

    def ensure_internal_port(self, bridge: str, name: str, mac: str,
                             external_ids: Mapping[str, str] | None = None) -> int:
        """Internal port ``name`` on ``bridge`` (which must exist) with Interface mac
        ``mac`` and these external_ids, in one transaction that writes only what differs;
        waits until it has an ofport and returns it. (The metadata service's interface.)"""
        ids = dict(external_ids or {})

        def run(api: Any, txn: Any) -> None:
            br = idlutils.row_by_value(api.idl, "Bridge", "name", bridge, None)
            if br is None:
                raise OvsdbError(f"bridge {bridge} does not exist")
            port = idlutils.row_by_value(api.idl, "Port", "name", name, None)
            if port is None:
                _add_port(api, txn, br, name, {"type": "internal", "mac": [mac],
                                               "external_ids": ids})
                return
            if port not in br.ports:
                raise OvsdbError(f"port {name} exists on another bridge than {bridge}")
            if len(port.interfaces) != 1:
                raise OvsdbError(f"port {name} has {len(port.interfaces)} interfaces, expected 1")
            iface = port.interfaces[0]
            if iface.type != "internal":
                iface.type = "internal"
            if list(iface.mac) != [mac]:
                iface.mac = [mac]
            if any(dict(iface.external_ids).get(k) != v for k, v in ids.items()):
                iface.external_ids = {**dict(iface.external_ids), **ids}

        self._run(run, wait_vswitchd=True)
        return self._wait_ofport(name)

    def _wait_ofport(self, name: str) -> int:
        deadline = time.monotonic() + self.timeout
        with self._tracker.cond:
            while True:
                found = next((c for c in self._tracker.rows.values() if c.name == name), None)
                if found is not None and found.ofport == -1:
                    raise OvsdbError(f"ovs-vswitchd could not create {name}: {found.error}")
                if found is not None and found.ofport is not None and found.ofport > 0:
                    return int(found.ofport)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OvsdbError(f"no ofport after {self.timeout}s for {name}")
                self._tracker.cond.wait(left)

    def tunnel_ofports(self) -> dict[str, int]:
        """{tunnel type: ofport} for the df-* tunnel ports that currently have an ofport."""
        types = {n: t for t, n in TUNNEL_PORT_NAMES.items()}
        return {
            types[name]: c.ofport
            for name, c in self._tracker.by_name().items()
            if name in types and c.ofport is not None and c.ofport > 0
        }

    # -- interfaces --------------------------------------------------------------------
    def watch_interfaces(self, on_iface: IfaceCallback) -> None:
        """Register the one Interface callback; existing interfaces arrive first as 'added'.

        Runs on the ovsdbapp thread (see the module docstring): the initial dump and all later
        events come from that thread, in order, with nothing missed in between.
        """
        self._run(lambda api, txn: self._tracker.start(on_iface))

    def interfaces(self) -> dict[str, IfaceChange]:
        """Current known Interface rows by name (kind is that of their last event)."""
        return self._tracker.by_name()

    # -- Open_vSwitch row --------------------------------------------------------------
    def set_external_id(self, key: str, value: str) -> None:
        """Set external_ids:<key>=<value> on the Open_vSwitch row (no write if already so)."""

        def run(api: Any, txn: Any) -> None:
            row = api._ovs
            if dict(row.external_ids).get(key) != value:
                row.setkey("external_ids", key, value)

        self._run(run)

    def get_external_id(self, key: str) -> str | None:
        value: str | None = self._read(lambda api: dict(api._ovs.external_ids).get(key))
        return value

    def get_system_id(self) -> str | None:
        """external_ids:system-id of the Open_vSwitch row (the chassis name), or None."""
        return self.get_external_id("system-id")

    def close(self) -> None:
        """Stop the ovsdbapp thread and close the connection (idempotent)."""
        if not self._conn.stop(timeout=self.timeout):
            raise OvsdbError(f"the ovsdbapp thread for {self.target} did not stop")

    def __enter__(self) -> Ovsdb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
