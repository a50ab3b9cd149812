"""Session-wide fixtures: real etcd and redis servers (started once, stopped at the end)."""

try:  # TODO(integration): drop the guard once both fixture modules have landed
    from tests.fixtures.etcd_server import etcd_server  # noqa: F401
except ImportError:
    pass
try:
    from tests.fixtures.redis_server import redis_server  # noqa: F401
except ImportError:
    pass
