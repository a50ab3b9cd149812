"""NB benchmark: NbApi write rate vs the raw client, and change-stream latency.

Run from the repository root: ``.venv/bin/python bench/nb_bench.py`` (``--help`` for sizes).
It starts its own etcd (data dir on tmpfs when /dev/shm is usable, as the test fixture does),
redis (no persistence) and ovsdb-server (DF_NB on tmpfs), and prints, per driver (memory,
etcd, redis, ovsdb):

* NB writes/s of a mixed workload through NbApi: create networks, one subnet each, ports
  (one fixed IP, spread over the networks), then update every port once;
* the raw client doing the same number of single-key puts of the same encoded objects in the
  same run (aetcd ``put`` loop, redis-py ``SET``, a dict insert under a lock, one ovsdb
  ``transact`` inserting a row) and the ratio;
* change-stream latency p50/p99 for 1, 10 and 100 Subscriptions: from the moment the
  driver commit was sent to each subscriber's ``on_change`` (so it includes the commit's own
  round trip). Writes are paced closed-loop (the next write waits until every subscriber got
  the previous one), so the figure is delivery latency, not queueing.

Goals (from the issue): NB within 1.5x of the raw client; memory >= 50k writes/s.
``--profile DRIVER`` runs the NB workload of that driver under pyinstrument (if installed)
and prints where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dragonflow.db.connect import open_driver  # noqa: E402
from dragonflow.db.driver import KV, Check, Driver, Event, Op, Watch  # noqa: E402
from dragonflow.db.drivers.memory import MemoryDriver  # noqa: E402
from dragonflow.db.nbapi import NbApi, encode  # noqa: E402
from dragonflow.db.stream import Change, Subscription  # noqa: E402
from dragonflow.model import FixedIp, NbObject, Network, Port, Subnet  # noqa: E402
from tests.fixtures.etcd_server import EtcdServer  # noqa: E402
from tests.fixtures.ovsdb_server import OvsdbServer  # noqa: E402
from tests.fixtures.redis_server import RedisServer  # noqa: E402

PORTS_PER_NET = 100
SUB_COUNTS = (1, 10, 100)


# --- workload --------------------------------------------------------------------------------
def workload(ports: int) -> tuple[list[Network], list[Subnet], list[Port]]:
    nets_n = max(1, -(-ports // PORTS_PER_NET))
    nets = [Network(id=f"net{i}", topic=f"p{i % 7}", name=f"net-{i}", network_type="vxlan",
                    segmentation_id=1000 + i) for i in range(nets_n)]
    cidrs = [ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24") for i in range(nets_n)]
    subs = [Subnet(id=f"sub{i}", topic=n.topic, network_id=n.id, cidr=cidrs[i],
                   gateway_ip=cidrs[i][1]) for i, n in enumerate(nets)]
    out = []
    for j in range(ports):
        i = j % nets_n
        ip = cidrs[i][10 + j // nets_n]
        out.append(Port(id=f"port{j}", topic=nets[i].topic, name=f"vm-{j}",
                        network_id=nets[i].id, mac=f"fa:16:3e:{j >> 16 & 255:02x}:"
                        f"{j >> 8 & 255:02x}:{j & 255:02x}",
                        fixed_ips=(FixedIp(subnet_id=subs[i].id, ip_address=ip),),
                        device_owner="compute:nova", device_id=f"vm{j}"))
    return nets, subs, out


def run_nb_writes(nb: NbApi, ports: int) -> tuple[int, float, list[bytes]]:
    """(writes, seconds, encoded objects) of the mixed workload."""
    nets, subs, port_objs = workload(ports)
    payloads: list[bytes] = []
    t0 = time.perf_counter()
    for obj in [*nets, *subs]:
        nb.create(obj)
    stored = [nb.create(p) for p in port_objs]
    for p in stored:
        nb.update(p.replace(status="ACTIVE"))
    elapsed = time.perf_counter() - t0
    payloads = [encode(o) for o in [*nets, *subs, *stored, *stored]]
    return len(payloads), elapsed, payloads


# --- raw clients -----------------------------------------------------------------------------
def raw_memory(payloads: list[bytes]) -> float:
    store: dict[str, bytes] = {}
    lock = threading.Lock()
    t0 = time.perf_counter()
    for i, v in enumerate(payloads):
        with lock:
            store[f"/raw/{i}"] = v
    return time.perf_counter() - t0


def raw_etcd(port: int, payloads: list[bytes]) -> float:
    import aetcd

    async def go() -> float:
        async with aetcd.Client(host="127.0.0.1", port=port, timeout=3) as client:
            await client.put(b"/raw/warmup", b"x")
            t0 = time.perf_counter()
            for i, v in enumerate(payloads):
                await client.put(f"/raw/{i}".encode(), v)
            return time.perf_counter() - t0

    return asyncio.run(go())


def raw_redis(port: int, payloads: list[bytes]) -> float:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=3)
    try:
        client.ping()
        t0 = time.perf_counter()
        for i, v in enumerate(payloads):
            client.set(f"raw:{i}", v)
        return time.perf_counter() - t0
    finally:
        client.close()


# --- change-stream latency -------------------------------------------------------------------
class MeteredDriver:
    """Delegates to a driver; counts calls by method and remembers when each commit was sent,
    by its revision."""

    def __init__(self, inner: Driver) -> None:
        self.inner = inner
        self.sent: dict[int, float] = {}
        self.calls: Counter[str] = Counter()

    def commit(self, checks: Sequence[Check], ops: Sequence[Op]) -> int:
        self.calls["commit"] += 1
        t = time.perf_counter()
        rev = self.inner.commit(checks, ops)
        self.sent[rev] = t
        return rev

    def get(self, key: str) -> KV | None:
        self.calls["get"] += 1
        return self.inner.get(key)

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        self.calls["get_prefix"] += 1
        return self.inner.get_prefix(prefix)

    def increment(self, key: str, amount: int = 1) -> int:
        self.calls["increment"] += 1
        return self.inner.increment(key, amount)

    def current_revision(self) -> int:
        return self.inner.current_revision()

    def watch(self, prefix: str, start_revision: int, on_event: Callable[[Event], None],
              on_compacted: Callable[[int], None]) -> Watch:
        return self.inner.watch(prefix, start_revision, on_event, on_compacted)

    def compact(self, revision: int) -> None:
        self.inner.compact(revision)

    def close(self) -> None:
        self.inner.close()


@dataclass
class _Deliveries:
    cond: threading.Condition = field(default_factory=threading.Condition)
    times: dict[int, list[float]] = field(default_factory=dict)  # revision -> delivery times

    def on_change(self, ch: Change) -> None:
        now = time.perf_counter()
        with self.cond:
            self.times.setdefault(ch.revision, []).append(now)
            self.cond.notify_all()

    def wait(self, revision: int, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.times.get(revision, ())) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"revision {revision}: {len(self.times.get(revision, ()))}"
                                       f" of {count} subscribers got it")
                self.cond.wait(left)


def _no_resync(objs: list[NbObject], rev: int) -> None:
    raise RuntimeError(f"unexpected resync at revision {rev} during the latency run")


def latency(nb: NbApi, subscribers: int, writes: int) -> list[float]:
    """Delivery latencies in ms: ``writes`` updates of one port, each to every subscriber,
    measured from the moment the commit was sent."""
    timed = MeteredDriver(nb.driver)
    tnb = NbApi(timed, root=nb.root)
    port = tnb.get_or_raise(Port, "port0")
    got = _Deliveries()
    start = tnb.revision() + 1
    subs = [Subscription(tnb, got.on_change, _no_resync, from_revision=start)
            for _ in range(subscribers)]
    samples: list[float] = []
    try:
        for _ in range(writes):
            port = tnb.update(port.replace(name=f"v{port.version}"))
            rev = max(timed.sent)
            got.wait(rev, subscribers)
            with got.cond:
                samples += [(t - timed.sent[rev]) * 1000 for t in got.times[rev]]
    finally:
        with ThreadPoolExecutor(max_workers=32) as pool:  # a cancel may wait for a read
            list(pool.map(Subscription.close, subs))
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- one driver ------------------------------------------------------------------------------
@dataclass
class Result:
    driver: str
    writes: int
    nb_rate: float
    raw_rate: float
    lat: dict[int, tuple[float, float, int]]  # subscribers -> (p50, p99, samples)
    calls: dict[str, float]  # driver calls per NB write, by method


def bench_driver(name: str, nb: NbApi, ports: int, raw: Callable[[list[bytes]], float],
                 lat_writes: dict[int, int]) -> Result:
    metered = MeteredDriver(nb.driver)
    writes, nb_s, payloads = run_nb_writes(NbApi(metered, root=nb.root), ports)
    raw_s = raw(payloads)
    lat = {}
    for n in SUB_COUNTS:
        samples = latency(nb, n, lat_writes[n])
        lat[n] = (statistics.median(samples), pct(samples, 0.99), len(samples))
    calls = {k: v / writes for k, v in sorted(metered.calls.items())}
    return Result(name, writes, writes / nb_s, len(payloads) / raw_s, lat, calls)


@contextmanager
def servers(names: set[str]) -> Iterator[dict[str, Any]]:
    """The servers the named drivers need (etcd, redis, ovsdb), stopped afterwards."""
    kinds = {"etcd": EtcdServer, "redis": RedisServer, "ovsdb": OvsdbServer}
    started: dict[str, Any] = {}
    try:
        for name in sorted(names & set(kinds)):
            started[name] = kinds[name]().start()
        yield started
    finally:
        for srv in started.values():
            srv.stop()


def open_nb(name: str, srv: dict[str, Any]) -> NbApi:
    root = f"/bench{uuid.uuid4().hex[:8]}/"
    if name == "memory":
        return NbApi(MemoryDriver(), root=root)
    if name == "redis":
        return NbApi(open_driver(f"{srv['redis'].url}/bench"), root=root)
    return NbApi(open_driver(srv[name].url), root=root)


def raw_ovsdb(url: str, payloads: list[bytes]) -> float:
    """ovsdb-server's own rate: one transaction per payload inserting a DF_NB Data row, over
    the OVS JSON-RPC library the driver uses (no read first, no log row, no guard)."""
    from dragonflow.db.drivers.ovsdb import DB, _Rpc, parse_remotes

    rpc = _Rpc(parse_remotes(url), timeout=3.0)
    try:
        t0 = time.perf_counter()
        for i, v in enumerate(payloads):
            rpc.call("transact", [DB, {"op": "insert", "table": "Data", "row": {
                "key": f"/raw/{i}", "value": v.decode(), "b64": False, "rev": 0}}])
        return time.perf_counter() - t0
    finally:
        rpc.close()


def raw_for(name: str, srv: dict[str, Any]) -> Callable[[list[bytes]], float]:
    if name == "memory":
        return raw_memory
    if name == "etcd":
        return lambda p: raw_etcd(srv["etcd"].port, p)
    if name == "ovsdb":
        return lambda p: raw_ovsdb(srv["ovsdb"].url, p)
    return lambda p: raw_redis(srv["redis"].port, p)


def report(results: list[Result]) -> str:
    lines = ["driver  NB writes  NB w/s   raw puts/s  raw/NB  "
             + "  ".join(f"lat{n:<3} p50/p99 ms" for n in SUB_COUNTS)]
    for r in results:
        lat = "  ".join(f"{r.lat[n][0]:6.2f}/{r.lat[n][1]:6.2f}  " for n in SUB_COUNTS)
        lines.append(f"{r.driver:<7} {r.writes:>9} {r.nb_rate:>8.0f} {r.raw_rate:>11.0f} "
                     f"{r.raw_rate / r.nb_rate:>6.1f}x  {lat}")
    lines.append("")
    for r in results:
        per = ", ".join(f"{k} {v:.2f}" for k, v in r.calls.items())
        lines.append(f"{r.driver}: driver calls per NB write: {per} "
                     f"(total {sum(r.calls.values()):.1f}; the raw client makes 1)")
    lines.append("")
    for r in results:
        ok = r.raw_rate / r.nb_rate <= 1.5
        lines.append(f"goal {r.driver}: NB within 1.5x of raw: {'met' if ok else 'NOT met'} "
                     f"({r.raw_rate / r.nb_rate:.1f}x)")
        if r.driver == "memory":
            lines.append(f"goal memory: >= 50k NB writes/s: "
                         f"{'met' if r.nb_rate >= 50_000 else 'NOT met'} ({r.nb_rate:.0f}/s)")
    return "\n".join(lines)


def profile(name: str, ports: int) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("--profile needs pyinstrument: .venv/bin/pip install pyinstrument")
    with servers({name}) as srv:
        nb = open_nb(name, srv)
        try:
            profiler = Profiler(interval=0.0005)
            profiler.start()
            writes, secs, _ = run_nb_writes(nb, ports)
            profiler.stop()
        finally:
            nb.driver.close()
    print(f"{name}: {writes} NB writes in {secs:.2f} s ({writes / secs:.0f}/s, profiled)")
    print(profiler.output_text(unicode=False, color=False, show_all=False))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drivers", default="memory,etcd,redis,ovsdb",
                   help="comma-separated subset of memory,etcd,redis,ovsdb")
    p.add_argument("--memory-ports", type=int, default=10_000,
                   help="ports of the memory workload (writes ~= 2x ports)")
    p.add_argument("--server-ports", type=int, default=1_000,
                   help="ports of the etcd, redis and ovsdb workloads")
    p.add_argument("--latency-writes", type=int, default=200,
                   help="writes per latency run with 1 and 10 subscribers (a quarter of it "
                        "with 100)")
    p.add_argument("--profile", choices=("memory", "etcd", "redis", "ovsdb"),
                   help="only profile this driver's NB workload with pyinstrument")
    args = p.parse_args(argv)
    if args.profile:
        ports = args.memory_ports if args.profile == "memory" else args.server_ports
        profile(args.profile, ports)
        return 0
    names = [n.strip() for n in args.drivers.split(",") if n.strip()]
    lat_writes = {1: args.latency_writes, 10: args.latency_writes,
                  100: max(10, args.latency_writes // 4)}
    results = []
    t0 = time.monotonic()
    with servers(set(names)) as srv:
        for name in names:
            nb = open_nb(name, srv)
            try:
                ports = args.memory_ports if name == "memory" else args.server_ports
                results.append(bench_driver(name, nb, ports, raw_for(name, srv), lat_writes))
            finally:
                nb.driver.close()
            print(f"[{name} done after {time.monotonic() - t0:.1f} s]", file=sys.stderr)
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
