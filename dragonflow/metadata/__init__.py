"""The metadata service on every chassis (no namespace per network).

* ``datapath.py``: what the flows (apps/metadata.py) and the proxy agree on -- the service
  address, the interface, and how a request's source address names the port that sent it;
* ``content.py``: the built-in responder's documents (meta_data.json, network_data.json);
* ``proxy.py``: the HTTP proxy (aiohttp) that serves or forwards to Nova's metadata API;
* ``iface.py``: the OVS internal port and its kernel side (address, routes);
* ``service.py``: the two together, as a process or (embedded deployments) a thread;
* ``dragonflow/cli/metadata.py``: the ``df-metadata`` process.
"""
