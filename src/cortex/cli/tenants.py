"""``cortex tenant`` (hub-admin: tenants, weights, quotas) and ``cortex pool`` (node pools)."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from cortex.cli._common import ago, client_config, out_console, print_json, run_async, to_dict
from cortex.cli.tokens import with_admin
from cortex.errors import InvalidArgument
from cortex.sdk import Pool, Quota, Tenant

__all__ = ["parse_quota", "pools", "tenants"]

tenants = typer.Typer(help="Tenants, their fair-share weights and quotas (hub-admin).",
                      no_args_is_help=True)
pools = typer.Typer(help="Node pools of your tenant; join tokens put nodes into one.",
                    no_args_is_help=True)

_QUOTA_HELP = ("A limit on what the tenant's tasks hold at once, K=V (repeatable): tasks, "
               "cpus, memory_mib, gpus, browser_sessions; 0 = no limit.")
_QuotaOpt = Annotated[list[str] | None, typer.Option(
    "--quota", "-q", metavar="K=V", help=_QUOTA_HELP, show_default=False)]
_JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
_TenantOpt = Annotated[str | None, typer.Option(
    "--tenant", metavar="TENANT", help="Another tenant (hub-admin only).", show_default=False)]


def parse_quota(pairs: list[str] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs or ():
        key, eq, value = pair.partition("=")
        if not eq:
            raise typer.BadParameter(f"{pair!r}: give K=V, e.g. tasks=8", param_hint="'--quota'")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"{pair!r}: {value!r} is not a number",
                                     param_hint="'--quota'") from None
    return out


def _quota_text(q: Quota) -> str:
    parts = [f"{name}={getattr(q, name):g}" for name in
             ("tasks", "cpus", "memory_mib", "gpus", "browser_sessions") if getattr(q, name)]
    return ", ".join(parts) or "none"


def _print_tenants(items: list[Tenant]) -> None:
    table = Table(box=None, pad_edge=False)
    for column in ("TENANT", "WEIGHT", "QUOTA", "HOLDS NOW", "QUEUED", "CREATED"):
        table.add_column(column, overflow="fold")
    now = time.time()
    for t in items:
        table.add_row(t.id, f"{t.weight:g}", _quota_text(t.quota), _quota_text(t.usage),
                      str(t.queued), ago(t.created_at, now=now))
    out_console.print(table)


@tenants.command("create")
def create_tenant(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Lowercase letters, digits, '-'.")],
    weight: Annotated[float, typer.Option(
        "--weight", "-w", help="Fair share against other tenants on shared capacity.")] = 1.0,
    quota: _QuotaOpt = None,
    as_json: _JsonOpt = False,
) -> None:
    """Create a tenant (with its `default` pool); then `cortex token join --tenant`."""
    limits = parse_quota(quota)
    tenant = run_async(with_admin(client_config(ctx), lambda a: a.create_tenant(
        name, weight=weight, quota=limits)))
    if as_json:
        print_json(to_dict(tenant))
    else:
        _print_tenants([tenant])


@tenants.command("ls")
def list_tenants(ctx: typer.Context, as_json: _JsonOpt = False) -> None:
    """Every tenant with its weight, quota and what it holds now."""
    items = run_async(with_admin(client_config(ctx), lambda a: a.list_tenants()))
    if as_json:
        print_json([to_dict(t) for t in items])
    else:
        _print_tenants(items)


@tenants.command("show")
def show_tenant(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(
        metavar="[NAME]", help="Default: your token's tenant.", show_default=False)] = None,
    as_json: _JsonOpt = False,
) -> None:
    """One tenant's limits and usage (any role may see its own)."""
    tenant = run_async(with_admin(client_config(ctx), lambda a: a.get_tenant(name or "")))
    if as_json:
        print_json(to_dict(tenant))
    else:
        _print_tenants([tenant])


@tenants.command("limits")
def set_limits(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    weight: Annotated[float | None, typer.Option(
        "--weight", "-w", help="New fair-share weight.", show_default=False)] = None,
    quota: _QuotaOpt = None,
    clear_quota: Annotated[bool, typer.Option(
        "--no-quota", help="Remove every quota limit.")] = False,
    as_json: _JsonOpt = False,
) -> None:
    """Change a tenant's weight and/or replace its quota (queued tasks re-checked at once)."""
    if quota and clear_quota:
        raise typer.BadParameter("give --quota or --no-quota, not both")
    if weight is None and not quota and not clear_quota:
        raise typer.BadParameter("nothing to change: give --weight, --quota or --no-quota")
    limits = {} if clear_quota else (parse_quota(quota) if quota else None)
    try:
        tenant = run_async(with_admin(client_config(ctx), lambda a: a.set_tenant_limits(
            name, weight=weight, quota=limits)))
    except InvalidArgument as exc:
        raise typer.BadParameter(str(exc)) from None
    if as_json:
        print_json(to_dict(tenant))
    else:
        _print_tenants([tenant])


def _print_pools(items: list[Pool]) -> None:
    table = Table(box=None, pad_edge=False)
    for column in ("POOL", "TENANT", "NODES", "ONLINE", "SHARED WITH", "DESCRIPTION",
                   "CREATED"):
        table.add_column(column, overflow="fold")
    now = time.time()
    for p in items:
        table.add_row(p.name, p.tenant, str(p.nodes), str(p.online),
                      ", ".join(p.shared_with) or "-", p.description or "-",
                      ago(p.created_at, now=now))
    out_console.print(table)


@pools.command("create")
def create_pool(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Lowercase letters, digits, '-'.")],
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    share: Annotated[list[str] | None, typer.Option(
        "--share-with", metavar="TENANT", help="Another tenant whose tasks may run on this "
        "pool's nodes too (repeatable); tenant weights share it fairly.", show_default=False)
    ] = None,
    tenant: _TenantOpt = None,
    as_json: _JsonOpt = False,
) -> None:
    """Create a node pool; `cortex token join --pool NAME` lets machines join it."""
    pool = run_async(with_admin(client_config(ctx), lambda a: a.create_pool(
        name, description=description, tenant=tenant or "", shared_with=share or ())))
    if as_json:
        print_json(to_dict(pool))
    else:
        _print_pools([pool])


@pools.command("ls")
def list_pools(ctx: typer.Context, tenant: _TenantOpt = None, as_json: _JsonOpt = False
               ) -> None:
    """The tenant's pools with how many nodes each has and how many are online."""
    items = run_async(with_admin(client_config(ctx), lambda a: a.list_pools(
        tenant=tenant or "")))
    if as_json:
        print_json([to_dict(p) for p in items])
    else:
        _print_pools(items)
