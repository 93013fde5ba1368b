"""Store fixtures, parametrised by backend so one contract suite runs against every store.

Each backend is a factory: given a per-test directory it returns an UNOPENED store, and
two calls with the same directory must reach the same data (the restart test opens a
second store on the first one's data).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from cortex.store.base import Store
from cortex.store.sqlite import SqliteStore

StoreFactory = Callable[[], Store]


def _sqlite(data_dir: Path) -> Store:
    return SqliteStore(data_dir / "cortex.db")


# To add Postgres: write `_postgres(data_dir: Path) -> Store` that derives a database name
# from data_dir (create it on first use, so a second call reaches the same data) and add
#     pytest.param(_postgres, id="postgres", marks=pytest.mark.postgres),
# below. Nothing else in tests/store changes.
BACKENDS = [
    pytest.param(_sqlite, id="sqlite"),
]


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A factory of unopened stores of one backend, all sharing this test's data."""
    factory: Callable[[Path], Store] = request.param
    return lambda: factory(tmp_path)


@pytest_asyncio.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[Store]:
    """An opened store of one backend, closed after the test."""
    opened = make_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
