"""df-controller: the local controller of one compute node.

Reads [df] and [controller] options (see ``df-controller --help`` and
etc/dragonflow.ini.sample), registers the chassis, prepares the integration bridge through
OVSDB, follows the NB change stream and programs Open vSwitch. Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading

from dragonflow import conf as df_conf
from dragonflow.apps.registry import load_apps
from dragonflow.controller.controller import ControllerConfig, LocalController
from dragonflow.db.connect import open_nb
from dragonflow.db.security import NbSecurity, redact_url


def config_from(conf: object) -> ControllerConfig:
    c = conf.controller  # type: ignore[attr-defined]
    return ControllerConfig(
        chassis_id=c.chassis_id, tunnel_ip=c.tunnel_ip, tunnel_types=tuple(c.tunnel_types),
        integration_bridge=c.integration_bridge, datapath_type=c.datapath_type,
        ovsdb_connection=c.ovsdb_connection, ovs_rundir=c.ovs_rundir,
        heartbeat_interval=c.heartbeat_interval, external_host_ip=c.external_host_ip,
        bridge_mappings=dict(c.bridge_mappings), l3_mode=c.l3_mode, gateway=c.gateway,
        gateway_heartbeat_interval=c.gateway_heartbeat_interval,
        gateway_dead_time=c.gateway_dead_time,
        reactive_idle_timeout=c.reactive_idle_timeout, status_file=c.status_file,
        dhcp_lease_time=c.dhcp_lease_time, dhcp_dns_servers=tuple(c.dhcp_dns_servers),
        dhcp_domain=c.dhcp_domain, ra_interval=c.ra_interval,
        dhcp_rate_per_port=c.dhcp_rate_per_port, dhcp_burst_per_port=c.dhcp_burst_per_port,
        rs_rate_per_port=c.rs_rate_per_port, rs_burst_per_port=c.rs_burst_per_port,
        metadata_interface=conf.metadata.interface,  # type: ignore[attr-defined]
        metadata_syn_rate=conf.metadata.syn_rate,  # type: ignore[attr-defined]
        metadata_syn_burst=conf.metadata.syn_burst)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    conf = df_conf.new_conf()
    df_conf.load(conf, sys.argv[1:] if argv is None else argv, "df-controller", __doc__ or "")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        nb = open_nb(conf.df.nb_db_url, root=conf.df.nb_db_root, timeout=conf.df.nb_db_timeout,
                     security=NbSecurity.from_conf(conf.df))
    except ValueError as e:  # a bad url or NB security options: say which, no traceback
        logging.getLogger("df-controller").critical("NB database: %s", e)
        return 2
    apps = list(conf.controller.apps)
    # a change allocates thousands of small objects (flows, matches): collect the youngest
    # generation every 50,000 allocations instead of 700, the older ones rarely
    gc.set_threshold(50_000, 20, 100)
    ctl = LocalController(config_from(conf), nb, apps=lambda: load_apps(apps),
                          own_process=True)
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("df-controller").info("signal %s: stopping", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ctl.start()
    logging.getLogger("df-controller").info(
        "chassis %s up: bridge %s, NB %s", ctl.cfg.chassis_id, ctl.cfg.integration_bridge,
        redact_url(conf.df.nb_db_url))
    rc = 0
    while not done.wait(0.5):
        if ctl.dead.is_set():  # never a live process with a dead loop: let a supervisor act
            logging.getLogger("df-controller").critical("controller loop died: exiting 1")
            rc = 1
            break
    ctl.stop()
    nb.driver.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
