"""Open an NB driver from a URL; drivers are stevedore plugins (``dragonflow.nb_db_driver``).

``memory://[name]`` (embedded, the process-wide instance of that name), ``etcd://host:port
[,host:port...]``, ``redis://[user[:password]@]host:port[/namespace]``,
``ovsdb:tcp:host:port[,tcp:host:port...]``; ``etcds://``, ``rediss://`` and ``ovsdb:ssl:`` are
the same drivers over TLS. TLS files and credentials come as one
:class:`~dragonflow.db.security.NbSecurity` (``NbSecurity.from_conf(conf.df)``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from stevedore import driver as sd_driver
from stevedore.exception import NoMatches

from dragonflow.db.driver import Driver
from dragonflow.db.nbapi import NbApi
from dragonflow.db.security import NbSecurity, redact_url

NAMESPACE = "dragonflow.nb_db_driver"
TLS_SCHEMES = {"etcds": "etcd", "rediss": "redis"}  # the driver of each TLS scheme


def open_driver(url: str, timeout: float = 3.0, *, security: NbSecurity | None = None
                ) -> Driver:
    """``timeout``: seconds before a request to etcd/redis is given up ([df] nb_db_timeout);
    ``security``: TLS files and credentials (none: plaintext, no authentication, unless a
    TLS scheme or credentials in the url say otherwise). memory:// ignores ``security``."""
    try:
        scheme = urlparse(url).scheme
    except ValueError as e:
        raise ValueError(f"NB database url {redact_url(url)!r}: {e}") from None
    if not scheme:
        raise ValueError(f"NB database url {redact_url(url)!r} has no scheme "
                         "(memory://, etcd://, etcds://, redis://, rediss://, ovsdb:tcp:, "
                         "ovsdb:ssl:)")
    name = TLS_SCHEMES.get(scheme, scheme)
    try:
        mgr: Any = sd_driver.DriverManager(NAMESPACE, name, invoke_on_load=False)
    except NoMatches:
        raise ValueError(
            f"NB database url {redact_url(url)!r}: no driver for scheme {scheme!r}") from None
    cls: Any = mgr.driver
    if scheme == "memory":
        return cls.shared(url)  # type: ignore[no-any-return]
    if security is None:  # a driver of another package need not know the keyword
        return cls(url, timeout=timeout)  # type: ignore[no-any-return]
    return cls(url, timeout=timeout, security=security)  # type: ignore[no-any-return]


def open_nb(url: str, root: str = "/df/", timeout: float = 3.0, *,
            security: NbSecurity | None = None) -> NbApi:
    return NbApi(open_driver(url, timeout, security=security), root=root)
