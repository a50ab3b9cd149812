"""Neutron all-in-one: the real Neutron API server driving Dragonflow on the simulated nodes.

:class:`NeutronAio` writes ``neutron.conf`` + ``plugins/ml2/ml2_conf.ini`` into a temp dir
(core plugin ML2 with mechanism driver ``df``, service plugin ``df-l3``, noauth, ``fake:/``
transport, no RPC workers, one API worker, sqlite, ``[df] nb_db_url`` of an etcd or redis
server), builds the sqlite schema from Neutron's models, adds the rows the skipped data
migration would have (the default security group rule templates, see
:func:`sg_default_rule_templates`) and stamps it at the migration heads (sqlite cannot run
the migrations), then runs Neutron's WSGI app ``neutron.wsgi.api:application`` under
gunicorn (:func:`wsgi_app` is the factory gunicorn loads: it hides gunicorn's argv from
oslo.config and makes sqlite transactions queue for the write lock instead of failing) on a
free 127.0.0.1 port, and waits until ``GET /`` answers.
``stop()`` kills it by pid (master, then any worker left).

:class:`NeutronStack` puts it together with the test bed: simulated nodes running
``df-controller`` processes (``Deployment(in_process=False)``) on the same NB, an
openstacksdk connection, :meth:`NeutronStack.plug` (a namespaced VM for a Neutron port, on
the node named by its ``binding:host_id``) and :meth:`NeutronStack.wait_active` (Neutron's
own port status, which the ``df`` provisioning block holds DOWN until the chassis reports
the port's flows installed).

:class:`PrivateDb` starts a throw-away redis-server (or etcd) for ``df demo --neutron``.
Used by ``df demo --neutron``, tests/fullstack/test_neutron_aio.py and
bench/neutron_port_bench.py. Needs the ``neutron`` extra plus gunicorn and openstacksdk
(and python-openstackclient for the ``openstack`` CLI).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dragonflow.db.security import NbSecurity
    from dragonflow.sim.deploy import Deployment
    from dragonflow.sim.testbed import Testbed, Vm

NEEDED_MODULES = {"neutron": "neutron==29.0.0 (pip install '.[neutron]')",
                  "gunicorn": "gunicorn", "openstack": "openstacksdk"}
CONF_FILES = ("neutron.conf", "plugins/ml2/ml2_conf.ini")

NEUTRON_CONF = """\
[DEFAULT]
core_plugin = ml2
service_plugins = df-l3
auth_strategy = noauth
transport_url = fake:/
rpc_workers = 0
rpc_state_report_workers = 0
api_workers = 1
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
enable_traditional_dhcp = false
host = neutron-aio
state_path = {dir}
log_dir = {dir}
log_file = neutron.log
debug = {debug}
[database]
connection = {db_url}
[oslo_concurrency]
lock_path = {dir}/lock
"""

ML2_CONF = """\
[ml2]
type_drivers = local,flat,vlan,vxlan,geneve
project_network_types = vxlan
mechanism_drivers = {mech}
extension_drivers = port_security
[ml2_type_flat]
flat_networks = *
[ml2_type_vlan]
network_vlan_ranges = physnet1:100:199,ext:100:199
[ml2_type_vxlan]
vni_ranges = 1001:1999
[ml2_type_geneve]
vni_ranges = 2001:2999
[df]
nb_db_url = {nb_url}
nb_db_root = {nb_root}
{nb_security}[controller]
integration_bridge = br-int
datapath_type = {datapath_type}
"""

# Neutron's own api-paste.ini, noauth pipelines only (found next to neutron.conf).
API_PASTE = """\
[composite:neutron]
use = egg:Paste#urlmap
/: neutronversions_composite
/v2.0: neutronapi_v2_0

[composite:neutronapi_v2_0]
use = call:neutron.auth:pipeline_factory
noauth = cors http_proxy_to_wsgi request_id fake_project_id catch_errors extensions
  neutronapiapp_v2_0

[composite:neutronversions_composite]
use = call:neutron.auth:pipeline_factory
noauth = cors http_proxy_to_wsgi neutronversions

[filter:request_id]
paste.filter_factory = oslo_middleware:RequestId.factory

[filter:catch_errors]
paste.filter_factory = oslo_middleware:CatchErrors.factory

[filter:cors]
paste.filter_factory = oslo_middleware.cors:filter_factory
oslo_config_project = neutron

[filter:fake_project_id]
paste.filter_factory = neutron.auth:NoauthFakeProjectId.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware.http_proxy_to_wsgi:HTTPProxyToWSGI.factory

[filter:extensions]
paste.filter_factory = neutron.api.extensions:plugin_aware_extension_middleware_factory

[app:neutronversions]
paste.app_factory = neutron.pecan_wsgi.app:versions_factory

[app:neutronapiapp_v2_0]
paste.app_factory = neutron.api.v2.router:APIRouter.factory
"""


class AioError(RuntimeError):
    """The all-in-one could not be started or used; the message carries the log tail."""


def missing() -> list[str]:
    """What is not installed for the all-in-one (empty when everything is there)."""
    return [what for mod, what in NEEDED_MODULES.items()
            if importlib.util.find_spec(mod) is None]


def openstack_cli() -> str | None:
    """The ``openstack`` CLI next to this interpreter, else on PATH."""
    local = Path(sys.executable).parent / "openstack"
    return str(local) if local.exists() else shutil.which("openstack")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _clean_env() -> dict[str, str]:
    """This environment without OS_* variables (a user's cloud must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OS_")}


def _sqlite_begin_immediate(conn: Any) -> None:
    """Every sqlite transaction takes the write lock at BEGIN. oslo.db emits a deferred
    BEGIN; two threads of the API process (a request and the port status follower) whose
    transactions both read and then write would deadlock, and sqlite fails one of them at
    once with "database is locked" (the busy timeout only helps a transaction that can
    wait). With BEGIN IMMEDIATE they queue instead. Runs before oslo.db's own listener,
    which then sees the transaction started."""
    if conn.dialect.name == "sqlite" and "in_transaction" not in conn.info:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        conn.info["in_transaction"] = True


def wsgi_app() -> Any:
    """gunicorn's app factory (``dragonflow.sim.neutron_aio:wsgi_app()``): Neutron parses
    sys.argv with oslo.config, which must not see gunicorn's arguments."""
    import sqlalchemy
    from sqlalchemy.engine import Engine

    sqlalchemy.event.listen(Engine, "begin", _sqlite_begin_immediate)
    sys.argv = sys.argv[:1]
    from neutron.wsgi.api import application

    return application


@dataclass
class NeutronAio:
    """One Neutron API server (gunicorn, 1 worker) on sqlite, writing the NB at ``nb_url``."""

    nb_url: str
    nb_root: str = "/df/"
    base_dir: Path | None = None
    datapath_type: str = "netdev"
    mech_logger: bool = False  # also load ML2's 'logger' driver (logs every driver call)
    debug: bool = False
    port: int = 0  # 0: a free one
    nb_security: NbSecurity | None = None  # [df] TLS / credential options
    workdir: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.nb_url.startswith("memory:"):
            raise ValueError("the Neutron server is another process: the NB must be etcd:// "
                             "or redis://, not memory://")
        self.workdir = Path(tempfile.mkdtemp(prefix="neutron-", dir=self.base_dir))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.workdir / 'neutron.db'}"

    @property
    def log(self) -> Path:
        return self.workdir / "neutron.log"

    @property
    def pids(self) -> list[int]:
        """gunicorn master and its workers (for a kept demo's clean-up)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *_children(self.proc.pid)]

    def env(self) -> dict[str, str]:
        return {**_clean_env(), "OS_NEUTRON_CONFIG_DIR": str(self.workdir),
                "OS_NEUTRON_CONFIG_FILES": ";".join(CONF_FILES)}

    # --- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> NeutronAio:
        self.write_config()
        self.create_schema()
        self.launch()
        self.wait_ready(timeout)
        return self

    def write_config(self) -> None:
        d = self.workdir
        (d / "plugins/ml2").mkdir(parents=True, exist_ok=True)
        (d / "lock").mkdir(exist_ok=True)
        (d / "neutron.conf").write_text(NEUTRON_CONF.format(dir=d, debug=str(self.debug),
                                                               db_url=self.db_url))
        mech = "logger,df" if self.mech_logger else "df"
        (d / CONF_FILES[1]).write_text(ML2_CONF.format(
            mech=mech, nb_url=self.nb_url, nb_root=self.nb_root,
            nb_security=self.nb_security.ini_lines() if self.nb_security else "",
            datapath_type=self.datapath_type))
        (d / "api-paste.ini").write_text(API_PASTE)

    def create_schema(self) -> None:
        """Tables from Neutron's models, then ``stamp heads`` (one child process)."""
        log = self.workdir / "schema.log"
        with open(log, "wb") as out:
            rc = subprocess.run(
                [sys.executable, "-m", "dragonflow.sim.neutron_aio", "schema", self.db_url,
                 *(str(self.workdir / f) for f in CONF_FILES)],
                env=self.env(), stdout=out, stderr=subprocess.STDOUT, timeout=120).returncode
        if rc != 0:
            raise AioError(f"creating the Neutron schema failed (rc={rc}):\n{_tail(log)}")

    def launch(self) -> None:
        if self.proc is not None:
            raise AioError("already running")
        self.port = self.port or free_port()
        with open(self.workdir / "gunicorn.log", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
                 "--workers", "1", "--timeout", "120", "--graceful-timeout", "5",
                 "--no-control-socket", "--pid", str(self.workdir / "gunicorn.pid"),
                 "--chdir", str(self.workdir), "dragonflow.sim.neutron_aio:wsgi_app()"],
                env=self.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Until ``GET /`` answers 200; returns the seconds waited."""
        start = time.monotonic()
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise AioError(f"the Neutron API server exited:\n"
                               f"{_tail(self.workdir / 'gunicorn.log')}\n{_tail(self.log)}")
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() - start > timeout:
                raise AioError(f"Neutron API not answering after {timeout}s:\n"
                               f"{_tail(self.log)}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM the gunicorn master (it stops its worker); SIGKILL what is left."""
        from dragonflow.sim.testbed import kill_pid

        proc, self.proc = self.proc, None
        if proc is None:
            return
        workers = _children(proc.pid)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in workers:  # normally gone with the master
            kill_pid(pid, grace=2.0)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> NeutronAio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # --- clients -----------------------------------------------------------------------
    def connection(self) -> Any:
        """An openstacksdk Connection (auth type none; requests run as admin)."""
        import openstack

        return openstack.connect(auth_type="none", network_endpoint_override=self.endpoint,
                                 load_yaml_config=False, load_envvars=False)

    def cli_args(self, *args: str) -> list[str]:
        cli = openstack_cli()
        if cli is None:
            raise AioError("the openstack CLI is not installed "
                           "(pip install python-openstackclient)")
        return [cli, "--os-auth-type", "none", "--os-endpoint", self.endpoint, *args]

    def cli(self, *args: str, parse: bool = True) -> Any:
        """Run ``openstack ...``; with ``parse`` add ``-f json`` and return the parsed output."""
        argv = self.cli_args(*args, *(("-f", "json") if parse else ()))
        proc = subprocess.run(argv, env=_clean_env(), capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise AioError(f"{' '.join(argv)} failed (rc={proc.returncode}):\n"
                           f"{proc.stderr.strip()}")
        return json.loads(proc.stdout) if parse and proc.stdout.strip() else proc.stdout

    def provisioning_blocks(self, port_id: str) -> set[str]:
        """The entities still blocking a port from going ACTIVE (read from Neutron's DB)."""
        db = sqlite3.connect(f"file:{self.workdir / 'neutron.db'}?mode=ro", uri=True,
                             timeout=10)
        try:
            rows = db.execute(
                "SELECT b.entity FROM provisioningblocks b JOIN ports p "
                "ON p.standard_attr_id = b.standard_attr_id WHERE p.id = ?", (port_id,))
            return {r[0] for r in rows}
        finally:
            db.close()


# --- the whole thing: nodes + controllers + Neutron -------------------------------------
@dataclass
class NeutronStack:
    """Simulated nodes with ``df-controller`` processes and the Neutron API, on one NB."""

    dep: Deployment
    neutron: NeutronAio
    _conn: Any = None

    @classmethod
    def start(cls, bed: Testbed, nb_url: str, nodes: Sequence[tuple[str, str]],
              nb_root: str = "/df/", mech_logger: bool = False,
              nb_security: NbSecurity | None = None, physnets: tuple[str, ...] = (),
              gateways: Sequence[str] = ()) -> NeutronStack:
        """Neutron comes up while the nodes and their controllers do; every node maps
        ``physnets`` (Deployment.add_node), those named in ``gateways`` may host SNAT."""
        from dragonflow.db.connect import open_nb
        from dragonflow.sim.deploy import Deployment

        nb = open_nb(nb_url, root=nb_root, security=nb_security)
        dep = Deployment(bed, nb, nb_url, in_process=False, nb_security=nb_security)
        neutron = NeutronAio(nb_url, nb_root, base_dir=bed.rundir, mech_logger=mech_logger,
                             nb_security=nb_security)
        with ThreadPoolExecutor(max_workers=1) as pool:
            up = pool.submit(neutron.start)
            try:
                for name, ip in nodes:
                    dep.add_node(name, ip, physnets=physnets, gateway=name in gateways)
                up.result()
            except BaseException:
                futures.wait([up])
                dep.stop()
                neutron.stop()
                nb.driver.close()
                raise
        return cls(dep, neutron)

    @property
    def bed(self) -> Testbed:
        return self.dep.bed

    @property
    def conn(self) -> Any:
        if self._conn is None:
            self._conn = self.neutron.connection()
        return self._conn

    def stop(self) -> None:
        """Neutron and the controllers; the test bed is the caller's to tear down."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        try:
            self.neutron.stop()
        finally:
            self.dep.stop()
            self.dep.nb.driver.close()

    def plug(self, port_id: str, name: str) -> Vm:
        """A VM for a Neutron port: its MAC, its first IPv4 (and IPv6) fixed IP with the
        subnet's prefix and gateway, the network's MTU, on the node of its binding host."""
        net_api = self.conn.network
        port = net_api.get_port(port_id)
        node = self.bed.nodes.get(port.binding_host_id or "")
        if node is None:
            raise AioError(f"port {port_id}: binding:host_id {port.binding_host_id!r} is not "
                           f"a simulated node ({', '.join(self.bed.nodes)})")
        v4: tuple[str, str | None] | None = None
        v6: tuple[str, str | None] | None = None
        for fixed in port.fixed_ips:
            sub = net_api.get_subnet(fixed["subnet_id"])
            addr = f"{fixed['ip_address']}/{sub.cidr.split('/')[1]}"
            if sub.ip_version == 4 and v4 is None:
                v4 = (addr, sub.gateway_ip)
            elif sub.ip_version == 6 and v6 is None:
                v6 = (addr, sub.gateway_ip)
        if v4 is None:
            raise AioError(f"port {port_id} has no IPv4 address: {port.fixed_ips}")
        mtu = net_api.get_network(port.network_id).mtu or 1450
        return self.bed.add_vm(node, name, port.mac_address, v4[0], port.id, mtu=mtu,
                               gateway=v4[1], ipv6=v6[0] if v6 else None,
                               gateway6=v6[1] if v6 else None)

    def status(self, port_id: str) -> str:
        return str(self.conn.network.get_port(port_id).status)

    def wait_status(self, port_ids: Sequence[str], status: str = "ACTIVE",
                    timeout: float = 30.0, since: float | None = None) -> dict[str, float]:
        """Until Neutron reports every port in ``status``; per port, the seconds from
        ``since`` (default: now) until it was seen (polled back to back)."""
        start = time.monotonic() if since is None else since
        seen: dict[str, float] = {}
        while len(seen) < len(port_ids):
            for pid in port_ids:
                if pid not in seen and self.status(pid) == status:
                    seen[pid] = time.monotonic() - start
            if len(seen) < len(port_ids):
                if time.monotonic() - start > timeout:
                    left = {p: self.status(p) for p in port_ids if p not in seen}
                    raise TimeoutError(f"ports not {status} after {timeout}s: {left}; "
                                       f"Neutron log:\n{_tail(self.neutron.log, 2000)}")
                time.sleep(0.005)
        return seen

    def wait_active(self, port_ids: Sequence[str], timeout: float = 30.0) -> dict[str, float]:
        return self.wait_status(port_ids, "ACTIVE", timeout)


# --- a private NB server for the demo ---------------------------------------------------
@dataclass
class PrivateDb:
    """redis-server (or etcd when ``kind="etcd"``, ovsdb-server serving the DF_NB database
    when ``kind="ovsdb"``) on a free loopback port in its own dir."""

    kind: str = "redis"
    base_dir: Path | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    dir: Path = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in ("redis", "etcd", "ovsdb"):
            raise ValueError(f"private DB kind {self.kind!r}: redis, etcd or ovsdb")
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.kind}-", dir=self.base_dir))

    @property
    def url(self) -> str:
        if self.kind == "ovsdb":
            return f"ovsdb:tcp:127.0.0.1:{self.port}"
        return f"{self.kind}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> PrivateDb:
        self.port = free_port()
        if self.kind == "ovsdb":
            from dragonflow.db.drivers.ovsdb import create_db_file

            db = str(self.dir / "nb.db")
            try:
                create_db_file(db)
            except RuntimeError as e:
                raise AioError(str(e)) from None
            cmd = ["ovsdb-server", db, f"--remote=ptcp:{self.port}:127.0.0.1",
                   f"--unixctl={self.dir / 'ovsdb-server.ctl'}",
                   f"--log-file={self.dir / 'ovsdb-server.log'}", "-vconsole:off"]
        elif self.kind == "redis":
            cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                   "--daemonize", "no", "--logfile", str(self.dir / "server.log")]
        else:
            client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{free_port()}"
            cmd = ["etcd", "--name", "df", "--data-dir", str(self.dir / "data"),
                   "--listen-client-urls", client, "--advertise-client-urls", client,
                   "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                   "--initial-cluster", f"df={peer}", "--log-level", "warn"]
        binary = shutil.which(cmd[0])
        if binary is None:
            raise AioError(f"{cmd[0]} is not installed")
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AioError(f"{cmd[0]} did not come up on port {self.port}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                if self.kind == "redis":
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
                if self.kind == "ovsdb":
                    return True
        except OSError:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                        timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- child process: the schema ----------------------------------------------------------
# The alembic migration that creates ``securitygroupdefaultrules`` and fills it with the
# default security group rule templates (Neutron 2023.2+). The models have the table but
# not the rows, and without them every new group -- the default one too -- has no rules.
SG_DEFAULT_RULES_MIGRATION = "c33da356b165"


def sg_default_rule_templates() -> list[dict[str, Any]]:
    """The rule templates migration ``c33da356b165`` (2023.2/expand/
    c33da356b165_security_group_default_rules.py) inserts, read from that file's own
    ``default_template_rules``: egress IPv4 and IPv6 to anywhere for every group, ingress
    IPv4 and IPv6 from the group itself (``remote_group_id`` ``PARENT``) for the default
    group only. Each is a fresh dict (the migration pops ``description`` from its rows)."""
    from neutron.db.migration import alembic_migrations

    versions = Path(alembic_migrations.__file__).parent / "versions"
    found = sorted(versions.glob(f"*/*/{SG_DEFAULT_RULES_MIGRATION}_*.py"))
    if len(found) != 1:
        raise AioError(f"Neutron migration {SG_DEFAULT_RULES_MIGRATION} (default security "
                       f"group rules) not found once under {versions}: {found}")
    spec = importlib.util.spec_from_file_location(
        f"_neutron_migration_{SG_DEFAULT_RULES_MIGRATION}", found[0])
    if spec is None or spec.loader is None:
        raise AioError(f"cannot load {found[0]}")
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    return [dict(rule) for rule in migration.default_template_rules]


def _fill_sg_default_rules(engine: Any) -> int:
    """What migration ``c33da356b165`` does after creating the table: one
    ``SecurityGroupDefaultRule`` (with its standard attributes row, resource type
    ``securitygroupdefaultrules``, carrying the description) per template. Only into an
    empty table, as the migration only fills the table it has just created. Returns the
    number of rows added."""
    import sqlalchemy as sa
    from neutron.db.models.securitygroup_default_rules import SecurityGroupDefaultRule
    from sqlalchemy import orm

    with orm.Session(engine) as session, session.begin():
        if session.scalar(sa.select(sa.func.count()).select_from(SecurityGroupDefaultRule)):
            return 0
        rules = sg_default_rule_templates()
        session.add_all(SecurityGroupDefaultRule(**rule) for rule in rules)
    return len(rules)


def _create_schema(db_url: str, conf_files: list[str]) -> None:
    """Neutron's tables from its models (sqlite cannot ALTER constraints, so no upgrade),
    the data the skipped migrations would have inserted (the default security group rule
    templates), then ``neutron-db-manage stamp heads`` in this process."""
    import sqlalchemy as sa
    from neutron.db.migration import cli
    from neutron.db.migration.models import head

    engine = sa.create_engine(db_url)
    head.get_metadata().create_all(engine)
    _fill_sg_default_rules(engine)
    engine.dispose()
    sys.argv = ["neutron-db-manage", *(a for f in conf_files for a in ("--config-file", f)),
                "stamp", "heads"]
    cli.main()


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "schema":
        _create_schema(sys.argv[2], sys.argv[3:])
    else:
        sys.exit("usage: python -m dragonflow.sim.neutron_aio schema DB_URL CONF_FILE...")
