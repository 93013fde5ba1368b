"""Which hub client serves a tool call: over stdio, the server's one client; over HTTP,
the caller's own (one per bearer token), so its tenant and role bound the call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cortex.mcp._stdin import StdinPipes
from cortex.sdk import Client

__all__ = ["Binding", "Resolve"]


@dataclass(frozen=True, slots=True, eq=False)
class Binding:
    """A hub client, the stdin streams opened through it, and what to tell the model to do
    when the hub refuses its token (it differs between stdio and HTTP)."""

    client: Client
    pipes: StdinPipes
    credentials: str


Resolve = Callable[[], Binding]
"""Returns the binding of the tool call being served (called once at the start of each)."""
