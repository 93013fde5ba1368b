"""Cortex: a control plane that lets AI agents, people and scripts drive a fleet of machines.

``from cortex import Client, SyncClient`` is the SDK (`cortex.sdk`), loaded on first use.
Every layer imports this package (hub, node and store too), so it must not depend on the
SDK, nor through it on grpc: the names are resolved by `__getattr__` with importlib, which
import-linter does not count as an import. Their types live in ``__init__.pyi``.
"""

from __future__ import annotations

import importlib
from typing import Any

from cortex.errors import (
    Conflict,
    CortexError,
    IllegalTransition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RemoteError,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClientConfig",
    "Conflict",
    "CortexError",
    "IllegalTransition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RemoteError",
    "Result",
    "SyncClient",
    "Unavailable",
    "__version__",
]

_FROM_SDK = frozenset({"Client", "ClientConfig", "Result", "SyncClient"})


def __getattr__(name: str) -> Any:
    if name in _FROM_SDK:
        return getattr(importlib.import_module("cortex.sdk"), name)
    raise AttributeError(f"module 'cortex' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
