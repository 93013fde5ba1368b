"""Joining a hub: pin its CA from the join token, send a CSR, keep the key here.

The node fetches the hub's certificate chain over an unverified TLS handshake and trusts
it only if a certificate in it has the public key the join token pins (kubeadm-style);
from then on every connection verifies the hub against that CA.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cortex._proto.cortex.v1 import enroll_pb2, enroll_pb2_grpc
from cortex.core.tokens import parse_join_token
from cortex.errors import CortexError, InvalidArgument, PermissionDenied, Unavailable

__all__ = ["HUB_SERVER_NAME", "Identity", "enroll", "load_identity"]

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


def fetch_pinned_ca(hub: str, pin: str, *, timeout: float = 10.0) -> bytes:
    """The CA certificate (PEM) in the hub's served chain whose public key matches `pin`."""
    host, port = _split(hub)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # trust comes from the pin below, not from this handshake
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=HUB_SERVER_NAME) as tls:
            # Python 3.13 makes this public (SSLSocket.get_unverified_chain); 3.11 has it here.
            chain = tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    except OSError as exc:
        raise Unavailable(f"cannot reach the hub at {hub}: {exc}") from exc
    for entry in chain or []:
        der = entry.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
        cert = x509.load_der_x509_certificate(der)
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if "sha256:" + hashlib.sha256(spki).hexdigest() == pin:
            return cert.public_bytes(serialization.Encoding.PEM)
    raise PermissionDenied(
        f"the hub at {hub} does not present the CA pinned by the join token "
        "(wrong hub, or a machine in the middle)")


def enroll(*, hub: str, token: str, data_dir: Path, name: str, timeout: float = 15.0
           ) -> Identity:
    """Enroll with a join token; writes the key (0600), certificate and CA to data_dir."""
    _, _, pin = parse_join_token(token)
    if not pin:
        raise InvalidArgument(
            "the join token carries no CA pin; use one from `cortex token create`")
    ca_pem = fetch_pinned_ca(hub, pin, timeout=timeout)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name[:64])]))
           .sign(key, hashes.SHA256()))
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(hub, creds, options=[
            ("grpc.ssl_target_name_override", HUB_SERVER_NAME)]) as channel:
        stub = enroll_pb2_grpc.EnrollServiceStub(channel)
        try:
            resp = stub.Enroll(enroll_pb2.EnrollRequest(
                token=token, csr_pem=csr.public_bytes(serialization.Encoding.PEM), name=name),
                timeout=timeout)
        except grpc.RpcError as exc:
            raise _translate(exc, hub) from exc
    host, _ = _split(hub)
    ident = Identity(
        node_id=resp.node_id, tenant=resp.tenant, hub=hub,
        node_address=f"{host}:{resp.node_port}",
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        cert_pem=resp.certificate_pem, ca_pem=ca_pem,
    )
    _save(data_dir, ident)
    return ident


def _save(data_dir: Path, ident: Identity) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(data_dir / "node.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ident.key_pem)
    (data_dir / "node.pem").write_bytes(ident.cert_pem)
    (data_dir / "ca.pem").write_bytes(ident.ca_pem)
    (data_dir / "identity.json").write_text(json.dumps({
        "node_id": ident.node_id, "tenant": ident.tenant, "hub": ident.hub,
        "node_address": ident.node_address}, indent=2))


def _split(hub: str) -> tuple[str, int]:
    host, sep, port = hub.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"hub address {hub!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def _translate(exc: grpc.RpcError, hub: str) -> CortexError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"enrollment refused: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"enrollment refused: {details}")
    return Unavailable(f"enrollment at {hub} failed: {details}")
