"""Shared helpers of the DB driver tests."""

from __future__ import annotations

import queue
import threading
import time

from dragonflow.db.driver import Event


class Collector:
    """Collects a watch's events; ``wait_for(n)`` blocks until n arrived (or times out)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.compacted: queue.Queue[int] = queue.Queue()
        self._cond = threading.Condition()

    def on_event(self, ev: Event) -> None:
        with self._cond:
            self.events.append(ev)
            self._cond.notify_all()

    def on_compacted(self, rev: int) -> None:
        self.compacted.put(rev)

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.events) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.events)
