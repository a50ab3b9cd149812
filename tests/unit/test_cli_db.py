"""df-db in-process on the embedded (memory://) database: parsing, output, writes, errors.

Every failing command is checked for exit code 1, a message naming table/field/reason on
stderr, and an unchanged ``dump`` afterwards.
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from dragonflow.cli import db as cli
from dragonflow.db import errors
from dragonflow.db.driver import Check, Op, Put
from dragonflow.db.drivers.memory import MemoryDriver
from dragonflow.db.nbapi import NbApi
from dragonflow.model import NbObject, Network

Result = tuple[int, str, str]

NET = {"table": "network", "id": "n1", "topic": "t1", "name": "blue", "network_type": "vxlan",
       "segmentation_id": 1001}
SUBNET = {"table": "subnet", "id": "s1", "topic": "t1", "network_id": "n1",
          "cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.1"}
PORT = {"table": "port", "id": "p1", "topic": "t1", "name": "vm1", "network_id": "n1",
        "mac": "fa:16:3e:00:00:01", "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.5"}],
        "binding": {"kind": "chassis", "chassis_id": "hv1"}, "security_groups": ["sg-b"],
        "qos_policy_id": "q1", "status": "ACTIVE", "device_owner": "compute:nova"}

# Every table, deliberately listed so that each object comes BEFORE what it refers to.
FULL = [
    {"table": "floatingip", "id": "fip1", "topic": "t1", "floating_ip_address": "172.24.4.10",
     "floating_network_id": "ext", "port_id": "p1", "fixed_ip_address": "10.0.0.5",
     "router_id": "r1"},
    {"table": "router", "id": "r1", "topic": "t1", "name": "edge",
     "ports": [{"id": "rp1", "mac": "fa:16:3e:00:01:01", "network_id": "n1",
                "cidrs": ["10.0.0.1/24"], "subnet_ids": ["s1"]}],
     "routes": [{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}],
     "gateway": {"network_id": "ext", "ip_address": "172.24.4.2", "enable_snat": False}},
    PORT,
    SUBNET,
    NET,
    {"table": "network", "id": "ext", "network_type": "flat", "physical_network": "public",
     "external": True},
    {"table": "securitygroup", "id": "sg-b", "topic": "t1",
     "rules": [{"id": "rb", "direction": "ingress", "remote_group_id": "sg-a"}]},
    {"table": "securitygroup", "id": "sg-a", "topic": "t1",
     "rules": [{"id": "ra", "direction": "ingress", "protocol": "tcp", "port_range_min": 22,
                "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"}]},
    {"table": "qospolicy", "id": "q1", "topic": "t1",
     "rules": [{"id": "bw", "type": "bandwidth_limit", "max_kbps": 1000, "max_burst_kbps": 100},
               {"id": "dscp", "type": "dscp_marking", "dscp_mark": 26}]},
    {"table": "chassis", "id": "hv1", "ip": "192.0.2.11", "tunnel_types": ["vxlan", "geneve"],
     "bridge_mappings": {"public": "br-ex"}},
]


class Db:
    """One fresh embedded database and a runner for df-db commands against it."""

    def __init__(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        self.url = f"memory://cli-{uuid.uuid4().hex}"
        self.capsys = capsys
        self.tmp = tmp_path
        self.nb = NbApi(MemoryDriver.shared(self.url))

    def run(self, *args: str) -> Result:
        self.capsys.readouterr()
        rc = cli.main(["--db", self.url, *args])
        out, err = self.capsys.readouterr()
        return rc, out, err

    def ok(self, *args: str) -> str:
        rc, out, err = self.run(*args)
        assert rc == 0, err
        return out

    def file(self, doc: Any, name: str = "in.json") -> str:
        path = self.tmp / name
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return str(path)

    def add(self, doc: Any) -> str:
        return self.ok("add", self.file(doc))

    def dump(self) -> dict[str, Any]:
        return json.loads(self.ok("dump"))  # type: ignore[no-any-return]

    def fails(self, *args: str, says: Sequence[str]) -> str:
        """Run a command that must fail with exit 1 and leave the database as it was."""
        before = self.dump()
        rc, out, err = self.run(*args)
        assert rc == 1, (out, err)
        assert err.startswith("df-db: error: "), err
        for part in says:
            assert part in err, (part, err)
        assert self.dump() == before
        return err


@pytest.fixture
def db(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Db:
    return Db(capsys, tmp_path)


@pytest.fixture
def full(db: Db) -> Db:
    db.add(FULL)
    return db


# --- command line ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [[], ["ls"], ["get", "port"], ["frob"],
                                  ["watch", "--count", "0"], ["watch", "--from-revision", "x"],
                                  ["rm", "port", "p1", "--expect-version", "-1"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage: df-db" in capsys.readouterr().err


def test_help_lists_commands_and_tables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("tables", "ls", "get", "dump", "add", "update", "rm", "watch", "--db",
                 "--config-file", "examples:"):
        assert word in out
    with pytest.raises(SystemExit):
        cli.main(["ls", "--help"])
    out = capsys.readouterr().out
    assert "securitygroup" in out and "--topic" in out and "--json" in out


# --- add: dependency order, output ----------------------------------------------------------
def test_add_writes_in_dependency_order(db: Db) -> None:
    out = db.add(FULL)
    written = [line.split()[1:3] for line in out.splitlines()]
    assert [t for t, _ in written] == ["chassis", "qospolicy", "securitygroup", "securitygroup",
                                       "network", "network", "subnet", "port", "router",
                                       "floatingip"]
    assert written.index(["securitygroup", "sg-a"]) < written.index(["securitygroup", "sg-b"])
    assert all(line.endswith("version 1") for line in out.splitlines())
    # unique keys come from the real database's counters, not the trial run's
    assert db.nb.get_or_raise("port", "p1").unique_key < 100
    assert db.nb.get_or_raise("router", "r1").ports[0].unique_key < 100


def test_add_from_stdin_single_object(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(NET)))
    assert db.ok("add", "-") == "added network n1 version 1\n"
    assert db.nb.get_or_raise("network", "n1").segmentation_id == 1001


def test_tables_counts(full: Db) -> None:
    lines = full.ok("tables").splitlines()
    assert lines[0].split() == ["TABLE", "COUNT"]
    counts = dict(line.split() for line in lines[1:])
    assert counts == {"chassis": "1", "qospolicy": "1", "addressgroup": "0",
                      "securitygroup": "2", "network": "2", "subnet": "1", "port": "1",
                      "router": "1", "floatingip": "1"}
    doc = json.loads(full.ok("tables", "--json"))
    assert doc["tables"]["securitygroup"] == 2
    assert doc["revision"] == full.nb.revision()


def _rows(out: str) -> list[list[str]]:
    """Split a rendered table at the header's column starts."""
    lines = out.splitlines()
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = list(zip(starts, starts[1:] + [None], strict=True))
    return [[line[a:b].strip() for a, b in bounds] for line in lines]


@pytest.mark.parametrize(("table", "expected"), [
    ("port", {"ID": "p1", "NAME": "vm1", "TOPIC": "t1", "VERSION": "1", "NETWORK": "n1",
              "MAC": "fa:16:3e:00:00:01", "IPS": "10.0.0.5", "BINDING": "chassis:hv1",
              "STATUS": "ACTIVE", "OWNER": "compute:nova"}),
    ("network", {"ID": "ext", "NAME": "-", "TOPIC": "-", "TYPE": "flat", "SEGID": "-",
                 "PHYSNET": "public", "MTU": "1450", "EXTERNAL": "yes"}),
    ("subnet", {"ID": "s1", "NETWORK": "n1", "CIDR": "10.0.0.0/24", "GATEWAY": "10.0.0.1",
                "DHCP": "yes"}),
    ("router", {"ID": "r1", "NAME": "edge", "PORTS": "10.0.0.1/24", "ROUTES": "1",
                "GATEWAY": "ext/172.24.4.2 nosnat"}),
    ("securitygroup", {"ID": "sg-a", "RULES": "1"}),
    ("floatingip", {"ID": "fip1", "ADDRESS": "172.24.4.10", "NETWORK": "ext", "PORT": "p1",
                    "FIXED_IP": "10.0.0.5", "ROUTER": "r1", "STATUS": "DOWN"}),
    ("qospolicy", {"ID": "q1", "RULES": "egress=1000/100kbps,dscp=26"}),
    ("chassis", {"ID": "hv1", "IP": "192.0.2.11", "TUNNELS": "vxlan,geneve",
                 "EXT_IP": "-", "BRIDGES": "public=br-ex"}),
])
def test_ls_shows_key_fields(full: Db, table: str, expected: dict[str, str]) -> None:
    rows = _rows(full.ok("ls", table))
    first = dict(zip(rows[0], rows[1], strict=True))
    assert {k: first[k] for k in expected} == expected


def test_ls_topic_and_json(full: Db) -> None:
    full.add({"table": "network", "id": "n9", "topic": "t9", "network_type": "geneve",
              "segmentation_id": 9})
    ids = [r[0] for r in _rows(full.ok("ls", "network", "--topic", "t9"))[1:]]
    assert ids == ["n9"]
    listed = json.loads(full.ok("ls", "network", "--json"))
    assert [o["id"] for o in listed] == ["ext", "n1", "n9"]
    assert all(o["table"] == "network" for o in listed)
    assert full.ok("ls", "network", "--topic", "nobody").splitlines()[0].startswith("ID")


def test_get_prints_object_that_update_accepts(full: Db) -> None:
    got = json.loads(full.ok("get", "port", "p1"))
    assert got["table"] == "port" and got["id"] == "p1" and got["version"] == 1
    assert got["fixed_ips"] == [{"subnet_id": "s1", "ip_address": "10.0.0.5"}]
    got["status"] = "DOWN"
    assert full.ok("update", full.file(got)) == "updated port p1 version 2\n"
    assert full.nb.get_or_raise("port", "p1").status == "DOWN"


def test_dump_restores_into_empty_db(full: Db, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    doc = full.dump()
    assert doc["revision"] == full.nb.revision()
    assert sorted(doc["objects"]) == sorted(cli.TABLES)
    assert [o["id"] for o in doc["objects"]["securitygroup"]] == ["sg-a", "sg-b"]
    other = Db(capsys, tmp_path)
    other.add(doc)
    restored = other.dump()
    assert restored["objects"] == doc["objects"]  # versions and unique keys kept


def test_update_and_rm(full: Db) -> None:
    net = json.loads(full.ok("get", "network", "n1"))
    net["mtu"] = 1400
    assert full.ok("update", full.file(net)) == "updated network n1 version 2\n"
    full.fails("update", full.file(net), says=["network 'n1'", "field 'version'",
                                                 "based on version 1, stored is 2"])
    full.fails("rm", "network", "n1", says=["network 'n1'", "still referenced by"])
    full.fails("rm", "floatingip", "fip1", "--expect-version", "7",
               says=["floatingip 'fip1'", "field 'version'"])
    assert full.ok("rm", "floatingip", "fip1") == "deleted floatingip fip1\n"
    assert full.nb.get("floatingip", "fip1") is None
    full.fails("rm", "floatingip", "fip1", says=["floatingip 'fip1': field 'id': no such object"])


def test_address_groups(db: Db) -> None:
    """Written before the groups whose rules name them; listed with their addresses; not
    removable while a rule names them."""
    out = db.add([
        {"table": "securitygroup", "id": "sg-x", "topic": "t1",
         "rules": [{"id": "rx", "direction": "ingress", "remote_address_group_id": "ag1"}]},
        {"table": "addressgroup", "id": "ag1", "topic": "t1", "name": "office",
         "addresses": ["192.0.2.0/24", "10.9.0.5"]},
    ])
    assert out.splitlines() == ["added addressgroup ag1 version 1",
                                "added securitygroup sg-x version 1"]
    rows = _rows(db.ok("ls", "addressgroup"))
    assert dict(zip(rows[0], rows[1], strict=True)) == {
        "ID": "ag1", "NAME": "office", "TOPIC": "t1", "VERSION": "1",
        "ADDRESSES": "10.9.0.5/32,192.0.2.0/24"}
    db.fails("rm", "addressgroup", "ag1", says=["addressgroup 'ag1'", "still referenced by",
                                                "securitygroup 'sg-x'"])
    db.ok("rm", "securitygroup", "sg-x")
    assert db.ok("rm", "addressgroup", "ag1") == "deleted addressgroup ag1\n"


def test_an_invalid_stored_value_is_listed_got_with_a_reason_and_removed(full: Db) -> None:
    """A value written behind NbApi's back that does not decode: ls lists the valid ones
    and names the invalid one with the reason, get says why, rm removes it."""
    key = full.nb.obj_key("port", "p2")
    full.nb.driver.commit([], [Put(key, b'{"id": "p2", "network_id": 7}')])
    out = full.ok("ls", "port")
    assert "p1" in out
    assert "INVALID port p2: ValidationError" in out and "df-db rm port p2" in out
    rows = json.loads(full.ok("ls", "port", "--json"))
    assert [r["id"] for r in rows] == ["p1", "p2"] and "invalid" in rows[1]
    full.fails("get", "port", "p2", says=["port 'p2'", "stored value is invalid",
                                            "df-db rm port p2"])
    assert full.ok("rm", "port", "p2") == "deleted port p2\n"
    assert full.nb.driver.get(key) is None
    assert "INVALID" not in full.ok("ls", "port")


# --- bad input: exit 1, message, database unchanged --------------------------------------------
@pytest.mark.parametrize(("doc", "says"), [
    ("{not json", ["invalid JSON", "line 1"]),
    ("[]", ["no objects"]),
    ("42", ["must be a JSON object"]),
    ({"id": "x"}, ["field 'table': missing"]),
    ({"objects": []}, ["field 'objects'"]),
    ({**NET, "table": "netwerk"}, ["field 'table'", "unknown table 'netwerk'"]),
    ({**NET, "colour": "red"}, ["network 'n1'", "field 'colour'", "unknown field"]),
    ({**NET, "segmentation_id": 2**24}, ["network 'n1'", "field 'segmentation_id'",
                                          "out of range"]),
    ({**NET, "mtu": "big"}, ["network 'n1'", "field 'mtu'"]),
    ([NET | {"id": "n2"}, SUBNET | {"id": "s2", "network_id": "n2"},
      PORT | {"id": "p2", "network_id": "n2", "fixed_ips": [{"subnet_id": "nope",
                                                             "ip_address": "10.0.0.6"}]}],
     ["port 'p2'", "field 'fixed_ips[0].subnet_id'", "subnet 'nope' does not exist"]),
    ([NET | {"id": "n2"}, PORT | {"id": "p2", "mac": "fa:16:3e:00:00:99"}],
     ["port 'p2'", "field 'fixed_ips[0].ip_address'", "already used by port/p1"]),
    ([NET | {"id": "n2"}, NET | {"id": "n2"}], ["network 'n2'", "more than once"]),
    ([{"table": "securitygroup", "id": "x", "rules": [{"id": "r", "direction": "ingress",
                                                      "remote_group_id": "y"}]},
      {"table": "securitygroup", "id": "y", "rules": [{"id": "r", "direction": "ingress",
                                                      "remote_group_id": "x"}]}],
     ["reference cycle", "securitygroup 'x'", "securitygroup 'y'"]),
])
def test_bad_add_changes_nothing(full: Db, doc: Any, says: list[str]) -> None:
    full.fails("add", full.file(doc), says=says)


def test_bad_add_duplicate_of_existing(full: Db) -> None:
    full.fails("add", full.file([NET | {"id": "n2"}, NET]),
               says=["network 'n1'", "field 'id'", "already exists"])


def test_bad_update_changes_nothing(full: Db) -> None:
    net = json.loads(full.ok("get", "network", "n1"))
    port = json.loads(full.ok("get", "port", "p1"))
    # first object fine, second one stale: neither is written
    full.fails("update", full.file([net | {"mtu": 1300}, port | {"version": 0}]),
               says=["port 'p1'", "field 'version'"])
    full.fails("update", full.file(port | {"id": "ghost"}),
               says=["port 'ghost'", "no such object"])
    full.fails("update", full.file(port | {"security_groups": ["sg-x"]}),
               says=["port 'p1'", "field 'security_groups[0]'", "does not exist"])


@pytest.mark.parametrize("args", [["get", "port", "nope"], ["ls", "ports"], ["rm", "x", "y"],
                                  ["get", "bogus", "p1"]])
def test_bad_reads(full: Db, args: list[str]) -> None:
    full.fails(*args, says=["field '"])


def test_unreadable_file(db: Db, tmp_path: Path) -> None:
    db.fails("add", str(tmp_path / "missing.json"), says=["cannot read", "missing.json"])


def test_bad_url_and_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["--db", "nosuch://x", "tables"]) == 1
    assert "no driver for scheme 'nosuch'" in capsys.readouterr().err
    assert cli.main(["--config-file", str(tmp_path / "none.ini"), "tables"]) == 1
    assert "none.ini" in capsys.readouterr().err


def test_config_file_selects_db_and_root(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    url = f"memory://cfg-{uuid.uuid4().hex}"
    ini = tmp_path / "df.ini"
    ini.write_text(f"[df]\nnb_db_url = {url}\nnb_db_root = /alt/\n")
    src = tmp_path / "net.json"
    src.write_text(json.dumps(NET))
    assert cli.main(["--config-file", str(ini), "add", str(src)]) == 0
    kvs, _ = MemoryDriver.shared(url).get_prefix("/alt/obj/network/")
    assert [kv.key for kv in kvs] == ["/alt/obj/network/n1"]
    # --db overrides the url, the root still comes from the file
    other = f"memory://cfg-{uuid.uuid4().hex}"
    assert cli.main(["--config-file", str(ini), "--db", other, "tables"]) == 0
    assert NbApi(MemoryDriver.shared(other), root="/alt/").list("network") == []


# --- a concurrent writer between the trial run and the real write ----------------------------
class RacingDriver(MemoryDriver):
    """A real embedded DB in which another writer commits just before commit number ``at``."""

    def __init__(self, at: int, race: Callable[[NbApi], object]) -> None:
        super().__init__()
        self.at, self.race, self.commits = at, race, 0

    def commit(self, checks: Sequence[Check], ops: Sequence[Op]) -> int:
        self.commits += 1
        if self.commits == self.at:
            self.race(NbApi(self))  # counts as commit at+1: fires once
        return super().commit(checks, ops)


def test_add_rolled_back_when_a_concurrent_write_wins() -> None:
    drv = RacingDriver(2, lambda nb: nb.create(Network(id="n2", network_type="vxlan",
                                                       segmentation_id=7, name="theirs")))
    nb = NbApi(drv)
    objs = cli.parse_objects(json.dumps([NET, NET | {"id": "n2"}]), "test")
    with pytest.raises(errors.AlreadyExists):
        cli.write_batch(nb, objs, "add")
    assert nb.get("network", "n1") is None
    assert nb.get_or_raise("network", "n2").name == "theirs"


# --- watch ------------------------------------------------------------------------------------
def test_watch_replays_history(full: Db) -> None:
    full.ok("rm", "floatingip", "fip1")
    out = full.ok("watch", "--from-revision", "1", "--count", "11").splitlines()
    assert len(out) == 11
    first = out[0].split()
    assert first[:5] == ["1", "PUT", "chassis", "hv1", "v1"]
    last = out[-1].split()
    assert last[1:5] == ["DEL", "floatingip", "fip1", "v1"]
    revs = [int(line.split()[0]) for line in out]
    assert revs == sorted(revs) and len(set(revs)) == 11


def test_watch_json_topic_filter(full: Db) -> None:
    full.add({"table": "network", "id": "n9", "topic": "t9", "network_type": "gre",
              "segmentation_id": 9})
    lines = full.ok("watch", "--from-revision", "1", "--topic", "t9", "--json",
                    "--count", "3").splitlines()
    events = [json.loads(line) for line in lines]
    # global objects (chassis, the topic-less external network) and topic t9 only
    assert [(e["table"], e["id"]) for e in events] == [
        ("chassis", "hv1"), ("network", "ext"), ("network", "n9")]
    assert events[-1]["op"] == "PUT" and events[-1]["object"]["segmentation_id"] == 9
    assert events[-1]["version"] == 1 and events[-1]["topic"] == "t9"


class _Lines(io.StringIO):
    """stdout that signals when a line containing ``marker`` was written."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker, self.seen = marker, threading.Event()

    def write(self, s: str) -> int:
        if self.marker in s:
            self.seen.set()
        return super().write(s)


def test_watch_resyncs_after_compaction(full: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    drv = MemoryDriver.shared(full.url)
    drv.compact(drv.current_revision())
    out = _Lines("RESYNC")
    monkeypatch.setattr("sys.stdout", out)

    def writer() -> None:
        assert out.seen.wait(30)
        full.nb.create(Network(id="late", network_type="vxlan", segmentation_id=77))

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert cli.main(["--db", full.url, "watch", "--from-revision", "1", "--count", "1"]) == 0
    finally:
        t.join()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("RESYNC ") and " 10 objects" in lines[0]
    assert lines[1].split()[1:4] == ["PUT", "network", "late"]


@pytest.fixture
def stdin_json(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Any], None]]:
    def feed(doc: Any) -> None:
        monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(doc)))

    yield feed


def test_update_from_stdin_list(full: Db, stdin_json: Callable[[Any], None]) -> None:
    listed = json.loads(full.ok("ls", "securitygroup", "--json"))
    stdin_json([o | {"name": "renamed"} for o in listed])
    assert full.ok("update", "-").splitlines() == ["updated securitygroup sg-a version 2",
                                                   "updated securitygroup sg-b version 2"]
    groups: list[NbObject] = full.nb.list("securitygroup")
    assert {o.name for o in groups} == {"renamed"}


def test_update_race_reports_what_was_written() -> None:
    def bump(nb: NbApi) -> None:
        nb.update(nb.get_or_raise(Network, "n2").replace(name="theirs"))

    drv = RacingDriver(4, bump)  # commits 1, 2: creates; 3: first update; 4: race, then ours
    nb = NbApi(drv)
    cli.write_batch(nb, cli.parse_objects(json.dumps([NET, NET | {"id": "n2"}]), "t"), "add")
    stored = [{"table": "network", **nb.get_or_raise(Network, i).to_dict()} for i in ("n1", "n2")]
    objs = cli.parse_objects(json.dumps([o | {"mtu": 1300} for o in stored]), "t")
    with pytest.raises(cli.CliError, match="already updated: network 'n1'"):
        cli.write_batch(nb, objs, "update")
    assert nb.get_or_raise(Network, "n1").mtu == 1300
    assert nb.get_or_raise(Network, "n2").name == "theirs"
