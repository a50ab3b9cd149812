"""Neutron integration tests. ``test_translate`` is pure and always runs; ``server/`` loads
Neutron's plugins and is skipped without the neutron extra."""
