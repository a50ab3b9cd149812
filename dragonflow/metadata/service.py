"""One chassis' metadata service: the interface (iface.py) and the proxy (proxy.py).

``df-metadata`` runs it as a process of its own (dragonflow/cli/metadata.py); an embedded
deployment (one process, memory:// NB: ``df demo``, in-process test beds) runs it on a
thread of its own with ``start_thread()``. Either way it is not part of the controller: the
controller only steers requests to its interface, and a controller restart leaves it be.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field

from dragonflow.db.nbapi import NbApi
from dragonflow.metadata import iface
from dragonflow.metadata.datapath import DEFAULT_INTERFACE
from dragonflow.metadata.proxy import MetadataProxy, PortDirectory, ProxyConfig, serve
from dragonflow.ovs.ovsdb import Ovsdb

LOG = logging.getLogger(__name__)


@dataclass
class ServiceConfig:
    ovsdb_connection: str
    bridge: str = "br-int"
    interface: str = DEFAULT_INTERFACE
    proxy: ProxyConfig = field(default_factory=ProxyConfig)  # proxy.netns: where it all is
    upkeep_every: float = 5.0  # seconds between checks of the interface


class MetadataService:
    def __init__(self, cfg: ServiceConfig, nb: NbApi) -> None:
        self.cfg = cfg
        self.nb = nb
        self.db: Ovsdb | None = None
        self.ofport: int | None = None
        self.proxy: MetadataProxy | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()
        self.error: BaseException | None = None

    def setup(self, wait: float = 60.0) -> int:
        """Connect to OVSDB, make the interface (once the bridge exists) and its kernel side;
        returns its ofport. Raises OvsdbError / iface.InterfaceError."""
        self.db = Ovsdb(self.cfg.ovsdb_connection)
        self.ofport = iface.ensure_ovs_port(self.db, self.cfg.bridge, self.cfg.interface,
                                            wait=wait)
        iface.ensure_kernel_side(self.cfg.interface, self.cfg.proxy.netns)
        db = self.db

        def local_ids() -> list[str]:
            return [c.iface_id for c in db.interfaces().values()
                    if c.iface_id and c.ofport is not None and c.ofport > 0]

        self.proxy = MetadataProxy(self.cfg.proxy, self.nb, PortDirectory(self.nb, local_ids))
        return self.ofport

    def upkeep(self) -> None:
        """ovs-vswitchd restarted, someone deleted the port or the address: repair."""
        assert self.db is not None
        iface.ensure_ovs_port(self.db, self.cfg.bridge, self.cfg.interface, wait=5.0)
        done = iface.ensure_kernel_side(self.cfg.interface, self.cfg.proxy.netns)
        if done:
            LOG.warning("metadata interface %s repaired: %s", self.cfg.interface,
                        ", ".join(done))

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (after ``setup()``)."""
        assert self.proxy is not None
        self._loop, self._stop = asyncio.get_running_loop(), stop
        await serve(self.proxy, stop, self.upkeep, self.cfg.upkeep_every,
                    on_listening=self.listening.set)

    # --- on a thread (embedded deployments) --------------------------------------------
    def start_thread(self, timeout: float = 30.0) -> None:
        """``setup()`` here, then serve on a thread of its own; returns when it listens."""
        self.setup()

        def main() -> None:
            try:
                asyncio.run(self.run(asyncio.Event()))
            except BaseException as e:  # reported by start_thread / seen in .error
                self.error = e
                LOG.exception("metadata service on %s stopped", self.cfg.interface)
                self.listening.set()

        self._thread = threading.Thread(target=main, name=f"df-metadata-{self.cfg.interface}",
                                        daemon=True)
        self._thread.start()
        if not self.listening.wait(timeout) or self.error is not None:
            raise RuntimeError(f"metadata service did not start: {self.error!r}")

    def stop(self) -> None:
        """Stop serving (thread mode) and close the OVSDB connection; the interface stays
        (a new service takes it over)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.close()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
