"""Open an NB driver from a URL; drivers are stevedore plugins (``dragonflow.nb_db_driver``).

``memory://[name]`` (embedded, the process-wide instance of that name), ``etcd://host:port
[,host:port...]``, ``redis://host:port[/namespace]``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from stevedore import driver as sd_driver
from stevedore.exception import NoMatches

from dragonflow.db.driver import Driver
from dragonflow.db.nbapi import NbApi

NAMESPACE = "dragonflow.nb_db_driver"


def open_driver(url: str, timeout: float = 3.0) -> Driver:
    """``timeout``: seconds before a request to etcd/redis is given up ([df] nb_db_timeout)."""
    scheme = urlparse(url).scheme
    if not scheme:
        raise ValueError(f"NB database url {url!r} has no scheme (memory://, etcd://, redis://)")
    try:
        mgr: Any = sd_driver.DriverManager(NAMESPACE, scheme, invoke_on_load=False)
    except NoMatches:
        raise ValueError(f"NB database url {url!r}: no driver for scheme {scheme!r}") from None
    cls: Any = mgr.driver
    if scheme == "memory":
        return cls.shared(url)  # type: ignore[no-any-return]
    return cls(url, timeout=timeout)  # type: ignore[no-any-return]


def open_nb(url: str, root: str = "/df/", timeout: float = 3.0) -> NbApi:
    return NbApi(open_driver(url, timeout), root=root)
