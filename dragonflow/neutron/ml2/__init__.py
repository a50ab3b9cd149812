"""ML2 mechanism driver ``df`` (entry point ``neutron.ml2.mechanism_drivers``)."""
