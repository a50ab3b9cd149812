"""The metadata proxy: one per chassis, on 169.254.169.254:80 of the metadata interface.

Who is asking is read from the request's source address, which the flows wrote from the
ofport the request came in on (dragonflow/metadata/datapath.py): the port's unique key and
which of its IPv4 addresses it used. The key is looked up among the ports plugged into this
chassis' integration bridge (their iface-ids in OVSDB, read from the NB, verified by key).
A source that is not an encoded address, an unknown key, a port with no device id (or a
network service port) gets 404 -- never anyone else's data.

Then either

* ``[metadata] nova_metadata_url`` set: the request is forwarded to Nova's metadata API with
  X-Instance-ID (the port's device id), X-Tenant-ID (its project), X-Forwarded-For (the VM's
  address) and X-Instance-ID-Signature (HMAC-SHA256 of the instance id with
  ``metadata_proxy_shared_secret``, what Nova recomputes); headers the VM sent by those
  names are never passed on. Nova's answer goes back as it is (Nova down: 502, slow: 504);
* unset: the built-in responder answers from the NB (dragonflow/metadata/content.py).

aiohttp server and client. NB reads run on a small thread pool (NbApi is synchronous).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from dragonflow.db.nbapi import NbApi
from dragonflow.metadata import content
from dragonflow.metadata.datapath import METADATA_IP, METADATA_TCP_PORT, decode_address
from dragonflow.metadata.iface import in_netns
from dragonflow.model import Network, Port, SecurityGroup, Subnet

LOG = logging.getLogger(__name__)
T = TypeVar("T")
SERVICE_OWNERS = ("network:",)  # router interfaces, DHCP ports, ...: no instance behind
REFRESH_EVERY = 0.2  # seconds: at most this often the local ports are read again


class PortDirectory:
    """Port unique key -> NB port, for the ports plugged into this chassis.

    ``local_ids()`` gives the iface-ids on the integration bridge (OVSDB). A key seen before
    is answered with a fresh read of its port (so a device id or a deletion counts at once);
    an unknown key re-reads the local ports (at most every REFRESH_EVERY seconds)."""

    def __init__(self, nb: NbApi, local_ids: Callable[[], Iterable[str]]) -> None:
        self.nb = nb
        self.local_ids = local_ids
        self._by_key: dict[int, str] = {}
        self._lock = threading.Lock()
        self._refreshed = 0.0

    def lookup(self, key: int) -> Port | None:
        pid = self._by_key.get(key)
        if pid is not None:
            port = self.nb.get(Port, pid)
            if port is not None and port.unique_key == key:
                return port
        with self._lock:
            wait = self._refreshed + REFRESH_EVERY - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._refreshed = time.monotonic()
            by_key = {}
            for iface_id in sorted(set(self.local_ids())):
                port = self.nb.get(Port, iface_id)
                if port is not None and port.unique_key:
                    by_key[port.unique_key] = port.id
            self._by_key = by_key
        pid = self._by_key.get(key)
        port = self.nb.get(Port, pid) if pid is not None else None
        return port if port is not None and port.unique_key == key else None


@dataclass
class ProxyConfig:
    nova_metadata_url: str | None = None
    shared_secret: str = ""
    nova_timeout: float = 10.0
    domain: str = "openstacklocal"  # appended to built-in host names ([controller] dhcp_domain)
    listen_ip: str = METADATA_IP
    listen_port: int = METADATA_TCP_PORT
    netns: str | None = None  # where to listen (ip netns name; None: here)


class MetadataProxy:
    def __init__(self, cfg: ProxyConfig, nb: NbApi, ports: PortDirectory) -> None:
        self.cfg = cfg
        self.nb = nb
        self.ports = ports
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="df-md-nb")
        self._session: aiohttp.ClientSession | None = None
        self.served = 0
        self.refused = 0

    async def _nb(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._start_session)
        app.on_cleanup.append(self._close_session)
        return app

    async def _start_session(self, _app: web.Application) -> None:
        if self.cfg.nova_metadata_url:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.nova_timeout))

    async def _close_session(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
        self._pool.shutdown(wait=False)

    def _refuse(self, request: web.Request, why: str) -> web.Response:
        self.refused += 1
        LOG.info("%s %s from %s: 404 (%s)", request.method, request.path, request.remote, why)
        return web.Response(status=404, text="404 Not Found")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        found = decode_address(request.remote or "")
        if found is None:
            return self._refuse(request, "not from a port of this chassis")
        key, index = found
        port = await self._nb(self.ports.lookup, key)
        if port is None:
            return self._refuse(request, f"no local port with key {key}")
        ips = [str(f.ip_address) for f in port.fixed_ips if f.ip_address.version == 4]
        if index >= len(ips):
            return self._refuse(request, f"port {port.id} has no address #{index}")
        if not port.device_id or port.device_owner.startswith(SERVICE_OWNERS):
            return self._refuse(request, f"port {port.id} has no instance")
        ip = ips[index]
        if self.cfg.nova_metadata_url:
            resp = await self._forward(request, port, ip)
        else:
            resp = await self._builtin(request, port, ip)
        self.served += 1
        LOG.info("%s %s from port %s (%s, instance %s): %d", request.method, request.path,
                 port.id, ip, port.device_id, resp.status)
        return resp

    async def _builtin(self, request: web.Request, port: Port, ip: str) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="405 Method Not Allowed")

        def read() -> tuple[Network | None, dict[str, Subnet], dict[str, str]]:
            subnets = {f.subnet_id: s for f in port.fixed_ips
                       if (s := self.nb.get(Subnet, f.subnet_id)) is not None}
            groups = {g: sg.name for g in port.security_groups
                      if (sg := self.nb.get(SecurityGroup, g)) is not None and sg.name}
            return self.nb.get(Network, port.network_id), subnets, groups

        network, subnets, groups = await self._nb(read)
        status, ctype, body = content.respond(request.path, port, ip, network, subnets,
                                              self.cfg.domain, group_names=groups)
        return web.Response(status=status, text=body, content_type=ctype)

    async def _forward(self, request: web.Request, port: Port, ip: str) -> web.Response:
        assert self._session is not None and self.cfg.nova_metadata_url
        headers = {
            "X-Forwarded-For": ip,
            "X-Instance-ID": port.device_id,
            "X-Tenant-ID": port.topic,
            "X-Instance-ID-Signature": content.instance_signature(self.cfg.shared_secret,
                                                                  port.device_id),
        }
        for name in ("Content-Type", "Accept"):
            if name in request.headers:
                headers[name] = request.headers[name]
        body = await request.read()
        path = request.rel_url.raw_path_qs  # origin form, whatever the request line said
        url = self.cfg.nova_metadata_url.rstrip("/") + (path if path.startswith("/") else "/")
        try:
            async with self._session.request(request.method, url, headers=headers,
                                             data=body or None,
                                             allow_redirects=False) as resp:
                data = await resp.read()
                ctype = resp.headers.get("Content-Type")
                status = resp.status
        except TimeoutError:
            LOG.warning("Nova metadata API %s: no answer in %.1fs", url, self.cfg.nova_timeout)
            return web.Response(status=504, text="504 Gateway Timeout")
        except aiohttp.ClientError as e:
            LOG.warning("Nova metadata API %s: %s", url, e)
            return web.Response(status=502, text="502 Bad Gateway")
        if status == 403:
            LOG.warning("Nova refused instance %s (403): does [metadata] "
                        "metadata_proxy_shared_secret match Nova's [neutron] "
                        "metadata_proxy_shared_secret?", port.device_id)
        return web.Response(status=status, body=data,
                            headers={"Content-Type": ctype} if ctype else None)


def listening_socket(ip: str, port: int) -> socket.socket:
    """A TCP socket bound to (ip, port) even while ip is not (yet) on any device
    (IP_FREEBIND): the address comes and goes with the interface."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15), 1)
    sock.bind((ip, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(proxy: MetadataProxy, stop: asyncio.Event,
                periodic: Callable[[], object] | None = None, every: float = 5.0,
                on_listening: Callable[[], object] | None = None) -> None:
    """Serve until ``stop`` is set; ``periodic`` (blocking) runs every ``every`` seconds on
    a worker thread (the interface's upkeep)."""
    runner = web.AppRunner(proxy.app(), access_log=None)
    await runner.setup()
    sock = in_netns(proxy.cfg.netns,
                    lambda: listening_socket(proxy.cfg.listen_ip, proxy.cfg.listen_port))
    site = web.SockSite(runner, sock)
    await site.start()
    LOG.info("metadata proxy on %s:%d (%s)", proxy.cfg.listen_ip, proxy.cfg.listen_port,
             f"Nova at {proxy.cfg.nova_metadata_url}" if proxy.cfg.nova_metadata_url
             else "built-in responder")
    if on_listening is not None:
        on_listening()
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass
            if periodic is not None and not stop.is_set():
                try:
                    await loop.run_in_executor(None, periodic)
                except Exception as e:  # logged, retried at the next tick
                    LOG.warning("metadata interface upkeep failed: %s", e)
    finally:
        await runner.cleanup()
