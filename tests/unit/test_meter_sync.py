"""The reconciler keeps the switch's meters equal to the engine's while it looks only at the
meter ids a change touched: local ports come, change and go (their CoPP meters with them),
and after every sync the meters a fake switch holds are exactly the engine's."""

from __future__ import annotations

from dragonflow.apps.registry import default_apps
from dragonflow.controller.engine import Engine
from dragonflow.controller.reconciler import Ops, Reconciler
from dragonflow.model import Binding, Chassis, Network, Port
from dragonflow.ovs.flows import OfMeter
from dragonflow.pipeline.topology import ChassisFacts, Topology


class MeterSwitch:
    """A switch that takes bundles and meter-mods and remembers its meters."""

    def __init__(self) -> None:
        self.meters: dict[int, OfMeter] = {}
        self.meter_mods = 0

    def install(self, ops: Ops, replace_all: bool = False,
                meters: list[tuple[str, OfMeter]] | None = None) -> None:
        self.install_meters(meters or [])

    def install_meters(self, ops: list[tuple[str, OfMeter]]) -> None:
        for op, m in ops:
            self.meter_mods += 1
            if op == "delete":
                assert m.meter_id in self.meters, f"deleting meter {m.meter_id} it never had"
                del self.meters[m.meter_id]
            else:
                assert (op == "add") == (m.meter_id not in self.meters), (op, m)
                self.meters[m.meter_id] = m

    def delete_all_meters(self) -> None:
        self.meters.clear()


def test_only_the_touched_meters_are_compared_and_the_switch_follows() -> None:
    topo = Topology(ChassisFacts("hv1", "10.0.0.1", ("vxlan",), tunnel_ofports={"vxlan": 1}))
    engine = Engine(default_apps(), topo)
    engine.full()
    rec, switch = Reconciler(), MeterSwitch()

    def sync() -> None:
        rec.sync(switch, engine.table, meters=engine.meters,
                 meters_dirty=engine.take_meters_dirty())
        assert switch.meters == engine.meters

    def put(obj) -> None:  # type: ignore[no-untyped-def]
        engine.changed(topo.apply(obj.TABLE, obj.id, obj) or set())

    sync()  # the first sync is a full one: every shared meter
    shared = dict(switch.meters)
    put(Chassis(id="hv1", ip="10.0.0.1", tunnel_types=("vxlan",)))
    put(Network(id="n1", topic="p", network_type="vxlan", segmentation_id=5, unique_key=5))
    for i in range(1, 4):
        put(Port(id=f"p{i}", topic="p", network_id="n1", mac=f"fa:16:3e:00:00:0{i}",
                 unique_key=10 + i, binding=Binding(kind="chassis", chassis_id="hv1")))
        engine.changed(topo.set_ofport(f"p{i}", 20 + i))
        sync()
    assert len(switch.meters) > len(shared)  # each plugged port has meters of its own
    before = switch.meter_mods
    put(Port(id="p2", topic="p", network_id="n1", mac="fa:16:3e:00:00:02", unique_key=99,
             binding=Binding(kind="chassis", chassis_id="hv1"), version=2))
    sync()  # a new key: its old meters deleted, new ones added
    assert switch.meter_mods > before
    engine.changed(topo.set_ofport("p1", None))
    sync()  # unplugged: its meters gone
    engine.changed(topo.apply("port", "p3", None) or set())
    sync()
    engine.changed(topo.set_ofport("p3", None))
    sync()
    assert switch.meters == engine.meters
    mods = switch.meter_mods
    sync()  # nothing changed: nothing sent
    assert switch.meter_mods == mods
