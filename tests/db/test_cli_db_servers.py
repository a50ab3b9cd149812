"""df-db as a separate process against real etcd and redis servers.

Each test gets its own database (etcd: a unique nb_db_root; redis: a unique namespace) chosen
through a config file, so the oslo.config path is exercised too. ``watch`` runs as its own
process while another df-db process writes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dragonflow.db.connect import open_driver
from tests.unit.test_cli_db import FULL, NET, PORT, SUBNET

pytestmark = pytest.mark.servers

_SCRIPT = Path(sys.executable).parent / "df-db"
DF_DB = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dragonflow.cli.db"]
TIMEOUT = 30.0


class Cli:
    """df-db processes bound to one private database through a config file."""

    def __init__(self, scheme: str, server_url: str, tmp: Path) -> None:
        tag = f"t{uuid.uuid4().hex[:10]}"
        self.scheme = scheme
        self.url = f"{server_url}/{tag}" if scheme == "redis" else server_url
        self.root = "/df/" if scheme == "redis" else f"/{tag}/"
        self.tmp = tmp
        self.ini = tmp / "df.ini"
        self.ini.write_text(f"[df]\nnb_db_url = {self.url}\nnb_db_root = {self.root}\n")

    def argv(self, *args: str) -> list[str]:
        return [*DF_DB, "--config-file", str(self.ini), *args]

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        res = self.run(*args, stdin=stdin)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def file(self, doc: Any) -> str:
        path = self.tmp / f"{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(doc))
        return str(path)

    def dump(self) -> dict[str, Any]:
        return json.loads(self.ok("dump"))  # type: ignore[no-any-return]

    def fails(self, *args: str, says: list[str], stdin: str | None = None) -> None:
        before = self.dump()
        res = self.run(*args, stdin=stdin)
        assert res.returncode == 1, (res.stdout, res.stderr)
        assert res.stderr.startswith("df-db: error: "), res.stderr
        for part in says:
            assert part in res.stderr, (part, res.stderr)
        assert self.dump() == before


@pytest.fixture(params=["etcd", "redis"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    server = request.getfixturevalue(f"{request.param}_server")
    return Cli(request.param, server.url, tmp_path)


def test_add_ls_get_update_rm_dump(cli: Cli) -> None:
    out = cli.ok("add", cli.file(FULL)).splitlines()
    assert len(out) == 10 and out[0].startswith("added chassis hv1")
    counts = dict(line.split() for line in cli.ok("tables").splitlines()[1:])
    assert counts["network"] == "2" and counts["securitygroup"] == "2"
    ports = cli.ok("ls", "port").splitlines()
    assert ports[1].split()[:8] == ["p1", "vm1", "t1", "1", "n1", "fa:16:3e:00:00:01",
                                    "10.0.0.5", "chassis:hv1"]
    port = json.loads(cli.ok("get", "port", "p1"))
    assert cli.ok("update", "-", stdin=json.dumps(port | {"status": "ERROR"})) == (
        "updated port p1 version 2\n")
    assert json.loads(cli.ok("get", "port", "p1"))["status"] == "ERROR"
    assert cli.ok("rm", "floatingip", "fip1") == "deleted floatingip fip1\n"
    doc = cli.dump()
    assert doc["objects"]["floatingip"] == []
    assert [p["version"] for p in doc["objects"]["port"]] == [2]
    # --db overrides the config file: a second, empty database restored from the dump
    other = f"{cli.url}x" if cli.scheme == "redis" else cli.url
    extra = [] if cli.scheme == "redis" else ["--config-file", str(_root_ini(cli))]
    res = subprocess.run([*cli.argv(*extra, "--db", other, "add", "-")], input=json.dumps(doc),
                         capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([*cli.argv(*extra, "--db", other, "dump")], capture_output=True,
                         text=True, timeout=TIMEOUT, check=False)
    assert json.loads(res.stdout)["objects"] == doc["objects"]


def _root_ini(cli: Cli) -> Path:
    """A second config file (read after the first) moving etcd to another root."""
    path = cli.tmp / "root2.ini"
    path.write_text(f"[df]\nnb_db_root = /{uuid.uuid4().hex[:10]}/\n")
    return path


def test_bad_input_changes_nothing(cli: Cli) -> None:
    cli.ok("add", cli.file([NET, SUBNET]))
    cli.fails("add", "-", stdin="{", says=["invalid JSON"])
    cli.fails("add", cli.file(NET | {"id": "n2", "vlan": 3}),
              says=["network 'n2'", "field 'vlan'", "unknown field"])
    cli.fails("add", cli.file(NET | {"id": "n2", "network_type": "flat"}),
              says=["network 'n2'", "field 'segmentation_id'"])
    cli.fails("add", cli.file({**NET, "table": "nope"}), says=["unknown table 'nope'"])
    port: dict[str, Any] = PORT | {"security_groups": [], "qos_policy_id": None}
    cli.fails("add", cli.file([port, port | {"id": "p2", "mac": "fa:16:3e:00:00:02",
                                             "network_id": "n9"}]),
              says=["port 'p2'", "field 'network_id'", "network 'n9' does not exist"])
    net = json.loads(cli.ok("get", "network", "n1"))
    cli.ok("update", cli.file(net | {"mtu": 1400}))
    cli.fails("update", cli.file(net | {"mtu": 1300}),
              says=["network 'n1'", "field 'version'", "stored is 2"])
    cli.fails("rm", "network", "n1", says=["network 'n1'", "still referenced by subnet 's1'"])
    cli.fails("get", "port", "p1", says=["port 'p1': field 'id': no such object"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("scheme", ["etcd", "redis"])
def test_unreachable_db(scheme: str, tmp_path: Path) -> None:
    url = f"{scheme}://127.0.0.1:{_free_port()}"
    (tmp_path / "n.json").write_text(json.dumps(NET))
    for args in (["tables"], ["add", str(tmp_path / "n.json")], ["watch", "--count", "1"]):
        start = time.monotonic()
        res = subprocess.run([*DF_DB, "--db", url, *args], capture_output=True, text=True,
                             timeout=TIMEOUT, check=False)
        assert res.returncode == 1, res.stderr
        assert res.stderr.startswith("df-db: error: ") and "127.0.0.1" in res.stderr
        assert time.monotonic() - start < 15


class Watcher:
    """A running ``df-db watch`` process."""

    def __init__(self, cli: Cli, *args: str) -> None:
        self.proc = subprocess.Popen(cli.argv("watch", *args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        # printed once the subscription is in place; the stream's own warnings (e.g. "NB
        # history gone ... resyncing", logged from its thread) may come before it
        seen = []
        for ready in iter(self.proc.stderr.readline, ""):
            seen.append(ready)
            if ready.startswith("df-db: watching from revision"):
                break
        assert seen and seen[-1].startswith("df-db: watching from revision"), seen

    def lines(self) -> list[str]:
        out, err = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0, err
        return out.splitlines()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    try:
        yield started
    finally:
        for w in started:
            w.kill()


def test_watch_while_another_process_writes(cli: Cli, watchers: list[Watcher]) -> None:
    cli.ok("add", cli.file({"table": "chassis", "id": "hv9", "ip": "192.0.2.9",
                            "tunnel_types": ["geneve"]}))
    rev = cli.dump()["revision"]
    from_rev = Watcher(cli, "--from-revision", str(rev), "--count", "4", "--json")
    watchers.append(from_rev)
    from_now = Watcher(cli, "--count", "3")
    watchers.append(from_now)
    other_topic = Watcher(cli, "--topic", "t2", "--count", "1")
    watchers.append(other_topic)
    cli.ok("add", cli.file([PORT | {"security_groups": [], "qos_policy_id": None}, SUBNET, NET]))
    cli.ok("add", cli.file(NET | {"id": "n2", "topic": "t2"}))

    events = [json.loads(line) for line in from_rev.lines()]
    assert [(e["op"], e["table"], e["id"]) for e in events] == [
        ("PUT", "chassis", "hv9"), ("PUT", "network", "n1"), ("PUT", "subnet", "s1"),
        ("PUT", "port", "p1")]
    assert events[0]["revision"] == rev
    assert events[3]["object"]["fixed_ips"] == [{"subnet_id": "s1", "ip_address": "10.0.0.5"}]
    revs = [e["revision"] for e in events]
    assert revs == sorted(revs) and len(set(revs)) == 4
    now = [line.split() for line in from_now.lines()]
    assert [(f[1], f[2], f[3], f[4]) for f in now] == [
        ("PUT", "network", "n1", "v1"), ("PUT", "subnet", "s1", "v1"), ("PUT", "port", "p1", "v1")]
    assert now[0][5] == "blue" and now[2][5] == "vm1"
    assert [line.split()[1:4] for line in other_topic.lines()] == [["PUT", "network", "n2"]]


def test_watch_resync_after_compaction(cli: Cli, watchers: list[Watcher]) -> None:
    cli.ok("add", cli.file([NET, SUBNET]))
    cli.ok("rm", "subnet", "s1")
    drv = open_driver(cli.url)
    try:
        drv.compact(drv.current_revision())
    finally:
        drv.close()
    w = Watcher(cli, "--from-revision", "1", "--count", "1")
    watchers.append(w)
    # the RESYNC line comes first; then one change written after the watcher resynced
    assert w.proc.stdout is not None
    first = w.proc.stdout.readline()
    assert first.startswith("RESYNC ") and " objects" in first
    cli.ok("add", cli.file(SUBNET | {"id": "s2", "cidr": "10.1.0.0/24", "gateway_ip": None}))
    rest = w.lines()
    assert [line.split()[1:4] for line in rest] == [["PUT", "subnet", "s2"]]
