"""Persistence behind one interface. No SQL lives outside this package.

`open_store(url)` picks the backend: a path or ``sqlite:///path`` for SQLite (the
default), ``postgresql://…`` for Postgres (scale-out issue).
"""

from cortex.store.base import (
    ApiTokenRecord,
    JoinTokenRecord,
    Store,
    TaskQuery,
)


def open_store(url: str) -> Store:
    """A store for `url`; call ``await store.open()`` before use."""
    if url.startswith(("postgresql://", "postgres://")):
        from cortex.errors import InvalidArgument

        raise InvalidArgument("the Postgres store is not built yet; use a SQLite path")
    from cortex.store.sqlite import SqliteStore

    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    return SqliteStore(path)


__all__ = ["ApiTokenRecord", "JoinTokenRecord", "Store", "TaskQuery", "open_store"]
