"""df-cni: a CNI plugin that attaches containers to Dragonflow networks.

usage: a container runtime runs ``df-cni`` with the CNI_* environment and the network
configuration as JSON on stdin (CNI specification 1.0.0; cniVersion 0.4.0 and 1.0.0):

  CNI_COMMAND      ADD | DEL | CHECK | VERSION
  CNI_CONTAINERID  the container's id ([A-Za-z0-9][A-Za-z0-9_.-]*)
  CNI_NETNS        its network namespace, a path (/var/run/netns/<name>, /proc/<pid>/ns/net)
  CNI_IFNAME       the interface to create inside it (e.g. eth0)
  CNI_ARGS         K=V;K=V (K8S_POD_NAMESPACE / K8S_POD_NAME name the NB port; others are
                   ignored)
  CNI_PATH         not used (df-cni delegates to no other plugin)

Network configuration (keys besides cniVersion, name, type)::

  {"cniVersion": "1.0.0", "name": "pods", "type": "df-cni",
   "network": "<NB network id or name>",      required unless "port" is given
   "subnet": "<subnet id or name>",           optional: default the network's first IPv4
                                              subnet (by id), else its first IPv6 one
   "port": "<NB port id or name>",            optional: adopt this existing port
   "mtu": 1400,                               optional: at most the network's MTU (default)
   "project": "<project id>",                 optional: of the port made (default: the
                                              network's)
   "security_groups": ["<id>", ...],          optional, of the port made
   "dragonflow": {
     "config_file": "/etc/dragonflow/dragonflow.ini",   [df] nb_db_* (the NB and its TLS
                                              options), [controller] chassis_id,
                                              ovsdb_connection, integration_bridge: what
                                              df-controller of this node reads (default file
                                              if it exists); the keys below override it
     "nb_url": "etcd://10.0.0.2:2379", "nb_root": "/df/",
     "chassis_id": "<this node's chassis>", "ovsdb_connection": "unix:/run/openvswitch/db.sock",
     "bridge": "br-int",
     "active_timeout": 30,                    seconds ADD waits for the port's flows
     "host_netns": "<name or path>"           the network namespace of the bridge's devices
                                              if it is not df-cni's own (a node of the test
                                              bed, whose OVS runs in a namespace while its
                                              control plane does not); default: its own
   }}

ADD creates the NB port (an address of the subnet and a fa:16:3e MAC allocated by the NB:
dragonflow/db/ipam.py) bound to this chassis -- or adopts the configured port (binding it
here if it is unbound) --, creates a veth pair (host side ``dfc<hash>``, the container side
CNI_IFNAME with the port's MAC), configures the address, the default route via the subnet's
gateway, the subnet's host routes and the MTU statically inside the namespace (no DHCP),
brings lo and the interface up, plugs the host side into the integration bridge
(external_ids iface-id, attached-mac, iface-status=active), and returns the result once the
local controller has installed the port's flows (NB status ACTIVE). If anything fails, what
ADD made is removed again. DEL removes the OVS port, the veth and the NB port ADD made; an
adopted port is left in the NB, unbound again if ADD bound it; DEL of what is already gone
succeeds. CHECK verifies the interface (MAC, address, MTU) inside the namespace, the veth,
the OVS port (iface-id) and the NB port (bound here, ACTIVE).

Errors: exit 1 with {"cniVersion", "code", "msg", "details"} on stdout; codes 1
incompatible version, 2 unsupported field, 3 container (network namespace) unknown, 4
invalid environment variables, 6 undecodable configuration, 7 invalid network
configuration, 11 try again later (NB unreachable, controller not running, port not ACTIVE
in time); 100 operation failed, 101 no free address, 102 port cannot be adopted, 103 CHECK
found a difference, 104 interface already exists. Diagnostics go to stderr.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dragonflow.db import errors as nb_errors
from dragonflow.db import ipam
from dragonflow.db.driver import DriverError
from dragonflow.db.nbapi import NbApi
from dragonflow.model import (
    Binding,
    Chassis,
    FixedIp,
    Network,
    Port,
    Subnet,
    ValidationError,
)

LOG = logging.getLogger("df-cni")

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0")
DEFAULT_CONFIG_FILE = "/etc/dragonflow/dragonflow.ini"
DEFAULT_ACTIVE_TIMEOUT = 30.0
DEVICE_OWNER = "df-cni"  # device_owner of the NB ports df-cni makes (and only deletes)
HOST_PREFIX = "dfc"  # host side of the veth: dfc + 11 hex digits
_PORT_NS = uuid.UUID("6d1f3c2e-8a4b-5d7e-9f10-2b3c4d5e6f70")  # uuid5 namespace of port ids

# CNI error codes (spec 1.0.0) and ours (100+)
ERR_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_ENV = 4
ERR_DECODE = 6
ERR_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_FAILED = 100
ERR_NO_ADDRESS = 101
ERR_PORT_IN_USE = 102
ERR_CHECK = 103
ERR_EXISTS = 104

_CNI_KEYS = {"cniVersion", "name", "type", "args", "runtimeConfig", "capabilities",
             "prevResult", "ipam", "dns", "cniVersions", "disableCheck", "disableGC"}
_OUR_KEYS = {"network", "subnet", "port", "mtu", "project", "security_groups", "dragonflow"}
_DF_KEYS = {"config_file", "nb_url", "nb_root", "nb_timeout", "chassis_id",
            "ovsdb_connection", "bridge", "active_timeout", "host_netns"}
_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_json(self, version: str) -> dict[str, Any]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg,
                "details": self.details}


# --- input ----------------------------------------------------------------------------
@dataclass
class Env:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str] = field(default_factory=dict)


def parse_env(environ: Mapping[str, str]) -> Env:
    cmd = environ.get("CNI_COMMAND", "")
    if not cmd:
        raise CniError(ERR_ENV, "CNI_COMMAND is not set (ADD, DEL, CHECK or VERSION); "
                                "df-cni --help explains its use")
    if cmd not in ("ADD", "DEL", "CHECK", "VERSION"):
        raise CniError(ERR_ENV, f"CNI_COMMAND {cmd!r} is not supported: ADD, DEL, CHECK or "
                                "VERSION")
    env = Env(cmd, environ.get("CNI_CONTAINERID", ""), environ.get("CNI_NETNS", ""),
              environ.get("CNI_IFNAME", ""))
    if cmd == "VERSION":
        return env
    if not env.container_id:
        raise CniError(ERR_ENV, "CNI_CONTAINERID is not set")
    if not _CONTAINER_ID_RE.match(env.container_id):
        raise CniError(ERR_ENV, f"CNI_CONTAINERID {env.container_id!r} is invalid: letters, "
                                "digits, '_', '.', '-', starting with a letter or digit")
    if not env.ifname:
        raise CniError(ERR_ENV, "CNI_IFNAME is not set")
    if (len(env.ifname) > 15 or env.ifname in (".", "..")
            or re.search(r"[/:\s]", env.ifname)):
        raise CniError(ERR_ENV, f"CNI_IFNAME {env.ifname!r} is not a valid interface name "
                                "(1..15 characters, no '/', ':' or whitespace)")
    if cmd in ("ADD", "CHECK") and not env.netns:
        raise CniError(ERR_ENV, f"CNI_NETNS is not set (required for {cmd}): the path of the "
                                "container's network namespace")
    for item in filter(None, environ.get("CNI_ARGS", "").split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(ERR_ENV, f"CNI_ARGS: {item!r} is not K=V (CNI_ARGS is K=V;K=V)")
        env.args[key] = value
    return env


@dataclass
class Settings:
    cni_version: str
    name: str
    network: str | None
    subnet: str | None
    port: str | None
    mtu: int | None
    project: str | None
    security_groups: tuple[str, ...]
    nb_url: str
    nb_root: str
    nb_timeout: float
    nb_security: Any
    chassis_id: str
    ovsdb: str
    bridge: str
    active_timeout: float
    host_netns: str | None
    dns: dict[str, Any]
    prev_result: dict[str, Any] | None


def decode_config(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise CniError(ERR_DECODE, "no network configuration on stdin (expected a JSON object)")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise CniError(ERR_DECODE, f"network configuration on stdin is not valid JSON: {e}"
                       ) from None
    if not isinstance(data, dict):
        raise CniError(ERR_DECODE, "network configuration on stdin must be a JSON object, "
                                   f"got {type(data).__name__}")
    return data


def check_version(data: Mapping[str, Any]) -> str:
    version = data.get("cniVersion")
    if version is None:
        raise CniError(ERR_CONFIG, "cniVersion: required field missing")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_VERSION, f"cniVersion: {version!r} is not supported; supported: "
                                    f"{', '.join(SUPPORTED_VERSIONS)}")
    return str(version)


def _opt_str(data: Mapping[str, Any], key: str, where: str = "") -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise CniError(ERR_CONFIG, f"{where}{key}: must be a non-empty string, got "
                                   f"{json.dumps(value)}")
    return value


def _opt_num(data: Mapping[str, Any], key: str, where: str, lo: float, hi: float
             ) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise CniError(ERR_CONFIG, f"{where}{key}: must be a number in {lo:g}..{hi:g}, got "
                                   f"{json.dumps(value)}")
    return float(value)


def _load_conf_file(path: str, explicit: bool) -> Any:
    """The oslo.config options of ``path`` (those of df-controller), or None."""
    if not os.path.exists(path):
        if explicit:
            raise CniError(ERR_CONFIG, f"dragonflow.config_file: {path} does not exist")
        return None
    from oslo_config import cfg

    from dragonflow import conf as df_conf
    conf = df_conf.new_conf()
    try:
        conf(args=[], project="dragonflow", prog="df-cni", default_config_files=[path])
        conf.df.nb_db_url  # noqa: B018 - parse now, so a bad value is reported here
        conf.controller.chassis_id  # noqa: B018
    except (cfg.Error, ValueError) as e:
        raise CniError(ERR_CONFIG, f"dragonflow.config_file: {path}: {e}") from None
    return conf


def parse_settings(data: Mapping[str, Any], version: str, command: str) -> Settings:
    unknown = sorted(set(data) - _CNI_KEYS - _OUR_KEYS)
    if unknown:
        key = unknown[0]
        raise CniError(ERR_UNSUPPORTED_FIELD, f"{key}: unsupported field (value "
                                              f"{json.dumps(data[key])[:80]}); df-cni knows "
                                              f"{', '.join(sorted(_OUR_KEYS))}")
    ipam_cfg = data.get("ipam")
    if ipam_cfg:
        raise CniError(ERR_UNSUPPORTED_FIELD, f"ipam: unsupported field (value "
                                              f"{json.dumps(ipam_cfg)[:80]}): the Dragonflow "
                                              "NB allocates the address; remove 'ipam'")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(ERR_CONFIG, "name: required non-empty string (the network "
                                   "configuration's name)")
    network = _opt_str(data, "network")
    port = _opt_str(data, "port")
    if network is None and port is None and command == "ADD":
        raise CniError(ERR_CONFIG, "network: required field missing (the NB network's id or "
                                   "name; or 'port' to adopt an existing NB port)")
    mtu = _opt_num(data, "mtu", "", 68, 65535)
    if mtu is not None and mtu != int(mtu):
        raise CniError(ERR_CONFIG, f"mtu: must be an integer, got {data['mtu']}")
    sgs = data.get("security_groups", [])
    if not isinstance(sgs, list) or not all(isinstance(s, str) and s for s in sgs):
        raise CniError(ERR_CONFIG, "security_groups: must be a list of security group ids")
    dns = data.get("dns") or {}
    if not isinstance(dns, dict):
        raise CniError(ERR_CONFIG, "dns: must be an object")
    prev = data.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(ERR_CONFIG, "prevResult: must be an object")
    df = data.get("dragonflow", {})
    if not isinstance(df, dict):
        raise CniError(ERR_CONFIG, "dragonflow: must be an object")
    bad = sorted(set(df) - _DF_KEYS)
    if bad:
        raise CniError(ERR_UNSUPPORTED_FIELD, f"dragonflow.{bad[0]}: unsupported field (value "
                                              f"{json.dumps(df[bad[0]])[:80]}); known: "
                                              f"{', '.join(sorted(_DF_KEYS))}")
    path = _opt_str(df, "config_file", "dragonflow.")
    conf = _load_conf_file(path or DEFAULT_CONFIG_FILE, explicit=path is not None)
    security = None
    if conf is not None:
        from dragonflow.db.security import NbSecurity
        try:
            security = NbSecurity.from_conf(conf.df)
        except ValueError as e:
            raise CniError(ERR_CONFIG, f"dragonflow.config_file: {path}: {e}") from None
    nb_url = _opt_str(df, "nb_url", "dragonflow.") or (conf.df.nb_db_url if conf else None)
    if not nb_url:
        raise CniError(ERR_CONFIG, "dragonflow.nb_url: required (or dragonflow.config_file "
                                   f"with [df] nb_db_url; {DEFAULT_CONFIG_FILE} does not exist)")
    nb_root = _opt_str(df, "nb_root", "dragonflow.") or (conf.df.nb_db_root if conf else "/df/")
    timeout = _opt_num(df, "nb_timeout", "dragonflow.", 0.1, 300)
    active = _opt_num(df, "active_timeout", "dragonflow.", 0, 3600)
    chassis = (_opt_str(df, "chassis_id", "dragonflow.")
               or (conf.controller.chassis_id if conf else socket.gethostname()))
    ovsdb = (_opt_str(df, "ovsdb_connection", "dragonflow.")
             or (conf.controller.ovsdb_connection if conf
                 else "unix:/var/run/openvswitch/db.sock"))
    bridge = (_opt_str(df, "bridge", "dragonflow.")
              or (conf.controller.integration_bridge if conf else "br-int"))
    host_netns = _opt_str(df, "host_netns", "dragonflow.")
    if host_netns is not None:
        host_netns = host_netns if "/" in host_netns else f"/var/run/netns/{host_netns}"
        if not os.path.exists(host_netns):
            raise CniError(ERR_CONFIG, f"dragonflow.host_netns: {host_netns} does not exist")
    return Settings(
        cni_version=version, name=name, network=network, subnet=_opt_str(data, "subnet"),
        port=port, mtu=int(mtu) if mtu is not None else None,
        project=data.get("project") if isinstance(data.get("project"), str) else None,
        security_groups=tuple(sgs), nb_url=nb_url, nb_root=nb_root,
        nb_timeout=timeout if timeout is not None else (conf.df.nb_db_timeout if conf else 3.0),
        nb_security=security, chassis_id=chassis, ovsdb=ovsdb, bridge=bridge,
        active_timeout=active if active is not None else DEFAULT_ACTIVE_TIMEOUT,
        host_netns=host_netns, dns=dns, prev_result=prev)


# --- names ---------------------------------------------------------------------------
def attachment_key(name: str, container_id: str, ifname: str) -> str:
    """CNI: network name + container id + interface name identify one attachment."""
    return f"{name}/{container_id}/{ifname}"


def host_ifname(name: str, container_id: str, ifname: str) -> str:
    digest = hashlib.sha256(attachment_key(name, container_id, ifname).encode()).hexdigest()
    return HOST_PREFIX + digest[:11]


def port_id_for(name: str, container_id: str, ifname: str) -> str:
    """The id of the NB port ADD makes: derived from the attachment, so DEL finds it with
    nothing stored anywhere."""
    return str(uuid.uuid5(_PORT_NS, attachment_key(name, container_id, ifname)))


# --- commands on this host ----------------------------------------------------------------
def run(cmd: list[str], what: str, check: bool = True, timeout: float = 30.0
        ) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError:
        raise CniError(ERR_FAILED, f"{what}: {cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise CniError(ERR_FAILED, f"{what}: {' '.join(cmd)} timed out after {timeout}s"
                       ) from None
    if check and proc.returncode != 0:
        raise CniError(ERR_FAILED, f"{what}: {proc.stderr.strip() or proc.stdout.strip()}",
                       " ".join(cmd))
    return proc


def _ovs_value(cell: Any) -> Any:
    """A cell of ovs-vsctl --format=json: atoms as is, ["map", ...] -> dict, ["set", []]
    -> None (an empty optional), ["set", [...]] -> list."""
    if isinstance(cell, list) and len(cell) == 2 and cell[0] == "map":
        return {k: v for k, v in cell[1]}
    if isinstance(cell, list) and len(cell) == 2 and cell[0] == "set":
        return None if not cell[1] else list(cell[1])
    if isinstance(cell, list) and len(cell) == 2 and cell[0] == "uuid":
        return cell[1]
    return cell


class Host:
    """This node: its OVSDB (ovs-vsctl --db), the namespace of the bridge's devices (df-cni's
    own, or ``host_netns``) and the container's namespace (nsenter)."""

    def __init__(self, ovsdb: str, bridge: str, netns: str, host_netns: str | None = None
                 ) -> None:
        self.ovsdb, self.bridge, self.netns = ovsdb, bridge, netns
        self.host_netns = host_netns

    def here(self, cmd: list[str], what: str, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
        """``cmd`` in the namespace of the bridge's devices."""
        pre = ["nsenter", f"--net={self.host_netns}"] if self.host_netns else []
        return run([*pre, *cmd], what, check=check)

    def vsctl(self, *args: str, what: str = "ovs-vsctl", check: bool = True
              ) -> subprocess.CompletedProcess[str]:
        proc = run(["ovs-vsctl", f"--db={self.ovsdb}", "--timeout=20", *args], what,
                   check=False)
        if proc.returncode != 0 and "database connection failed" in proc.stderr:
            raise CniError(ERR_TRY_AGAIN, f"OVSDB {self.ovsdb} is not reachable "
                                          "(dragonflow.ovsdb_connection): "
                                          f"{proc.stderr.strip()}")
        if check and proc.returncode != 0:
            raise CniError(ERR_FAILED, f"{what}: {proc.stderr.strip() or proc.stdout.strip()}",
                           " ".join(proc.args))
        return proc

    def bridge_state(self) -> str | None:
        """The integration bridge's datapath_type, None if the bridge does not exist."""
        proc = self.vsctl("br-exists", self.bridge, what="OVSDB", check=False)
        if proc.returncode == 2:
            return None
        if proc.returncode != 0:
            raise CniError(ERR_TRY_AGAIN, f"OVSDB {self.ovsdb} is not reachable: "
                                          f"{proc.stderr.strip()}")
        return self.vsctl("get", "Bridge", self.bridge, "datapath_type",
                          what="OVSDB").stdout.strip().strip('"')

    def interface(self, name: str) -> dict[str, Any] | None:
        """name, ofport, error, external_ids and bridge port of Interface ``name``."""
        out = self.vsctl("--format=json", "--columns=name,ofport,error,external_ids", "find",
                         "Interface", f"name={name}", what="OVSDB").stdout
        rows = json.loads(out).get("data") or []
        if not rows:
            return None
        cells = dict(zip(("name", "ofport", "error", "external_ids"),
                         (_ovs_value(c) for c in rows[0]), strict=True))
        cells["external_ids"] = cells["external_ids"] or {}
        bridge = self.vsctl("port-to-br", name, what="OVSDB", check=False).stdout.strip()
        cells["bridge"] = bridge or None
        return cells

    def plug(self, name: str, ids: Mapping[str, str]) -> int:
        """Add ``name`` to the bridge with these external_ids; its ofport once vswitchd
        made it."""
        sets = [f"external_ids:{k}={json.dumps(v)}" for k, v in ids.items()]
        self.vsctl("--", "--may-exist", "add-port", self.bridge, name, "--", "set",
                   "Interface", name, *sets, what=f"plugging {name} into {self.bridge}")
        iface = self.interface(name)
        ofport = iface.get("ofport") if iface else None
        if not isinstance(ofport, int) or ofport <= 0:
            raise CniError(ERR_FAILED, f"ovs-vswitchd could not add {name} to {self.bridge}: "
                                       f"{(iface or {}).get('error') or 'no ofport'}")
        return ofport

    def unplug(self, name: str) -> None:
        self.vsctl("--if-exists", "del-port", name, what=f"unplugging {name}")

    def link_exists(self, name: str) -> bool:
        return self.here(["ip", "-o", "link", "show", "dev", name], "ip link",
                         check=False).returncode == 0

    def del_link(self, name: str) -> None:
        if self.link_exists(name):
            self.here(["ip", "link", "del", "dev", name], f"deleting {name}")

    def netns_exists(self) -> bool:
        return bool(self.netns) and os.path.exists(self.netns)

    def pod(self, cmd: list[str], what: str, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        return run(["nsenter", f"--net={self.netns}", *cmd], what, check=check)

    def pod_link(self, ifname: str) -> dict[str, Any] | None:
        """``ip -j addr show`` of ``ifname`` in the container's namespace, or None."""
        proc = self.pod(["ip", "-j", "addr", "show", "dev", ifname], "ip addr", check=False)
        if proc.returncode != 0:
            return None
        links = json.loads(proc.stdout or "[]")
        return links[0] if links else None


# --- the plugin -------------------------------------------------------------------------
class Plugin:
    def __init__(self, env: Env, s: Settings) -> None:
        self.env, self.s = env, s
        self.host = Host(s.ovsdb, s.bridge, env.netns, s.host_netns)
        self.host_if = host_ifname(s.name, env.container_id, env.ifname)
        self._nb: NbApi | None = None

    @property
    def nb(self) -> NbApi:
        if self._nb is None:
            from dragonflow.db.connect import open_nb
            try:
                self._nb = open_nb(self.s.nb_url, root=self.s.nb_root,
                                   timeout=self.s.nb_timeout, security=self.s.nb_security)
            except ValueError as e:
                raise CniError(ERR_CONFIG, f"dragonflow.nb_url: {e}") from None
        return self._nb

    def close(self) -> None:
        if self._nb is not None:
            try:
                self._nb.driver.close()
            except Exception:  # noqa: BLE001 - closing, nothing else to do
                pass

    # -- NB lookups ------------------------------------------------------------------
    def _by_id_or_name(self, cls: type[Any], key: str, what: str,
                       among: list[Any] | None = None) -> Any:
        objs = among if among is not None else None
        if objs is None:
            found = self.nb.get(cls, key)
            if found is not None:
                return found
            objs = self.nb.list(cls)
        else:
            found = next((o for o in objs if o.id == key), None)
            if found is not None:
                return found
        named = [o for o in objs if o.name == key]
        if len(named) > 1:
            raise CniError(ERR_CONFIG, f"{what}: the name {key!r} is ambiguous: "
                                       f"{', '.join(sorted(o.id for o in named))}; give the id")
        return named[0] if named else None

    def network(self) -> Network:
        assert self.s.network is not None
        net = self._by_id_or_name(Network, self.s.network, "network")
        if net is None:
            raise CniError(ERR_CONFIG, f"network: no NB network with id or name "
                                       f"{self.s.network!r}")
        return net  # type: ignore[no-any-return]

    def subnet(self, net: Network) -> Subnet:
        subnets = sorted(self.nb.by_index(Subnet, "network_id", net.id), key=lambda s: s.id)
        if self.s.subnet is not None:
            sub = self._by_id_or_name(Subnet, self.s.subnet, "subnet", subnets)
            if sub is None:
                raise CniError(ERR_CONFIG, f"subnet: network {net.id!r} has no subnet with id "
                                           f"or name {self.s.subnet!r}")
            return sub  # type: ignore[no-any-return]
        if not subnets:
            raise CniError(ERR_CONFIG, f"network: network {net.id!r} has no subnet: no "
                                       "address can be allocated")
        v4 = [s for s in subnets if s.ip_version == 4]
        return (v4 or subnets)[0]

    def adopted(self) -> Port | None:
        if self.s.port is None:
            return None
        port = self._by_id_or_name(Port, self.s.port, "port")
        if port is None and self.env.command == "ADD":
            raise CniError(ERR_CONFIG, f"port: no NB port with id or name {self.s.port!r}")
        return port  # type: ignore[no-any-return]

    def _port_name(self) -> str:
        ns, pod = self.env.args.get("K8S_POD_NAMESPACE"), self.env.args.get("K8S_POD_NAME")
        if ns and pod:
            return f"{ns}/{pod}/{self.env.ifname}"
        return f"cni-{self.env.container_id[:12]}-{self.env.ifname}"

    def _require_chassis(self) -> None:
        if self.nb.get(Chassis, self.s.chassis_id) is None:
            raise CniError(ERR_TRY_AGAIN, f"chassis {self.s.chassis_id!r} is not registered in "
                                          "the NB: is df-controller running on this node? "
                                          "(dragonflow.chassis_id)")

    # -- ADD ---------------------------------------------------------------------------
    def add(self) -> dict[str, Any]:
        env, host = self.env, self.host
        if not host.netns_exists():
            raise CniError(ERR_UNKNOWN_CONTAINER, f"CNI_NETNS: the network namespace "
                                                  f"{env.netns} does not exist")
        undo: list[tuple[str, Callable[[], None]]] = []
        try:
            return self._add(undo)
        except BaseException:
            for what, fn in reversed(undo):
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 - report, and undo the rest
                    LOG.error("df-cni ADD failed, and undoing it: %s failed: %s", what, e)
            raise

    def _add(self, undo: list[tuple[str, Callable[[], None]]]) -> dict[str, Any]:
        env, s, host = self.env, self.s, self.host
        adopt = self.adopted()
        net = self.network() if s.network is not None else None
        if adopt is not None:
            if net is not None and adopt.network_id != net.id:
                raise CniError(ERR_CONFIG, f"port: port {adopt.id!r} is on network "
                                           f"{adopt.network_id!r}, not on network {net.id!r}")
            net = self.nb.get_or_raise(Network, adopt.network_id)
        assert net is not None
        mtu = s.mtu if s.mtu is not None else net.mtu
        if mtu > net.mtu:
            raise CniError(ERR_CONFIG, f"mtu: {mtu} is larger than the MTU of network "
                                       f"{net.id!r} ({net.mtu})")
        self._require_chassis()
        datapath = host.bridge_state()
        if datapath is None:
            raise CniError(ERR_TRY_AGAIN, f"bridge {s.bridge} does not exist on this node "
                                          f"({s.ovsdb}): is df-controller running?")
        if host.link_exists(self.host_if) or host.interface(self.host_if) is not None:
            raise CniError(ERR_EXISTS, f"{self.host_if} (the host side of {env.ifname} of "
                                       f"container {env.container_id}) already exists: DEL the "
                                       "attachment first")
        if host.pod_link(env.ifname) is not None:
            raise CniError(ERR_EXISTS, f"CNI_IFNAME: interface {env.ifname} already exists in "
                                       f"{env.netns}")
        if adopt is not None:
            port, bound = self._adopt(adopt, undo)
        else:
            port, bound = self._create_port(net, undo), False
        subnets = {f.subnet_id: self.nb.get_or_raise(Subnet, f.subnet_id)
                   for f in port.fixed_ips}
        # the veth: host side here, the container side in its namespace with the port's MAC
        host.here(["ip", "link", "add", self.host_if, "mtu", str(mtu), "type", "veth",
                   "peer", "name", env.ifname, "mtu", str(mtu), "address", port.mac,
                   "netns", env.netns], f"creating the veth {self.host_if} / {env.ifname}")
        undo.append((f"deleting {self.host_if}", lambda: host.del_link(self.host_if)))
        result = self._configure_pod(port, subnets, datapath)
        host.here(["ip", "link", "set", self.host_if, "up"], f"setting {self.host_if} up")
        ids = {"iface-id": port.id, "attached-mac": port.mac, "iface-status": "active",
               "df-cni-container": env.container_id, "df-cni-ifname": env.ifname,
               "df-cni-netns": env.netns, "df-cni-network": s.name,
               "df-cni-adopted": "true" if adopt is not None else "false",
               "df-cni-bound": "true" if bound else "false"}
        undo.append((f"unplugging {self.host_if}", lambda: host.unplug(self.host_if)))
        host.plug(self.host_if, ids)
        self._wait_active(port.id)
        return result

    def _create_port(self, net: Network, undo: list[tuple[str, Callable[[], None]]]) -> Port:
        env, s = self.env, self.s
        pid = port_id_for(s.name, env.container_id, env.ifname)
        sub = self.subnet(net)
        if self.nb.get(Port, pid) is not None:
            raise CniError(ERR_EXISTS, f"NB port {pid} of this attachment already exists: "
                                       "DEL the attachment first")

        def make(fip: FixedIp, mac: str) -> Port:
            return Port(id=pid, topic=s.project if s.project is not None else net.topic,
                        name=self._port_name(), network_id=net.id, mac=mac, fixed_ips=(fip,),
                        binding=Binding(kind="chassis", chassis_id=s.chassis_id),
                        device_owner=DEVICE_OWNER, device_id=env.container_id,
                        security_groups=s.security_groups)
        try:
            port = ipam.create_port(self.nb, sub, make)
        except ipam.AddressExhausted as e:
            raise CniError(ERR_NO_ADDRESS, str(e)) from None
        except ipam.AllocationFailed as e:
            raise CniError(ERR_TRY_AGAIN, str(e)) from None
        except ValidationError as e:
            raise CniError(ERR_CONFIG, f"the port cannot be made: {e}") from None
        undo.append((f"deleting NB port {pid}", lambda: self._delete_port(pid)))
        return port

    def _adopt(self, port: Port, undo: list[tuple[str, Callable[[], None]]]
               ) -> tuple[Port, bool]:
        """Bind the adopted port here if unbound; (port, whether this bound it)."""
        if not port.fixed_ips:
            raise CniError(ERR_CONFIG, f"port: port {port.id!r} has no fixed IP")
        b = port.binding
        if b is not None and (b.kind != "chassis" or b.chassis_id != self.s.chassis_id):
            raise CniError(ERR_PORT_IN_USE, f"port: port {port.id!r} is bound to {b.kind} "
                                            f"{b.chassis_id!r}, not to this chassis "
                                            f"{self.s.chassis_id!r}")
        users = self._ifaces_with_id(port.id)
        if users:
            raise CniError(ERR_PORT_IN_USE, f"port: port {port.id!r} is already plugged on "
                                            f"this node (OVS interface {users[0]})")
        if b is not None:
            return port, False
        bound = self.nb.update(port.replace(
            binding=Binding(kind="chassis", chassis_id=self.s.chassis_id)))
        undo.append((f"unbinding NB port {port.id}", lambda: self._unbind(port.id)))
        return bound, True

    def _ifaces_with_id(self, port_id: str) -> list[str]:
        out = self.host.vsctl("--format=json", "--columns=name", "find", "Interface",
                              f"external_ids:iface-id={json.dumps(port_id)}",
                              what="OVSDB").stdout
        return [row[0] for row in json.loads(out).get("data") or []]

    def _configure_pod(self, port: Port, subnets: Mapping[str, Subnet], datapath: str
                       ) -> dict[str, Any]:
        env, host = self.env, self.host
        dev = env.ifname
        host.pod(["ip", "link", "set", "lo", "up"], "setting lo up")
        if datapath == "netdev":  # userspace datapath: it does not fill in offloaded checksums
            proc = host.pod(["ethtool", "-K", dev, "tx", "off"], "ethtool", check=False)
            if proc.returncode != 0:
                LOG.warning("df-cni: tx offload of %s not disabled: %s", dev,
                            proc.stderr.strip())
        ips, routes = [], []
        for fip in port.fixed_ips:
            sub = subnets[fip.subnet_id]
            addr = f"{fip.ip_address}/{sub.cidr.prefixlen}"
            host.pod(["ip", "addr", "add", addr, "dev", dev,
                      *(["nodad"] if fip.ip_address.version == 6 else [])],
                     f"adding {addr} to {dev}")
            entry: dict[str, Any] = {"address": addr, "interface": 1}
            if self.s.cni_version == "0.4.0":
                entry = {"version": str(fip.ip_address.version), **entry}
            if sub.gateway_ip is not None:
                entry["gateway"] = str(sub.gateway_ip)
                routes.append({"dst": "0.0.0.0/0" if sub.ip_version == 4 else "::/0",
                               "gw": str(sub.gateway_ip)})
            routes += [{"dst": str(r.destination), "gw": str(r.nexthop)}
                       for r in sub.host_routes]
            ips.append(entry)
        host.pod(["ip", "link", "set", dev, "up"], f"setting {dev} up")
        for r in routes:
            fam = "-6" if ":" in r["dst"] else "-4"
            dst = "default" if r["dst"] in ("0.0.0.0/0", "::/0") else r["dst"]
            host.pod(["ip", fam, "route", "replace", dst, "via", r["gw"], "dev", dev],
                     f"adding the route {r['dst']} via {r['gw']}")
        dns = dict(self.s.dns)
        servers = [str(ip) for sub in subnets.values() for ip in sub.dns_nameservers]
        if servers and not dns.get("nameservers"):
            dns["nameservers"] = servers
        return {"cniVersion": self.s.cni_version,
                "interfaces": [{"name": self.host_if, "mac": self._host_mac()},
                               {"name": dev, "mac": port.mac, "sandbox": env.netns}],
                "ips": ips, "routes": routes, "dns": dns}

    def _host_mac(self) -> str:
        out = self.host.here(["ip", "-j", "link", "show", "dev", self.host_if],
                             "ip link").stdout
        return str(json.loads(out)[0].get("address", ""))

    def _wait_active(self, port_id: str) -> None:
        deadline = time.monotonic() + self.s.active_timeout
        while True:
            port = self.nb.get(Port, port_id)
            if port is None:
                raise CniError(ERR_FAILED, f"NB port {port_id} vanished while waiting for it to "
                                           "become ACTIVE")
            if port.status == "ACTIVE":
                return
            if time.monotonic() >= deadline:
                raise CniError(ERR_TRY_AGAIN, f"NB port {port_id} not ACTIVE after "
                                              f"{self.s.active_timeout:g}s (status "
                                              f"{port.status}): the local controller did not "
                                              "install its flows in time "
                                              "(dragonflow.active_timeout)")
            time.sleep(0.05)

    # -- DEL -------------------------------------------------------------------------
    def delete(self) -> None:
        env, s, host = self.env, self.s, self.host
        iface = host.interface(self.host_if)
        ids = iface["external_ids"] if iface else {}
        host.unplug(self.host_if)
        host.del_link(self.host_if)  # the container side goes with it
        pid = port_id_for(s.name, env.container_id, env.ifname)
        mine = self.nb.get(Port, pid)
        if mine is not None and mine.device_owner == DEVICE_OWNER:
            self._delete_port(pid)
        adopted_id = ids.get("iface-id") if ids.get("df-cni-adopted") == "true" else None
        if adopted_id is None and s.port is not None:
            adopted = self.adopted()
            adopted_id = adopted.id if adopted is not None else None
        if adopted_id is not None and ids.get("df-cni-bound") == "true":
            self._unbind(adopted_id)

    def _delete_port(self, pid: str) -> None:
        try:
            self.nb.delete(Port, pid)
        except nb_errors.NotFound:
            pass
        except nb_errors.InUse as e:
            raise CniError(ERR_FAILED, f"NB port {pid} cannot be deleted: {e}") from None

    def _unbind(self, pid: str) -> None:
        """Give an adopted port back unbound, if it is still bound here."""
        for _ in range(5):
            port = self.nb.get(Port, pid)
            b = port.binding if port is not None else None
            if port is None or b is None or b.chassis_id != self.s.chassis_id:
                return
            try:
                self.nb.update(port.replace(binding=None))
                return
            except nb_errors.StaleVersion:
                continue

    # -- CHECK -------------------------------------------------------------------------
    def check(self) -> None:
        env, s, host = self.env, self.s, self.host
        if not host.netns_exists():
            raise CniError(ERR_UNKNOWN_CONTAINER, f"CNI_NETNS: the network namespace "
                                                  f"{env.netns} does not exist")
        if s.port is not None:
            port = self.adopted()
            if port is None:
                raise CniError(ERR_CHECK, f"port: NB port {s.port!r} does not exist")
        else:
            pid = port_id_for(s.name, env.container_id, env.ifname)
            port = self.nb.get(Port, pid)
            if port is None:
                raise CniError(ERR_CHECK, f"NB port {pid} of this attachment does not exist")
        problems: list[str] = []
        b = port.binding
        if b is None or b.chassis_id != s.chassis_id:
            problems.append(f"NB port {port.id} is not bound to chassis {s.chassis_id!r}")
        if port.status != "ACTIVE":
            problems.append(f"NB port {port.id} is {port.status}, not ACTIVE")
        link = host.pod_link(env.ifname)
        if link is None:
            problems.append(f"interface {env.ifname} does not exist in {env.netns}")
        else:
            problems += self._check_link(link, port)
        if not host.link_exists(self.host_if):
            problems.append(f"the host side {self.host_if} of the veth does not exist")
        iface = host.interface(self.host_if)
        if iface is None:
            problems.append(f"{self.host_if} is not an OVS interface")
        else:
            if iface["bridge"] != s.bridge:
                problems.append(f"{self.host_if} is on bridge {iface['bridge']}, not on "
                                f"{s.bridge}")
            if iface["external_ids"].get("iface-id") != port.id:
                problems.append(f"{self.host_if} has iface-id "
                                f"{iface['external_ids'].get('iface-id')!r}, not {port.id!r}")
            if not isinstance(iface["ofport"], int) or iface["ofport"] <= 0:
                problems.append(f"{self.host_if} has no ofport ({iface['error'] or 'none'})")
        if problems:
            raise CniError(ERR_CHECK, "CHECK failed: " + "; ".join(problems))

    def _check_link(self, link: Mapping[str, Any], port: Port) -> list[str]:
        env, s = self.env, self.s
        out = []
        if str(link.get("address", "")).lower() != port.mac:
            out.append(f"{env.ifname} has MAC {link.get('address')}, not {port.mac}")
        if "UP" not in link.get("flags", []):
            out.append(f"{env.ifname} is down")
        have = {f"{a.get('local')}/{a.get('prefixlen')}" for a in link.get("addr_info", [])}
        want: set[str] = set()
        for fip in port.fixed_ips:
            sub = self.nb.get(Subnet, fip.subnet_id)
            if sub is not None:
                want.add(f"{fip.ip_address}/{sub.cidr.prefixlen}")
        for ip in (s.prev_result or {}).get("ips", []) or []:
            if isinstance(ip, dict) and isinstance(ip.get("address"), str):
                want.add(str(ipaddress.ip_interface(ip["address"])))
        missing = sorted(want - have)
        if missing:
            out.append(f"{env.ifname} lacks the address(es) {', '.join(missing)}")
        for itf in (s.prev_result or {}).get("interfaces", []) or []:
            if isinstance(itf, dict) and itf.get("name") == env.ifname and itf.get("mac") \
                    and str(itf["mac"]).lower() != str(link.get("address", "")).lower():
                out.append(f"{env.ifname} has MAC {link.get('address')}, prevResult says "
                           f"{itf['mac']}")
        net = self.nb.get(Network, port.network_id)
        want_mtu = s.mtu if s.mtu is not None else (net.mtu if net else None)
        if want_mtu is not None and link.get("mtu") != want_mtu:
            out.append(f"{env.ifname} has MTU {link.get('mtu')}, not {want_mtu}")
        return out


# --- main -------------------------------------------------------------------------------
def _version_of(raw: bytes) -> str:
    """The cniVersion an error should carry: the configuration's, if it is a string."""
    try:
        v = json.loads(raw).get("cniVersion")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return SUPPORTED_VERSIONS[-1]
    return v if isinstance(v, str) and v else SUPPORTED_VERSIONS[-1]


def execute(environ: Mapping[str, str], raw: bytes) -> dict[str, Any] | None:
    """Run one CNI command; its result (ADD, VERSION) or None; raises CniError."""
    env = parse_env(environ)
    if env.command == "VERSION":
        try:
            asked = json.loads(raw).get("cniVersion") if raw.strip() else None
        except (ValueError, AttributeError, UnicodeDecodeError):
            asked = None
        return {"cniVersion": asked if isinstance(asked, str) and asked
                else SUPPORTED_VERSIONS[-1], "supportedVersions": list(SUPPORTED_VERSIONS)}
    data = decode_config(raw)
    version = check_version(data)
    settings = parse_settings(data, version, env.command)
    plugin = Plugin(env, settings)
    try:
        if env.command == "ADD":
            return plugin.add()
        if env.command == "DEL":
            plugin.delete()
        else:
            plugin.check()
        return None
    except DriverError as e:
        raise CniError(ERR_TRY_AGAIN, f"the NB database is not reachable: {e}") from None
    except nb_errors.NbError as e:
        raise CniError(ERR_FAILED, f"NB: {e}") from None
    except ValidationError as e:
        raise CniError(ERR_CONFIG, f"NB: {e}") from None
    finally:
        plugin.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        if args[0] in ("-h", "--help"):
            print(__doc__)
            return 0
        print(f"df-cni takes no arguments (got {' '.join(args)}); see df-cni --help",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raw = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    try:
        result = execute(os.environ, raw)
    except CniError as e:
        print(json.dumps(e.to_json(_version_of(raw))))
        print(f"df-cni: error {e.code}: {e.msg}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - a CNI plugin answers in JSON, whatever happened
        LOG.exception("df-cni: unexpected failure")
        print(json.dumps(CniError(ERR_FAILED, f"unexpected failure: {type(e).__name__}: {e}"
                                  ).to_json(_version_of(raw))))
        return 1
    if result is not None:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
