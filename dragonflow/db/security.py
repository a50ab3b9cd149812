"""TLS and authentication of the NB database connection, as one small value.

:class:`NbSecurity` holds what the ``[df]`` options ``nb_db_ca_file``, ``nb_db_cert_file``,
``nb_db_key_file``, ``nb_db_user`` and ``nb_db_password`` say; ``NbSecurity.from_conf(
conf.df)`` builds it and ``open_driver(url, timeout, security=...)`` hands it to the driver,
so drivers never import oslo.config.

Rules (the same for every driver):

* The URL scheme decides whether the connection uses TLS: ``etcds://`` and ``rediss://`` do,
  ``etcd://`` and ``redis://`` do not. A CA file or client certificate given with a plaintext
  URL is a configuration error (it would look secure and not be).
* With TLS, the server's certificate is verified against ``ca_file``, or the system trust store
  when ``ca_file`` is not set, and must be valid for the host name (or IP) of the URL.
* ``cert_file`` and ``key_file`` go together (the client certificate, for servers that demand
  one); one without the other is a configuration error naming both options.
* ``user`` / ``password``: etcd user authentication (both needed), redis AUTH (a password
  alone authenticates redis' ``default`` user). A redis URL may carry credentials
  (``redis://user:password@host:port/ns``, percent-encoded); **a user or password in the URL
  takes precedence over the option, field by field**, so ``df-db --db URL`` means what it
  says. etcd URLs never carry credentials.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

OPTIONS = {
    "ca_file": "nb_db_ca_file",
    "cert_file": "nb_db_cert_file",
    "key_file": "nb_db_key_file",
    "user": "nb_db_user",
    "password": "nb_db_password",
}


class SecurityConfigError(ValueError):
    """The NB security options do not fit together (the message names the options)."""


def opt(name: str) -> str:
    """``cert_file`` -> ``[df] nb_db_cert_file`` (how operators know the setting)."""
    return f"[df] {OPTIONS[name]}"


@dataclass(frozen=True, slots=True)
class NbSecurity:
    """TLS files and credentials for the NB database (see the module docstring).

    Empty strings count as unset (an option written as ``nb_db_ca_file =``).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) == "":
                object.__setattr__(self, f.name, None)
        if (self.cert_file is None) != (self.key_file is None):
            have, missing = ("cert_file", "key_file") if self.key_file is None \
                else ("key_file", "cert_file")
            raise SecurityConfigError(
                f"{opt(have)} is set but {opt(missing)} is not: a client certificate needs "
                f"both the certificate and its private key (set both, or neither)")

    @classmethod
    def from_conf(cls, group: Any) -> NbSecurity:
        """From the registered ``[df]`` group (``conf.df``) of :mod:`dragonflow.conf`."""
        return cls(**{name: getattr(group, option, None) for name, option in OPTIONS.items()})

    def __repr__(self) -> str:  # never the password
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                          if f.name != "password" and getattr(self, f.name) is not None)
        secret = ", password=***" if self.password is not None else ""
        return f"NbSecurity({shown}{secret})"

    @property
    def has_tls_files(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    # --- checks the drivers make --------------------------------------------------------
    def check_tls(self, url: str, tls: bool) -> None:
        """Refuse TLS files with a plaintext URL; with TLS, check every file loads (so a bad
        file is named at start-up, not as an obscure handshake failure later)."""
        shown = redact_url(url)
        if not tls:
            if self.has_tls_files:
                given = " and ".join(opt(n) for n in ("ca_file", "cert_file")
                                     if getattr(self, n) is not None)
                scheme = urlsplit(url).scheme
                raise SecurityConfigError(
                    f"{given} set, but NB url {shown} is not a TLS url: use {scheme}s:// for "
                    f"TLS (or unset the TLS options)")
            return
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca_file is not None:
            self.read("ca_file")
            try:
                ctx.load_verify_locations(cafile=self.ca_file)
            except (ssl.SSLError, ValueError) as e:
                raise SecurityConfigError(
                    f"{opt('ca_file')} {self.ca_file!r} holds no usable PEM CA certificate: "
                    f"{e}") from None
        if self.cert_file is not None and self.key_file is not None:
            self.read("cert_file")
            self.read("key_file")
            try:  # a password-protected key gets b"" instead of a prompt on the terminal
                ctx.load_cert_chain(self.cert_file, self.key_file, password=lambda: b"")
            except (ssl.SSLError, ValueError) as e:
                raise SecurityConfigError(
                    f"{opt('cert_file')} {self.cert_file!r} and {opt('key_file')} "
                    f"{self.key_file!r} are not a usable PEM certificate and unencrypted "
                    f"private key pair: {e}") from None

    def read(self, name: str) -> bytes | None:
        """The content of file option ``name`` (``ca_file``, ``cert_file``, ``key_file``)."""
        path = getattr(self, name)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise SecurityConfigError(
                f"{opt(name)}: cannot read {path!r}: {e.strerror or e}") from None

    # --- writing a config file (the simulated deployments) ---------------------------------
    def ini_lines(self) -> str:
        """``[df]`` option lines for a config file (``$`` escaped for oslo.config)."""
        lines = []
        for name, option in OPTIONS.items():
            value = getattr(self, name)
            if value is not None:
                lines.append(f"{option} = {value.replace('$', '$$')}\n")
        return "".join(lines)


def redact_url(url: str) -> str:
    """``url`` with the password (if any) replaced by ``***``: safe for logs and errors."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:  # unparseable: keep only what follows the credentials
        head, at, tail = url.rpartition("@")
        return f"{head.partition('://')[0]}://***@{tail}" if at else url
