"""The hub's configuration: one frozen, validated value built at startup."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cortex.core.addresses import parse_addresses, split_host_port
from cortex.core.certpolicy import CertPolicy
from cortex.errors import InvalidArgument

__all__ = ["HTTP_OFF", "HubConfig", "default_home"]

HTTP_OFF = -1
"""`HubConfig.http_port` value that turns the HTTP port off."""


def default_home() -> Path:
    return Path(os.environ.get("CORTEX_HOME") or Path.home() / ".cortex").expanduser()


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Every field has a default that works on one machine; flags > env > defaults."""

    data_dir: Path = field(default_factory=lambda: default_home() / "hub")
    host: str = "127.0.0.1"                 # where both gRPC ports listen
    port: int = 7443                        # clients and enrollment (TLS, API tokens)
    node_port: int = 7444                   # nodes (mTLS); 0 = pick a free port
    # Plain HTTP: /healthz, /readyz, /metrics and MCP at /mcp (bearer API tokens).
    http_port: int = 7445                   # 0 = pick a free port; HTTP_OFF (-1) = no HTTP
    http_host: str = ""                     # where the HTTP port listens; "" = `host`
    store: str = ""                         # default: <data_dir>/hub.db (SQLite)
    advertise: tuple[str, ...] = ()         # extra names/IPs for the serving certificate
    # Behind a balancer (docs/operations.md, "Running a cluster"): what clients and nodes
    # dial instead of this hub's own ports. HOST:PORT or a comma-separated list; written to
    # client.json ("address") and sent to nodes at enrollment. Their hosts are added to the
    # serving certificate's names. "" = this hub's own address.
    public_address: str = ""
    public_node_address: str = ""
    # The CA directory; several hubs behind one balancer share one (docs/operations.md).
    ca_dir: Path | None = None              # default <data_dir>/ca
    hub_id: str = "hub-1"
    heartbeat_interval_s: float = 2.0       # nodes send a heartbeat this often
    lost_after_s: float = 15.0              # a node silent this long loses its tasks
    default_timeout_s: float = 24 * 3600.0  # task deadline when the spec gives none
    timeout_grace_s: float = 10.0           # after a deadline, wait this long for the kill
    # A cancel_on_disconnect task nobody follows (Watch/Attach) this long is cancelled.
    disconnect_grace_s: float = 10.0
    max_output_bytes: int = 64 * 1024 * 1024    # per task; past it a marker, then dropped
    max_message_bytes: int = 16 * 1024 * 1024   # gRPC frames, both directions
    node_cert_ttl_s: float = 24 * 3600.0       # node certificate lifetime (5 s - 7 days)
    # How long after its certificate expired a node may still re-enroll with it (0 = never;
    # then it needs a new join token).
    reenroll_grace_s: float = 72 * 3600.0
    shutdown_grace_s: float = 5.0
    client_file: Path | None = None         # where to write client.json (None: next to home)
    # Artifacts (docs/artifacts.md): blobs in a directory (shareable by several hubs).
    artifact_dir: Path | None = None        # default <data_dir>/artifacts
    artifact_quota_bytes: int = 100 * 1024**3   # per tenant; 0 = unlimited
    artifact_ttl_s: float = 30 * 86400.0    # retention when an upload names none; 0 = keep
    artifact_gc_interval_s: float = 3600.0  # expiry + unreferenced-blob sweep period

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval_s", "lost_after_s", "default_timeout_s",
                     "timeout_grace_s", "node_cert_ttl_s", "disconnect_grace_s"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"hub config: {name} must be positive")
        if self.lost_after_s <= self.heartbeat_interval_s:
            raise InvalidArgument("hub config: lost_after_s must exceed heartbeat_interval_s")
        for name in ("port", "node_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise InvalidArgument(f"hub config: {name} must be a TCP port (0-65535)")
        if not HTTP_OFF <= self.http_port <= 65535:
            raise InvalidArgument("hub config: http_port must be a TCP port (0-65535), "
                                  f"or {HTTP_OFF} to turn the HTTP port off")
        self.cert_policy  # noqa: B018 - validates the certificate lifetimes now
        for name in ("public_address", "public_node_address"):
            if getattr(self, name):
                parse_addresses(getattr(self, name), what=f"hub config: {name}")
        if self.max_message_bytes < 1024 * 1024:
            raise InvalidArgument("hub config: max_message_bytes must be at least 1 MiB")
        if self.artifact_quota_bytes < 0 or self.artifact_ttl_s < 0 \
                or self.artifact_gc_interval_s <= 0:
            raise InvalidArgument("hub config: artifact_quota_bytes and artifact_ttl_s must "
                                  "be >= 0 (0 = unlimited / keep), artifact_gc_interval_s > 0")

    @property
    def cert_policy(self) -> CertPolicy:
        return CertPolicy(lifetime_s=self.node_cert_ttl_s,
                          reenroll_grace_s=self.reenroll_grace_s)

    @property
    def http_listen_host(self) -> str:
        return self.http_host or self.host

    @property
    def ca_root(self) -> Path:
        return self.ca_dir or self.data_dir / "ca"

    @property
    def certificate_names(self) -> tuple[str, ...]:
        """Extra names of the serving certificate: --advertise and the public hosts."""
        hosts = [split_host_port(a)[0]
                 for text in (self.public_address, self.public_node_address) if text
                 for a in parse_addresses(text)]
        return tuple(dict.fromkeys([*self.advertise, *hosts]))

    @property
    def artifact_root(self) -> Path:
        return self.artifact_dir or self.data_dir / "artifacts"

    @property
    def store_url(self) -> str:
        return self.store or str(self.data_dir / "hub.db")
