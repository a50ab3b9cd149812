"""Configuration options (oslo.config), read from /etc/dragonflow/dragonflow.ini by default.

Every console script accepts ``--config-file PATH`` (repeatable) and ``--config-dir``;
options are documented here once and shown by ``--help`` and the sample config
(``etc/dragonflow.ini.sample``).
"""

from __future__ import annotations

import os
import socket

from oslo_config import cfg

# the core apps (stevedore entry points in dragonflow.apps): [controller] apps' default
CORE_APPS = ("physical", "arp", "dhcp", "nd", "ra", "l2", "icmp", "l3", "metadata",
             "port_security", "secgroup", "nat")

DEFAULT_CONFIG_FILE = "/etc/dragonflow/dragonflow.ini"

df_opts = [
    cfg.StrOpt("nb_db_url", default="memory://",
               help="NB database: memory:// (embedded, in-process), "
                    "etcd://host:port[,host:port...], redis://host:port[/namespace] or "
                    "ovsdb:tcp:host:port[,tcp:host:port...] (ovsdb-server's DF_NB database, "
                    "made by `df-db ovsdb-create`; several remotes: a Raft cluster); "
                    "etcds://, rediss:// and ovsdb:ssl:host:port connect with TLS (see "
                    "nb_db_ca_file; ovsdb:ssl: needs a client certificate). A redis "
                    "url may carry credentials, redis[s]://[user[:password]@]host:port[/ns] "
                    "(percent-encoded); they take precedence over nb_db_user and "
                    "nb_db_password."),
    cfg.StrOpt("nb_db_root", default="/df/",
               help="Key prefix of this deployment's objects in the NB database."),
    cfg.FloatOpt("nb_db_timeout", default=3.0, min=0.1,
                 help="Seconds before an NB database request is given up (etcd, redis, "
                      "ovsdb)."),
    cfg.StrOpt("nb_db_ca_file", default=None,
               help="PEM bundle of the CA certificates that verify the NB database server's "
                    "certificate (etcds://, rediss:// urls). Unset: the system trust store. "
                    "The certificate must be valid for the url's host name or IP address. "
                    "Setting it with a plaintext url (etcd://, redis://) is an error."),
    cfg.StrOpt("nb_db_cert_file", default=None,
               help="PEM client certificate presented to the NB database server over TLS, "
                    "for servers that require one (etcd --client-cert-auth, redis "
                    "tls-auth-clients). Needs nb_db_key_file."),
    cfg.StrOpt("nb_db_key_file", default=None,
               help="PEM private key (unencrypted) of nb_db_cert_file."),
    cfg.StrOpt("nb_db_user", default=None,
               help="User name for NB database authentication: an etcd user (with "
                    "nb_db_password; the token it gets is renewed when it expires), or a "
                    "redis ACL user. A user in a redis url takes precedence."),
    cfg.StrOpt("nb_db_password", default=None, secret=True,
               help="Password of nb_db_user (etcd), or for redis AUTH (of nb_db_user, or of "
                    "the default user when no user is set). A password in a redis url takes "
                    "precedence. Write '$' as '$$' (oslo.config substitutes $name)."),
]

controller_opts = [
    cfg.StrOpt("chassis_id", default=socket.gethostname(), sample_default="<host name>",
               help="This compute node's chassis id (the host name Neutron binds ports to)."),
    cfg.StrOpt("tunnel_ip", default="127.0.0.1",
               help="Underlay IP address of this node's tunnel endpoint."),
    cfg.ListOpt("tunnel_types", default=["vxlan", "geneve", "gre"],
                help="Tunnel encapsulations this node terminates (vxlan, geneve, gre)."),
    cfg.StrOpt("external_host_ip", default=None,
               help="Address used for north-south traffic of this node (optional)."),
    cfg.DictOpt("bridge_mappings", default={},
                help="physical_network:bridge pairs for VLAN and flat provider networks "
                     "(e.g. physnet1:br-ex). The controller patches the integration bridge "
                     "to each bridge (created as a standalone learning switch if missing, "
                     "never flushed); the operator plugs the uplink NIC into it. Neutron "
                     "binds flat/VLAN ports only on chassis that map their physical network."),
    cfg.BoolOpt("gateway", default=False,
                help="This chassis may host routers' external gateways (SNAT): for each "
                     "router with a gateway, the live gateway-capable chassis that map the "
                     "external network's physical network are ranked, and the first does "
                     "its SNAT and answers for its gateway address; when its heartbeat "
                     "stops, the next takes over."),
    cfg.FloatOpt("gateway_heartbeat_interval", default=0.5, min=0.1,
                 help="Seconds between heartbeats of a gateway-capable chassis (its "
                      "liveness decides SNAT failover, so it beats faster than others)."),
    cfg.FloatOpt("gateway_dead_time", default=2.0, min=0.3,
                 help="A gateway chassis whose heartbeat did not change for this many "
                      "seconds is dead: the next-ranked one takes its routers' SNAT over."),
    cfg.StrOpt("integration_bridge", default="br-int", help="The OVS integration bridge."),
    cfg.StrOpt("datapath_type", default="system", choices=["system", "netdev"],
               help="OVS datapath type of the integration bridge "
                    "(netdev = userspace, as used by the simulated test bed)."),
    cfg.StrOpt("ovsdb_connection", default="unix:/var/run/openvswitch/db.sock",
               help="OVSDB server of the local Open vSwitch."),
    cfg.StrOpt("ovs_rundir", default="/var/run/openvswitch",
               help="OVS run directory: the controller's passive OpenFlow target "
                    "(punix:<rundir>/<bridge>.df) is created here."),
    cfg.FloatOpt("heartbeat_interval", default=10.0, min=0.5,
                 help="Seconds between chassis heartbeats written to the NB database."),
    cfg.ListOpt("apps", default=list(CORE_APPS),
                help="Apps compiled into the pipeline (stevedore namespace dragonflow.apps). "
                     "Each app declares its own stages; the pipeline is assembled from the "
                     "enabled apps and checked at start-up (an app of another package is "
                     "enabled by naming its entry point here)."),
    cfg.StrOpt("status_file", default=None,
               sample_default="<ovs_rundir>/<integration_bridge>.df-status.json",
               help="Where the controller writes its status as JSON (pipeline, installed "
                    "flow count, flow conflicts, owners that failed or whose flows the "
                    "switch rejected); `df status` prints it."),
    cfg.StrOpt("l3_mode", default="proactive", choices=["proactive", "reactive"],
               help="Distributed router: install all routes up front (proactive) or on the "
                    "first packet of each flow (reactive)."),
    cfg.IntOpt("dhcp_lease_time", default=86400, min=60,
               help="DHCP: seconds of every lease the local controller grants (renewal at "
                    "half of it)."),
    cfg.ListOpt("dhcp_dns_servers", default=[],
                help="DHCP: DNS servers given to VMs on subnets that name none."),
    cfg.StrOpt("dhcp_domain", default="openstacklocal",
               help="DHCP: the domain name option given to VMs (empty: none)."),
    cfg.IntOpt("dhcp_rate_per_port", default=50, min=1,
               help="DHCP (v4 and v6): requests per second each local port may send the "
                    "controller (an OpenFlow meter per port: a flooding VM uses up its own "
                    "budget, not its neighbours' leases)."),
    cfg.IntOpt("dhcp_burst_per_port", default=20, min=0,
               help="DHCP: burst of dhcp_rate_per_port (requests), per port."),
    cfg.IntOpt("rs_rate_per_port", default=10, min=1,
               help="IPv6: router solicitations per second each local port may send the "
                    "controller (a meter per port)."),
    cfg.IntOpt("rs_burst_per_port", default=5, min=0,
               help="IPv6: burst of rs_rate_per_port (solicitations), per port."),
    cfg.FloatOpt("ra_interval", default=30.0, min=1.0,
                 help="IPv6: seconds between the unsolicited router advertisements each "
                      "controller sends its VMs (solicitations are answered at once)."),
    cfg.IntOpt("reactive_idle_timeout", default=30, min=1,
               help="Reactive L3: seconds an installed host route may stay idle before OVS "
                    "removes it."),
]


metadata_opts = [
    cfg.StrOpt("interface", default="df-metadata",
               help="Metadata: the OVS internal port on the integration bridge where "
                    "df-metadata listens on 169.254.169.254:80 (df-metadata creates it; the "
                    "controller steers every local port's requests to it). Both read this "
                    "option: give them the same value."),
    cfg.StrOpt("netns", default="",
               help="Metadata: the network namespace (an `ip netns` name) of the integration "
                    "bridge's devices, if it is not df-metadata's own -- e.g. a node of the "
                    "test bed, whose OVS runs in a namespace while its control plane does "
                    "not. Empty: df-metadata's own (a compute host)."),
    cfg.StrOpt("nova_metadata_url", default=None,
               help="Metadata: Nova's metadata API, http(s)://host:port (e.g. "
                    "http://10.0.0.2:8775). Requests are forwarded there with X-Instance-ID "
                    "(the port's device id), X-Tenant-ID, X-Forwarded-For and "
                    "X-Instance-ID-Signature. Unset: df-metadata answers from the NB itself "
                    "(openstack/<version>/meta_data.json and network_data.json)."),
    cfg.StrOpt("metadata_proxy_shared_secret", default="", secret=True,
               help="Metadata: the secret shared with Nova ([neutron] "
                    "metadata_proxy_shared_secret in nova.conf): X-Instance-ID-Signature is "
                    "HMAC-SHA256 of the instance id with it."),
    cfg.FloatOpt("nova_metadata_timeout", default=10.0, min=0.5,
                 help="Metadata: seconds before a request forwarded to Nova is given up "
                      "(the VM gets 504)."),
    cfg.IntOpt("syn_rate", default=20, min=1,
               help="Metadata: TCP connections per second one local port may open to the "
                    "metadata service (an OpenFlow meter per port on its SYNs; the excess is "
                    "dropped and the VM's TCP retries)."),
    cfg.IntOpt("syn_burst", default=40, min=0,
               help="Metadata: burst of syn_rate (SYNs), per port."),
]


def register(conf: cfg.ConfigOpts) -> cfg.ConfigOpts:
    conf.register_opts(df_opts, group="df")
    conf.register_opts(controller_opts, group="controller")
    conf.register_opts(metadata_opts, group="metadata")
    return conf


def new_conf() -> cfg.ConfigOpts:
    """A fresh ConfigOpts with every option registered (no global CONF singleton)."""
    return register(cfg.ConfigOpts())


def load(conf: cfg.ConfigOpts, argv: list[str], prog: str, description: str = "") -> None:
    """Parse argv; reads the default config file only if it exists."""
    default_files = [DEFAULT_CONFIG_FILE] if os.path.exists(DEFAULT_CONFIG_FILE) else []
    conf(argv, project="dragonflow", prog=prog, default_config_files=default_files,
         description=description or None)


def load_files(config_files: list[str], config_dir: str | None, prog: str) -> cfg.ConfigOpts:
    """A fresh ConfigOpts loaded from a CLI's --config-file (repeatable) / --config-dir."""
    conf = new_conf()
    argv: list[str] = []
    for path in config_files:
        argv += ["--config-file", path]
    if config_dir:
        argv += ["--config-dir", config_dir]
    load(conf, argv, prog=prog)
    return conf


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """For oslo-config-generator (entry point oslo.config.opts)."""
    return [("df", list(df_opts)), ("controller", list(controller_opts)),
            ("metadata", list(metadata_opts))]
