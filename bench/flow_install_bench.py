"""Flow installation speed: template encoder + OfChannel bundle vs ovs-ofctl vs plain os-ken.

Run as root: ``.venv/bin/python bench/flow_install_bench.py [--flows 10000] [--repeat 3]``.
Starts its own private ovs-vswitchd (tests/fixtures/ovs_bridge.py) and stops it at the end.
Every install is timed to its barrier reply and its flow count is checked with ovs-ofctl.
Prints: encode rate, os-ken OFPFlowMod build+serialize rate, install rate via OfChannel,
the same flows via ``ovs-ofctl -O OpenFlow13 --bundle add-flows``, resync and small-change
latencies, and the ratios between them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures

from dragonflow.ovs import encode  # noqa: E402
from dragonflow.ovs.flows import OfFlow, Output  # noqa: E402
from dragonflow.ovs.ofchannel import OfChannel  # noqa: E402
from tests.fixtures.ovs_bridge import (  # noqa: E402
    OvsBridgeEnv,
    missing_requirements,
    realistic_flows,
)

GOAL = 50_000  # flow-mods per second, to barrier


def best_of(repeat: int, run: Callable[[], float]) -> tuple[float, float]:
    """(best, median) seconds of ``repeat`` runs of ``run`` (which returns seconds)."""
    times = [run() for _ in range(repeat)]
    return min(times), statistics.median(times)


def line(label: str, count: int, seconds: float, extra: str = "") -> float:
    rate = count / seconds
    print(f"  {label:<48} {rate:>11,.0f} flows/s  ({seconds * 1e3:8.1f} ms for {count:,})"
          f"{extra}")
    return rate


def bench_encode(flows: list[OfFlow], repeat: int) -> tuple[float, float, float]:
    """Seconds: cold plain (templates and value caches filled on the way), warm plain,
    warm bundle-wrapped."""
    start = time.perf_counter()
    encode.encode_flow_mods(flows, "add", 1)
    cold = time.perf_counter() - start

    def plain() -> float:
        start = time.perf_counter()
        encode.encode_flow_mods(flows, "add", 1)
        return time.perf_counter() - start

    ops = [("add", f) for f in flows]

    def bundled() -> float:
        start = time.perf_counter()
        encode.encode_bundle_adds(ops, 1, 1)  # type: ignore[arg-type]
        return time.perf_counter() - start

    return cold, best_of(repeat, plain)[0], best_of(repeat, bundled)[0]


def bench_osken(flows: list[OfFlow]) -> float:
    sample = flows[: min(len(flows), 3000)]
    start = time.perf_counter()
    for i, f in enumerate(sample):
        msg = encode.osken_flow_mod(f, "add", i)
        msg.serialize()
    return (time.perf_counter() - start) * len(flows) / len(sample)


def bench_install(env: OvsBridgeEnv, channel: OfChannel, flows: list[OfFlow],
                  repeat: int) -> float:
    ops = [("add", f) for f in flows]

    def once() -> float:
        env.reset_flows()
        start = time.perf_counter()
        channel.install(ops)  # type: ignore[arg-type]
        took = time.perf_counter() - start
        assert env.flow_count() == len(flows), "flow count after install"
        return took

    return best_of(repeat, once)[0]


def bench_ofctl(env: OvsBridgeEnv, flows: list[OfFlow], repeat: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".flows") as f:
        f.write("\n".join(str(flow) for flow in flows) + "\n")
        f.flush()
        cmd = ["ovs-ofctl", "-O", "OpenFlow13", "--bundle", "add-flows", env.bridge, f.name]

        def once() -> float:
            env.reset_flows()
            start = time.perf_counter()
            subprocess.run(cmd, env=env.env, check=True, capture_output=True)
            took = time.perf_counter() - start
            assert env.flow_count() == len(flows), "flow count after ovs-ofctl"
            return took

        return best_of(repeat, once)[0]


def bench_resync(env: OvsBridgeEnv, channel: OfChannel, flows: list[OfFlow]) -> None:
    changed = list(flows)
    for i in range(0, len(changed), 100):
        changed[i] = replace(changed[i], actions=(Output(4000 + i % 7),), goto=None,
                             write_metadata=None)
    channel.install([("add", f) for f in flows], replace_all=True)
    start = time.perf_counter()
    channel.install([("add", f) for f in changed], replace_all=True)
    took = time.perf_counter() - start
    assert env.flow_count() == len(flows)
    line("resync: [delete-all + all flows], 1% changed", len(flows), took)
    diff = [("add", f) for i, f in enumerate(flows) if i % 100 == 0]
    start = time.perf_counter()
    channel.install(diff)  # type: ignore[arg-type]
    took = time.perf_counter() - start
    print(f"  {'resync: bundle of only the changed 1%':<48} {took * 1e3:>11.2f} ms  "
          f"({len(diff)} flows)")


def bench_small(channel: OfChannel) -> None:
    for size in (1, 10, 100):
        ops = [("add", f) for f in realistic_flows(size, start=900_000)]
        times = []
        for _ in range(30):
            start = time.perf_counter()
            channel.install(ops)  # type: ignore[arg-type]
            times.append(time.perf_counter() - start)
        print(f"  {f'small change: {size} flow(s), bundle to barrier':<48} "
              f"{statistics.median(times) * 1e3:>11.2f} ms  (median of 30)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    missing = missing_requirements()
    if missing:
        print("cannot run: missing " + ", ".join(missing), file=sys.stderr)
        return 2
    flows = realistic_flows(args.flows)
    size = len(encode.encode_flow_mods(flows, "add", 1)) / len(flows)
    print(f"{len(flows):,} realistic flows, {len({f.shape for f in flows})} shapes, "
          f"{size:.0f} bytes per flow-mod on average")

    print("encoding (no switch):")
    cold, warm, bundled = bench_encode(flows, args.repeat)
    line("template encoder, cold (new shapes, empty caches)", len(flows), cold)
    encode_rate = line("template encoder, warm", len(flows), warm)
    line("template encoder, warm, bundle-wrapped", len(flows), bundled)
    osken_rate = line("os-ken OFPFlowMod objects + serialize()", len(flows),
                      bench_osken(flows))

    print("installing into ovs-vswitchd (timed to barrier reply, count verified):")
    with OvsBridgeEnv() as env:
        channel = OfChannel(env.controller_target)
        channel.connect()
        try:
            install_rate = line("OfChannel.install: one bundle", len(flows),
                                bench_install(env, channel, flows, args.repeat))
            ofctl_rate = line("ovs-ofctl -O OpenFlow13 --bundle add-flows", len(flows),
                              bench_ofctl(env, flows, args.repeat))
            bench_resync(env, channel, flows)
            bench_small(channel)
        finally:
            channel.close()

    print("ratios:")
    print(f"  template encoder / os-ken objects        {encode_rate / osken_rate:6.1f} x")
    print(f"  OfChannel install / ovs-ofctl --bundle   {install_rate / ofctl_rate:6.2f} x")
    print(f"  OfChannel install / goal {GOAL:,}/s       {install_rate / GOAL:6.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
