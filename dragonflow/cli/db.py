"""df-db: inspect and edit the Dragonflow NB database from the shell.

Every write goes through NbApi, so the CLI enforces exactly the rules the Neutron plugin
does (validation, references, unique IPs/MACs, optimistic versions). A file given to
``add``/``update`` is first applied to a private in-memory copy of the database; only when
every object in it succeeds there is anything written to the real database, so bad input
leaves the database unchanged. Errors go to stderr as ``df-db: error: <message>`` with exit
code 1 (2 for command-line usage errors).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import queue
import sys
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

from oslo_config import cfg

from dragonflow import conf as dfconf
from dragonflow.cli import _format
from dragonflow.db import errors
from dragonflow.db.connect import open_driver
from dragonflow.db.driver import DriverError, Put
from dragonflow.db.drivers.memory import MemoryDriver
from dragonflow.db.nbapi import NbApi, table_of
from dragonflow.db.security import NbSecurity
from dragonflow.db.stream import Change, Subscription
from dragonflow.model import TABLES, NbObject, ValidationError, obj_from_json

PROG = "df-db"
_SCRATCH_KEY_BASE = 2**31  # trial-run unique keys: far above what a real DB hands out


class CliError(Exception):
    """Bad input the model cannot name (not JSON, wrong document shape, unreadable file)."""


def _out(text: str = "") -> None:
    print(text, file=sys.stdout, flush=True)


def _as_json(data: Any) -> str:
    return json.dumps(data, indent=2)


def _with_table(obj: NbObject) -> dict[str, Any]:
    return {"table": obj.TABLE, **obj.to_dict()}


# --- reading input files -------------------------------------------------------------------
def read_source(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read {path}: {e}") from None


def _items(doc: Any, source: str) -> list[tuple[str, Mapping[str, Any], str]]:
    """(table, fields, where) of every object in an input document."""
    if isinstance(doc, dict) and "objects" in doc and "table" not in doc:
        objects = doc["objects"]
        if not isinstance(objects, dict):
            raise CliError(f"{source}: field 'objects': must map table names to lists")
        out = []
        for table, rows in objects.items():
            if not isinstance(rows, list):
                raise CliError(f"{source}: field 'objects.{table}': must be a list of objects")
            for i, row in enumerate(rows):
                out.append((table, row, f"{source}: objects.{table}[{i}]"))
        return out
    rows = doc if isinstance(doc, list) else [doc]
    out = []
    for i, row in enumerate(rows):
        where = f"{source}: [{i}]" if isinstance(doc, list) else source
        if not isinstance(row, dict):
            raise CliError(f"{where}: must be a JSON object with a 'table' field, "
                           f"got {type(row).__name__}")
        if "table" not in row:
            known = ", ".join(_format.ordered_tables(TABLES))
            raise CliError(f"{where}: field 'table': missing; one of: {known}")
        fields = {k: v for k, v in row.items() if k != "table"}
        out.append((str(row["table"]), fields, where))
    return out


def parse_objects(text: str, source: str) -> list[NbObject]:
    """Every object of a document: one object, a list of them, or a ``dump`` document."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"{source}: invalid JSON: {e}") from None
    objs = [obj_from_json(table, fields) for table, fields, _ in _items(doc, source)]
    if not objs:
        raise CliError(f"{source}: no objects to write")
    return objs


def dependency_order(objs: list[NbObject]) -> list[NbObject]:
    """Objects sorted so that everything an object refers to comes before it (table order,
    then input order, among objects that do not depend on each other)."""
    index: dict[tuple[str, str], int] = {}
    for i, o in enumerate(objs):
        if (o.TABLE, o.id) in index:
            raise ValidationError(o.TABLE, o.id, "id", "appears more than once in the input")
        index[(o.TABLE, o.id)] = i
    waiting = [0] * len(objs)
    users: list[list[int]] = [[] for _ in objs]
    for i, o in enumerate(objs):
        for dep in {index.get((t, oid)) for t, oid, _ in o.references()} - {None, i}:
            assert dep is not None
            waiting[i] += 1
            users[dep].append(i)
    ready = [(_format.table_rank(o.TABLE), i) for i, o in enumerate(objs) if not waiting[i]]
    heapq.heapify(ready)
    out: list[NbObject] = []
    while ready:
        _, i = heapq.heappop(ready)
        out.append(objs[i])
        for u in users[i]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, (_format.table_rank(objs[u].TABLE), u))
    if len(out) < len(objs):
        stuck = [f"{o.TABLE} {o.id!r}" for i, o in enumerate(objs) if waiting[i]]
        o = objs[next(i for i, n in enumerate(waiting) if n)]
        raise ValidationError(o.TABLE, o.id, "references",
                              f"reference cycle among {', '.join(stuck)}: write one of them "
                              "without the reference first, then update it")
    return out


# --- writing -------------------------------------------------------------------------------
class _ScratchDriver(MemoryDriver):
    """A private in-memory copy of the database for a trial run of a batch of writes."""

    def increment(self, key: str, amount: int = 1) -> int:
        return _SCRATCH_KEY_BASE + super().increment(key, amount)


def _writer(nb: NbApi, mode: str) -> Callable[[NbObject], NbObject]:
    return nb.create if mode == "add" else nb.update


def trial_run(nb: NbApi, objs: list[NbObject], mode: str) -> None:
    """Apply the batch to a copy of the current database; raises what the real write would."""
    kvs, _ = nb.driver.get_prefix(nb.root)
    scratch = _ScratchDriver()
    try:
        if kvs:
            scratch.commit([], [Put(kv.key, kv.value) for kv in kvs])
        write = _writer(NbApi(scratch, root=nb.root), mode)
        for o in objs:
            write(o)
    finally:
        scratch.close()


def write_batch(nb: NbApi, objs: list[NbObject], mode: str) -> list[NbObject]:
    """Trial run, then the real writes in dependency order. If a real write still fails (a
    concurrent writer got in between), objects already created by ``add`` are deleted again."""
    objs = dependency_order(objs)
    trial_run(nb, objs, mode)
    done: list[NbObject] = []
    write = _writer(nb, mode)
    try:
        for o in objs:
            done.append(write(o))
    except (ValidationError, errors.NbError, DriverError) as e:
        if done:
            _rollback(nb, done, mode, e)
        raise
    return done


def _rollback(nb: NbApi, done: list[NbObject], mode: str, cause: Exception) -> None:
    names = ", ".join(f"{o.TABLE} {o.id!r}" for o in done)
    if mode != "add":
        print(f"{PROG}: error: {cause}", file=sys.stderr)
        raise CliError(f"the database changed during the update; already updated: {names}")
    failed = []
    for o in reversed(done):
        try:
            nb.delete(o.TABLE, o.id, expect_version=o.version)
        except (errors.NbError, DriverError) as e:
            failed.append(f"{o.TABLE} {o.id!r} ({e})")
    if failed:
        print(f"{PROG}: error: {cause}", file=sys.stderr)
        raise CliError(f"the database changed during the add; could not remove again: "
                       f"{', '.join(failed)}")


# --- commands ------------------------------------------------------------------------------
def cmd_tables(nb: NbApi, args: argparse.Namespace) -> int:
    objs, rev = nb.snapshot()
    counts = dict.fromkeys(_format.ordered_tables(TABLES), 0)
    for o in objs:
        counts[o.TABLE] = counts.get(o.TABLE, 0) + 1
    if args.json:
        _out(_as_json({"revision": rev, "tables": counts}))
    else:
        _out(_format.render(["TABLE", "COUNT"], [[t, str(n)] for t, n in counts.items()]))
    return 0


def cmd_ls(nb: NbApi, args: argparse.Namespace) -> int:
    table = table_of(args.table)
    objs: list[NbObject] = nb.list(table, topic=args.topic)
    rows = [_with_table(o) for o in objs]
    if table == "chassis":  # liveness is kept beside the objects (NbApi.beat)
        live = nb.liveness()
        for row in rows:
            row["heartbeat"] = live.get(row["id"])
    # stored values that do not decode: every reader treats them as absent; shown here so
    # an operator can find and remove them (df-db rm)
    bad = nb.invalid(table)
    if args.json:
        _out(_as_json(rows + [{"table": table, "id": i, "invalid": why} for i, why in bad]))
    else:
        _out(_format.render_objects(table, rows))
        for i, why in bad:
            _out(f"INVALID {table} {i}: {why} (treated as absent; df-db rm {table} {i} "
                 f"removes it)")
    return 0


def cmd_get(nb: NbApi, args: argparse.Namespace) -> int:
    obj = nb.get(args.table, args.id)
    if obj is None:
        table = table_of(args.table)
        why = dict(nb.invalid(table)).get(args.id)
        if why is not None:
            raise errors.NbError(table, args.id, "value", f"the stored value is invalid ({why}); "
                          f"df-db rm {table} {args.id} removes it")
        raise errors.NotFound(table, args.id)
    _out(_as_json(_with_table(obj)))
    return 0


def dump_document(nb: NbApi) -> dict[str, Any]:
    objs, rev = nb.snapshot()
    grouped: dict[str, list[dict[str, Any]]] = {t: [] for t in _format.ordered_tables(TABLES)}
    for o in objs:
        grouped.setdefault(o.TABLE, []).append(o.to_dict())
    return {"revision": rev, "objects": grouped}


def cmd_dump(nb: NbApi, args: argparse.Namespace) -> int:
    _out(_as_json(dump_document(nb)))
    return 0


def cmd_write(nb: NbApi, args: argparse.Namespace) -> int:
    source = "<stdin>" if args.file == "-" else args.file
    objs = parse_objects(read_source(args.file), source)
    verb = "added" if args.command == "add" else "updated"
    for o in write_batch(nb, objs, args.command):
        _out(f"{verb} {o.TABLE} {o.id} version {o.version}")
    return 0


def cmd_rm(nb: NbApi, args: argparse.Namespace) -> int:
    nb.delete(args.table, args.id, expect_version=args.expect_version)
    _out(f"deleted {table_of(args.table)} {args.id}")
    return 0


def _change_line(ch: Change, as_json: bool) -> str:
    cur = ch.obj or ch.old
    op = "DEL" if ch.obj is None else "PUT"
    version = cur.version if cur else None
    name = cur.name if cur else ""
    if as_json:
        return json.dumps({"revision": ch.revision, "op": op, "table": ch.table, "id": ch.id,
                           "version": version, "name": name, "topic": ch.topic,
                           "object": ch.obj.to_dict() if ch.obj else None})
    shown = "-" if version is None else f"v{version}"
    return f"{ch.revision} {op} {ch.table} {ch.id} {shown} {name or '-'}"


def cmd_watch(nb: NbApi, args: argparse.Namespace) -> int:
    events: queue.Queue[tuple[Change | None, int, int]] = queue.Queue()

    def on_resync(objs: list[NbObject], rev: int) -> None:
        events.put((None, rev, len(objs)))

    start = args.from_revision if args.from_revision is not None else nb.revision() + 1
    sub = Subscription(nb, lambda ch: events.put((ch, ch.revision, 0)), on_resync,
                       from_revision=start, topics=args.topic)
    print(f"{PROG}: watching from revision {start}", file=sys.stderr, flush=True)
    seen = 0
    try:
        while args.count is None or seen < args.count:
            ch, rev, n = events.get()
            if ch is None:
                line = (json.dumps({"revision": rev, "op": "RESYNC", "objects": n}) if args.json
                        else f"RESYNC {rev} {n} objects (state replaced by a snapshot)")
            else:
                line = _change_line(ch, args.json)
                seen += 1
            _out(line)
    finally:
        sub.close()
    return 0


# --- command line --------------------------------------------------------------------------
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


EPILOG = """\
examples:
  df-db --db etcd://127.0.0.1:2379 tables
  df-db ls port --topic project1
  df-db get network net1 > net1.json; edit net1.json; df-db update net1.json
  df-db dump > backup.json; df-db --db redis://10.0.0.2:6379 add backup.json
  df-db watch --from-revision 1 --count 10 --json

Input files for add/update hold one object {"table": "port", "id": ..., ...}, a list of
them, or a dump document; `-` reads standard input. Objects are written in dependency order
(networks before subnets before ports ...), after a trial run on a private copy of the
database: if any object is rejected, nothing is written.
"""


def build_parser() -> argparse.ArgumentParser:
    tables = ", ".join(_format.ordered_tables(TABLES))
    p = argparse.ArgumentParser(
        prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Inspect and edit the Dragonflow northbound (NB) database. Every write is "
                    "validated by the same rules as the Neutron plugin's.")
    p.add_argument("--config-file", action="append", default=[], metavar="PATH",
                   help="oslo.config file (repeatable); [df] nb_db_url and nb_db_root select "
                        "the database, nb_db_ca_file, nb_db_cert_file, nb_db_key_file, "
                        "nb_db_user and nb_db_password secure the connection. "
                        f"Default: {dfconf.DEFAULT_CONFIG_FILE} if it exists.")
    p.add_argument("--config-dir", metavar="DIR", help="directory of *.conf files to read too")
    p.add_argument("--db", metavar="URL",
                   help="NB database url, overriding [df] nb_db_url: etcd://host:port[,...], "
                        "redis://[user[:password]@]host:port[/namespace], "
                        "ovsdb:tcp:host:port[,tcp:host:port...], etcds://, rediss:// and "
                        "ovsdb:ssl: (TLS, with the config file's [df] nb_db_ca_file, ...) or "
                        "memory:// (in-process, so empty for a separate df-db process)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[NbApi, argparse.Namespace], int], text: str
            ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=text, description=text)
        sp.set_defaults(func=func)
        return sp

    sp = add("tables", cmd_tables, "List the tables with their object counts.")
    sp.add_argument("--json", action="store_true",
                    help='print {"revision": R, "tables": {table: count}}')

    sp = add("ls", cmd_ls, "List the objects of one table: id, name, topic, version and "
                           "the table's key fields.")
    sp.add_argument("table", help=f"one of: {tables}")
    sp.add_argument("--topic", metavar="T", help="only objects of this topic (project id)")
    sp.add_argument("--json", action="store_true",
                    help="print a JSON list of full objects (each with its 'table'), "
                         "which add/update accept as input")

    sp = add("get", cmd_get, "Print one object as JSON (with its 'table'); exit 1 if missing.")
    sp.add_argument("table", help=f"one of: {tables}")
    sp.add_argument("id")

    add("dump", cmd_dump, 'Print every object from one consistent snapshot: {"revision": R, '
                          '"objects": {table: [...]}}; `add` restores it into an empty DB.')

    for name, text in (
        ("add", "Create the objects of FILE (fails on existing ids)."),
        ("update", "Overwrite objects with FILE's content. Each object's 'version' must be "
                   "the stored version (as printed by get), else nothing is written."),
    ):
        sp = add(name, cmd_write, text)
        sp.add_argument("file", metavar="FILE",
                        help="JSON: one object, a list of objects or a dump; - for stdin")

    sp = add("rm", cmd_rm, "Delete one object; refused while other objects refer to it.")
    sp.add_argument("table", help=f"one of: {tables}")
    sp.add_argument("id")
    sp.add_argument("--expect-version", type=_positive, metavar="N",
                    help="only delete if the stored version is N")

    sp = add("watch", cmd_watch,
             "Print each change as it happens: 'REVISION PUT|DEL TABLE ID vVERSION NAME'. "
             "If the history needed is gone, prints 'RESYNC REVISION N objects' and goes on "
             "from that snapshot.")
    sp.add_argument("--from-revision", type=_positive, metavar="N",
                    help="first revision to print (default: only changes from now on); "
                         "1 replays the retained history")
    sp.add_argument("--topic", action="append", metavar="T",
                    help="only changes of this topic, plus global objects (repeatable)")
    sp.add_argument("--count", type=_positive, metavar="N", help="exit after N changes")
    sp.add_argument("--json", action="store_true",
                    help="one JSON object per line: revision, op, table, id, version, name, "
                         "topic, object")

    sp = sub.add_parser(
        "ovsdb-create", help="Create the database file of an ovsdb-server for ovsdb: urls.",
        description="Create the DF_NB database file (the schema shipped with Dragonflow) "
                    "for ovsdb-server, then serve it: `ovsdb-server FILE "
                    "--remote=ptcp:6641:IP` and set [df] nb_db_url = ovsdb:tcp:IP:6641 "
                    "(ovsdb:tcp:IP1:6641,tcp:IP2:6641,... for a cluster). Needs no database "
                    "connection.")
    sp.set_defaults(func=cmd_ovsdb_create, no_nb=True)
    sp.add_argument("file", metavar="FILE", help="database file to create (must not exist)")
    sp.add_argument("--cluster", metavar="RAFT_ADDR",
                    help="make a Raft cluster member whose cluster address is RAFT_ADDR "
                         "(e.g. tcp:10.0.0.1:6643); without --join: a new cluster")
    sp.add_argument("--join", action="append", default=[], metavar="RAFT_ADDR",
                    help="Raft address of a member already in the cluster to join "
                         "(repeatable)")
    return p


def cmd_ovsdb_create(_nb: NbApi | None, args: argparse.Namespace) -> int:
    from dragonflow.db.drivers.ovsdb import create_db_file

    try:
        create_db_file(args.file, cluster=args.cluster, join=args.join)
    except RuntimeError as e:
        raise CliError(str(e)) from None
    kind = ("a member joining the cluster of " + ", ".join(args.join) if args.join
            else f"a new cluster at {args.cluster}" if args.cluster else "standalone")
    _out(f"created {args.file} (DF_NB, {kind})")
    return 0


def open_nb(args: argparse.Namespace) -> tuple[NbApi, bool]:
    """The NbApi the arguments select, and whether df-db owns (must close) its driver."""
    conf = dfconf.load_files(args.config_file, args.config_dir, PROG)
    url = args.db or conf.df.nb_db_url
    driver = open_driver(url, timeout=conf.df.nb_db_timeout,
                         security=NbSecurity.from_conf(conf.df))
    # memory:// names a process-wide database other code in this process may be using
    return NbApi(driver, root=conf.df.nb_db_root), urlparse(url).scheme != "memory"


EXPECTED_ERRORS = (ValidationError, errors.NbError, DriverError, CliError, cfg.Error, ValueError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    nb: NbApi | None = None
    owned = False
    try:
        if getattr(args, "no_nb", False):
            return int(args.func(None, args))
        nb, owned = open_nb(args)
        return int(args.func(nb, args))
    except EXPECTED_ERRORS as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `df-db watch | head`: the reader is gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        if nb is not None and owned:
            nb.driver.close()


if __name__ == "__main__":
    sys.exit(main())
