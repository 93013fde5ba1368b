"""Key and certificate work the node does in a short-lived child process.

The long-running agent never imports the X.509 toolkit (~10 MiB resident): renewal asks a
child for a new key and CSR; re-enrollment after expiry runs whole in a child. Every
function here takes and returns plain values, so it crosses the process boundary as is.
"""

from __future__ import annotations

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cortex._dial import balanced_target
from cortex._proto.cortex.v1 import pki_pb2, pki_pb2_grpc
from cortex.core import certpolicy
from cortex.core.addresses import parse_addresses
from cortex.errors import CortexError, InvalidArgument, PermissionDenied, Unavailable

__all__ = ["REENROLL_CONTEXT", "cert_validity", "new_key_and_csr", "reenroll"]

REENROLL_CONTEXT = certpolicy.REENROLL_CONTEXT   # what the proof signs, before the CSR
_HUB_SERVER_NAME = "cortex-hub"


def new_key_and_csr(name: str) -> tuple[bytes, bytes]:
    """(key PEM, CSR PEM) for a fresh P-256 key; the hub ignores the CSR's names."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name[:64])]))
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def cert_validity(cert_pem: bytes) -> tuple[float, float]:
    """(not_before, not_after) of the first certificate in `cert_pem`."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def reenroll(*, hub: str, name: str, key_pem: bytes, cert_pem: bytes, ca_pem: bytes,
             timeout: float = 15.0) -> tuple[bytes, bytes, bytes, float, float]:
    """Trade an expired certificate (and proof of its key) for a new one on the client
    port: (new key, chain, trust bundle, not_before, not_after)."""
    old = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(old, ec.EllipticCurvePrivateKey):
        raise InvalidArgument("the node key is not an ECDSA key")
    new_key, csr = new_key_and_csr(name)
    proof = old.sign(REENROLL_CONTEXT + csr, ec.ECDSA(hashes.SHA256()))
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    target, balancing = balanced_target(parse_addresses(hub))
    with grpc.secure_channel(target, creds, options=[
            *balancing, ("grpc.ssl_target_name_override", _HUB_SERVER_NAME)]) as channel:
        try:
            resp = pki_pb2_grpc.NodeCertServiceStub(channel).Reenroll(
                pki_pb2.ReenrollRequest(certificate_pem=cert_pem, csr_pem=csr, proof=proof),
                timeout=timeout)
        except grpc.RpcError as exc:
            raise _translate(exc, hub) from exc
    return new_key, resp.certificate_pem, resp.ca_pem, resp.not_before, resp.not_after


def _translate(exc: grpc.RpcError, hub: str) -> CortexError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"re-enrollment refused: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"re-enrollment refused: {details}")
    return Unavailable(f"re-enrollment at {hub} failed: {details}")
