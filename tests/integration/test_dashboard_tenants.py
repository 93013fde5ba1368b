"""The dashboard's tenants page: a hub-admin sees every tenant (weight, quota, what the
ledger holds now, pools) and changes limits through a CSRF-protected form; an admin sees
only their own tenant and cannot change anything."""

from __future__ import annotations

import html
import re
import time
from collections.abc import AsyncIterator

import httpx2
import pytest
import pytest_asyncio

from cortex.core.quota import Quota
from cortex.hub.auth import issue_api_token
from cortex.hub.server import Hub
from cortex.hub.web import PREFIX
from cortex.node.agent import Agent
from cortex.sdk import Client
from cortex.store.base import PoolRecord

pytestmark = pytest.mark.timeout(60)

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def _login(http: httpx2.AsyncClient, token: str) -> str:
    """Log in with `token`; the session's CSRF token."""
    form = await http.get(f"{PREFIX}/login")
    (secret,) = _CSRF.findall(form.text)
    res = await http.post(f"{PREFIX}/login", data={"token": token, "csrf": secret})
    assert res.status_code == 303, res.text
    return str(_CSRF.findall((await http.get(f"{PREFIX}/tasks")).text)[0])


@pytest_asyncio.fixture
async def http(hub: Hub) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{hub.http_port}",
                                  timeout=30.0) as client:
        yield client


def _section(page: str, tenant: str) -> str:
    start = page.index(f'<section class="tenant" id="tenant-{tenant}">')
    return page[start:page.index("</section>", start)]


def _cell(section: str, field: str, kind: str) -> str:
    row = section[section.index(f'class="quota-{field}"'):]
    return row[row.index(f'class="{kind}">') + len(kind) + 9:].split("<", 1)[0]


@pytest.mark.asyncio
async def test_hub_admin_sees_every_tenant_with_usage_and_changes_limits(
        hub: Hub, node: Agent, client: Client, http: httpx2.AsyncClient) -> None:
    """Both tenants are listed; a running task shows in the ledger; the form stores and
    applies a new weight and quota, which the page then shows."""
    now = time.time()
    await hub.store.ensure_tenant("acme", now=now)
    await hub.store.create_pool(PoolRecord("acme", "gpu", now, description="big boxes"))
    task = await client.submit(argv=["sleep", "60"])
    async for event in client.watch(task.id):
        if event.WhichOneof("kind") == "state" and event.state.state == 3:   # running
            break
    csrf = await _login(http, hub.admin_token)
    page = (await http.get(f"{PREFIX}/tenant")).text
    default, acme = _section(page, "default"), _section(page, "acme")
    assert _cell(default, "tasks", "used") == "1"
    assert _cell(default, "tasks", "limit") == "unlimited"
    assert "big boxes" in acme
    assert 'id="limits-acme"' in acme

    res = await http.post(f"{PREFIX}/tenant/limits", data={
        "csrf": csrf, "tenant": "acme", "weight": "2.5", "tasks": "3", "cpus": "1.5",
        "memory_mib": "", "gpus": "0", "browser_sessions": "2"})
    assert res.status_code == 303
    assert res.headers["location"] == f"{PREFIX}/tenant#tenant-acme"
    rec = await hub.store.get_tenant("acme")
    assert rec is not None
    assert rec.weight == 2.5
    assert Quota.from_dict(rec.quota) == Quota(tasks=3, cpus=1.5, browser_sessions=2)
    assert hub.tasks.ledger.weights["acme"] == 2.5
    acme = _section((await http.get(f"{PREFIX}/tenant")).text, "acme")
    assert _cell(acme, "tasks", "limit") == "3"
    assert _cell(acme, "cpus", "limit") == "1.5"
    assert '<td class="weight">2.5</td>' in acme
    await client.cancel(task.id)


@pytest.mark.asyncio
@pytest.mark.parametrize(("fields", "status", "says"), [
    ({"tenant": "acme", "weight": "0"}, 400, "weight must be more than 0"),
    ({"tenant": "acme", "tasks": "1.5"}, 400, "tasks: a whole number"),
    ({"tenant": "acme", "cpus": "-1"}, 400, "quota cpus must be >= 0"),
    ({"tenant": "acme", "gpus": "many"}, 400, "gpus: a number"),
    ({"tenant": "acme", "cpus": "nan"}, 400, "cpus: a finite number"),
    ({"tenant": "nobody"}, 404, "no tenant 'nobody'"),
    ({"weight": "1"}, 400, "tenant: name the tenant"),
])
async def test_bad_limits_are_refused_with_what_is_wrong(
        hub: Hub, http: httpx2.AsyncClient, fields: dict[str, str], status: int,
        says: str) -> None:
    """Each bad field is named in the answer and nothing is stored."""
    await hub.store.ensure_tenant("acme", now=time.time())
    csrf = await _login(http, hub.admin_token)
    res = await http.post(f"{PREFIX}/tenant/limits", data={"csrf": csrf, **fields})
    assert res.status_code == status
    assert says in html.unescape(res.text)
    rec = await hub.store.get_tenant("acme")
    assert rec is not None
    assert (rec.weight, rec.quota) == (1.0, {})


@pytest.mark.asyncio
async def test_limits_need_the_csrf_token_and_a_hub_admin(
        hub: Hub, http: httpx2.AsyncClient) -> None:
    """Without the session's CSRF token: 403. An admin sees only their tenant, without the
    form, and is refused (403) when posting it anyway."""
    await hub.store.ensure_tenant("acme", now=time.time())
    await _login(http, hub.admin_token)
    res = await http.post(f"{PREFIX}/tenant/limits", data={"tenant": "acme", "weight": "9"})
    assert res.status_code == 403
    assert "CSRF" in res.text
    http.cookies.clear()
    admin = await issue_api_token(hub.store, tenant="acme", role="admin", name="a",
                                  now=time.time())
    csrf = await _login(http, admin)
    page = (await http.get(f"{PREFIX}/tenant")).text
    assert 'id="tenant-acme"' in page
    assert 'id="tenant-default"' not in page
    assert "limits-acme" not in page
    res = await http.post(f"{PREFIX}/tenant/limits", data={
        "csrf": csrf, "tenant": "acme", "weight": "9"})
    assert res.status_code == 403
    assert "hub-admin" in res.text
    rec = await hub.store.get_tenant("acme")
    assert rec is not None
    assert rec.weight == 1.0
