"""What a packet-in handler returns, and the rate limiter handlers share.

An app whose stage is declared ``punt=True`` handles the packet-ins of that stage:
``app.packet_in(topo, stage, pin) -> Answer`` (frames to send out of an ofport, frames to
re-inject at table 0, frames to replay, dependency keys it touched, e.g. reactive L3
learning a destination);
a stage whose flows have timeouts gets their expiry: ``app.flow_removed(topo, stage, msg)
-> touched keys``. Handlers run on the controller loop; they must never raise on a bad
packet (the controller logs and drops anything they raise, and goes on).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dragonflow.pipeline.topology import DepKey


@dataclass
class Answer:
    frames: list[tuple[int, bytes]] = field(default_factory=list)  # (out ofport, frame)
    reinject: list[tuple[int, bytes]] = field(default_factory=list)  # (in ofport, frame)
    # (in ofport, frame) through the pipeline UNflagged, as if it arrived now: only for a
    # frame that never went through the flows of its port (held before they existed)
    replay: list[tuple[int, bytes]] = field(default_factory=list)
    touched: set[DepKey] = field(default_factory=set)
    # (NB table, id, status) an app reports for objects it serves (e.g. floating IPs)
    statuses: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self) -> bool:
        now = self.clock()
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
