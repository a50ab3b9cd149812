"""Neutron integration: ML2 mechanism driver ``df``, L3 service plugin ``df-l3``, the port
status follower and the Neutron <-> NB consistency check.

Only this package imports ``neutron`` / ``neutron_lib`` (the optional ``neutron`` extra),
except :mod:`dragonflow.neutron.translate`, which is pure and works without them.

How a Neutron change reaches the NB: a postcommit hook (ML2) or an overridden L3 method
translates the Neutron dict into a typed NB object (translate.py) and hands it to the
:class:`~dragonflow.neutron.writer.NbWriter`, which writes it with the Neutron
``revision_number`` as the NB version. Failures are logged and never break the API call;
:mod:`dragonflow.neutron.sync` repairs what they left behind.
"""
