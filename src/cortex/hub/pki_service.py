"""The certificate lifecycle on the hub: renewal, re-enrollment, revocation, CA rotation.

`Lifecycle` holds the CA, the live serving credentials and the decisions' I/O; the two
servicers below only authenticate and translate. The serving certificate is swapped live:
both gRPC ports use `grpc.dynamic_ssl_server_credentials`, whose fetcher gRPC calls before
each new handshake; it hands out a new configuration whenever the CA's generation moved
(rotation, retirement, serving certificate renewal). Established connections keep theirs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cortex._proto.cortex.v1 import common_pb2 as pb
from cortex._proto.cortex.v1 import pki_pb2, pki_pb2_grpc
from cortex.core import certpolicy
from cortex.errors import InvalidArgument, NotFound, PermissionDenied
from cortex.hub._grpc_errors import Ctx, unary
from cortex.hub._x509 import NodeIdentity, identity_from_cert, identity_from_pem
from cortex.hub.auth import Authenticator
from cortex.hub.config import HubConfig
from cortex.hub.pki import CertificateAuthority
from cortex.hub.registry import Registry
from cortex.hub.services import authenticated
from cortex.hub.tasks import TaskManager
from cortex.store.base import CertificateRecord, Store

__all__ = ["REENROLL_CONTEXT", "Lifecycle", "NodeCertServicer", "PkiServicer"]

log = logging.getLogger("cortex.hub.pki")
REENROLL_CONTEXT = certpolicy.REENROLL_CONTEXT
_SERVER_RENEW_S = 7 * 86400.0   # reissue the hub's serving certificate this long before expiry
_SERVICE = "/cortex.v1.PkiService/"


class Lifecycle:
    def __init__(self, *, ca: CertificateAuthority, store: Store, registry: Registry,
                 tasks: TaskManager, config: HubConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.ca = ca
        self._store = store
        self._registry = registry
        self._tasks = tasks
        self._config = config
        self._policy = config.cert_policy
        self._clock = clock
        self._serving: tuple[bytes, bytes] = (b"", b"")
        self._serving_until = 0.0
        self._served_generation = -1
        self._lock = asyncio.Lock()

    # -- serving credentials ------------------------------------------------------------
    def serving_pair(self) -> tuple[bytes, bytes]:
        """(key, chain) of the hub's serving certificate, reissued when the CA changed."""
        now = self._clock()
        if self._served_generation != self.ca.generation or now > self._serving_until:
            self._served_generation = self.ca.generation
            self._serving = self.ca.issue_server_cert(
                self._config.data_dir, now=_utc(now),
                extra_names=self._config.certificate_names)
            cert = x509.load_pem_x509_certificate(self._serving[1])
            self._serving_until = cert.not_valid_after_utc.timestamp() - _SERVER_RENEW_S
        return self._serving

    @property
    def serving_chain(self) -> bytes:
        """The serving certificate chain last issued (b"" before the first), for reading:
        unlike `serving_pair` it never issues one."""
        return self._serving[1]

    def credentials(self, *, client_auth: bool) -> grpc.ServerCredentials:
        served = [-1]

        def config() -> grpc.ServerCertificateConfiguration:
            pair = self.serving_pair()
            served[0] = self._served_generation
            return grpc.ssl_server_certificate_configuration(
                [pair], root_certificates=self.ca.cert_pem if client_auth else None)

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Called by gRPC before each handshake; None keeps the current configuration.
            if served[0] == self.ca.generation and self._clock() <= self._serving_until:
                return None
            return config()

        # grpc's stubs say the fetcher returns a configuration; None (no change) is allowed.
        return grpc.dynamic_ssl_server_credentials(
            config(), fetch,  # type: ignore[arg-type]
            require_client_authentication=client_auth)

    # -- issuing ------------------------------------------------------------------------
    async def issue(self, ident: NodeIdentity, csr_pem: bytes) -> pki_pb2.RenewResponse:
        """A new certificate for an already authenticated node identity."""
        now = self._clock()
        chain, cert = self.ca.sign_node_csr(
            csr_pem, tenant=ident.tenant, node_id=ident.node_id, pool=ident.pool,
            now=_utc(now), ttl=dt.timedelta(seconds=self._policy.lifetime_s))
        rec = CertificateRecord(
            serial=format(cert.serial_number, "x"), tenant=ident.tenant, node_id=ident.node_id,
            # Not the certificate's (whole seconds): a renewal within the second of the
            # enrollment must still sort as the newer one.
            not_before=now - certpolicy.BACKDATE_S,
            not_after=cert.not_valid_after_utc.timestamp(), issuer=self.ca.node_issuer,
            pool=ident.pool)
        await self._store.record_issued_certificate(ident.tenant, rec)
        return pki_pb2.RenewResponse(certificate_pem=chain, ca_pem=self.ca.cert_pem,
                                     not_before=rec.not_before, not_after=rec.not_after)

    async def admit(self, ident: NodeIdentity) -> None:
        """Refuse a revoked node, and a certificate this hub has no (unrevoked) record of."""
        if await self._store.node_revoked_at(ident.tenant, ident.node_id):
            raise PermissionDenied(
                f"node {ident.node_id} was revoked: it cannot connect or renew; enroll the "
                "machine again with a new join token (`cortex token join`)")
        rec = await self._store.get_certificate(ident.tenant, ident.serial)
        if rec is None or rec.node_id != ident.node_id:
            raise PermissionDenied(
                f"certificate {ident.serial} of node {ident.node_id} is unknown to this hub: "
                "enroll the machine again with a new join token")
        if rec.revoked_at:
            raise PermissionDenied(f"certificate {ident.serial} was revoked: enroll again "
                                   "with a new join token")

    async def renew(self, ident: NodeIdentity, csr_pem: bytes) -> pki_pb2.RenewResponse:
        await self.admit(ident)
        resp = await self.issue(ident, csr_pem)
        log.info("renewed the certificate of node %s (valid until %s)", ident.node_id,
                 _utc(resp.not_after).isoformat(timespec="seconds"))
        return resp

    async def reenroll(self, chain_pem: bytes, csr_pem: bytes, proof: bytes
                       ) -> pki_pb2.RenewResponse:
        if len(chain_pem) > 64 * 1024:
            raise InvalidArgument("certificate_pem: at most 64 KiB")
        try:
            cert = x509.load_pem_x509_certificate(chain_pem)
        except ValueError as exc:
            raise InvalidArgument(f"certificate_pem is not a PEM certificate: {exc}") from exc
        if not self.ca.issued_here(cert):
            raise PermissionDenied("this certificate was not issued by this hub's CA")
        ident = identity_from_cert(cert)
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise PermissionDenied("the certificate's key is not an ECDSA key")
        try:
            public.verify(proof, REENROLL_CONTEXT + csr_pem, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise PermissionDenied(
                "the proof does not verify: it must be signed by the certificate's key") from None
        decision = certpolicy.reenroll_decision(
            certpolicy.Validity(ident.not_before, ident.not_after), now=self._clock(),
            grace_s=self._policy.reenroll_grace_s,
            revoked=bool(await self._store.node_revoked_at(ident.tenant, ident.node_id)))
        if decision is certpolicy.Reenroll.REVOKED:
            raise PermissionDenied(f"node {ident.node_id} was revoked: enroll the machine "
                                   "again with a new join token")
        if decision is certpolicy.Reenroll.TOO_LATE:
            raise PermissionDenied(
                f"the certificate of node {ident.node_id} expired more than "
                f"{self._policy.reenroll_grace_s:g} s ago (the hub's re-enrollment grace): "
                "enroll the machine again with a new join token (`cortex token join`)")
        if decision is certpolicy.Reenroll.NOT_YET_VALID:
            raise PermissionDenied("the certificate is not valid yet: check the clocks")
        await self.admit(ident)
        own = await self._store.get_certificate(ident.tenant, ident.serial)
        newer = [c for c in await self._store.list_certificates(ident.tenant, valid_at=0.0)
                 if c.node_id == ident.node_id and c.serial != ident.serial
                 and own is not None and c.not_before > own.not_before]
        if newer:
            raise PermissionDenied("a newer certificate exists for this node: only the "
                                   "latest one may re-enroll")
        log.info("node %s re-enrolled with its expired certificate", ident.node_id)
        return await self.issue(ident, csr_pem)

    # -- revocation ---------------------------------------------------------------------
    async def revoke(self, tenant: str, node_id: str, reason: str
                     ) -> pki_pb2.RevokeNodeResponse:
        node = await self._store.get_node(tenant, node_id)
        if node is None:
            raise NotFound(f"no node {node_id} in this tenant: see `cortex nodes ls`")
        why = reason or "revoked by an administrator"
        count = await self._store.revoke_node(tenant, node_id, reason=why, now=self._clock())
        conn = self._registry.get(node_id)
        connected = conn is not None and conn.tenant == tenant
        if conn is not None and connected:
            conn.node.state = pb.REVOKED  # what the stream's close records
            conn.close()  # the stream ends now; its reconnects are refused by `admit`
        node.state = pb.REVOKED
        await self._store.upsert_node(tenant, node)
        lost = await self._tasks.lose_node_tasks(tenant, node_id, f"node revoked: {why}")
        log.warning("node %s revoked (%s): %d certificates, %d tasks lost", node_id, why,
                    count, lost)
        return pki_pb2.RevokeNodeResponse(node_id=node_id, certificates_revoked=count,
                                          tasks_lost=lost, was_connected=connected)

    # -- the CA -------------------------------------------------------------------------
    async def rotate(self, *, root: bool) -> None:
        async with self._lock:
            self.ca.rotate(now=_utc(self._clock()), new_root=root)
        log.warning("CA rotated: new intermediate %s%s", self.ca.active.name,
                    f" under new root {self.ca.newest_root.name}" if root else "")

    async def maintain(self) -> None:
        """One pass: retire what nothing depends on; rotate an intermediate near its end."""
        async with self._lock:
            now = self._clock()
            # Under the CA directory's lock: of several hubs sharing it, one rotates.
            with self.ca.locked():
                if self.ca.needs_rotation(now=now, lifetime_s=self._policy.lifetime_s):
                    self.ca.rotate(now=_utc(now))
                    log.warning("the issuing intermediate neared its end: rotated to %s",
                                self.ca.active.name)
            latest = await self._store.certificate_issuers_all_tenants(now=now)
            if self.ca.retire(latest, now=now):
                log.info("retired CA certificates nothing depends on any more")

    async def follow_ca_dir(self) -> bool:
        """Load the CA again when another hub sharing its directory changed it; the next
        handshakes get the new serving chain and trust bundle. True when it did."""
        async with self._lock:
            if not self.ca.reload_if_changed():
                return False
        log.warning("the CA directory changed (another hub rotated or retired): now "
                    "issuing through %s", self.ca.node_issuer)
        return True

    async def status(self, tenant: str) -> pki_pb2.CaStatusResponse:
        now = self._clock()
        current = self.ca.node_issuer
        return pki_pb2.CaStatusResponse(
            authorities=[pki_pb2.CaCertificate(
                name=e.name, kind=e.kind, signed_by=e.signed_by, fingerprint=e.fingerprint,
                not_before=e.not_before, not_after=e.not_after, active=e.active,
                retired=e.retired) for e in self.ca.status()],
            issuer=current, fingerprint=self.ca.fingerprint,
            certificates=[pki_pb2.NodeCertificate(
                node_id=c.node_id, serial=c.serial, issuer=c.issuer, pool=c.pool,
                not_before=c.not_before, not_after=c.not_after, current=c.issuer == current)
                for c in _latest_per_node(
                    await self._store.list_certificates(tenant, valid_at=now))],
            node_cert_ttl_s=self._policy.lifetime_s,
            reenroll_grace_s=self._policy.reenroll_grace_s)


class PkiServicer(pki_pb2_grpc.PkiServiceServicer):
    """Client port: API token with the admin role."""

    def __init__(self, lifecycle: Lifecycle, auth: Authenticator) -> None:
        self._life = lifecycle
        self._auth = auth

    async def _tenant(self, context: Ctx, rpc: str) -> str:
        """The caller's tenant, if its role may call `rpc` (hub/access.py)."""
        return (await authenticated(self._auth, context, _SERVICE + rpc)).tenant

    @unary
    async def RevokeNode(self, request: pki_pb2.RevokeNodeRequest,
                         context: Ctx) -> pki_pb2.RevokeNodeResponse:
        tenant = await self._tenant(context, "RevokeNode")
        if not request.node_id or len(request.node_id) > 128:
            raise InvalidArgument("node_id: give a node id such as n-0123456789abcdefghij")
        if len(request.reason) > 1024:
            raise InvalidArgument("reason: at most 1024 characters")
        return await self._life.revoke(tenant, request.node_id, request.reason)

    @unary
    async def CaStatus(self, request: pki_pb2.CaStatusRequest,
                       context: Ctx) -> pki_pb2.CaStatusResponse:
        tenant = await self._tenant(context, "CaStatus")
        await self._life.maintain()
        return await self._life.status(tenant)

    @unary
    async def RotateCa(self, request: pki_pb2.RotateCaRequest,
                       context: Ctx) -> pki_pb2.CaStatusResponse:
        # The CA is shared by every tenant: only a hub-admin rotates it (access table).
        tenant = await self._tenant(context, "RotateCa")
        await self._life.rotate(root=request.root)
        return await self._life.status(tenant)


class NodeCertServicer(pki_pb2_grpc.NodeCertServiceServicer):
    """Renew needs the node port's mutual TLS; Reenroll is served on the client port."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self._life = lifecycle

    @unary
    async def Renew(self, request: pki_pb2.RenewRequest,
                    context: Ctx) -> pki_pb2.RenewResponse:
        pems = list(context.auth_context().get("x509_pem_cert") or [])
        if not pems:
            raise PermissionDenied("renewal needs the node's current certificate: call "
                                   "Renew on the hub's node port over mutual TLS")
        return await self._life.renew(identity_from_pem(pems[0]), request.csr_pem)

    @unary
    async def Reenroll(self, request: pki_pb2.ReenrollRequest,
                       context: Ctx) -> pki_pb2.RenewResponse:
        return await self._life.reenroll(request.certificate_pem, request.csr_pem,
                                         request.proof)


def _latest_per_node(certs: list[CertificateRecord]) -> list[CertificateRecord]:
    """The newest certificate of each node (what it presents once it reconnects)."""
    out: dict[str, CertificateRecord] = {}
    for c in certs:
        if c.node_id not in out or c.not_before > out[c.node_id].not_before:
            out[c.node_id] = c
    return sorted(out.values(), key=lambda c: c.node_id)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)
