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
    ca_pem: bytes


def load_identity(data_dir: Path) -> Identity | None:
    meta = data_dir / "identity.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    return Identity(
        node_id=info["node_id"], tenant=info["tenant"], hub=info["hub"],
        node_address=info["node_address"], key_pem=(data_dir / "node.key").read_bytes(),
        cert_pem=(data_dir / "node.pem").read_bytes(), ca_pem=(data_dir / "ca.pem").read_bytes(),
    )


def save_identity(data_dir: Path, ident: Identity) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(data_dir / "node.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ident.key_pem)
    (data_dir / "node.pem").write_bytes(ident.cert_pem)
    (data_dir / "ca.pem").write_bytes(ident.ca_pem)
    (data_dir / "identity.json").write_text(json.dumps({
        "node_id": ident.node_id, "tenant": ident.tenant, "hub": ident.hub,
        "node_address": ident.node_address}, indent=2))
