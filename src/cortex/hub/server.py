"""Hub wiring: store, CA, task manager, the two gRPC ports, the HTTP port, background loops.

Port `port` serves clients (TLS; API tokens) and enrollment; port `node_port` serves nodes
(mutual TLS: a node certificate from this hub's CA is required to even connect);
`http_port` serves health, readiness, metrics and MCP (see `cortex.hub.http`).
Shutdown is two-phase: `close()` stops intake, `wait_closed()` drains within the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import secrets
import time
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cortex import __version__
from cortex._proto.cortex.v1 import (
    admin_pb2_grpc,
    artifacts_pb2_grpc,
    enroll_pb2_grpc,
    node_pb2_grpc,
    pki_pb2_grpc,
    tasks_pb2_grpc,
)
from cortex.errors import CortexError, Unavailable
from cortex.hub._artifact_service import ArtifactServicer, client_tenant, node_tenant
from cortex.hub._grpc_errors import StrictDecoding
from cortex.hub.access import HUB_ADMIN
from cortex.hub.admin import AdminServicer
from cortex.hub.artifacts import ArtifactLimits, ArtifactManager
from cortex.hub.auth import Authenticator, issue_api_token, issue_join_token
from cortex.hub.blobs import DirBlobStore
from cortex.hub.config import HTTP_OFF, HubConfig
from cortex.hub.http import HttpServer, HubSource, McpSettings, open_http
from cortex.hub.http._store_metrics import ArtifactBytes, CertExpiry, serving_expiry
from cortex.hub.nodes import NodeSessions
from cortex.hub.pki import HUB_SERVER_NAME, CertificateAuthority, write_private
from cortex.hub.pki_service import Lifecycle, NodeCertServicer, PkiServicer
from cortex.hub.registry import Registry
from cortex.hub.services import EnrollServicer, NodeServicer, TaskServicer
from cortex.hub.tasks import TaskManager
from cortex.hub.web import Dashboard
from cortex.store import Store, open_store
from cortex.store.base import DEFAULT_POOL

__all__ = ["Hub"]

log = logging.getLogger("cortex.hub")
DEFAULT_TENANT = "default"
_REAP_EVERY_S = 0.5
_PKI_EVERY_S = 30.0   # CA maintenance: retire unused CA certificates, rotate near the end
_CA_WATCH_EVERY_S = 2.0   # how soon a change another hub made to a shared CA dir is seen


class Hub:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.store: Store = open_store(config.store_url)
        self.registry = Registry()
        self.tasks = TaskManager(self.store, self.registry, config, time.time, time.monotonic)
        self.auth = Authenticator(self.store)   # one per hub: a revocation clears its cache
        self.artifacts: ArtifactManager | None = None
        self.port = 0
        self.node_port = 0
        self.http_port: int | None = None   # None: HTTP is off (config http_port -1)
        self.admin_token = ""
        self.ca: CertificateAuthority | None = None
        self.pki: Lifecycle | None = None
        self._servers: list[aio.Server] = []
        self._loops: list[asyncio.Task[None]] = []
        # grpc_health exposes its asyncio servicer as `health.aio`; its stubs do not.
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._http: HttpServer | None = None
        self.dashboard = Dashboard(tasks=self.tasks, registry=self.registry, store=self.store,
                                   auth=self.auth, artifacts=lambda: self.artifacts)
        self._ready = False   # what /readyz reports: gRPC serving, not shutting down

    async def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = dt.datetime.now(dt.UTC)
        self.ca = CertificateAuthority.load_or_create(cfg.ca_root, now=now)
        self.pki = Lifecycle(ca=self.ca, store=self.store, registry=self.registry,
                             tasks=self.tasks, config=cfg)
        await self.store.open()
        if self.store.shared:
            await self.tasks.claim_hub_id(secrets.token_hex(8))
        await self.store.ensure_tenant(DEFAULT_TENANT, now=time.time())
        self.artifacts = ArtifactManager(
            self.store, DirBlobStore(cfg.artifact_root), ArtifactLimits(
                quota_bytes=cfg.artifact_quota_bytes, default_ttl_s=cfg.artifact_ttl_s),
            time.time)
        self.admin_token = await self._admin_token()
        await self.tasks.recover()
        try:
            await self._serve()
            self._http = self._open_http()
            if self._http is not None:
                await self._http.start()
        except BaseException:
            await self._abort()
            raise
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._ready = True
        self._write_client_file()
        log.info("hub %s serving clients on %s:%d and nodes on %s:%d%s", cfg.hub_id, cfg.host,
                 self.port, cfg.host, self.node_port,
                 f", HTTP on {self.http_address}" if self.http_address else "")

    def _open_http(self) -> HttpServer | None:
        """The HTTP port, bound but not serving (None when the config turns it off)."""
        cfg = self.config
        if cfg.http_port == HTTP_OFF:
            return None
        if self.ca is None:
            raise RuntimeError("the CA loads before the HTTP port opens")
        auth = self.auth

        async def authenticate(token: str) -> str:
            principal = await auth.authenticate((("authorization", f"Bearer {token}"),),
                                                now=time.time(), mono=time.monotonic())
            return principal.token_id

        source = HubSource(hub_id=cfg.hub_id, version=__version__, nodes=self.registry.all,
                           active_tasks=self.tasks.active_tasks, clock=time.time,
                           stats=lambda: self.tasks.stats,
                           dashboard_sessions=lambda: len(self.dashboard.sessions),
                           certificates=self._certificates)
        mcp = McpSettings(hub_address=self._dial_address, ca_pem=self.ca.cert_pem,
                          authenticate=authenticate)
        http = open_http(host=cfg.http_listen_host, port=cfg.http_port,
                         ready=lambda: self._ready, source=source, mcp=mcp,
                         dashboard=self.dashboard.routes(),
                         artifact_bytes=ArtifactBytes(tenants=self._tenant_ids,
                                                      bytes_of=self.store.artifact_bytes,
                                                      mono=time.monotonic))
        self.http_port = http.port
        return http

    async def _tenant_ids(self) -> list[str]:
        return [t.id for t in await self.store.list_tenants_all()]

    def _certificates(self) -> list[CertExpiry]:
        """The hub's serving certificate and its CA certificates, for /metrics."""
        if self.pki is None:
            return []
        out = [CertExpiry(e.kind, e.name, e.signed_by, e.not_after)
               for e in self.pki.ca.status()]
        if chain := self.pki.serving_chain:
            out.insert(0, CertExpiry("hub-serving", HUB_SERVER_NAME,
                                     self.pki.ca.serving_root.name, serving_expiry(chain)))
        return out

    def _dial_address(self) -> str:
        """The client port as this process dials it (a wildcard host means loopback)."""
        if self.config.host in ("0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
            return f"127.0.0.1:{self.port}"
        return self.address

    async def _abort(self) -> None:
        """Undo a start that failed part way: whatever began serving stops, at once."""
        if self._http is not None:
            await self._http.close(0)
        await asyncio.gather(*(srv.stop(0) for srv in self._servers))
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.store.close()

    async def _serve(self) -> None:
        """Build both servers, bind their ports and start them and the loops."""
        cfg = self.config
        if self.ca is None or self.pki is None:
            raise RuntimeError("the CA loads before the servers start")
        options = [
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # gRPC sets SO_REUSEPORT by default: a second hub on the same port would start
            # and silently split connections with the first.
            ("grpc.so_reuseport", 0),
        ]
        client_srv = aio.server(options=options, interceptors=[StrictDecoding()])
        tasks_pb2_grpc.add_TaskServiceServicer_to_server(TaskServicer(
            tasks=self.tasks, registry=self.registry, store=self.store,
            auth=self.auth, ca=self.ca, config=cfg), client_srv)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(
            store=self.store, auth=self.auth, tasks=self.tasks, registry=self.registry),
            client_srv)
        enroll_pb2_grpc.add_EnrollServiceServicer_to_server(
            EnrollServicer(store=self.store, ca=self.ca, config=cfg,
                           node_port=lambda: self.node_port), client_srv)
        pki_pb2_grpc.add_PkiServiceServicer_to_server(
            PkiServicer(self.pki, self.auth), client_srv)
        pki_pb2_grpc.add_NodeCertServiceServicer_to_server(NodeCertServicer(self.pki),
                                                           client_srv)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, client_srv)
        if self.artifacts is None:
            raise RuntimeError("the artifact manager is built before the servers start")
        artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server(ArtifactServicer(
            self.artifacts, client_tenant(self.auth)), client_srv)
        self.port = _bind(client_srv, cfg.host, cfg.port,
                          self.pki.credentials(client_auth=False))

        node_srv = aio.server(options=options, interceptors=[StrictDecoding()])
        sessions = NodeSessions(store=self.store, registry=self.registry, tasks=self.tasks,
                                config=cfg, admit=self.pki.admit)
        node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(sessions), node_srv)
        pki_pb2_grpc.add_NodeCertServiceServicer_to_server(NodeCertServicer(self.pki),
                                                           node_srv)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, node_srv)
        artifacts_pb2_grpc.add_ArtifactServiceServicer_to_server(ArtifactServicer(
            self.artifacts, node_tenant(), may_delete=False), node_srv)
        self.node_port = _bind(node_srv, cfg.host, cfg.node_port,
                               self.pki.credentials(client_auth=True))
        self._servers = [client_srv, node_srv]
        for srv in self._servers:
            await srv.start()
        self._loops = [
            asyncio.create_task(self.tasks.run_dispatcher(), name="dispatcher"),
            asyncio.create_task(self._reap_loop(), name="reaper"),
            asyncio.create_task(self._artifact_gc_loop(), name="artifact-gc"),
            asyncio.create_task(self._pki_loop(), name="pki"),
            *(asyncio.create_task(c) for c in self.tasks.cluster_loops()),
        ]

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def node_address(self) -> str:
        return f"{self.config.host}:{self.node_port}"

    @property
    def http_address(self) -> str | None:
        """``HOST:PORT`` of the HTTP port, or None when it is off."""
        if self.http_port is None:
            return None
        return f"{self.config.http_listen_host}:{self.http_port}"

    async def join_token(self, *, tenant: str = DEFAULT_TENANT,
                         labels: dict[str, str] | None = None, ttl_s: float = 300.0,
                         pool: str = DEFAULT_POOL) -> str:
        """A single-use join token for a node of `tenant` (what `cortex up` uses locally)."""
        if self.ca is None:
            raise RuntimeError("the hub issues join tokens only after start()")
        token, _ = await issue_join_token(self.store, tenant=tenant, labels=labels or {},
                                          now=time.time(), ttl_s=ttl_s,
                                          fingerprint=self.ca.fingerprint, pool=pool)
        return token

    async def _admin_token(self) -> str:
        path = self.config.data_dir / "admin.token"
        if path.exists():
            return path.read_text().strip()
        token = await issue_api_token(self.store, tenant=DEFAULT_TENANT, role=HUB_ADMIN,
                                      name="admin (bootstrap)", now=time.time())
        write_private(path, token.encode() + b"\n")
        return token

    def _write_client_file(self) -> None:
        if self.ca is None:
            raise RuntimeError("the hub writes its client file only after start()")
        target = self.config.client_file or self.config.data_dir.parent / "client.json"
        body = {
            "address": self.config.public_address or self.address,
            "node_address": self.config.public_node_address or self.node_address,
            "ca_file": str((self.config.ca_root / "bundle.pem").resolve()),
            "token_file": str((self.config.data_dir / "admin.token").resolve()),
            "ca_fingerprint": self.ca.fingerprint,
        }
        write_private(Path(target), json.dumps(body, indent=2).encode() + b"\n")

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(_REAP_EVERY_S)
            try:
                await self.tasks.reap()
            except Exception:  # a failed pass must not stop reaping; the next one retries
                log.exception("reaper pass failed")

    async def _artifact_gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.artifact_gc_interval_s)
            try:
                if self.artifacts is not None:
                    await self.artifacts.gc()
            except Exception:  # a failed pass must not stop GC; the next one retries
                log.exception("artifact gc pass failed")
    async def _pki_loop(self) -> None:
        passes = 0
        while True:
            await asyncio.sleep(_CA_WATCH_EVERY_S)
            passes += 1
            try:
                if self.pki is not None:
                    await self.pki.follow_ca_dir()
                    if passes % round(_PKI_EVERY_S / _CA_WATCH_EVERY_S) == 0:
                        await self.pki.maintain()
            except Exception:  # a failed pass must not stop maintenance; the next retries
                log.exception("CA maintenance pass failed")

    async def close(self, grace: float | None = None) -> None:
        """Stop taking requests, let in-flight ones finish within the grace, stop loops.

        The HTTP port stays up (``/readyz`` answering 503) while the gRPC ports drain, then
        stops with the same grace.
        """
        self._ready = False
        await self._health.enter_graceful_shutdown()
        grace = self.config.shutdown_grace_s if grace is None else grace
        for conn in self.registry.all():
            conn.close()
        await asyncio.gather(*(srv.stop(grace) for srv in self._servers))
        self.dashboard.close()   # live log streams end; browsers resume on another hub
        if self._http is not None:
            await self._http.close(grace)
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self.store.shared and self.tasks.instance:
            with contextlib.suppress(CortexError):  # else its lease just runs out
                await self.store.release_hub(self.config.hub_id, self.tasks.instance)
        await self.store.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*(srv.wait_for_termination() for srv in self._servers))


def _bind(server: aio.Server, host: str, port: int, creds: grpc.ServerCredentials) -> int:
    try:
        return server.add_secure_port(f"{host}:{port}", creds)
    except RuntimeError as exc:
        raise Unavailable(
            f"cannot listen on {host}:{port} ({exc}): is another hub running there? "
            "Stop it, or pick other ports with --port/--node-port (0 picks free ones)"
        ) from exc
