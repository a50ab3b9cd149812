"""One app that raises never stops the rest of the chassis: an app raising in compile() for
one owner, or in owners(), or producing a flow its stage forbids, is marked failed (with the
reason, for the status) while every other owner keeps converging; its next change retries
it. ``df status`` shows what the controller wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dragonflow.apps.registry import default_apps
from dragonflow.cli import df
from dragonflow.controller.engine import Engine
from dragonflow.model import Chassis, FixedIp, Network, Port, Subnet
from dragonflow.pipeline import flow as lf
from dragonflow.pipeline.stages import Stage, fields
from dragonflow.pipeline.topology import ChassisFacts, OwnersView, Topology, View


class Flaky:
    name = "flaky"
    stages = (Stage("flaky", after=("classify",), before=("arp_responder",),
                    matches=fields("eth_type"), miss="next"),)

    def __init__(self) -> None:
        self.broken_owner = "x/2"
        self.owners_broken = False
        self.bad_stage = False

    def owners(self, topo: OwnersView) -> set[str]:
        topo.get(Port, "knob")  # owners() asked again when the knob changes
        if self.owners_broken:
            raise RuntimeError("owners exploded")
        return {"x/1", "x/2", "x/3"}

    def compile(self, view: View, owner: str) -> list[lf.Flow]:
        view.get(Port, "knob")
        if owner == self.broken_owner:
            raise ValueError(f"cannot compile {owner}")
        stage = "l2_lookup" if self.bad_stage and owner == "x/3" else "flaky"
        return [lf.Flow.make(stage, 10, {"eth_type": 0x800 + int(owner[-1])}, (), owner)]


def topo() -> Topology:
    t = Topology(ChassisFacts("hv1", "10.255.0.11", ("vxlan",), tunnel_ofports={"vxlan": 1}))
    t.replace_all([Chassis(id="hv1", ip="10.255.0.11", tunnel_types=("vxlan",)),
                   Network(id="n", topic="p", network_type="vxlan", segmentation_id=5,
                           unique_key=1),
                   Subnet(id="s", topic="p", network_id="n", cidr="10.0.0.0/24"),
                   Port(id="p1", topic="p", network_id="n", mac="fa:16:3e:00:00:01",
                        unique_key=2, fixed_ips=(FixedIp(subnet_id="s",
                                                         ip_address="10.0.0.2"),))])
    t.set_ofport("p1", 7)
    return t


def test_a_raising_owner_is_isolated_and_retried() -> None:
    app = Flaky()
    e = Engine([*default_apps(), app], topo())
    e.full()
    assert set(e.failed) == {("flaky", "x/2")}
    assert "cannot compile x/2" in e.failed[("flaky", "x/2")]
    assert e.table.contrib.get(("flaky", "x/1")) and e.table.contrib.get(("flaky", "x/3"))
    assert e.table.contrib.get(("physical", "port/p1"))  # the core apps converged
    app.broken_owner = "none"
    e.changed({("obj", "port", "unrelated")})  # any change retries failed owners
    assert not e.failed and e.table.contrib.get(("flaky", "x/2"))


def test_a_flow_in_another_apps_stage_fails_only_its_owner() -> None:
    app = Flaky()
    app.broken_owner = "none"
    app.bad_stage = True
    e = Engine([*default_apps(), app], topo())
    e.full()
    assert list(e.failed) == [("flaky", "x/3")]
    assert "stage l2_lookup belongs to app l2" in e.failed[("flaky", "x/3")]


def test_owners_raising_keeps_the_previous_owners() -> None:
    app = Flaky()
    app.broken_owner = "none"
    e = Engine([*default_apps(), app], topo())
    e.full()
    e.table.resolve()
    before = dict(e.table.desired)
    app.owners_broken = True
    e.changed({("obj", "port", "knob")})
    assert "owners exploded" in e.app_failed["flaky"]
    assert {k for k in e.flows if k[0] == "flaky"} == {("flaky", f"x/{i}") for i in (1, 2, 3)}
    e.table.resolve()
    assert e.table.desired == before  # nothing withdrawn because owners() failed
    app.owners_broken = False
    e.changed(set())  # a failed app is asked again on any change
    assert not e.app_failed


def test_df_status_prints_conflicts_and_fails(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    st = {"chassis": "hv1", "pipeline": [{"table": 0, "stage": "classify", "app": "physical",
                                          "miss": "drop"}],
          "flows_installed": 3, "owners": 2, "conflicts_total": 1,
          "conflicts": [{"flow": "table=5,priority=124,...", "owners": ["l3 router/a",
                                                                        "l3 router/b"]}],
          "failed": [], "rejected": [{"app": "bulk", "owner": "item/1",
                                      "reason": "OFPBAC_MATCH_INCONSISTENT"}]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(st))
    assert df.main(["status", "--file", str(path)]) == 3
    out = capsys.readouterr().out
    assert "classify" in out and "CONFLICT table=5" in out and "l3 router/b" in out
    assert "REJECTED bulk item/1: OFPBAC_MATCH_INCONSISTENT" in out
    st.update(conflicts=[], rejected=[])
    path.write_text(json.dumps(st))
    assert df.main(["status", "--file", str(path)]) == 0
    assert df.main(["status", "--file", str(tmp_path / "missing.json")]) == 1
