"""df-metadata: the metadata service of one compute node.

Creates the metadata interface (``[metadata] interface``, an internal port on
``[controller] integration_bridge`` through ``[controller] ovsdb_connection``) once the
bridge exists, gives it 169.254.169.254 in this network namespace (or ``[metadata] netns``),
and answers every local VM's metadata requests there: forwarded to Nova
(``[metadata] nova_metadata_url``) or from the NB (``[df]`` options). The controller only
steers the requests to it, so this process outlives controller restarts (and the controller
its restarts). Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from dragonflow import conf as df_conf
from dragonflow.db.connect import open_nb
from dragonflow.db.security import NbSecurity, redact_url
from dragonflow.metadata.iface import InterfaceError
from dragonflow.metadata.proxy import ProxyConfig
from dragonflow.metadata.service import MetadataService, ServiceConfig
from dragonflow.ovs.ovsdb import OvsdbError

LOG = logging.getLogger("df-metadata")


def main(argv: list[str] | None = None) -> int:
    conf = df_conf.new_conf()
    df_conf.load(conf, sys.argv[1:] if argv is None else argv, "df-metadata", __doc__ or "")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    md, ctl = conf.metadata, conf.controller
    try:
        nb = open_nb(conf.df.nb_db_url, root=conf.df.nb_db_root, timeout=conf.df.nb_db_timeout,
                     security=NbSecurity.from_conf(conf.df))
    except ValueError as e:
        LOG.critical("NB database: %s", e)
        return 2
    if md.nova_metadata_url and not md.metadata_proxy_shared_secret:
        LOG.warning("[metadata] metadata_proxy_shared_secret is empty: Nova accepts that only "
                    "if its own secret is empty too")
    service = MetadataService(ServiceConfig(
        ovsdb_connection=ctl.ovsdb_connection, bridge=ctl.integration_bridge,
        interface=md.interface, proxy=ProxyConfig(
            nova_metadata_url=md.nova_metadata_url or None,
            shared_secret=md.metadata_proxy_shared_secret or "",
            nova_timeout=md.nova_metadata_timeout, domain=ctl.dhcp_domain or "",
            netns=md.netns or None)), nb)
    try:
        ofport = service.setup()
    except (OvsdbError, InterfaceError) as e:
        LOG.critical("metadata interface %s: %s", md.interface, e)
        service.close()
        nb.driver.close()
        return 1
    LOG.info("interface %s on %s (ofport %d), NB %s", md.interface, ctl.integration_bridge,
             ofport, redact_url(conf.df.nb_db_url))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.run(stop)

    try:
        asyncio.run(run())
    except OSError as e:  # the listening socket
        LOG.critical("cannot listen: %s", e)
        return 1
    finally:
        service.close()
        nb.driver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
