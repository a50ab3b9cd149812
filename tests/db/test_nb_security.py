"""TLS and authentication to the NB database, against real servers (no mocks).

A throw-away PKI (CA, server certificate for 127.0.0.1/localhost, client certificate) is made
with ``cryptography``; the servers are:

* ``etcd_cert``: etcd serving TLS only and demanding a client certificate (--client-cert-auth);
* ``etcd_auth``: etcd serving TLS (no client certificate needed) with user authentication on:
  user ``df`` (a role with readwrite on every key), ``nobody`` (no role), tokens that expire
  after 2 s idle (--auth-token-ttl 2), so renewal happens for real;
* ``redis_tls``: redis-server with TLS only (--port 0 --tls-port), tls-auth-clients yes,
  ``requirepass`` for the default user and an ACL user ``df`` whose password needs
  percent-encoding in a url.

Every server is stopped and every temp dir removed in the fixtures' finalizers. Besides the
focused tests (drivers, df-db and df-controller as processes, the Neutron plugin's config, and
df-controller processes of the simulated test bed pinging over a TLS + password etcd), a
subset of the driver conformance suites runs on three secured backends (imported below: the
``backend`` fixture of this module overrides tests/db/conftest.py's).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from dragonflow import conf as dfconf
from dragonflow.db.connect import open_driver, open_nb
from dragonflow.db.driver import DriverError, Put
from dragonflow.db.drivers.etcd import EtcdDriver, parse_url
from dragonflow.db.drivers.redis import RedisDriver
from dragonflow.db.nbapi import NbApi
from dragonflow.db.security import NbSecurity, SecurityConfigError, redact_url
from dragonflow.db.stream import Subscription
from dragonflow.model import Network
from dragonflow.sim.deploy import Deployment
from dragonflow.sim.testbed import Testbed
from tests.db.conftest import Backend
from tests.db.helpers import Collector

# A subset of the conformance suites, re-run here on the secured backends (see the docstring).
from tests.db.test_kv_conformance import (  # noqa: F401
    test_increment_unique_under_concurrency,
    test_put_get_delete_and_prefix,
    test_watch_delivers_every_change_in_order,
    test_watch_resumes_after_connection_cut_without_loss,
)
from tests.db.test_nb_conformance import (  # noqa: F401
    Mirror,
    net,
    test_crud_roundtrip,
    test_stale_write_rejected_and_nothing_changes,
    test_subscriber_cut_off_applies_every_write_in_order,
    test_subscription_topic_filtering,
)
from tests.fixtures.etcd_server import EtcdServer
from tests.fixtures.etcd_server import require_binary as require_etcd
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.redis_server import require_binary as require_redis
from tests.fixtures.tcpproxy import TcpProxy
from tests.fixtures.tls import Pki, make_pki
from tests.unit.test_cli_db import NET

pytestmark = pytest.mark.servers

_SCRIPT = Path(sys.executable).parent / "df-db"
DF_DB = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dragonflow.cli.db"]
ROOT_PW = "root-pw"
DF_PW = "df-pw"
REDIS_PW = "default-pw"
REDIS_ACL_PW = "p@ss:w/rd%"  # every character a url must escape
TOKEN_TTL = 2  # seconds an idle etcd token lives
FAIL_FAST = 5.0  # a refused connection must fail well before the 10 s request timeout


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    d = Path(tempfile.mkdtemp(prefix="df-pki-"))
    try:
        yield make_pki(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def etcd_cert(pki: Pki) -> Iterator[EtcdServer]:
    require_etcd()
    server = EtcdServer(tls=pki, client_cert_auth=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def etcd_auth(pki: Pki) -> Iterator[EtcdServer]:
    require_etcd()
    server = EtcdServer(tls=pki, extra_args=["--auth-token-ttl", str(TOKEN_TTL)]).start()
    try:
        for args in (["user", "add", f"root:{ROOT_PW}"], ["role", "add", "df"],
                     ["role", "grant-permission", "df", "readwrite", "--from-key", ""],
                     ["user", "add", f"df:{DF_PW}"], ["user", "grant-role", "df", "df"],
                     ["user", "add", "nobody:nobody-pw"], ["auth", "enable"]):
            res = server.etcdctl(*args, check=False)
            assert res.returncode == 0, f"etcdctl {args}: {res.stderr}"
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_tls(pki: Pki) -> Iterator[RedisServer]:
    require_redis("redis-server")
    acl = ["--user", "df", "on", f">{REDIS_ACL_PW}", "~*", "&*", "+@all"]
    server = RedisServer(tls=pki, password=REDIS_PW, extra_args=acl).start()
    try:
        yield server
    finally:
        server.stop()


def client_tls(pki: Pki, **kw: str) -> NbSecurity:
    """The PKI's CA and client certificate, plus ``kw`` (user, password...)."""
    return NbSecurity(ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                      key_file=str(pki.client_key), **kw)


class Closer:
    """Anything to undo at the end of a test, as a ``close()``."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.close = fn


@pytest.fixture
def closing() -> Iterator[list]:
    """Drivers and subscriptions to close at the end of the test (``closing.append(x)``)."""
    made: list = []
    yield made
    for x in reversed(made):
        x.close()


def nb_on(closing: list, url: str, security: NbSecurity | None, root: str | None = None,
          timeout: float = 10.0) -> NbApi:
    nb = open_nb(url, root=root or f"/t{uuid.uuid4().hex[:10]}/", timeout=timeout,
                 security=security)
    closing.append(nb.driver)
    return nb


def crud_and_subscription(closing: list, writer: NbApi, reader: NbApi) -> None:
    """NbApi CRUD through ``writer`` while a Subscription on ``reader`` follows it."""
    mirror = Mirror()
    sub = Subscription(reader, mirror.on_change, mirror.on_resync,
                       from_revision=reader.revision() + 1)
    closing.append(sub)
    n = writer.create(net(1))
    assert writer.get(Network, "net1") == n
    writer.update(n.replace(name="renamed"))
    writer.create(net(2))
    writer.delete(Network, "net2")
    assert mirror.wait(lambda: ("network", "net1") in mirror.objs
                       and mirror.objs[("network", "net1")].name == "renamed"
                       and len(mirror.revisions) == 4)
    assert ("network", "net2") not in mirror.objs
    assert [x.id for x in writer.list(Network)] == ["net1"]
    assert mirror.resyncs == 0


def refused(url: str, security: NbSecurity | None, *reasons: str) -> str:
    """Opening ``url`` and reading fails fast with a DriverError naming the url and each of
    ``reasons``; returns the message."""
    start = time.monotonic()
    drv = open_driver(url, timeout=10.0, security=security)
    try:
        with pytest.raises(DriverError) as err:
            drv.get_prefix("/")
    finally:
        drv.close()
    assert time.monotonic() - start < FAIL_FAST, "a refused connection must not hang"
    msg = str(err.value)
    assert redact_url(url) in msg
    for r in reasons:
        assert r in msg, msg
    return msg


# --- the secured backends for the imported conformance tests --------------------------------
@pytest.fixture(params=["etcd-cert", "etcd-password", "redis-password"])
def backend(request: pytest.FixtureRequest, pki: Pki) -> Iterator[Backend]:
    if request.param == "etcd-cert":
        server = request.getfixturevalue("etcd_cert")
        b = Backend("etcd", server.url, ("127.0.0.1", server.port), client_tls(pki))
    elif request.param == "etcd-password":
        server = request.getfixturevalue("etcd_auth")
        b = Backend("etcd", server.url, ("127.0.0.1", server.port),
                    NbSecurity(ca_file=str(pki.ca), user="df", password=DF_PW))
    else:
        server = request.getfixturevalue("redis_tls")
        b = Backend("redis", server.url, ("127.0.0.1", server.port),
                    client_tls(pki, password=REDIS_PW))
    try:
        yield b
    finally:
        b.close()


# --- options and urls (no server) ----------------------------------------------------------
def test_options_build_one_security_value(tmp_path: Path) -> None:
    ini = tmp_path / "df.ini"
    ini.write_text("[df]\nnb_db_url = rediss://127.0.0.1:1/ns\nnb_db_ca_file = /ca.pem\n"
                   "nb_db_cert_file = /c.pem\nnb_db_key_file = /k.pem\nnb_db_user = alice\n"
                   "nb_db_password = pa$$ss\n")
    conf = dfconf.new_conf()
    dfconf.load(conf, ["--config-file", str(ini)], "test")
    sec = NbSecurity.from_conf(conf.df)
    assert sec == NbSecurity("/ca.pem", "/c.pem", "/k.pem", "alice", "pa$ss")
    assert "pa$ss" not in repr(sec) and "password=***" in repr(sec)
    assert NbSecurity.from_conf(dfconf.new_conf().df) == NbSecurity()  # all unset
    # written back for another process, it reads the same
    ini.write_text("[df]\n" + sec.ini_lines())
    conf = dfconf.new_conf()
    dfconf.load(conf, ["--config-file", str(ini)], "test")
    assert NbSecurity.from_conf(conf.df) == sec


@pytest.mark.parametrize(("kw", "says"), [
    ({"cert_file": "/c.pem"}, "[df] nb_db_cert_file is set but [df] nb_db_key_file is not"),
    ({"key_file": "/k.pem"}, "[df] nb_db_key_file is set but [df] nb_db_cert_file is not"),
])
def test_a_certificate_without_its_key_is_a_config_error(kw: dict, says: str) -> None:
    with pytest.raises(SecurityConfigError, match="client certificate needs both") as err:
        NbSecurity(**kw)
    assert says in str(err.value)


@pytest.mark.parametrize("url", ["etcd://127.0.0.1:2379", "redis://127.0.0.1:6379/ns"])
def test_tls_files_with_a_plaintext_url_are_refused(url: str, pki: Pki) -> None:
    with pytest.raises(SecurityConfigError, match="is not a TLS url: use (etcds|rediss)://"):
        open_driver(url, security=NbSecurity(ca_file=str(pki.ca)))


def test_unreadable_or_mismatched_tls_files_are_named(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(SecurityConfigError, match=r"\[df\] nb_db_ca_file: cannot read"):
        open_driver("etcds://127.0.0.1:2379", security=NbSecurity(ca_file=str(tmp_path / "x")))
    mismatched = NbSecurity(cert_file=str(pki.client_cert), key_file=str(pki.server_key))
    for url in ("etcds://127.0.0.1:2379", "rediss://127.0.0.1:6379"):
        with pytest.raises(SecurityConfigError, match="nb_db_key_file .* not a usable PEM"):
            open_driver(url, security=mismatched)


def test_etcd_user_and_password_go_together_and_never_in_the_url() -> None:
    with pytest.raises(SecurityConfigError, match="nb_db_user is set but .*nb_db_password"):
        EtcdDriver("etcd://127.0.0.1:2379", security=NbSecurity(user="df"))
    with pytest.raises(ValueError, match="credentials go in") as err:
        EtcdDriver("etcd://df:secret@127.0.0.1:2379")
    assert "secret" not in str(err.value)
    assert parse_url("etcds://localhost:1,127.0.0.1:2") == (
        "ipv4:127.0.0.1:1,127.0.0.1:2", True, "localhost")


def test_redis_url_credentials_take_precedence_field_by_field() -> None:
    opts = NbSecurity(user="opt-user", password="opt-pw")
    both = RedisDriver("redis://u%40x:p%3Aw%25@127.0.0.1:1/ns", security=opts)
    user_only = RedisDriver("redis://url-user@127.0.0.1:1/ns", security=opts)
    pw_only = RedisDriver("redis://:url-pw@127.0.0.1:1/ns", security=opts)
    none = RedisDriver("redis://127.0.0.1:1/ns", security=opts)
    try:
        assert (both._user, both._password) == ("u@x", "p:w%")
        assert (user_only._user, user_only._password) == ("url-user", "opt-pw")
        assert (pw_only._user, pw_only._password) == ("opt-user", "url-pw")
        assert (none._user, none._password) == ("opt-user", "opt-pw")
        assert both.url == "redis://u%40x:***@127.0.0.1:1/ns"  # what errors and logs show
    finally:
        for d in (both, user_only, pw_only, none):
            d.close()
    with pytest.raises(SecurityConfigError, match="has no password"):
        RedisDriver("redis://bob@127.0.0.1:1/ns")


# --- etcd over TLS with a client certificate -----------------------------------------------
def test_etcd_tls_client_cert_crud_and_subscription(etcd_cert: EtcdServer, pki: Pki,
                                                    closing: list) -> None:
    root = f"/t{uuid.uuid4().hex[:10]}/"
    writer = nb_on(closing, etcd_cert.url, client_tls(pki), root)
    # the certificate is valid for localhost too; an endpoint list checks the first host name
    other = f"etcds://localhost:{etcd_cert.port},127.0.0.1:{etcd_cert.port}"
    reader = nb_on(closing, other, client_tls(pki), root)
    crud_and_subscription(closing, writer, reader)


def test_etcd_refuses_a_client_without_certificate(etcd_cert: EtcdServer, pki: Pki) -> None:
    refused(etcd_cert.url, NbSecurity(ca_file=str(pki.ca)),
            "TLS handshake failed", "client certificate", "nb_db_cert_file")


def test_etcd_refuses_a_certificate_of_another_ca(etcd_cert: EtcdServer, pki: Pki) -> None:
    rogue = NbSecurity(ca_file=str(pki.ca), cert_file=str(pki.rogue_cert),
                       key_file=str(pki.rogue_key))
    refused(etcd_cert.url, rogue, "TLS handshake failed", str(pki.rogue_cert))


def test_etcd_untrusted_server_is_refused(etcd_cert: EtcdServer, pki: Pki) -> None:
    untrusted = NbSecurity(ca_file=str(pki.other_ca), cert_file=str(pki.client_cert),
                           key_file=str(pki.client_key))
    refused(etcd_cert.url, untrusted, "TLS handshake failed",
            "certificate is not trusted by [df] nb_db_ca_file", "CERTIFICATE_VERIFY_FAILED")
    # without nb_db_ca_file: the system trust store, which does not know the test CA
    system = NbSecurity(cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    refused(etcd_cert.url, system, "not trusted by the system trust store")


def test_etcd_plaintext_client_to_a_tls_server_gets_a_hint(etcd_cert: EtcdServer) -> None:
    refused(f"etcd://127.0.0.1:{etcd_cert.port}", None, "unreachable", "etcds://")


# --- etcd with user authentication ---------------------------------------------------------
def test_etcd_password_crud_and_subscription(etcd_auth: EtcdServer, pki: Pki,
                                             closing: list) -> None:
    sec = NbSecurity(ca_file=str(pki.ca), user="df", password=DF_PW)
    root = f"/t{uuid.uuid4().hex[:10]}/"
    crud_and_subscription(closing, nb_on(closing, etcd_auth.url, sec, root),
                          nb_on(closing, etcd_auth.url, sec, root))


def test_etcd_wrong_password_is_refused(etcd_auth: EtcdServer, pki: Pki) -> None:
    msg = refused(etcd_auth.url, NbSecurity(ca_file=str(pki.ca), user="df", password="wrong"),
                  "authentication failed: invalid user or password (user 'df')")
    assert msg.startswith(f"etcd {etcd_auth.url}: authentication failed")
    assert "wrong" not in msg
    refused(etcd_auth.url, NbSecurity(ca_file=str(pki.ca)),
            "authentication required", "nb_db_user and nb_db_password are not set")
    refused(etcd_auth.url, NbSecurity(ca_file=str(pki.ca), user="nobody", password="nobody-pw"),
            "permission denied: etcd user 'nobody' has no role")


def test_etcd_expired_token_is_renewed_for_calls_and_watch_streams(
        etcd_auth: EtcdServer, pki: Pki, closing: list) -> None:
    """The token expires while idle; the next call, and a watch stream re-created after a
    cut link, authenticate again by themselves and nothing is lost."""
    sec = NbSecurity(ca_file=str(pki.ca), user="df", password=DF_PW)
    prefix = f"/t{uuid.uuid4().hex[:10]}/"
    writer = EtcdDriver(etcd_auth.url, timeout=10.0, security=sec)
    closing.append(writer)
    proxy = TcpProxy("127.0.0.1", etcd_auth.port)
    proxy.start()
    closing.append(Closer(proxy.stop))
    reader = EtcdDriver(f"etcds://127.0.0.1:{proxy.port}", timeout=10.0, security=sec)
    closing.append(reader)
    got = Collector()
    w = reader.watch(prefix, reader.current_revision() + 1, got.on_event, got.on_compacted)
    closing.append(Closer(w.cancel))
    writer.commit([], [Put(prefix + "a", b"1")])
    assert len(got.wait_for(1)) == 1
    old_writer, old_reader = writer._token, reader._token
    time.sleep(TOKEN_TTL + 1.5)  # both tokens expire
    writer.commit([], [Put(prefix + "b", b"2")])  # renews the writer's token
    assert writer._token and writer._token != old_writer
    proxy.sever()  # the watch stream is re-created with the expired token first
    writer.commit([], [Put(prefix + "c", b"3")])
    events = got.wait_for(3)
    assert [e.key for e in events] == [prefix + "a", prefix + "b", prefix + "c"]
    assert w.reconnects >= 1 and w.error is None
    assert reader.get(prefix + "c") is not None
    assert reader._token and reader._token != old_reader


# --- redis over TLS with client certificates and passwords ---------------------------------
def test_redis_tls_password_crud_and_subscription(redis_tls: RedisServer, pki: Pki,
                                                  closing: list) -> None:
    url = f"{redis_tls.url}/t{uuid.uuid4().hex[:10]}"
    sec = client_tls(pki, password=REDIS_PW)
    crud_and_subscription(closing, nb_on(closing, url, sec, "/df/"),
                          nb_on(closing, url, sec, "/df/"))


def test_redis_acl_user_from_the_url_wins_over_the_options(redis_tls: RedisServer, pki: Pki,
                                                           closing: list) -> None:
    ns = f"t{uuid.uuid4().hex[:10]}"
    url = f"rediss://df:{quote(REDIS_ACL_PW, safe='')}@localhost:{redis_tls.port}/{ns}"
    wrong_opts = client_tls(pki, user="nobody", password="wrong")
    crud_and_subscription(closing, nb_on(closing, url, wrong_opts, "/df/"),
                          nb_on(closing, url, client_tls(pki), "/df/"))


def test_redis_refuses_a_client_without_certificate(redis_tls: RedisServer, pki: Pki) -> None:
    # TLS 1.3: the refusal arrives as an alert or as a closed connection, depending on timing
    refused(f"{redis_tls.url}/ns", NbSecurity(ca_file=str(pki.ca), password=REDIS_PW),
            "TLS", "client certificate", "nb_db_cert_file")


def test_redis_refuses_a_certificate_of_another_ca(redis_tls: RedisServer, pki: Pki) -> None:
    rogue = NbSecurity(ca_file=str(pki.ca), cert_file=str(pki.rogue_cert),
                       key_file=str(pki.rogue_key), password=REDIS_PW)
    refused(f"{redis_tls.url}/ns", rogue, "TLS", str(pki.rogue_cert))  # alert or EOF


def test_redis_untrusted_server_is_refused(redis_tls: RedisServer, pki: Pki) -> None:
    untrusted = NbSecurity(ca_file=str(pki.other_ca), cert_file=str(pki.client_cert),
                           key_file=str(pki.client_key), password=REDIS_PW)
    refused(f"{redis_tls.url}/ns", untrusted, "TLS handshake failed",
            "certificate is not trusted by [df] nb_db_ca_file")


def test_redis_wrong_or_missing_password_is_refused(redis_tls: RedisServer, pki: Pki) -> None:
    msg = refused(f"{redis_tls.url}/ns", client_tls(pki, password="wrong"),
                  "authentication failed: invalid user or password (the default user")
    assert msg.startswith(f"redis {redis_tls.url}/ns: ")
    msg = refused(f"rediss://df:wrong-pw@127.0.0.1:{redis_tls.port}/ns", client_tls(pki),
                  "authentication failed: invalid user or password (user 'df'")
    assert "wrong-pw" not in msg and "df:***@" in msg
    refused(f"{redis_tls.url}/ns", client_tls(pki), "authentication required",
            "nb_db_password")


# --- the console scripts with the options in a config file -----------------------------------
def df_db(ini: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DF_DB, "--config-file", str(ini), *args], capture_output=True,
                          text=True, timeout=60, check=False)


def write_ini(path: Path, url: str, root: str, sec: NbSecurity) -> Path:
    path.write_text(f"[df]\nnb_db_url = {url}\nnb_db_root = {root}\nnb_db_timeout = 10\n"
                    + sec.ini_lines())
    return path


@pytest.mark.parametrize("server", ["etcd_cert", "etcd_auth", "redis_tls"])
def test_df_db_uses_the_options_of_its_config_file(server: str, request: pytest.FixtureRequest,
                                                   pki: Pki, tmp_path: Path) -> None:
    srv = request.getfixturevalue(server)
    tag = f"t{uuid.uuid4().hex[:10]}"
    url, root = (f"{srv.url}/{tag}", "/df/") if server == "redis_tls" else (srv.url, f"/{tag}/")
    sec = {"etcd_cert": client_tls(pki),
           "etcd_auth": NbSecurity(ca_file=str(pki.ca), user="df", password=DF_PW),
           "redis_tls": client_tls(pki, password=REDIS_PW)}[server]
    ini = write_ini(tmp_path / "df.ini", url, root, sec)
    doc = tmp_path / "net.json"
    doc.write_text(json.dumps(NET))
    res = df_db(ini, "add", str(doc))
    assert res.returncode == 0, res.stderr
    res = df_db(ini, "ls", "network", "--json")
    assert res.returncode == 0, res.stderr
    assert [o["id"] for o in json.loads(res.stdout)] == [NET["id"]]
    if server == "redis_tls":  # --db overrides the url; the credentials in it come first
        other = f"rediss://df:{quote(REDIS_ACL_PW, safe='')}@127.0.0.1:{srv.port}/{tag}"
        res = df_db(ini, "--db", other, "ls", "network")
        assert res.returncode == 0 and NET["id"] in res.stdout, res.stderr
    # the same file with a wrong password: a one-line error, no traceback, no password
    bad = NbSecurity(sec.ca_file, sec.cert_file, sec.key_file, sec.user,
                     "wrong-pw" if sec.password else None)
    if sec.password is None:  # etcd_cert: leave out the client certificate instead
        bad = NbSecurity(ca_file=str(pki.ca))
    ini = write_ini(tmp_path / "bad.ini", url, root, bad)
    start = time.monotonic()
    res = df_db(ini, "ls", "network")
    assert res.returncode == 1
    assert time.monotonic() - start < 30
    lines = [x for x in res.stderr.splitlines() if x.startswith("df-db: error:")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr and "wrong-pw" not in res.stderr
    assert redact_url(url) in lines[0]
    reason = "client certificate" if server == "etcd_cert" else \
        "authentication failed: invalid user or password"
    assert reason in lines[0], lines[0]


def test_df_controller_names_bad_security_options_without_a_traceback(tmp_path: Path) -> None:
    ini = tmp_path / "df.ini"
    ini.write_text("[df]\nnb_db_url = etcds://127.0.0.1:2379\nnb_db_cert_file = /c.pem\n")
    res = subprocess.run([sys.executable, "-m", "dragonflow.cli.controller", "--config-file",
                          str(ini)], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2, res.stderr
    assert "[df] nb_db_cert_file is set but [df] nb_db_key_file is not" in res.stderr
    assert "Traceback" not in res.stderr


def test_neutron_plugin_nb_from_the_config_neutron_aio_writes(redis_tls: RedisServer, pki: Pki,
                                                                tmp_path: Path) -> None:
    """NeutronAio writes the [df] security options into ml2_conf.ini; the plugin's
    nb_from_conf reads them (no Neutron server is started)."""
    from oslo_config import cfg

    from dragonflow.neutron.config import nb_from_conf, register_opts
    from dragonflow.sim.neutron_aio import CONF_FILES, NeutronAio

    aio = NeutronAio(f"{redis_tls.url}/t{uuid.uuid4().hex[:10]}", base_dir=tmp_path,
                     nb_security=client_tls(pki, password=REDIS_PW))
    aio.write_config()
    conf = cfg.ConfigOpts()
    register_opts(conf)
    conf(["--config-file", str(aio.workdir / CONF_FILES[1])], project="neutron")
    nb = nb_from_conf(conf)
    try:
        nb.create(net(7))
        assert [n.id for n in nb.list(Network)] == ["net7"]
    finally:
        nb.driver.close()


# --- df-controller processes on a secured NB (the simulated test bed) -----------------------
@pytest.mark.fullstack
def test_df_controller_processes_over_tls_and_password(etcd_auth: EtcdServer, pki: Pki,
                                                       testbed: Testbed) -> None:
    """Deployment writes the [df] security options into each controller's config file; the
    controllers register, program their bridges and the VMs ping each other."""
    sec = NbSecurity(ca_file=str(pki.ca), user="df", password=DF_PW)
    nb = open_nb(etcd_auth.url, root=f"/fs{uuid.uuid4().hex[:8]}/", security=sec)
    dep = Deployment(testbed, nb, etcd_auth.url, in_process=False, nb_security=sec)
    try:
        dep.add_node("hv1", "10.255.0.11")
        dep.add_node("hv2", "10.255.0.12")
        conf = (dep.processes["hv1"].node.rundir / "dragonflow.ini").read_text()
        assert "nb_db_user = df" in conf and "nb_db_ca_file" in conf
        dep.network("blue", "vxlan", 700, "10.2.0.0/24")
        a = dep.vm(testbed.nodes["hv1"], "a", "blue", "fa:16:3e:10:00:01", "10.2.0.11")
        b = dep.vm(testbed.nodes["hv2"], "b", "blue", "fa:16:3e:10:00:02", "10.2.0.12")
        dep.wait_active(["a-port", "b-port"], timeout=60)
        assert a.ping(b.ip, count=2, timeout=3)
    finally:
        dep.stop()
        nb.driver.close()
