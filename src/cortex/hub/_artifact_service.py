"""ArtifactService on both gRPC ports: clients (API token, its tenant and role) and nodes
(mutual TLS, the tenant in the node's certificate; nodes may not delete)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from cortex._proto.cortex.v1 import artifacts_pb2 as apb
from cortex._proto.cortex.v1 import artifacts_pb2_grpc
from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex.errors import InvalidArgument, PermissionDenied
from cortex.hub._grpc_errors import Ctx, streaming, unary
from cortex.hub.artifacts import ArtifactManager
from cortex.hub.auth import Authenticator
from cortex.hub.pki import identity_from_pem
from cortex.hub.services import authenticated

__all__ = ["ArtifactServicer", "client_tenant", "node_tenant"]

_SERVICE = "/cortex.v1.ArtifactService/"

# (context, RPC name) -> tenant
TenantOf = Callable[[Ctx, str], Awaitable[str]]


def client_tenant(auth: Authenticator) -> TenantOf:
    """Clients: the API token's tenant, if its role may call the RPC (hub/access.py)."""
    async def tenant(context: Ctx, rpc: str) -> str:
        return (await authenticated(auth, context, _SERVICE + rpc)).tenant

    return tenant


def node_tenant() -> TenantOf:
    async def tenant(context: Ctx, rpc: str) -> str:
        del rpc  # a node writes its tasks' outputs; deleting is refused by the servicer
        pems = list(context.auth_context().get("x509_pem_cert") or [])
        if not pems:
            raise PermissionDenied("nodes must present a client certificate issued by this hub")
        return identity_from_pem(pems[0]).tenant

    return tenant


class ArtifactServicer(artifacts_pb2_grpc.ArtifactServiceServicer):
    def __init__(self, manager: ArtifactManager, tenant_of: TenantOf, *,
                 may_delete: bool = True) -> None:
        self._artifacts = manager
        self._tenant_of = tenant_of
        self._may_delete = may_delete

    @unary
    async def Write(self, request_iterator: AsyncIterator[apb.WriteRequest],
                    context: Ctx) -> apb.WriteResponse:
        tenant = await self._tenant_of(context, "Write")
        return await self._artifacts.write(tenant, request_iterator)

    @unary
    async def QueryWriteStatus(self, request: apb.QueryWriteStatusRequest,
                               context: Ctx) -> apb.WriteResponse:
        tenant = await self._tenant_of(context, "QueryWriteStatus")
        return await self._artifacts.query(tenant, request.upload_id)

    @streaming
    async def Read(self, request: apb.ReadRequest,
                   context: Ctx) -> AsyncIterator[apb.ReadResponse]:
        tenant = await self._tenant_of(context, "Read")
        async for chunk in self._artifacts.read(tenant, request.artifact_id,
                                                offset=request.read_offset,
                                                limit=request.read_limit):
            yield chunk

    @unary
    async def Stat(self, request: apb.StatArtifactRequest, context: Ctx) -> pb.File:
        tenant = await self._tenant_of(context, "Stat")
        return await self._artifacts.stat(tenant, request.artifact_id)

    @unary
    async def List(self, request: apb.ListArtifactsRequest,
                   context: Ctx) -> apb.ListArtifactsResponse:
        tenant = await self._tenant_of(context, "List")
        limit = request.limit or 100
        if limit > 1000:
            raise InvalidArgument("limit: at most 1000 artifacts per page")
        files = await self._artifacts.list(tenant, task_id=request.task_id, limit=limit,
                                           after_id=request.page_token)
        token = files[-1].artifact_id if len(files) == limit else ""
        return apb.ListArtifactsResponse(files=files, next_page_token=token)

    @unary
    async def Delete(self, request: apb.DeleteArtifactRequest,
                     context: Ctx) -> apb.DeleteArtifactResponse:
        tenant = await self._tenant_of(context, "Delete")
        if not self._may_delete:
            raise PermissionDenied("nodes may not delete artifacts; a client with an "
                                   "operator or admin token can (cortex artifacts rm)")
        await self._artifacts.delete(tenant, request.artifact_id)
        return apb.DeleteArtifactResponse()
