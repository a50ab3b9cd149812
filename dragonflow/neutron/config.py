"""Dragonflow options inside the Neutron server, and the NB handle built from them.

The Neutron server reads ``[df]`` (nb_db_url, nb_db_root, the NB TLS and authentication
options nb_db_ca_file, nb_db_cert_file, nb_db_key_file, nb_db_user, nb_db_password, ...) and
``[controller]``
(integration_bridge, datapath_type: the VIF details Nova gets) from its own config files,
e.g. ``/etc/neutron/plugins/ml2/ml2_conf.ini``.
"""

from __future__ import annotations

from oslo_config import cfg

from dragonflow import conf as df_conf
from dragonflow.db.connect import open_nb
from dragonflow.db.nbapi import NbApi
from dragonflow.db.security import NbSecurity


def register_opts(conf: cfg.ConfigOpts) -> cfg.ConfigOpts:
    """Register [df] and [controller] on ``conf`` (idempotent: the same Opt objects)."""
    return df_conf.register(conf)


def nb_from_conf(conf: cfg.ConfigOpts) -> NbApi:
    register_opts(conf)
    return open_nb(conf.df.nb_db_url, root=conf.df.nb_db_root, timeout=conf.df.nb_db_timeout,
                   security=NbSecurity.from_conf(conf.df))
