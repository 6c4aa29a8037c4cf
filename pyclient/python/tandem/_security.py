"""Transport security of the client's channels: TLS (server certificate
checked against a CA bundle, optionally a client certificate for mTLS) and
the bearer token sent as ``authorization: Bearer <token>`` on every call.

:func:`resolve` turns the keyword arguments of :class:`tandem.Client` (or
their environment variables) into a :class:`ChannelSecurity`, reading every
file once, so a bad path fails at construction with the argument's name.
A client reads its files once: to pick up rotated client certificates,
create a new client (the services re-read theirs by themselves).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from tandem._requests import channel_target

__all__ = ["ChannelSecurity", "resolve", "is_loopback", "SecurityError"]

#: Environment variables read when the keyword argument is not given.
ENV_TOKEN = "TANDEM_TOKEN"
ENV_CA = "TANDEM_CA"
ENV_CERT = "TANDEM_CERT"
ENV_KEY = "TANDEM_KEY"
ENV_TLS = "TANDEM_TLS"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})

#: A bearer token is one printable ASCII word (gRPC metadata values are
#: ASCII; Tandem's own tokens are ``tdm_<id>_<secret>``, about 110 characters).
TOKEN_MAX = 4096
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")

#: What a file argument may hold at most (a CA bundle with many certificates).
FILE_MAX = 1024 * 1024


class SecurityError(ValueError):
    """A TLS or token setting is wrong: a file that cannot be read, a
    certificate without its key, a token that would travel in plaintext.
    The message names the argument (and its environment variable)."""


@dataclass(frozen=True)
class ChannelSecurity:
    """How a channel is secured.

    Attributes:
        tls: TLS on (the server's certificate is checked).
        root_certificates: PEM CA bundle (None: the system's roots).
        certificate_chain: PEM client certificate for mTLS (None: none).
        private_key: PEM key of the client certificate.
        token: the bearer token sent on every call (None: none).
        insecure: a token may be sent over plaintext to a non-loopback host.
    """

    tls: bool = False
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    token: str | None = None
    insecure: bool = False

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel credentials; None for a plaintext channel."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call carries besides its own metadata."""
        if self.token is None:
            return ()
        return (("authorization", f"Bearer {self.token}"),)

    def channel(self, grpc_module: Any, target: str, options: list[tuple[str, Any]]) -> Any:
        """A channel to ``target`` from ``grpc`` or ``grpc.aio``."""
        creds = self.credentials()
        if creds is not None:
            return grpc_module.secure_channel(target, creds, options=options)
        return grpc_module.insecure_channel(target, options=options)

    def check_address(self, address: str) -> None:
        """Raises :class:`SecurityError` when the token would travel in
        plaintext to ``address`` off this machine (and ``insecure`` is off)."""
        if self.token is not None and not self.tls and not self.insecure:
            refuse_plaintext(address)

    def __repr__(self) -> str:  # never the token or the key
        return (
            f"ChannelSecurity(tls={self.tls}, ca={self.root_certificates is not None}, "
            f"client_cert={self.certificate_chain is not None}, "
            f"token={'set' if self.token else 'none'}, insecure={self.insecure})"
        )


def _flag(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise SecurityError(f"{name}={value!r}: expected 1 or 0 (true/false, yes/no, on/off)")


def _read(path: str | os.PathLike[str], arg: str, env: str) -> bytes:
    where = f"argument {arg} (CLI --{arg}, env {env})"
    text = os.fspath(path)
    if not text:
        raise SecurityError(f"{where}: the path is empty")
    try:
        with open(text, "rb") as f:
            data = f.read(FILE_MAX + 1)
    except OSError as err:
        raise SecurityError(
            f"{where}: cannot read {text!r}: {err.strerror or type(err).__name__}"
        ) from None
    if len(data) > FILE_MAX:
        raise SecurityError(f"{where}: {text!r} is larger than {FILE_MAX} bytes")
    if b"-----BEGIN " not in data:
        raise SecurityError(f"{where}: {text!r} is not PEM (no -----BEGIN line)")
    return data


def check_token(token: str, arg: str = "token") -> str:
    """The token with surrounding whitespace removed; raises
    :class:`SecurityError` naming ``arg`` when it cannot be sent."""
    t = token.strip()
    if not t:
        raise SecurityError(f"{arg}: the token is empty")
    if len(t) > TOKEN_MAX:
        raise SecurityError(f"{arg}: the token is {len(t)} characters, more than {TOKEN_MAX}")
    if re.match(r"(?i)bearer\s", t):
        raise SecurityError(f"{arg}: give the token alone, without 'Bearer '")
    if not _TOKEN_RE.fullmatch(t):
        raise SecurityError(
            f"{arg}: the token must be printable ASCII without spaces (a Tandem token "
            "reads tdm_<id>_<secret>)"
        )
    return t


def _hosts(address: str) -> list[str]:
    """The host of every endpoint of a client address (``host:port``, a
    comma-separated list, ``dns:///host:port``, ``ipv4:``/``ipv6:`` lists,
    ``unix:`` paths, which are local)."""
    target, _ = channel_target(address)
    scheme, sep, rest = target.partition(":")
    if sep and scheme in ("unix", "unix-abstract"):
        return ["localhost"]
    if sep and scheme in ("ipv4", "ipv6"):
        endpoints = rest.split(",")
    elif sep and scheme == "dns" and rest.startswith("//"):
        endpoints = [rest[2:].partition("/")[2] or rest[2:]]
    else:
        endpoints = target.split(",")
    hosts = []
    for ep in endpoints:
        ep = ep.strip()
        if ep.startswith("["):
            hosts.append(ep[1:].partition("]")[0])
        elif ep.count(":") == 1:
            hosts.append(ep.partition(":")[0])
        else:
            hosts.append(ep)  # a bare IPv6 address, or a host without a port
    return hosts


def is_loopback(address: str) -> bool:
    """True when every endpoint of ``address`` is on this machine
    (``localhost``, 127.0.0.0/8, ::1, a unix socket)."""
    hosts = _hosts(address)
    if not hosts:
        return False
    for host in hosts:
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass
        return False
    return True


def refuse_plaintext(address: str) -> None:
    """Raises :class:`SecurityError` unless ``address`` is loopback: the
    check before a token goes over a plaintext channel."""
    if is_loopback(address):
        return
    raise SecurityError(
        f"refusing to send the token to {address} over a plaintext channel: anyone on "
        "the network path could read it and use it. Turn TLS on (tls=True or ca=..., "
        f"env {ENV_TLS}=1 or {ENV_CA}; CLI --tls/--ca), or pass insecure=True (CLI "
        "--insecure) when the path is protected some other way"
    )


def resolve(
    address: str,
    *,
    tls: bool | None = None,
    ca: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    token: str | None = None,
    insecure: bool = False,
    environ: Mapping[str, str] | None = None,
) -> ChannelSecurity:
    """The security of a channel to ``address`` from the client's keyword
    arguments, each falling back to its environment variable
    (``TANDEM_TLS``, ``TANDEM_CA``, ``TANDEM_CERT``, ``TANDEM_KEY``,
    ``TANDEM_TOKEN``; an argument given, even False, wins over its variable).

    TLS is on when ``tls`` is true, or (``tls`` not given) when a CA or a
    client certificate is given or ``TANDEM_TLS=1``; ``tls=False`` with a
    CA or certificate is a contradiction and refused. Files are read here,
    once. A token is refused over plaintext to a non-loopback address
    unless ``insecure`` is true: anyone on the path could read and replay it.
    """
    env = os.environ if environ is None else environ
    ca = ca if ca is not None else (env.get(ENV_CA) or None)
    cert = cert if cert is not None else (env.get(ENV_CERT) or None)
    key = key if key is not None else (env.get(ENV_KEY) or None)
    token_arg = "token"
    if token is None and env.get(ENV_TOKEN):
        token, token_arg = env[ENV_TOKEN], f"env {ENV_TOKEN}"
    if tls is None:
        tls = _flag(env.get(ENV_TLS, ""), ENV_TLS) or ca is not None or cert is not None
    elif not tls and (ca is not None or cert is not None or key is not None):
        given = ", ".join(n for n, v in (("ca", ca), ("cert", cert), ("key", key)) if v)
        raise SecurityError(
            f"tls=False contradicts {given} (arguments or env {ENV_CA}/{ENV_CERT}/{ENV_KEY}): "
            "certificates are only used over TLS"
        )
    if (cert is None) != (key is None):
        have, lack = ("cert", "key") if key is None else ("key", "cert")
        raise SecurityError(
            f"argument {have} is given without {lack} (env {ENV_CERT}/{ENV_KEY}): "
            "a client certificate needs its private key and the other way round"
        )
    checked = check_token(token, token_arg) if token is not None else None
    if checked is not None and not tls and not insecure:
        refuse_plaintext(address)
    return ChannelSecurity(
        tls=bool(tls),
        root_certificates=_read(ca, "ca", ENV_CA) if ca is not None else None,
        certificate_chain=_read(cert, "cert", ENV_CERT) if cert is not None else None,
        private_key=_read(key, "key", ENV_KEY) if key is not None else None,
        token=checked,
        insecure=insecure,
    )
