"""Joining a hub: pin its CA from the join token, send a CSR, keep the key here.

The node fetches the hub's certificate chain over an unverified TLS handshake and trusts
it only if a certificate in it has the public key the join token pins (kubeadm-style);
from then on every connection verifies the hub against that CA.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cortex._proto.cortex.v1 import enroll_pb2, enroll_pb2_grpc
from cortex.core.addresses import join_addresses, parse_addresses, split_host_port
from cortex.core.tokens import parse_join_token
from cortex.errors import CortexError, InvalidArgument, PermissionDenied, Unavailable
from cortex.node.identity import HUB_SERVER_NAME, Identity, save_identity

__all__ = ["Identity", "enroll", "fetch_pinned_ca", "node_address"]


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
    """Enroll with a join token; writes the key (0600), certificate and CA to data_dir.

    `hub` may list several addresses (``a:7443,b:7443``): the first that answers is used.
    """
    _, _, pin = parse_join_token(token)
    if not pin:
        raise InvalidArgument(
            "the join token carries no CA pin; use one from `cortex token join`")
    addresses = parse_addresses(hub, what="--hub")
    failures: list[str] = []
    for address in addresses:
        try:
            ca_pem = fetch_pinned_ca(address, pin, timeout=timeout)
        except Unavailable as exc:
            failures.append(str(exc))
            continue
        return _enroll_at(address, hub=hub, token=token, ca_pem=ca_pem, data_dir=data_dir,
                          name=name, timeout=timeout)
    raise Unavailable("; ".join(failures))


def _enroll_at(address: str, *, hub: str, token: str, ca_pem: bytes, data_dir: Path,
               name: str, timeout: float) -> Identity:
    """Enroll at `address` (one of the list `hub`), whose CA the token's pin matched."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name[:64])]))
           .sign(key, hashes.SHA256()))
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(address, creds, options=[
            ("grpc.ssl_target_name_override", HUB_SERVER_NAME)]) as channel:
        stub = enroll_pb2_grpc.EnrollServiceStub(channel)
        try:
            resp = stub.Enroll(enroll_pb2.EnrollRequest(
                token=token, csr_pem=csr.public_bytes(serialization.Encoding.PEM), name=name),
                timeout=timeout)
        except grpc.RpcError as exc:
            raise _translate(exc, address) from exc
    leaf = x509.load_pem_x509_certificate(resp.certificate_pem)
    ident = Identity(
        node_id=resp.node_id, tenant=resp.tenant, hub=hub,
        node_address=node_address(hub, resp.node_address, resp.node_port),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        cert_pem=resp.certificate_pem,
        # The bundle came over a connection verified against the pinned root, so every
        # root in it is the hub's (during a CA rotation there are several).
        ca_pem=resp.ca_pem if ca_pem.strip() in resp.ca_pem else ca_pem,
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
    )
    save_identity(data_dir, ident)
    return ident


def node_address(hub: str, public: str, node_port: int) -> str:
    """Where the node dials: the hub's public node address when it names one, else each
    enrollment host at the hub's node port (``a:7443,b:7443`` -> ``a:7444,b:7444``)."""
    if public:
        return join_addresses(parse_addresses(public, what="the hub's node address"))
    return join_addresses([
        f"[{h}]:{node_port}" if ":" in h else f"{h}:{node_port}"
        for h in dict.fromkeys(split_host_port(a)[0] for a in parse_addresses(hub))])


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
