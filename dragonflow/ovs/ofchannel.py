"""The OpenFlow 1.3 channel between the local controller and ovs-vswitchd.

The controller *dials* the switch: OVS has a passive controller target
``punix:<ovs rundir>/<bridge>.df`` (or ``ptcp:``) and :class:`OfChannel` connects to
``unix:<path>`` (or ``tcp:host:port``). Passive targets are "service" connections to OVS:
configuring one does not flush flows, and they get no asynchronous messages unless the
connection asks. Verified with OVS 3.1: with neither OFPT_SET_ASYNC nor OFPT_SET_CONFIG
(``miss_send_len`` > 0) such a connection gets no PACKET_IN, FLOW_REMOVED or PORT_STATUS;
either one alone enables packet-in. :meth:`OfChannel.connect` sends both (all packet-in
reasons, all flow-removed reasons, all port-status reasons).

Plain blocking sockets and one reader thread; os-ken is used only to parse PACKET_IN,
FLOW_REMOVED, FEATURES_REPLY and to build PACKET_OUT. Hot messages (barrier replies,
errors, echo) are decoded with ``struct``. Writes are serialized by one lock; bundles are
sent ~1000 messages per socket write while the next chunk is encoded.

Errors: OVS answers a bad message with OFPT_ERROR carrying its xid. :meth:`barrier` raises
:class:`OfError` for every error that arrived before its reply (use one writer thread, as
the controller does). :meth:`install` maps each error's xid back to the flow that caused it,
:meth:`install_meters` to the meter (meter-mods go outside bundles: OVS 3.1 rejects them in
one with ONFERR_ET_MSG_UNSUP).

Callbacks (``on_packet_in``, ``on_flow_removed``, ``on_port_status``, ``on_disconnect``) run
on the reader thread and should only enqueue. A callback that raises closes the channel and
its exception is passed to ``on_disconnect`` -- nothing is swallowed.
"""

from __future__ import annotations

import itertools
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from os_ken.ofproto import ofproto_common, ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as ofpp

from dragonflow.ovs import encode
from dragonflow.ovs.flows import Action, OfFlow, OfMeter

LOG = logging.getLogger(__name__)

_HEADER = struct.Struct("!BBHI")
_ERROR_BODY = struct.Struct("!HH")
_ERROR_EXP_BODY = struct.Struct("!HHI")  # type (0xffff), exp_type, experimenter
SEND_CHUNK = 1000  # messages per socket write when installing
_MAX_UNCLAIMED_ERRORS = 10000


# ---- errors -------------------------------------------------------------------------------
def _code_names() -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    types = {getattr(ofp, n): n for n in dir(ofp) if n.startswith("OFPET_")}
    prefixes = {
        "OFPET_HELLO_FAILED": "OFPHFC_", "OFPET_BAD_REQUEST": "OFPBRC_",
        "OFPET_BAD_ACTION": "OFPBAC_", "OFPET_BAD_INSTRUCTION": "OFPBIC_",
        "OFPET_BAD_MATCH": "OFPBMC_", "OFPET_FLOW_MOD_FAILED": "OFPFMFC_",
        "OFPET_GROUP_MOD_FAILED": "OFPGMFC_", "OFPET_PORT_MOD_FAILED": "OFPPMFC_",
        "OFPET_TABLE_MOD_FAILED": "OFPTMFC_", "OFPET_QUEUE_OP_FAILED": "OFPQOFC_",
        "OFPET_SWITCH_CONFIG_FAILED": "OFPSCFC_", "OFPET_ROLE_REQUEST_FAILED": "OFPRRFC_",
        "OFPET_METER_MOD_FAILED": "OFPMMFC_", "OFPET_TABLE_FEATURES_FAILED": "OFPTFFC_",
    }
    codes: dict[tuple[int, int], str] = {}
    for type_name, prefix in prefixes.items():
        for name in dir(ofp):
            if name.startswith(prefix):
                codes[(getattr(ofp, type_name), getattr(ofp, name))] = name
    for name in dir(ofp):  # ONF experimenter errors (bundles): keyed by exp_type
        if name.startswith("ONFERR_"):
            codes[(ofp.OFPET_EXPERIMENTER, getattr(ofp, name))] = name
    return types, codes


_TYPE_NAMES, _CODE_NAMES = _code_names()


@dataclass(frozen=True)
class ErrorMsg:
    """One decoded OFPT_ERROR. For experimenter errors ``code`` is the exp_type."""

    xid: int
    type: int
    code: int
    data: bytes
    experimenter: int | None = None

    @property
    def name(self) -> str:
        found = _CODE_NAMES.get((self.type, self.code))
        if found and (self.experimenter in (None, ofproto_common.ONF_EXPERIMENTER_ID)):
            return found
        type_name = _TYPE_NAMES.get(self.type, f"type {self.type}")
        if self.experimenter is not None:
            return f"{type_name}(experimenter={self.experimenter:#x}, exp_type={self.code})"
        return f"{type_name}(code={self.code})"

    def __str__(self) -> str:
        return f"{self.name} (type={self.type}, code={self.code}, xid={self.xid})"


class OfError(Exception):
    """OVS rejected a message. ``errors`` are all rejections that came together, ``flow``
    and ``op`` name the flow of the first one when the channel knows it."""

    def __init__(self, errors: Sequence[ErrorMsg], flow: OfFlow | None = None,
                 op: str | None = None, context: str = "",
                 failed: Sequence[tuple[str, OfFlow, ErrorMsg]] = (),
                 meter: OfMeter | None = None) -> None:
        self.errors = tuple(errors)
        self.error = self.errors[0]
        self.flow = flow
        self.meter = meter  # the meter of the first error of install_meters()
        self.op = op
        # every (op, flow, error) of an install whose error names one of its flow-mods
        self.failed = tuple(failed)
        text = f"OpenFlow error {self.error}"
        if flow is not None:
            text += f" for {op} {flow}"
        elif meter is not None:
            text += f" for {op} {meter}"
        if context:
            text += f" ({context})"
        if len(self.errors) > 1:
            text += f"; {len(self.errors) - 1} more: " + "; ".join(
                str(e) for e in self.errors[1:4])
        super().__init__(text)


class ChannelClosed(ConnectionError):
    """The OpenFlow connection is not (or no longer) up."""


# ---- asynchronous messages ----------------------------------------------------------------
@dataclass(frozen=True)
class PacketIn:
    table_id: int
    reason: int
    cookie: int
    match: dict[str, Any]  # pipeline fields: in_port, metadata, reg0.., tunnel_id ...
    data: bytes
    buffer_id: int
    total_len: int

    @property
    def in_port(self) -> int | None:
        port = self.match.get("in_port")
        return None if port is None else int(port)


@dataclass(frozen=True)
class FlowRemoved:
    table_id: int
    priority: int
    cookie: int
    reason: int
    match: dict[str, Any]
    idle_timeout: int
    hard_timeout: int
    packet_count: int
    byte_count: int


@dataclass(frozen=True)
class PortStatus:
    reason: int  # OFPPR_ADD / _DELETE / _MODIFY
    port_no: int
    name: str
    hw_addr: str
    state: int


# ---- the channel --------------------------------------------------------------------------
@dataclass
class _Waiter:
    event: threading.Event = field(default_factory=threading.Event)
    reply: Any = None
    errors: list[ErrorMsg] = field(default_factory=list)
    closed: BaseException | None = None

    def wait(self, timeout: float, what: str) -> None:
        if not self.event.wait(timeout):
            raise TimeoutError(f"no reply to {what} within {timeout} s")
        if self.closed is not None:
            raise ChannelClosed(f"connection lost while waiting for {what}") from self.closed


def _parse_target(target: str) -> tuple[int, Any]:
    kind, _, rest = target.partition(":")
    if kind == "unix" and rest:
        return socket.AF_UNIX, rest
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit():
            return socket.AF_INET6 if ":" in host else socket.AF_INET, (host.strip("[]"),
                                                                         int(port))
    raise ValueError(f"bad OpenFlow target {target!r}: want unix:<path> or tcp:<host>:<port>")


class OfChannel:
    """One OpenFlow 1.3 connection to one bridge (see the module docstring)."""

    def __init__(self, target: str, *,
                 on_packet_in: Callable[[PacketIn], None] | None = None,
                 on_flow_removed: Callable[[FlowRemoved], None] | None = None,
                 on_port_status: Callable[[PortStatus], None] | None = None,
                 on_disconnect: Callable[[BaseException | None], None] | None = None,
                 miss_send_len: int = ofp.OFPCML_NO_BUFFER) -> None:
        self.target = target
        self._family, self._address = _parse_target(target)
        self.on_packet_in = on_packet_in
        self.on_flow_removed = on_flow_removed
        self.on_port_status = on_port_status
        self.on_disconnect = on_disconnect
        self.miss_send_len = miss_send_len
        self.datapath_id: int | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()  # the one writer lock
        self._install_lock = threading.Lock()
        self._state = threading.Lock()  # waiters, errors, xids
        self._waiters: dict[int, _Waiter] = {}
        self._errors: list[ErrorMsg] = []  # arrived, not yet claimed by a barrier
        self._xid = 0
        self._bundle_ids = itertools.count(1)
        self._closing = False
        self.echo_requests = 0  # answered keep-alive probes from the switch

    # ---- connection ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self, timeout: float = 10.0) -> None:
        """Dial (retrying until ``timeout`` while the switch is not there yet), negotiate
        OpenFlow 1.3, read the datapath id and enable asynchronous messages."""
        if self._sock is not None:
            raise RuntimeError("already connected")
        deadline = time.monotonic() + timeout
        sock = self._dial(deadline)
        try:
            leftover = self._hello(sock, deadline)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        self._closing = False
        self._sock = sock
        self._reader = threading.Thread(target=self._read_loop, args=(sock, leftover),
                                        name=f"ofchannel-{self.target}", daemon=True)
        self._reader.start()
        try:
            reply = self._request(ofpp.OFPFeaturesRequest(encode.DATAPATH),
                                  max(deadline - time.monotonic(), 0.1), "features request")
            self.datapath_id = reply.datapath_id
            self._send_msg(ofpp.OFPSetConfig(encode.DATAPATH, ofp.OFPC_FRAG_NORMAL,
                                             self.miss_send_len))
            all_reasons = (1 << ofp.OFPR_NO_MATCH) | (1 << ofp.OFPR_ACTION) | \
                (1 << ofp.OFPR_INVALID_TTL)
            port_status = (1 << ofp.OFPPR_ADD) | (1 << ofp.OFPPR_DELETE) | \
                (1 << ofp.OFPPR_MODIFY)
            removed = (1 << ofp.OFPRR_IDLE_TIMEOUT) | (1 << ofp.OFPRR_HARD_TIMEOUT) | \
                (1 << ofp.OFPRR_DELETE) | (1 << ofp.OFPRR_GROUP_DELETE)
            self._send_msg(ofpp.OFPSetAsync(encode.DATAPATH, [all_reasons, all_reasons],
                                            [port_status, port_status], [removed, removed]))
            self.barrier(max(deadline - time.monotonic(), 0.1))
        except BaseException:
            self.close()
            raise

    def _dial(self, deadline: float) -> socket.socket:
        while True:
            sock = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.05))
                sock.connect(self._address)
                if self._family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except OSError as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise ChannelClosed(f"cannot connect to {self.target}: {exc}") from exc
                time.sleep(0.05)

    def _hello(self, sock: socket.socket, deadline: float) -> bytes:
        sock.sendall(_HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_HELLO, 8, self.reserve_xids()))
        buf = b""
        while True:
            if len(buf) >= 8:
                version, msg_type, length, _xid = _HEADER.unpack_from(buf)
                if len(buf) >= length:
                    break
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                raise ChannelClosed(f"no OpenFlow hello from {self.target}") from None
            if not chunk:
                raise ChannelClosed(f"{self.target} closed the connection during hello")
            buf += chunk
        if msg_type != ofp.OFPT_HELLO:
            raise ChannelClosed(f"expected hello from {self.target}, got type {msg_type}")
        if version < ofp.OFP_VERSION or not _hello_allows_13(buf[8:length]):
            raise ChannelClosed(f"{self.target} does not speak OpenFlow 1.3 "
                                f"(hello version {version})")
        return buf[length:]

    def close(self) -> None:
        """Close the connection (no on_disconnect call for a close we asked for)."""
        self._closing = True
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5)
        self._reader = None

    # ---- sending ---------------------------------------------------------------------------
    def reserve_xids(self, count: int = 1) -> int:
        """Reserve ``count`` consecutive xids for messages you :meth:`send`; returns the
        first (errors name the xid of the message they reject)."""
        with self._state:
            first = (self._xid + 1) & 0xFFFFFFFF
            self._xid = (self._xid + count) & 0xFFFFFFFF
            return first

    def send(self, data: bytes) -> None:
        """Write ready-made OpenFlow messages (one lock: writes never interleave)."""
        sock = self._sock
        if sock is None:
            raise ChannelClosed(f"not connected to {self.target}")
        with self._send_lock:
            try:
                sock.sendall(data)
            except OSError as exc:
                raise ChannelClosed(f"send to {self.target} failed: {exc}") from exc

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.send(data)
        except ChannelClosed:
            pass  # the reader thread reports the lost connection

    def _send_msg(self, msg: Any, xid: int | None = None) -> int:
        msg.set_xid(self.reserve_xids() if xid is None else xid)
        msg.serialize()
        self.send(bytes(msg.buf))
        return int(msg.xid)

    def _request(self, msg: Any, timeout: float, what: str) -> Any:
        xid = self.reserve_xids()
        waiter = self._add_waiter(xid)
        try:
            self._send_msg(msg, xid)
            waiter.wait(timeout, what)
        finally:
            with self._state:
                self._waiters.pop(xid, None)
        if waiter.errors:
            raise OfError(waiter.errors, context=what)
        return waiter.reply

    def _add_waiter(self, xid: int) -> _Waiter:
        waiter = _Waiter()
        with self._state:
            if self._sock is None:
                raise ChannelClosed(f"not connected to {self.target}")
            self._waiters[xid] = waiter
        return waiter

    def _barrier_errors(self, timeout: float) -> list[ErrorMsg]:
        """Send a barrier; return the errors that arrived before its reply."""
        xid = self.reserve_xids()
        waiter = self._add_waiter(xid)
        try:
            self.send(_HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_BARRIER_REQUEST, 8, xid))
            waiter.wait(timeout, "barrier")
        finally:
            with self._state:
                self._waiters.pop(xid, None)
        return waiter.errors

    def barrier(self, timeout: float = 10.0) -> None:
        """Block until OVS has processed everything sent before; raise :class:`OfError` if
        any of it was rejected."""
        errors = self._barrier_errors(timeout)
        if errors:
            raise OfError(errors)

    def install(self, ops: Sequence[tuple[encode.Command, OfFlow]],
                replace_all: bool = False, timeout: float = 60.0,
                meters: Sequence[tuple[encode.MeterCommand, OfMeter]] = ()) -> None:
        """Apply ``ops`` as ONE atomic bundle (after a delete of every flow in every table
        if ``replace_all``), commit, and wait for the barrier.

        All bundle messages are checked (a barrier) before the commit: if OVS rejected any
        of them the bundle is discarded, the tables are untouched, and :class:`OfError`
        names the flow whose xid the first error carries. ``meters`` (meter-mods: OVS
        refuses them inside a bundle) are sent just before the bundle and checked by the
        same barrier -- one round trip fewer than :meth:`install_meters` first; a rejected
        one discards the bundle too (``OfError.meter`` names it; the meter-mods OVS
        accepted stay applied)."""
        if not ops and not replace_all:
            self.install_meters(meters, timeout)
            return
        with self._install_lock:
            meter_xid = self.reserve_xids(len(meters)) if meters else 0
            if meters:
                self.send(b"".join(encode.encode_meter_mod(op, m, (meter_xid + i) & 0xFFFFFFFF)
                                   for i, (op, m) in enumerate(meters)))
            bundle_id = next(self._bundle_ids) & 0xFFFFFFFF
            count = len(ops) + (1 if replace_all else 0)
            open_xid = self.reserve_xids(count + 2)
            first = (open_xid + 1 + (1 if replace_all else 0)) & 0xFFFFFFFF
            commit_xid = (open_xid + count + 1) & 0xFFFFFFFF
            self.send(encode.bundle_ctrl(bundle_id, ofp.ONF_BCT_OPEN_REQUEST, open_xid))
            if replace_all:
                self.send(encode.encode_bundle_delete_all(bundle_id, open_xid + 1))
            for start in range(0, len(ops), SEND_CHUNK):
                self.send(encode.encode_bundle_adds(ops[start:start + SEND_CHUNK], bundle_id,
                                                    (first + start) & 0xFFFFFFFF))
            errors = self._barrier_errors(timeout)
            if errors:
                self.send(encode.bundle_ctrl(bundle_id, ofp.ONF_BCT_DISCARD_REQUEST,
                                             self.reserve_xids()))
                self._barrier_errors(timeout)  # discard errors (bundle gone) don't matter
                meter_errors = [e for e in errors
                                if (e.xid - meter_xid) % (1 << 32) < len(meters)]
                if meter_errors:
                    op, meter = meters[(meter_errors[0].xid - meter_xid) % (1 << 32)]
                    raise OfError(errors, op=op, meter=meter, context="bundle discarded")
                raise self._install_error(errors, ops, first, "bundle discarded")
            self.send(encode.bundle_ctrl(bundle_id, ofp.ONF_BCT_COMMIT_REQUEST, commit_xid))
            errors = self._barrier_errors(timeout)
            if errors:
                raise self._install_error(errors, ops, first, "bundle commit failed")

    @staticmethod
    def _install_error(errors: list[ErrorMsg], ops: Sequence[tuple[encode.Command, OfFlow]],
                       first: int, context: str) -> OfError:
        # an error for a flow's xid is more telling than the bundle-level one
        ordered = sorted(errors, key=lambda e: not (0 <= (e.xid - first) % (1 << 32)
                                                    < len(ops)))
        failed = []
        for e in ordered:
            index = (e.xid - first) % (1 << 32)
            if index < len(ops):
                failed.append((ops[index][0], ops[index][1], e))
        if failed:
            return OfError(ordered, failed[0][1], failed[0][0], context, failed)
        return OfError(ordered, context=context)

    def install_meters(self, ops: Sequence[tuple[encode.MeterCommand, OfMeter]],
                       timeout: float = 10.0) -> None:
        """Send one OFPT_METER_MOD per op (in order), then wait for a barrier.

        Not atomic: OVS (3.1) refuses meter-mods inside ONF bundles (ONFERR_ET_MSG_UNSUP),
        so the ops OVS accepted stay applied when another is rejected. :class:`OfError`
        names the meter (``.meter``) and op of the first rejection. Add meters before the
        flows that use them (OVS rejects a flow naming a missing meter); deleting a meter
        makes OVS delete the flows that use it (OpenFlow 1.3)."""
        if not ops:
            return
        with self._install_lock:
            first = self.reserve_xids(len(ops))
            self.send(b"".join(encode.encode_meter_mod(op, meter, (first + i) & 0xFFFFFFFF)
                               for i, (op, meter) in enumerate(ops)))
            errors = self._barrier_errors(timeout)
        if errors:
            # an error naming one of our meter-mods first
            ordered = sorted(errors, key=lambda e: not (0 <= (e.xid - first) % (1 << 32)
                                                        < len(ops)))
            index = (ordered[0].xid - first) % (1 << 32)
            if index < len(ops):
                op, meter = ops[index]
                raise OfError(ordered, op=op, meter=meter)
            raise OfError(ordered)

    def delete_all_meters(self, timeout: float = 10.0) -> None:
        """Delete every meter (OFPM_ALL) -- and so every flow that uses one -- and wait
        for a barrier (:class:`OfError` if OVS rejects it)."""
        with self._install_lock:
            self.send(encode.delete_all_meters_mod(self.reserve_xids()))
            self.barrier(timeout)

    def packet_out(self, in_port: int, data: bytes, actions: Sequence[Action]) -> None:
        """Send ``data`` through ``actions`` as if received on ``in_port``
        (e.g. ``[Resubmit(table)]`` to inject into a pipeline stage)."""
        msg = ofpp.OFPPacketOut(encode.DATAPATH, buffer_id=ofp.OFP_NO_BUFFER,
                                in_port=in_port, actions=encode.osken_actions(actions),
                                data=data)
        self._send_msg(msg)

    # ---- receiving -------------------------------------------------------------------------
    def _read_loop(self, sock: socket.socket, leftover: bytes) -> None:
        buf = bytearray(leftover)
        failure: BaseException | None = None
        try:
            while True:
                off = 0
                while len(buf) - off >= 8:
                    length = (buf[off + 2] << 8) | buf[off + 3]
                    if length < 8:
                        raise ChannelClosed(f"bad OpenFlow message length {length}")
                    if len(buf) - off < length:
                        break
                    self._dispatch(bytes(buf[off:off + length]))
                    off += length
                del buf[:off]
                try:
                    chunk = sock.recv(1 << 18)
                except OSError as exc:
                    failure = None if self._closing else exc
                    break
                if not chunk:
                    break  # the switch closed the connection
                buf += chunk
        except BaseException as exc:  # a callback or a parser failed: close loudly
            LOG.exception("OpenFlow channel %s: closing after error", self.target)
            failure = exc
        self._connection_lost(sock, failure)

    def _connection_lost(self, sock: socket.socket, failure: BaseException | None) -> None:
        with self._state:
            waiters, self._waiters = self._waiters, {}
            mine = self._sock is sock
            if mine:
                self._sock = None
        for waiter in waiters.values():
            waiter.closed = failure or ChannelClosed("connection closed")
            waiter.event.set()
        sock.close()
        if mine and not self._closing:
            LOG.warning("OpenFlow channel %s lost: %s", self.target, failure or "closed")
            if self.on_disconnect is not None:
                self.on_disconnect(failure)

    def _dispatch(self, msg: bytes) -> None:
        version, msg_type, length, xid = _HEADER.unpack_from(msg)
        if msg_type == ofp.OFPT_BARRIER_REPLY:
            with self._state:
                waiter = self._waiters.get(xid)
                if waiter is not None:
                    waiter.errors, self._errors = self._errors, []
            if waiter is not None:
                waiter.event.set()
        elif msg_type == ofp.OFPT_ERROR:
            self._on_error(_decode_error(msg, xid))
        elif msg_type == ofp.OFPT_ECHO_REQUEST:
            self.echo_requests += 1
            # not from this thread: a writer blocked on a full socket (OVS stops reading
            # while its replies to us back up) would otherwise stop us reading -- deadlock
            reply = _HEADER.pack(version, ofp.OFPT_ECHO_REPLY, length, xid) + msg[8:]
            threading.Thread(target=self._send_quietly, args=(reply,), daemon=True).start()
        elif msg_type == ofp.OFPT_PACKET_IN and self.on_packet_in is not None:
            self.on_packet_in(_packet_in(self._parse(msg)))
        elif msg_type == ofp.OFPT_FLOW_REMOVED and self.on_flow_removed is not None:
            self.on_flow_removed(_flow_removed(self._parse(msg)))
        elif msg_type == ofp.OFPT_PORT_STATUS and self.on_port_status is not None:
            parsed = self._parse(msg)
            desc = parsed.desc
            self.on_port_status(PortStatus(parsed.reason, desc.port_no,
                                           desc.name.decode(errors="replace"),
                                           desc.hw_addr, desc.state))
        else:
            with self._state:
                waiter = self._waiters.get(xid)
            if waiter is not None and msg_type != ofp.OFPT_ECHO_REPLY:
                waiter.reply = self._parse(msg)
                waiter.event.set()

    def _on_error(self, error: ErrorMsg) -> None:
        LOG.debug("OpenFlow channel %s: %s", self.target, error)
        with self._state:
            waiter = self._waiters.get(error.xid)
            if waiter is not None:  # a request/reply: the error is its answer
                waiter.errors.append(error)
                waiter.event.set()
                return
            if len(self._errors) >= _MAX_UNCLAIMED_ERRORS:
                LOG.error("OpenFlow channel %s: dropping unclaimed error %s", self.target,
                          self._errors.pop(0))
            self._errors.append(error)

    @staticmethod
    def _parse(msg: bytes) -> Any:
        version, msg_type, length, xid = _HEADER.unpack_from(msg)
        return ofproto_parser.msg(encode.DATAPATH, version, msg_type, length, xid, msg)


def _hello_allows_13(elements: bytes) -> bool:
    """True unless a version bitmap in the hello excludes OpenFlow 1.3."""
    off = 0
    while off + 4 <= len(elements):
        etype, elen = struct.unpack_from("!HH", elements, off)
        if elen < 4:
            break
        if etype == ofp.OFPHET_VERSIONBITMAP and elen >= 8:
            (bitmap,) = struct.unpack_from("!I", elements, off + 4)
            return bool(bitmap & (1 << ofp.OFP_VERSION))
        off += (elen + 7) // 8 * 8
    return True


def _decode_error(msg: bytes, xid: int) -> ErrorMsg:
    err_type, code = _ERROR_BODY.unpack_from(msg, 8)
    if err_type == ofp.OFPET_EXPERIMENTER:
        _t, exp_type, experimenter = _ERROR_EXP_BODY.unpack_from(msg, 8)
        return ErrorMsg(xid, err_type, exp_type, bytes(msg[16:]), experimenter)
    return ErrorMsg(xid, err_type, code, bytes(msg[12:]))


def _match_dict(m: Any) -> dict[str, Any]:
    return dict(m.items())


def _packet_in(msg: Any) -> PacketIn:
    return PacketIn(msg.table_id, msg.reason, msg.cookie, _match_dict(msg.match),
                    bytes(msg.data), msg.buffer_id, msg.total_len)


def _flow_removed(msg: Any) -> FlowRemoved:
    return FlowRemoved(msg.table_id, msg.priority, msg.cookie, msg.reason,
                       _match_dict(msg.match), msg.idle_timeout, msg.hard_timeout,
                       msg.packet_count, msg.byte_count)
