"""Store fixtures, parametrised by backend so one contract suite runs against every store.

Each backend is a context manager: given a per-test directory it yields a factory of
UNOPENED stores, and two calls of one factory must reach the same data (the restart test
opens a second store on the first one's data). Leaving the context removes the data.

Postgres: the server named by CORTEX_TEST_POSTGRES (default below); each test gets a
schema of its own, pinned through the URL's ``options=-csearch_path%3D…``, dropped after.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from cortex.store import open_store
from cortex.store.base import Store
from cortex.store.sqlite import SqliteStore

StoreFactory = Callable[[], Store]
POSTGRES_URL = os.environ.get("CORTEX_TEST_POSTGRES",
                              "postgresql://postgres@127.0.0.1:5432/test")


def with_schema(url: str, schema: str) -> str:
    """`url` with its connections' search_path pinned to `schema`."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at CORTEX_TEST_POSTGRES={POSTGRES_URL} does not answer "
                    f"({exc}); start it with `make postgres` or deselect with -m 'not postgres'")


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh, empty schema in the test database; yields its name, drops it afterwards."""
    schema = f"cortex_test_{secrets.token_hex(6)}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema
    finally:
        with _admin() as conn:
            # A store a failed test left open holds no locks while idle; a bound anyway,
            # so a leak shows up as an error here instead of a hung run.
            conn.execute("SET lock_timeout = '10s'")
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def _sqlite(data_dir: Path) -> Iterator[StoreFactory]:
    yield lambda: SqliteStore(data_dir / "cortex.db")


@contextlib.contextmanager
def _postgres(data_dir: Path) -> Iterator[StoreFactory]:
    del data_dir  # the data lives in the schema, not on disk
    with postgres_schema() as schema:
        url = with_schema(POSTGRES_URL, schema)
        yield lambda: open_store(url)


BACKENDS = [
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_postgres, id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of unopened stores of one backend, all sharing this test's data."""
    backend: Callable[[Path], AbstractContextManager[StoreFactory]] = request.param
    with backend(tmp_path) as factory:
        yield factory


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A Postgres store URL on a fresh schema of its own, dropped after the test."""
    with postgres_schema() as schema:
        yield with_schema(POSTGRES_URL, schema)


@pytest_asyncio.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    """An opened store of one backend, closed after the test."""
    opened = make_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
