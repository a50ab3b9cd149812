"""Backends for the driver conformance suites: memory, and real etcd / redis servers.

Every test gets its own key namespace (etcd: a unique key prefix; redis: a unique namespace
in the url path; memory: a fresh instance), so tests never see each other's data. A backend
can hand out a second driver that reaches the server through a TCP proxy, whose connections
the test can cut (``sever``) to prove the change stream loses nothing. A backend may carry
an ``NbSecurity`` (TLS files, credentials) for servers that need one (``etcds://``,
``rediss://`` urls); its proxied drivers keep the url's scheme, TLS passes through the proxy.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dragonflow.db.driver import Driver
from dragonflow.db.drivers.memory import MemoryDriver
from dragonflow.db.security import NbSecurity


class Backend:
    def __init__(self, name: str, url: str | None = None, host_port: tuple[str, int] | None = None,
                 security: NbSecurity | None = None):
        self.name = name
        self.security = security
        self.prefix = f"/t{uuid.uuid4().hex[:10]}/"
        self._url = url
        self._host_port = host_port
        self._drivers: list[Driver] = []
        self._proxies: list = []
        self._memory: MemoryDriver | None = None
        self.ns = f"t{uuid.uuid4().hex[:10]}"

    def _make(self, url: str) -> Driver:
        drv: Driver
        if self.name == "etcd":
            from dragonflow.db.drivers.etcd import EtcdDriver

            drv = EtcdDriver(url, security=self.security)
        elif self.name == "redis":
            from dragonflow.db.drivers.redis import RedisDriver

            drv = RedisDriver(f"{url}/{self.ns}", security=self.security)
        elif self.name == "ovsdb":
            from dragonflow.db.drivers.ovsdb import OvsdbDriver

            drv = OvsdbDriver(url, security=self.security)
        else:
            raise AssertionError(self.name)
        self._drivers.append(drv)
        return drv

    def driver(self) -> Driver:
        if self.name == "memory":
            if self._memory is None:
                self._memory = MemoryDriver()
            return self._memory
        assert self._url
        return self._make(self._url)

    def proxied_driver(self) -> Driver:
        """A driver whose connections go through a proxy that ``sever()`` cuts."""
        if self.name == "memory":
            return self.driver()
        from tests.fixtures.tcpproxy import TcpProxy

        assert self._host_port
        proxy = TcpProxy(*self._host_port)
        proxy.start()
        self._proxies.append(proxy)
        assert self._url
        if self.name == "ovsdb":
            return self._make(f"ovsdb:tcp:127.0.0.1:{proxy.port}")
        scheme = self._url.partition("://")[0]  # etcds / rediss: TLS through the proxy
        return self._make(f"{scheme}://127.0.0.1:{proxy.port}")

    @property
    def can_sever(self) -> bool:
        return self.name != "memory"

    def sever(self) -> None:
        for p in self._proxies:
            p.sever()

    def close(self) -> None:
        for d in self._drivers:
            d.close()
        for p in self._proxies:
            p.stop()
        if self._memory is not None:
            self._memory.close()


@pytest.fixture(params=["memory", "etcd", "redis", "ovsdb"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        b = Backend("memory")
    else:
        server = request.getfixturevalue(f"{request.param}_server")
        b = Backend(request.param, server.url, ("127.0.0.1", server.port))
    try:
        yield b
    finally:
        b.close()
