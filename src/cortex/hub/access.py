"""Who may call what: one table from RPC (and HTTP/MCP endpoint) to the roles allowed.

Every API token has one tenant and one role. The roles, from most to least powerful:

    hub-admin  manage tenants (create, list, weights and quotas) on the whole hub; in its
               own tenant it may do everything an admin may, and it may name another
               tenant in the administration calls
    admin      everything within its tenant: tasks, nodes, pools, API tokens
    operator   run and cancel tasks, manage nodes (join tokens, revoke, drain)
    agent      run and cancel tasks; read; no node or token management
    viewer     read only

The table is the single source of truth: the servicers ask `authorize()` with the RPC's
full name, and the isolation test matrix checks that every RPC of every service the hub
serves has an entry here *and* behaves as it says for each kind of caller. A new RPC that
is not in the table is refused for everyone (and fails the matrix test) until it is added.
"""

from __future__ import annotations

from collections.abc import Mapping

from cortex.errors import PermissionDenied

__all__ = ["ACCESS", "ROLES", "TENANT_ROLES", "authorize", "may_name_tenant"]

HUB_ADMIN = "hub-admin"
TENANT_ROLES = ("admin", "operator", "viewer", "agent")
ROLES = (HUB_ADMIN, *TENANT_ROLES)

_READ = frozenset(ROLES)
_RUN = frozenset({HUB_ADMIN, "admin", "operator", "agent"})
_NODES = frozenset({HUB_ADMIN, "admin", "operator"})
_TENANT_ADMIN = frozenset({HUB_ADMIN, "admin"})
_HUB = frozenset({HUB_ADMIN})

# Full gRPC method name -> roles allowed. Keep in step with the services the hub serves.
ACCESS: Mapping[str, frozenset[str]] = {
    "/cortex.v1.TaskService/Submit": _RUN,
    "/cortex.v1.TaskService/SubmitMany": _RUN,
    "/cortex.v1.TaskService/Run": _RUN,
    "/cortex.v1.TaskService/Get": _READ,
    "/cortex.v1.TaskService/List": _READ,
    "/cortex.v1.TaskService/Watch": _READ,
    "/cortex.v1.TaskService/Cancel": _RUN,
    "/cortex.v1.TaskService/WaitTasks": _READ,
    "/cortex.v1.TaskService/Attach": _RUN,
    "/cortex.v1.TaskService/ListNodes": _READ,
    "/cortex.v1.TaskService/CreateJoinToken": _NODES,
    "/cortex.v1.AdminService/CreateTenant": _HUB,
    "/cortex.v1.AdminService/ListTenants": _HUB,
    "/cortex.v1.AdminService/SetTenantLimits": _HUB,
    "/cortex.v1.AdminService/GetTenant": _READ,
    "/cortex.v1.AdminService/CreatePool": _TENANT_ADMIN,
    "/cortex.v1.AdminService/ListPools": _READ,
    "/cortex.v1.AdminService/CreateApiToken": _TENANT_ADMIN,
    "/cortex.v1.AdminService/ListApiTokens": _TENANT_ADMIN,
    "/cortex.v1.AdminService/RevokeApiToken": _TENANT_ADMIN,
    "/cortex.v1.ArtifactService/Write": _RUN,
    "/cortex.v1.ArtifactService/QueryWriteStatus": _RUN,
    "/cortex.v1.ArtifactService/Read": _READ,
    "/cortex.v1.ArtifactService/Stat": _READ,
    "/cortex.v1.ArtifactService/List": _READ,
    "/cortex.v1.ArtifactService/Delete": _RUN,
    "/cortex.v1.PkiService/RevokeNode": _NODES,
    "/cortex.v1.PkiService/CaStatus": _TENANT_ADMIN,
    "/cortex.v1.PkiService/RotateCa": _HUB,
}


def authorize(method: str, role: str) -> None:
    """PermissionDenied unless `role` may call `method` (a full gRPC method name)."""
    allowed = ACCESS.get(method)
    if allowed is None:
        raise PermissionDenied(f"{method} has no access rule; nobody may call it")
    if role not in allowed:
        short = method.rsplit("/", 1)[-1]
        need = " or ".join(r for r in ROLES if r in allowed)
        raise PermissionDenied(f"role {role!r} may not call {short} (it needs {need}); "
                               f"ask your tenant's admin for a token with that role")


def may_name_tenant(role: str, own: str, named: str) -> str:
    """The tenant an administration call acts on: the caller's own unless it names another,
    which only a hub-admin may do."""
    if not named or named == own:
        return own
    if role != HUB_ADMIN:
        raise PermissionDenied(f"only a hub-admin may act on another tenant ({named!r}); "
                               f"your token belongs to {own!r}")
    return named
