"""Session-wide fixtures: real etcd and redis servers (started once, stopped at the end),
the multi-node test bed (fresh per test, torn down in its finalizer) and a deployment on each
server that fullstack tests take turns on (each test's VMs and NB objects removed after it)."""

from tests.fixtures.deploy import (  # noqa: F401
    etcd_deployment,
    ovsdb_deployment,
    redis_deployment,
)
from tests.fixtures.etcd_server import etcd_server  # noqa: F401
from tests.fixtures.ovs_bridge import ovs_bridge_fixture  # noqa: F401
from tests.fixtures.ovsdb_server import ovsdb_server  # noqa: F401
from tests.fixtures.redis_server import redis_server  # noqa: F401
from tests.fixtures.testbed import testbed_fixture  # noqa: F401
