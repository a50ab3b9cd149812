"""L3 service plugin ``df-l3`` (entry point ``neutron.service_plugins``)."""
