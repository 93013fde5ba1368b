"""Persistence behind one interface. No SQL lives outside this package.

`open_store(url)` picks the backend:

- ``postgresql://…`` or ``postgres://…``: Postgres (any libpq URL; pin a schema with
  ``?options=-csearch_path%3Dmyschema``, else the server's search_path decides);
- ``sqlite:///path`` or a plain path: SQLite (the default).
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
        from cortex.store.postgres import PostgresStore

        return PostgresStore(url)
    from cortex.store.sqlite import SqliteStore

    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    return SqliteStore(path)


__all__ = ["ApiTokenRecord", "JoinTokenRecord", "Store", "TaskQuery", "open_store"]
