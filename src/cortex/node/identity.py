"""The node's identity on disk: its key, certificate, the hub's CA and where the hub is.

Kept apart from enrollment so a running agent never loads the X.509 toolkit (which costs
~10 MiB of resident memory) unless it has to enroll.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HUB_SERVER_NAME", "Identity", "load_identity", "save_identity"]

# The name the hub's serving certificate always carries; verified whatever address is dialled.
HUB_SERVER_NAME = "cortex-hub"


@dataclass(frozen=True, slots=True)
class Identity:
    node_id: str
    tenant: str
    hub: str             # host:port used to enroll (client port)
    node_address: str    # host:port of the hub's node port
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes        # the trust bundle: every root the hub trusts
    not_before: float = 0.0   # validity of cert_pem (0: unknown, from before renewal)
    not_after: float = 0.0


def load_identity(data_dir: Path) -> Identity | None:
    meta = data_dir / "identity.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    return Identity(
        node_id=info["node_id"], tenant=info["tenant"], hub=info["hub"],
        node_address=info["node_address"], key_pem=(data_dir / "node.key").read_bytes(),
        cert_pem=(data_dir / "node.pem").read_bytes(), ca_pem=(data_dir / "ca.pem").read_bytes(),
        not_before=float(info.get("not_before", 0.0)), not_after=float(info.get("not_after", 0.0)),
    )


def save_identity(data_dir: Path, ident: Identity) -> None:
    """Write each file whole (temp file, then rename): a crash mid-renewal leaves the old
    or the new file, never half of one."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _replace(data_dir / "node.key", ident.key_pem, 0o600)
    _replace(data_dir / "node.pem", ident.cert_pem, 0o644)
    _replace(data_dir / "ca.pem", ident.ca_pem, 0o644)
    _replace(data_dir / "identity.json", json.dumps({
        "node_id": ident.node_id, "tenant": ident.tenant, "hub": ident.hub,
        "node_address": ident.node_address, "not_before": ident.not_before,
        "not_after": ident.not_after}, indent=2).encode(), 0o644)


def _replace(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
