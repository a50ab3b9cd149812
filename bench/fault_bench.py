"""Benchmark: what faults cost the dataplane. Prints figures, asserts nothing.

Three simulated nodes (hv1..hv3: netns + own ovsdb-server/ovs-vswitchd, netdev datapath),
one ``df-controller`` PROCESS per node on a private NB server (etcd or redis, started by
this bench on fixed loopback ports so it can be stopped and started again), one VXLAN
network n1 (10.9.0.0/24, + fd00:9::/64) and a second VXLAN network n2 (10.10.0.0/24)
behind router r1, a VM of each network on every node. Continuous traffic: a small UDP
prober in every VM sends a sequence-numbered probe every 50 ms to its peers, which echo it
back -- 8 streams, both directions of 4 cross-node pairs: a1<->a2 (L2 hv1-hv2),
a1<->b3 (routed hv1-hv3), b1<->b2 (L2 hv1-hv2), a3<->b2 (routed hv3-hv2, hv1 not on the
path). Per scenario it prints probes lost / sent, the longest outage (from the first lost
probe's send to the next reply) and the time to recover (from the fault to the first
reply after the last lost probe; the max over streams and over repetitions), and what the
scenario needs besides:

1. kill -9 of hv1's df-controller and restart, N times (goal: 0 lost), controller back
   (process started -> first flow sync done), flows identical afterwards;
2. ``Testbed.restart_vswitchd`` on hv1, N times (every OpenFlow flow is gone on a
   restarted userspace datapath; the controller reinstalls them): time until the flow
   count on br-int is back to its pre-fault count (``ovs-ofctl dump-flows`` polled every
   50 ms), and where the time went (vswitchd start, controller reconnect, install);
3. NB down 20 s, data kept (etcd: SIGTERM, same data dir; redis: SHUTDOWN SAVE, same
   dump): lost probes (goal 0), then one new VM per node created right after the DB is
   back: NB create -> ACTIVE and -> first ping (the controllers have caught up);
4. NB down 20 s, restarted EMPTY: the topology objects (networks, subnets, router, ports;
   not chassis -- controllers register those) are re-created through NbApi at once, as an
   operator restoring from Neutron would: time until the re-created ports are ACTIVE and
   traffic flows, lost probes. If the controllers do not pick the new database up, they
   are restarted one by one (what an operator would do next) and that is timed too;
5. a 3-member etcd cluster, controllers on all members; 200 ports (OVS internal ports
   plugged on the 3 chassis beforehand) created one by one while the raft leader is
   killed once: client-side create errors, creates that needed retries, ports ACTIVE,
   time from the first create to all ACTIVE, when a new leader was seen;
6. packet-in storm: one VM on hv1 floods controller-bound frames (the STORM script of
   tests/fullstack/test_storm.py) for 10 s: lost probes of the OTHER VMs, frames sent,
   controller log lines and CPU during the storm.

Run (root; one scenario at a time on a shared machine is fine, each builds its own bed)::

    .venv/bin/python bench/fault_bench.py                  # all; 3+4 on etcd AND redis
    .venv/bin/python bench/fault_bench.py --db redis --only 1,2
    .venv/bin/python bench/fault_bench.py --quick          # fewer repetitions, shorter
    .venv/bin/python bench/fault_bench.py --logs /tmp/fb   # keep controller/OVS logs

What OVN/OVS document for the same faults:

* ovn-controller restart: on every OpenFlow (re)connection ovn-controller clears the
  switch's flows, then computes and installs its own; ``external_ids:ovn-ofctrl-wait-
  before-clear`` (ms, default 0) delays the clear so the new flows can be computed first --
  "Not setting the value, or setting it too small, may result in data plane down time
  during upgrade/restart" (ovn-controller(8), controller/ovn-controller.8.xml in
  github.com/ovn-org/ovn; patch: https://mail-archive.com/ovs-dev@openvswitch.org/
  msg68604.html). Since ovn commit ebfbedd0 the first install after the clear is one
  bundle, old flows to new atomically (https://github.com/ovn-org/ovn/commit/
  ebfbedd0ceda723d5f78773c965529ee136a5720). Here the controller compiles everything
  before it connects and replaces the flows in one bundle on its own (scenario 1).
* ovs-vswitchd restart: "Restarting the daemons means that the OpenFlow flows in the
  ovs-vswitchd daemon will be lost. One way to restore the flows is to let the controller
  re-populate it" (OVS "Hot Upgrading", https://mail-archive.com/dev@openvswitch.org/
  msg19413.html). ``other_config:flow-restore-wait=true`` makes a starting vswitchd
  neither flush datapath flows nor process packets (https://mail-archive.com/
  dev@openvswitch.org/msg19330.html) and, since OVS commit 7ed73428a, not connect to
  controllers until it is set back to false (https://mail-archive.com/
  ovs-dev@openvswitch.org/msg27700.html); ``ovs-ctl restart`` saves and restores the
  flows around it. The test bed's restart does NOT use it: scenario 2 is the plain
  "controller re-populates" case, as for ovn-controller without flow-restore-wait.
* DB leader loss: for a clustered OVSDB "during a leader fail-over ... all clients of the
  old leader will have to reconnect to other nodes in the cluster"
  (https://github.com/openvswitch/ovs/commit/4d9b28cbb797ad112d2aefccab93c7d37493941a).
  What ovn-controller does with its flows while the SB is unreachable or after it comes
  back empty was not found documented in the pages searched.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from common import cpu_seconds, first_reply, plug

from dragonflow.db.connect import open_nb
from dragonflow.db.nbapi import NbApi
from dragonflow.model import Binding, Chassis, FixedIp, Port, Router
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.storm import STORM
from dragonflow.sim.testbed import (
    BR_INT,
    Node,
    Testbed,
    TestbedError,
    Vm,
    missing_prerequisites,
    new_prefix,
)

INTERVAL = 0.05  # probe interval, s
PROBE_PORT = 7777
NODES = (("hv1", "10.255.0.11"), ("hv2", "10.255.0.12"), ("hv3", "10.255.0.13"))
PAIRS = (("a1", "a2"), ("a1", "b3"), ("b1", "b2"), ("a3", "b2"))  # both directions each
TICK = os.sysconf("SC_CLK_TCK")

# In every VM: echo UDP probes on PROBE_PORT; send one probe per interval to each target;
# on stdin EOF print {"sent": {ip: [send times]}, "got": {ip: {seq: reply time}}}.
PROBER = r"""
import json, os, select, socket, sys, time
port, interval = int(sys.argv[1]), float(sys.argv[2])
targets = [t for t in sys.argv[3].split(",") if t]
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.bind(("0.0.0.0", port))
cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
cli.bind(("0.0.0.0", 0))
srv.setblocking(False)
cli.setblocking(False)
sent = {t: [] for t in targets}
got = {t: {} for t in targets}
print("ready", flush=True)
seq, nxt = 0, time.time()
while True:
    now = time.time()
    if targets and now >= nxt:
        for t in targets:
            try:
                cli.sendto(b"%d" % seq, (t, port))
            except OSError:
                pass  # e.g. the neighbour is unresolved: a lost probe
            sent[t].append(now)
        seq += 1
        nxt += interval
        if nxt < now:  # we were not scheduled for a while: no burst to catch up
            nxt = now + interval
    wait = max(0.0, nxt - time.time()) if targets else 1.0
    ready, _, _ = select.select([srv, cli, 0], [], [], wait)
    for s in ready:
        if s is srv:
            try:
                data, addr = srv.recvfrom(64)
                srv.sendto(data, addr)
            except OSError:
                pass
        elif s is cli:
            try:
                data, addr = cli.recvfrom(64)
            except OSError:
                continue
            if addr[0] in got:
                got[addr[0]].setdefault(int(data), time.time())
        elif not os.read(0, 64):
            json.dump({"sent": sent, "got": got}, sys.stdout)
            sys.stdout.flush()
            sys.exit(0)
"""

def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shm_dir(prefix: str) -> Path:
    parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


# --- NB servers: fixed ports, stop and start again with or without their data ----------
@dataclass
class DbServer:
    """One redis-server or etcd member on fixed loopback ports in its own directory."""

    kind: str  # "redis" | "etcd"
    dir: Path
    name: str = "df0"
    port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    cluster: str = ""  # etcd --initial-cluster ("" = just this member)
    token: str = field(default_factory=lambda: f"fb-{uuid.uuid4().hex[:8]}")
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.kind}://127.0.0.1:{self.port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        if self.kind == "redis":
            return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                    "--dbfilename", "dump.rdb", "--daemonize", "no",
                    "--logfile", str(self.dir / "server.log")]
        return ["etcd", "--name", self.name, "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", self.client_url,
                "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.cluster or f"{self.name}={self.peer_url}",
                "--initial-cluster-token", self.token, "--initial-cluster-state", "new",
                "--logger", "zap", "--log-level", "warn"]

    def launch(self) -> None:
        """Start the process (an etcd data dir that exists is used as it is)."""
        if self.proc is not None:
            raise RuntimeError(f"{self.kind} {self.name} already running")
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)

    def healthy(self) -> bool:
        try:
            if self.kind == "redis":
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} {self.name} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} {self.name} not healthy: {self.log_tail()}")
            time.sleep(0.02)

    def start(self) -> DbServer:
        self.launch()
        self.wait_healthy()
        return self

    def stop(self, keep_data: bool) -> None:
        """Stop the server; with ``keep_data`` the next start has the same data (redis:
        SHUTDOWN SAVE, etcd: SIGTERM), else the data is wiped."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if self.kind == "redis" and keep_data:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                        s.sendall(b"SHUTDOWN SAVE\r\n")
                        s.recv(64)
                except OSError:
                    pass
            else:
                proc.send_signal(signal.SIGTERM if keep_data else signal.SIGKILL)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not keep_data:
            (self.dir / "dump.rdb").unlink(missing_ok=True)
            shutil.rmtree(self.dir / "data", ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, data kept (an etcd member that crashed)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def log_tail(self) -> str:
        for name in ("server.log", "stdout.log"):
            p = self.dir / name
            if p.exists():
                return p.read_text(errors="replace")[-1500:]
        return ""

    def member_status(self) -> dict[str, Any] | None:
        """etcd: this member's id and the leader it knows (None if it does not answer)."""
        try:
            out = subprocess.run(
                ["etcdctl", "--endpoints", self.client_url, "--dial-timeout", "1s",
                 "--command-timeout", "1s", "endpoint", "status", "-w", "json"],
                capture_output=True, text=True, timeout=5, check=True,
                env={**os.environ, "ETCDCTL_API": "3"}).stdout
            st = json.loads(out)[0]["Status"]
            return {"id": st["header"]["member_id"], "leader": st["leader"]}
        except (subprocess.SubprocessError, ValueError, KeyError, IndexError, OSError):
            return None


@dataclass
class Db:
    """The NB of one scenario: one server, or a 3-member etcd cluster."""

    members: list[DbServer]

    @classmethod
    def single(cls, kind: str) -> Db:
        return cls([DbServer(kind, shm_dir(f"fb-{kind}-")).start()])

    @classmethod
    def etcd_cluster(cls, size: int = 3) -> Db:
        token = f"fb-{uuid.uuid4().hex[:8]}"
        members = [DbServer("etcd", shm_dir("fb-etcd-"), name=f"m{i}", token=token)
                   for i in range(size)]
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
        db = cls(members)
        try:
            for m in members:
                m.cluster = cluster
                m.launch()  # members wait for each other: start all, then wait
            for m in members:
                m.wait_healthy()
        except BaseException:
            db.close()
            raise
        return db

    @property
    def url(self) -> str:
        kind = self.members[0].kind
        return f"{kind}://" + ",".join(f"127.0.0.1:{m.port}" for m in self.members)

    @property
    def server(self) -> DbServer:
        return self.members[0]

    def leader(self) -> DbServer | None:
        ids: dict[int, DbServer] = {}
        leader_id = None
        for m in self.members:
            if m.proc is None:
                continue
            st = m.member_status()
            if st is not None:
                ids[st["id"]] = m
                leader_id = leader_id or st["leader"]
        return ids.get(leader_id) if leader_id else None

    def close(self) -> None:
        for m in self.members:
            m.kill()
            shutil.rmtree(m.dir, ignore_errors=True)


# --- traffic ------------------------------------------------------------------------------
@dataclass
class Stream:
    src: str
    dst: str
    sent: list[float]
    got: dict[int, float]


class Probes:
    """A prober process in every VM; ``stop()`` returns the streams."""

    def __init__(self, vms: dict[str, Vm], pairs: tuple[tuple[str, str], ...]) -> None:
        self.vms = vms
        self.targets: dict[str, list[str]] = {name: [] for name in vms}
        for a, b in pairs:
            self.targets[a].append(b)
            self.targets[b].append(a)
        self.procs: dict[str, subprocess.Popen[str]] = {}
        for name, vm in vms.items():
            ips = ",".join(vms[t].ip for t in self.targets[name])
            proc = subprocess.Popen(
                ["ip", "netns", "exec", vm.netns, sys.executable, "-c", PROBER,
                 str(PROBE_PORT), str(INTERVAL), ips],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.procs[name] = proc
        for name, proc in self.procs.items():
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"prober in {name} did not start")
        self.started = time.time()

    def stop(self) -> list[Stream]:
        by_ip = {vm.ip: name for name, vm in self.vms.items()}
        streams: list[Stream] = []
        for name, proc in self.procs.items():
            out, _ = proc.communicate(timeout=30)  # closes stdin: the prober reports
            data = json.loads(out)
            for ip, sent in data["sent"].items():
                streams.append(Stream(name, by_ip[ip], sent,
                                      {int(k): v for k, v in data["got"][ip].items()}))
        self.procs.clear()
        return streams

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()


@dataclass
class Figures:
    sent: int
    lost: int
    outage: float  # s: the longest loss run, first lost probe's send -> next reply
    recover: dict[str, float | None]  # fault label -> s from the fault to recovery (max)
    unrecovered: list[str]
    runs: list[tuple[str, float, int]]  # (stream, first lost send, probes lost in a row)

    @property
    def worst_recovery(self) -> float | None:
        vals = [v for v in self.recover.values() if v is not None]
        return max(vals) if vals else None


def analyse(streams: list[Stream], t0: float, t1: float,
            faults: list[tuple[str, float]]) -> Figures:
    """Probes sent in [t0, t1] only (later ones may still be in flight)."""
    sent = lost = 0
    outage = 0.0
    recover: dict[str, float | None] = {label: 0.0 for label, _ in faults}
    unrecovered: list[str] = []
    runs: list[tuple[str, float, int]] = []
    for s in streams:
        probes = [(ts, s.got.get(i)) for i, ts in enumerate(s.sent) if t0 <= ts <= t1]
        sent += len(probes)
        run_start: float | None = None
        run_len = 0
        for ts, reply in probes:
            if reply is None:
                lost += 1
                run_start = ts if run_start is None else run_start
                run_len += 1
            elif run_start is not None:
                outage = max(outage, reply - run_start)
                runs.append((f"{s.src}->{s.dst}", run_start, run_len))
                run_start, run_len = None, 0
        if run_start is not None:
            outage = max(outage, t1 - run_start)
            unrecovered.append(f"{s.src}->{s.dst}")
            runs.append((f"{s.src}->{s.dst}", run_start, run_len))
        for i, (label, at) in enumerate(faults):
            end = faults[i + 1][1] if i + 1 < len(faults) else t1
            lost_here = [ts for ts, reply in probes if reply is None and at <= ts < end]
            if not lost_here:
                continue
            last = max(lost_here)
            replies = [reply for ts, reply in probes if ts > last and reply is not None]
            prev = recover[label]
            if not replies:
                recover[label] = None
            elif prev is not None:
                recover[label] = max(prev, min(replies) - at)
    return Figures(sent, lost, outage, recover, unrecovered, sorted(runs, key=lambda r: r[1]))


# --- the world of one scenario ------------------------------------------------------------
@dataclass
class World:
    bed: Testbed
    db: Db
    nb: NbApi
    dep: Deployment
    nodes: dict[str, Node]
    vms: dict[str, Vm]
    logs: Path | None
    label: str
    figs: Figures | None = None  # of the traffic window (run_traffic)

    def flows(self, node: Node) -> set[str]:
        out = node.ofctl("dump-flows", "--no-stats", BR_INT)
        return {line.strip() for line in out.splitlines() if "priority=" in line}

    def keep_logs(self) -> None:
        if self.logs is None:
            return
        dest = self.logs / self.label
        dest.mkdir(parents=True, exist_ok=True)
        for name, node in self.nodes.items():
            for f in ("df-controller.log", "ovs-vswitchd.log"):
                if (node.rundir / f).exists():
                    shutil.copy(node.rundir / f, dest / f"{name}-{f}")
        print(f"  logs kept in {dest}")


@contextmanager
def world(label: str, db: Db, logs: Path | None) -> Iterator[World]:
    """Test bed + controllers on ``db`` + the topology; everything torn down after."""
    bed = Testbed(new_prefix())
    nb = open_nb(db.url, root=f"/fault{uuid.uuid4().hex[:6]}/")
    dep = Deployment(bed, nb, db.url, in_process=False)
    w: World | None = None
    try:
        t = time.monotonic()
        nodes = {name: dep.add_node(name, ip) for name, ip in NODES}
        dep.network("n1", "vxlan", 901, "10.9.0.0/24")
        dep.subnet("n1", "n1-subnet6", "fd00:9::/64")
        dep.network("n2", "vxlan", 902, "10.10.0.0/24")
        dep.router("r1", [("n1", ["10.9.0.1/24", "fd00:9::1/64"]), ("n2", ["10.10.0.1/24"])])
        vms: dict[str, Vm] = {}
        for j, (name, _) in enumerate(NODES, start=1):
            vms[f"a{j}"] = dep.vm(nodes[name], f"a{j}", "n1", f"fa:16:3e:09:00:1{j}",
                                  f"10.9.0.1{j}", gateway="10.9.0.1")
            vms[f"b{j}"] = dep.vm(nodes[name], f"b{j}", "n2", f"fa:16:3e:10:00:1{j}",
                                  f"10.10.0.1{j}", gateway="10.10.0.1")
        wait_active(nb, [f"{v}-port" for v in vms], timeout=90)
        for a, b in PAIRS:  # resolves neighbours, and proves the topology works
            for src, dst in ((a, b), (b, a)):
                if not any(vms[src].ping(vms[dst].ip, count=1, timeout=2) for _ in range(10)):
                    print(f"  WARNING: {src} cannot reach {dst} before any fault")
        print(f"  [{label}] 3 nodes, 6 VMs, router up in {time.monotonic() - t:.0f} s "
              f"(NB {db.url})", flush=True)
        w = World(bed, db, nb, dep, nodes, vms, logs, label)
        yield w
    finally:
        try:
            if w is not None:
                w.keep_logs()
        finally:
            dep.stop()
            bed.teardown()
            nb.driver.close()


def wait_active(nb: NbApi, ids: list[str], timeout: float, poll: float = 0.05,
                since: float | None = None) -> dict[str, float]:
    """Port id -> seconds from ``since`` (default: now) until it was seen ACTIVE, for
    those that were within ``timeout`` (one prefix read per poll)."""
    start = time.monotonic() if since is None else since
    want, seen = set(ids), {}
    deadline = time.monotonic() + timeout
    while True:
        try:
            ports = nb.list(Port)
        except Exception:  # NB not answering (yet): poll again
            ports = []
        now = time.monotonic()
        for p in ports:
            if p.id in want and p.id not in seen and p.status == "ACTIVE":
                seen[p.id] = now - start
        if len(seen) == len(want) or now > deadline:
            return seen
        time.sleep(poll)






def log_lines(node: Node) -> list[str]:
    p = node.rundir / "df-controller.log"
    return p.read_text(errors="replace").splitlines() if p.exists() else []


def retry(fn: Callable[[], Any], timeout: float = 30.0) -> tuple[Any, int]:
    """Call ``fn`` until it does not raise; (its result, attempts)."""
    deadline = time.monotonic() + timeout
    for attempt in itertools.count(1):
        try:
            return fn(), attempt
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


@dataclass
class Row:
    scenario: str
    db: str
    figs: Figures
    extra: str


def run_traffic(w: World, body: Callable[[list[tuple[str, float]]], None],
                baseline: float = 2.0, tail: float = 3.0) -> None:
    """Probes on, ``baseline`` s, ``body(faults)`` (appends (label, time.time()) per
    fault), ``tail`` s, probes off; the figures of the window go to ``w.figs``."""
    probes = Probes(w.vms, PAIRS)
    faults: list[tuple[str, float]] = []
    try:
        time.sleep(baseline)
        t0 = probes.started + 1.0  # the first second: probers settling
        body(faults)
        time.sleep(tail)
        t1 = time.time() - 1.0
        streams = probes.stop()
    finally:
        probes.kill()
    figs = w.figs = analyse(streams, t0, t1, faults)
    origin = faults[0][1] if faults else t0
    for stream, at, n in figs.runs[:12]:
        print(f"    lost: {stream} {n} probe(s) in a row from {at - origin:+.2f} s "
              f"(relative to the first fault)")
    if len(figs.runs) > 12:
        print(f"    ... {len(figs.runs) - 12} more loss runs")
    for label, rec in figs.recover.items():
        print(f"    {label}: traffic recovered after "
              f"{'NEVER (in the window)' if rec is None else ms(rec) + ' ms'}")
    if figs.unrecovered:
        print(f"    streams still losing at the end: {figs.unrecovered}")


# --- scenarios ------------------------------------------------------------------------------
def s1_controller_kill(w: World, reps: int) -> str:
    hv1 = w.nodes["hv1"]
    before = w.flows(hv1)
    status = hv1.rundir / f"{BR_INT}.df-status.json"
    back: list[float] = []

    def body(faults: list[tuple[str, float]]) -> None:
        for i in range(reps):
            t = time.time()
            faults.append((f"kill -9 #{i + 1}", t))
            w.dep.kill_controller(hv1, signal.SIGKILL)
            w.dep.start_controller(hv1)
            started = time.time() - t
            while time.time() - t < 60:  # the first flow sync writes the status file
                if status.exists() and status.stat().st_mtime > t:
                    break
                time.sleep(0.01)
            back.append(time.time() - t)
            first_line = controller_log_events(hv1, t, "")
            compiled = controller_log_events(hv1, t, "full compile")
            print(f"    kill -9 #{i + 1} (ms after the kill): new process' first log line "
                  f"{ms(first_line[0] - t if first_line else None)} (imports, NB open), full "
                  f"compile logged {ms(compiled[0] - t if compiled else None)}, "
                  f"Deployment.start_controller() returned {ms(started)}, first flow sync "
                  f"done (status file) {ms(back[-1])}", flush=True)
            time.sleep(2.0)

    run_traffic(w, body)
    same = w.flows(hv1) == before
    return (f"{reps} kills; controller back (kill -> first sync) max {ms(max(back))} ms; "
            f"flows identical after: {'yes' if same else 'NO'}")


def vswitchd_log_events(node: Node, since: float) -> list[tuple[float, str]]:
    """(epoch, text) of vswitchd log lines after ``since`` about br-int's controller."""
    out = []
    p = node.rundir / "ovs-vswitchd.log"
    for line in p.read_text(errors="replace").splitlines() if p.exists() else []:
        parts = line.split("|", 4)
        if len(parts) < 5:
            continue
        try:
            at = datetime.fromisoformat(parts[0].replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        if at >= since and ("br-int<->" in line or "opened log file" in line
                            or ("added service controller" in line and ".df" in line)):
            out.append((at, parts[4]))
    return out


def controller_log_events(node: Node, since: float, needle: str) -> list[float]:
    out = []
    for line in log_lines(node):
        if needle not in line:
            continue
        try:
            at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if at >= since:
            out.append(at)
    return out


def poll_flows(w: World, node: Node, samples: list[tuple[float, int | None]],
               stop: threading.Event) -> None:
    """(time, flow count on br-int or None if ovs-ofctl got no answer) every 50 ms."""
    while not stop.is_set():
        try:
            n: int | None = w.dep.flow_count(node)
        except TestbedError:
            n = None
        samples.append((time.time(), n))
        stop.wait(0.05)


def s2_vswitchd_restart(w: World, reps: int) -> str:
    hv1 = w.nodes["hv1"]
    pre = w.dep.flow_count(hv1)
    back: list[float] = []

    def body(faults: list[tuple[str, float]]) -> None:
        for i in range(reps):
            samples: list[tuple[float, int | None]] = []
            stop = threading.Event()
            t = time.time()
            faults.append((f"vswitchd restart #{i + 1}", t))
            poller = threading.Thread(target=poll_flows, args=(w, hv1, samples, stop),
                                      daemon=True)
            poller.start()
            w.bed.restart_vswitchd(hv1)
            restarted = time.time() - t
            deadline = time.time() + 60
            while time.time() < deadline and not any(
                    n is not None and n >= pre and at > t + restarted for at, n in samples):
                time.sleep(0.02)
            stop.set()
            poller.join()
            after = [(at, n) for at, n in samples if at > t]
            answered = next((at - t for at, n in after if n is not None), None)
            first = next((at - t for at, n in after if n), None)
            full = next((at - t for at, n in after if n is not None and n >= pre), None)
            back.append(full if full is not None else float("inf"))
            lost_at = controller_log_events(hv1, t - 1, "OpenFlow channel")
            ev = vswitchd_log_events(hv1, t - 1)
            started = next((at - t for at, text in ev if "opened log file" in text), None)
            listening = next((at - t for at, text in ev if "added service" in text), None)
            conn = next(((at - t, text) for at, text in ev if "br-int<->" in text), None)
            print(f"    restart #{i + 1} (ms after the kill): new vswitchd logging {ms(started)}, "
                  f"br-int controller socket up {ms(listening)}, restart_vswitchd() "
                  f"returned {ms(restarted)}, ovs-ofctl answered {ms(answered)}, first "
                  f"flows {ms(first)}, all {pre} flows {ms(full)}", flush=True)
            print(f"      controller logged the channel loss at "
                  f"{', '.join(ms(a - t) for a in lost_at) or '-'} ms"
                  + (f"; vswitchd: {ms(conn[0])} ms {conn[1][:80]}" if conn else ""),
                  flush=True)
            time.sleep(3.0)

    run_traffic(w, body)
    return (f"{reps} restarts; {pre} flows on hv1 br-int; flows back after "
            f"max {ms(max(back))} ms")


def add_probe_vms(w: World, tag: str, start: int) -> dict[str, Vm]:
    """One new VM per node on n1 (plugged; its NB port is created by the caller)."""
    out = {}
    for j, (name, _) in enumerate(NODES):
        vm_name = f"{tag}{j + 1}"
        out[vm_name] = w.bed.add_vm(w.nodes[name], vm_name, f"fa:16:3e:09:01:{start + j:02x}",
                                    f"10.9.0.{start + j}/24", f"{vm_name}-port",
                                    gateway="10.9.0.1")
    return out


def create_vm_port(nb: NbApi, vm: Vm, chassis: str) -> None:
    nb.create(Port(id=vm.iface_id, topic="demo", name=vm.name, network_id="n1", mac=vm.mac,
                   fixed_ips=(FixedIp(subnet_id="n1-subnet", ip_address=vm.ip),),
                   binding=Binding(kind="chassis", chassis_id=chassis),
                   device_owner="compute:demo", device_id=vm.name))


def s3_nb_down_kept(w: World, outage: float) -> str:
    server = w.db.server
    notes: list[str] = []

    def body(faults: list[tuple[str, float]]) -> None:
        # the same before the fault, for comparison: a VM plugged on hv2, then its port
        base = w.bed.add_vm(w.nodes["hv2"], "c0", "fa:16:3e:09:01:27", "10.9.0.39/24",
                            "c0-port", gateway="10.9.0.1")
        t_base = time.monotonic()
        create_vm_port(w.nb, base, "hv2")
        base_active = wait_active(w.nb, ["c0-port"], 30, since=t_base).get("c0-port")
        notes.append(f"before the fault: create -> ACTIVE {ms(base_active)} ms")
        new = add_probe_vms(w, "c", 40)  # plugged now: their ports come after the outage
        faults.append((f"NB ({server.kind}) stopped, data kept", time.time()))
        server.stop(keep_data=True)
        time.sleep(outage)
        server.start()
        t_back = time.time()
        faults.append(("NB back", t_back))
        t_mono = time.monotonic()
        attempts = 0
        for j, vm in enumerate(new.values()):
            _, n = retry(lambda vm=vm, j=j: create_vm_port(w.nb, vm, NODES[j][0]))
            attempts += n
        created = time.monotonic() - t_mono
        active = wait_active(w.nb, [vm.iface_id for vm in new.values()], 60, since=t_mono)
        pings = []
        for j, vm in enumerate(new.values()):
            peer = w.vms[f"a{(j + 1) % 3 + 1}"]  # a VM on another node
            try:
                pings.append(first_reply(vm, peer.ip, t_mono, timeout=30))
            except TestbedError:
                pings.append(float("inf"))
        per_node = ", ".join(f"{NODES[j][0]} {ms(active.get(vm.iface_id))}"
                             for j, vm in enumerate(new.values()))
        notes.append(f"DB back -> 3 new ports (1/node) created {ms(created)} ms "
                     f"({attempts} attempts), ACTIVE {per_node} ms "
                     f"({len(active)}/3), first pings max {ms(max(pings))} ms")
        print(f"    {notes[-1]}", flush=True)

    run_traffic(w, body)
    return f"NB down {outage:.0f} s; " + "; ".join(notes)


def restorable(nb: NbApi) -> list[Any]:
    """What Neutron would restore: every network, subnet, router and port, as created
    (version and unique keys unset, ports DOWN), in reference order."""
    objs, _ = nb.snapshot()
    order = {"network": 0, "subnet": 1, "router": 2, "port": 3}
    out = []
    for o in sorted((o for o in objs if o.TABLE in order), key=lambda o: order[o.TABLE]):
        o = o.replace(version=0)
        if o.UNIQUE_KEY_NS is not None:
            o = o.replace(unique_key=0)
        if isinstance(o, Port):
            o = o.replace(status="DOWN")
        out.append(o)
    return out


def poll_chassis(w: World, since: float, seen: dict[str, float],
                 stop: threading.Event) -> None:
    """Chassis id -> seconds from ``since`` (monotonic) until its record was back."""
    while not stop.is_set() and len(seen) < len(NODES):
        for name, _ in NODES:
            try:
                if name not in seen and w.nb.get(Chassis, name) is not None:
                    seen[name] = time.monotonic() - since
            except Exception:
                pass
        stop.wait(0.05)


def s4_nb_down_wiped(w: World, outage: float, wait_for: float) -> str:
    server = w.db.server
    notes: list[str] = []
    objects = restorable(w.nb)
    ports = [o.id for o in objects if isinstance(o, Port)]

    def body(faults: list[tuple[str, float]]) -> None:
        faults.append((f"NB ({server.kind}) stopped, data WIPED", time.time()))
        server.stop(keep_data=False)
        time.sleep(outage)
        server.start()
        t_back = time.monotonic()
        faults.append(("NB back EMPTY, objects re-created", time.time()))
        restore = open_nb(w.db.url, root=w.nb.root)  # the operator's tool: a new client
        try:
            attempts = 0
            for o in objects:
                _, n = retry(lambda o=o: restore.create(o))
                attempts += n
        finally:
            restore.driver.close()
        created = time.monotonic() - t_back
        chassis: dict[str, float] = {}  # controllers register their chassis again
        stop = threading.Event()
        watcher = threading.Thread(target=poll_chassis, args=(w, t_back, chassis, stop),
                                   daemon=True)
        watcher.start()
        active = wait_active(w.nb, ports, wait_for, since=t_back)
        stop.set()
        watcher.join()
        worst = max(active.values()) if len(active) == len(ports) else None
        statuses = sorted(p.status for p in w.nb.list(Port) if p.id in ports)
        notes.append(f"{len(objects)} objects re-created {ms(created)} ms after the DB was "
                     f"back ({attempts} attempts); chassis registered again after "
                     + ", ".join(f"{c} {ms(chassis.get(c))}" for c, _ in NODES)
                     + f" ms; re-created ports ACTIVE {len(active)}/{len(ports)}"
                     + (f", all after {ms(worst)} ms" if worst is not None
                        else f" within {wait_for:.0f} s (NB status: "
                        + ", ".join(f"{st} x{statuses.count(st)}"
                                    for st in sorted(set(statuses))) + ")"))
        print(f"    {notes[-1]}", flush=True)
        if worst is None:
            t_r = time.monotonic()
            faults.append(("controllers restarted (SIGTERM + start, one by one)",
                           time.time()))
            for node in w.nodes.values():
                w.dep.kill_controller(node, signal.SIGTERM)
                w.dep.start_controller(node)
            active = wait_active(w.nb, ports, 60, since=t_r)
            worst = max(active.values()) if len(active) == len(ports) else None
            notes.append(f"after restarting the 3 controllers: ACTIVE "
                         f"{len(active)}/{len(ports)}"
                         + (f", all {ms(worst)} ms after the first restart"
                            if worst is not None else " within 60 s"))
            print(f"    {notes[-1]}", flush=True)

    run_traffic(w, body, tail=5.0)
    return f"NB down {outage:.0f} s, wiped; " + "; ".join(notes)


class WarningCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1




def s5_leader_kill(w: World, count: int) -> str:
    names = [n for n, _ in NODES]
    w.dep.network("bulk", "vxlan", 903, "10.11.0.0/16")
    ids = [f"bulk{i}" for i in range(count)]
    for k, name in enumerate(names):
        plug(w.nodes[name], ids[k::3], start=k * count)
    kill_at = count // 3
    notes: list[str] = []
    killed: list[DbServer] = []

    def body(faults: list[tuple[str, float]]) -> None:
        warned = WarningCount()
        logging.getLogger("dragonflow").addHandler(warned)
        lat: list[float] = []
        first_err: dict[str, str] = {}
        failed: list[str] = []
        applied_anyway = 0
        new_leader: list[float] = []
        t_first = time.monotonic()
        seen: dict[str, float] = {}  # polled while the creates run (ACTIVE times)
        poller = threading.Thread(
            target=lambda: seen.update(wait_active(w.nb, ids, 150, poll=0.2, since=t_first)),
            daemon=True)
        poller.start()
        done: dict[str, float] = {}  # port -> its create returned (since t_first)
        for i, pid in enumerate(ids):
            if i == kill_at:
                leader = w.db.leader()
                if leader is None:
                    notes.append("no leader found to kill")
                else:
                    faults.append((f"etcd leader {leader.name} killed", time.time()))
                    t_kill = time.monotonic()
                    leader.kill()
                    killed.append(leader)

                    def watch_leader(t_kill: float = t_kill) -> None:
                        while time.monotonic() - t_kill < 30:
                            if w.db.leader() is not None:
                                new_leader.append(time.monotonic() - t_kill)
                                return
                            time.sleep(0.1)

                    threading.Thread(target=watch_leader, daemon=True).start()
            host = 10 + i
            port = Port(id=pid, topic="demo", network_id="bulk",
                        mac=f"fa:16:3e:b0:{i // 256:02x}:{i % 256:02x}",
                        fixed_ips=(FixedIp(subnet_id="bulk-subnet",
                                           ip_address=f"10.11.{host // 256}.{host % 256}"),),
                        binding=Binding(kind="chassis", chassis_id=names[i % 3]),
                        device_owner="compute:bench")
            t = time.monotonic()
            for _attempt in range(20):
                try:
                    w.nb.create(port)
                    break
                except Exception as e:  # a timeout may or may not have been applied
                    first_err.setdefault(pid, f"{type(e).__name__}: {str(e)[:100]}")
                    try:
                        if w.nb.get(Port, pid) is not None:
                            applied_anyway += 1
                            break
                    except Exception:
                        pass
                    time.sleep(0.2)
            else:
                failed.append(pid)
            lat.append(time.monotonic() - t)
            done[pid] = time.monotonic() - t_first
        creates = time.monotonic() - t_first
        logging.getLogger("dragonflow").removeHandler(warned)
        poller.join()
        active = seen
        worst = max(active.values()) if active else None
        to_active = sorted(active[p] - done[p] for p in active if p in done)
        notes.append(
            f"{count} creates in {creates:.1f} s (slowest {ms(max(lat))} ms, "
            f"{sum(x > 1 for x in lat)} over 1 s); create errors raised to the client: "
            f"{len(first_err)} ({applied_anyway} had been applied, {len(failed)} failed for "
            f"good); NbApi warnings in the client: {warned.count}; new leader seen "
            f"{ms(new_leader[0]) if new_leader else '-'} ms after the kill; ACTIVE "
            f"{len(active)}/{count}, the last {ms(worst)} ms after the first create; "
            f"create returned -> ACTIVE (polled every 200 ms) p50 "
            f"{ms(to_active[len(to_active) // 2] if to_active else None)} ms, max "
            f"{ms(to_active[-1] if to_active else None)} ms")
        print(f"    {notes[-1]}", flush=True)
        for pid, err in list(first_err.items())[:3]:
            print(f"      e.g. {pid}: {err}")

    try:
        run_traffic(w, body)
    finally:
        for m in killed:  # the member comes back with its data (not measured)
            try:
                m.launch()
            except RuntimeError:
                pass
    return "; ".join(notes)


def s6_storm(w: World, seconds: float) -> str:
    hv1 = w.nodes["hv1"]
    attacker = w.dep.vm(hv1, "s", "n1", "fa:16:3e:09:00:66", "10.9.0.66", gateway="10.9.0.1")
    wait_active(w.nb, ["s-port"], 30)
    router = w.nb.get_or_raise(Router, "r1")
    rmac = next(p.mac for p in router.ports if p.network_id == "n1")
    notes: list[str] = []

    def body(faults: list[tuple[str, float]]) -> None:
        pids = {n: w.dep.processes[n].pid for n in w.nodes}
        lines0 = {n: len(log_lines(node)) for n, node in w.nodes.items()}
        cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
        faults.append(("storm from s on hv1", time.time()))
        t = time.monotonic()
        storm = subprocess.Popen(
            ["ip", "netns", "exec", attacker.netns, sys.executable, "-c", STORM,
             attacker.mac, rmac, str(seconds)], stdout=subprocess.PIPE, text=True)
        try:
            out, _ = storm.communicate(timeout=seconds + 60)
        finally:
            if storm.poll() is None:
                storm.kill()
                storm.wait()
        wall = time.monotonic() - t
        frames = int(out.strip() or 0)
        new_lines = {n: log_lines(node)[lines0[n]:] for n, node in w.nodes.items()}
        cpu = {n: (cpu_seconds(p) - cpu0[n]) / wall * 100 for n, p in pids.items()}
        notes.append(f"{frames} frames in {seconds:.0f} s; controller log lines during it "
                     + ", ".join(f"{n} {len(v)}" for n, v in new_lines.items())
                     + "; controller CPU " + ", ".join(f"{n} {c:.0f}%" for n, c in cpu.items()))
        print(f"    {notes[-1]}", flush=True)
        for line in new_lines["hv1"][:3]:
            print(f"      hv1: {line[:140]}")

    run_traffic(w, body)
    return "; ".join(notes)


# --- main ---------------------------------------------------------------------------------
def run(n: int, kind: str, args: argparse.Namespace, rows: list[Row]) -> None:
    names = {1: "controller kill -9 loop", 2: "ovs-vswitchd restart", 3: "NB down, data kept",
             4: "NB down, restarted empty", 5: "etcd leader kill in creates",
             6: "packet-in storm"}
    quick = args.quick
    outage = 10.0 if quick else 20.0
    label = f"{n}-{kind}"
    print(f"\n== scenario {n}: {names[n]} (NB: {kind if n != 5 else '3-member etcd'})",
          flush=True)
    db = Db.etcd_cluster(3) if n == 5 else Db.single(kind)
    try:
        with world(label, db, args.logs) as w:
            if n == 1:
                extra = s1_controller_kill(w, 2 if quick else 5)
            elif n == 2:
                extra = s2_vswitchd_restart(w, 1 if quick else 3)
            elif n == 3:
                extra = s3_nb_down_kept(w, outage)
            elif n == 4:
                extra = s4_nb_down_wiped(w, outage, 15.0 if quick else 30.0)
            elif n == 5:
                extra = s5_leader_kill(w, 60 if quick else 200)
            else:
                extra = s6_storm(w, 5.0 if quick else 10.0)
            figs = w.figs
            assert figs is not None
    finally:
        db.close()
    rows.append(Row(names[n], "etcd x3" if n == 5 else kind, figs, extra))
    print(f"  => lost {figs.lost}/{figs.sent}, longest outage {ms(figs.outage)} ms, "
          f"recovered after {ms(figs.worst_recovery)} ms; {extra}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=("etcd", "redis"), default=None,
                    help="NB server (default: etcd; scenarios 3 and 4 run on both)")
    ap.add_argument("--only", default="1,2,3,4,5,6", help="scenarios, e.g. 1,3")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, shorter")
    ap.add_argument("--logs", type=Path, default=None,
                    help="copy every node's controller and vswitchd log here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="  %(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")  # this process's NB client: shown, with a time
    missing = missing_prerequisites() + [b for b in ("etcd", "etcdctl", "redis-server")
                                         if shutil.which(b) is None]
    if missing:
        sys.exit(f"cannot run: missing {', '.join(missing)}")
    rows: list[Row] = []
    for n in sorted({int(x) for x in args.only.split(",") if x.strip()}):
        kinds = [args.db] if args.db else (["etcd", "redis"] if n in (3, 4) else ["etcd"])
        for kind in kinds:
            try:
                run(n, kind, args, rows)
            except Exception as e:  # one broken scenario does not hide the others' figures
                print(f"  scenario {n} on {kind} FAILED: {type(e).__name__}: {e}", flush=True)
    print(f"\nfault bench: 3 nodes, 8 probe streams at {INTERVAL * 1000:.0f} ms"
          f"{' (--quick)' if args.quick else ''}")
    print(f"{'scenario':<32}{'db':<8}{'lost/sent':>13}{'outage ms':>11}{'recover ms':>12}")
    for r in rows:
        f = r.figs
        print(f"{r.scenario:<32}{r.db:<8}{f'{f.lost}/{f.sent}':>13}{ms(f.outage):>11}"
              f"{ms(f.worst_recovery):>12}")
        print(f"    {r.extra}")
    print("  outage: longest run of lost probes, first lost send -> next reply (0: none "
          "lost); recover: fault -> first reply after the last lost probe, max over "
          "streams and repetitions ('-': never within the window)")


if __name__ == "__main__":
    main()
