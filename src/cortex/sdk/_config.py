"""How a client finds and authenticates to a hub: one frozen, validated value.

Resolution is flags > environment > the file the hub writes at start:

    address   --hub            CORTEX_HUB     client.json "address" (a string or a list)
    token     --token          CORTEX_TOKEN   client.json "token_file" (the file's text)
    CA        --ca (a path)    CORTEX_CA      client.json "ca_file"

``client.json`` lives in ``$CORTEX_HOME`` (default ``~/.cortex``). Its token and CA are
used only for the hub it names: pointing CORTEX_HUB at another hub never sends that hub
the local admin token.

An address may be a comma-separated list (``hub-a:7443,hub-b:7443``): the client then
balances calls round robin over the hubs that answer, and skips the ones that do not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from cortex.core.addresses import join_addresses, parse_addresses
from cortex.errors import InvalidArgument

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "HUB_SERVER_NAME",
    "ClientConfig",
    "ConfigError",
    "ConfigOverrides",
]

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The hub's built-in CA always names its serving certificate so, whatever address a
# client dials (NAT, load balancers, bare IPs); keep in sync with cortex.hub.pki.
HUB_SERVER_NAME = "cortex-hub"
CLIENT_FILE = "client.json"
NO_HUB = (
    "no hub configured: start one with `make up` / `cortex up`, "
    "or set CORTEX_HUB and CORTEX_TOKEN"
)
_PEM_MARKER = b"-----BEGIN CERTIFICATE-----"
_MAX_GRPC_MESSAGE = 2**31 - 1


class ConfigError(InvalidArgument):
    """The client configuration is missing or wrong; the message says what to set."""


class ConfigOverrides(TypedDict, total=False):
    """Values that beat the environment and client.json (what the CLI's flags carry)."""

    home: Path | str | None
    address: str | None
    token: str | None
    ca_file: Path | str | None
    insecure: bool


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where the hub is and how to talk to it. Validated on construction."""

    address: str
    """``HOST:PORT`` of the hub's gRPC port (``[::1]:7070`` for IPv6), or several of them
    separated by commas (several hubs, or balancers): calls go round robin to those that
    answer."""
    token: str = field(repr=False)
    """API token, sent as ``authorization: Bearer <token>`` on every call."""
    ca_pem: bytes | None = field(default=None, repr=False)
    """PEM roots that sign the hub's certificate; None trusts the system roots."""
    insecure: bool = False
    """Plaintext gRPC. Only for tests and loopback experiments: the token travels in clear."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest message sent or received (gRPC's own default of 4 MiB is too small)."""
    call_timeout: float | None = 30.0
    """Deadline of each unary call in seconds; None waits forever."""
    reconnect_timeout: float = 60.0
    """How long `Client.watch` keeps reconnecting to an unreachable hub before giving up."""
    server_name: str | None = None
    """Name the hub's certificate must carry; None: ``cortex-hub`` with a CA, else the host."""

    def __post_init__(self) -> None:
        _check_address(self.address)
        if not self.token or any(c.isspace() for c in self.token):
            raise ConfigError("token is empty or contains whitespace: check CORTEX_TOKEN")
        if self.ca_pem is not None and _PEM_MARKER not in self.ca_pem:
            raise ConfigError("ca_pem holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        if self.insecure and self.ca_pem is not None:
            raise ConfigError("insecure=True and a CA exclude each other: drop one")
        if not 1024 <= self.max_message_bytes <= _MAX_GRPC_MESSAGE:
            raise ConfigError(
                f"max_message_bytes must be between 1024 and {_MAX_GRPC_MESSAGE}, "
                f"got {self.max_message_bytes}"
            )
        if self.call_timeout is not None and not self.call_timeout > 0:
            raise ConfigError(f"call_timeout must be > 0 s or None, got {self.call_timeout}")
        if not self.reconnect_timeout >= 0:
            raise ConfigError(f"reconnect_timeout must be >= 0 s, got {self.reconnect_timeout}")

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every hub address of `address`, in order."""
        return parse_addresses(self.address)

    @property
    def tls_server_name(self) -> str | None:
        """The name TLS verifies, or None for the dialed host."""
        if self.server_name is not None:
            return self.server_name
        return HUB_SERVER_NAME if self.ca_pem is not None else None

    @classmethod
    def from_env(
        cls,
        home: Path | str | None = None,
        *,
        address: str | None = None,
        token: str | None = None,
        ca_file: Path | str | None = None,
        insecure: bool = False,
    ) -> ClientConfig:
        """Resolve flags (the arguments) > environment > ``$CORTEX_HOME/client.json``."""
        env = os.environ
        address, addr_source = _first((address, "--hub"), (env.get("CORTEX_HUB"), "CORTEX_HUB"))
        token = token or env.get("CORTEX_TOKEN") or None
        ca_pem = _read_ca(ca_file, "--ca") if ca_file else None
        if ca_pem is None and not insecure and env.get("CORTEX_CA"):
            ca_pem = _read_ca(env["CORTEX_CA"], "CORTEX_CA")
        local = None
        if address is None or token is None or (ca_pem is None and not insecure):
            local = _HubFile.load(_home(home, env) / CLIENT_FILE)
        if address is None:
            if local is None:
                raise ConfigError(NO_HUB)
            address, addr_source = local.address, str(local.path)
        # The local hub's secrets go to the local hub only.
        if local is not None and _same(local.address, address):
            token = token or local.read_token()
            if ca_pem is None and not insecure:
                ca_pem = local.read_ca()
        if token is None:
            raise ConfigError(
                f"hub {address} (from {addr_source}) has no token: "
                "set CORTEX_TOKEN or pass --token"
            )
        return cls(address=address, token=token, ca_pem=ca_pem, insecure=insecure)


@dataclass(frozen=True, slots=True)
class _HubFile:
    """``client.json`` as the hub wrote it."""

    path: Path
    address: str
    token_file: Path | None
    ca_file: Path | None

    @classmethod
    def load(cls, path: Path) -> _HubFile | None:
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from e
        try:
            data: Any = json.loads(raw)
        except ValueError as e:
            raise _broken(path, f"not JSON ({e})") from e
        if not isinstance(data, dict):
            raise _broken(path, 'no "address" string')
        return cls(
            path=path,
            address=_file_address(path, data.get("address")),
            token_file=_path_field(path, data, "token_file"),
            ca_file=_path_field(path, data, "ca_file"),
        )

    def read_token(self) -> str:
        if self.token_file is None:
            raise _broken(self.path, 'no "token_file"; set CORTEX_TOKEN instead')
        try:
            return self.token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(
                f"cannot read the token file {self.token_file} named in {self.path} "
                f"({e.strerror}); restart the hub to rewrite it, or set CORTEX_TOKEN"
            ) from e

    def read_ca(self) -> bytes | None:
        return None if self.ca_file is None else _read_ca(self.ca_file, str(self.path))


def _check_address(address: str) -> None:
    try:
        parse_addresses(address)
    except InvalidArgument as e:
        raise ConfigError(str(e)) from None


def _same(a: str, b: str) -> bool:
    """Whether two address lists name the same hubs (spacing aside)."""
    try:
        return parse_addresses(a) == parse_addresses(b)
    except InvalidArgument:
        return a == b


def _file_address(path: Path, value: Any) -> str:
    """client.json's "address": one ``HOST:PORT`` string, or a list of them."""
    if value is None:
        raise _broken(path, 'no "address" string')
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = join_addresses(value)
    if not isinstance(value, str):
        raise _broken(path, '"address" is neither a "HOST:PORT" string nor a list of them')
    try:
        parse_addresses(value)
    except InvalidArgument as e:
        raise _broken(path, str(e)) from None
    return value


def _home(home: Path | str | None, env: Mapping[str, str]) -> Path:
    if home is not None:
        return Path(home).expanduser()
    if env.get("CORTEX_HOME"):
        return Path(env["CORTEX_HOME"]).expanduser()
    return Path.home() / ".cortex"


def _first(*candidates: tuple[str | None, str]) -> tuple[str | None, str]:
    for value, source in candidates:
        if value:
            return value, source
    return None, ""


def _path_field(path: Path, data: dict[str, Any], key: str) -> Path | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _broken(path, f'"{key}" is not a path')
    return path.parent / value  # an absolute value replaces the parent


def _read_ca(path: Path | str, source: str) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the CA file {path} (from {source}): {e.strerror}") from e
    if _PEM_MARKER not in data:
        raise ConfigError(f"the CA file {path} (from {source}) holds no PEM certificate")
    return data


def _broken(path: Path, what: str) -> ConfigError:
    return ConfigError(
        f"{path} is not a valid client config: {what}; restart the hub to rewrite it, "
        "or set CORTEX_HUB and CORTEX_TOKEN"
    )
