"""``cortex hub``, ``cortex node`` and ``cortex up`` (placeholder; the lead writes this)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds hub, node and up (written by the lead)."""
