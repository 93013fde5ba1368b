"""X.509 building blocks of the hub's PKI: keys, CA certificates, leaves, CSRs, identities.

Every key is ECDSA P-256. Names a CSR asks for are never used: the hub decides the
subject and the SPIFFE-style URI SAN ``spiffe://cortex/tenant/<t>/pool/<p>/node/<id>``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cortex.errors import InvalidArgument, PermissionDenied

__all__ = [
    "MAX_CSR_BYTES",
    "TRUST_DOMAIN",
    "NodeIdentity",
    "ca_certificate",
    "identity_from_cert",
    "identity_from_pem",
    "issued_by",
    "key_pem",
    "load_csr",
    "new_key",
    "pem",
    "spiffe_uri",
    "spki_fingerprint",
    "write_private",
]

TRUST_DOMAIN = "cortex"
MAX_CSR_BYTES = 16 * 1024
DEFAULT_POOL = "default"


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    tenant: str
    node_id: str
    serial: str
    not_after: float
    pool: str = DEFAULT_POOL
    not_before: float = 0.0


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def spki_fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the certificate's SubjectPublicKeyInfo (what join tokens pin)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only, atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def ca_certificate(*, subject: str, public: ec.EllipticCurvePublicKey,
                   issuer: x509.Certificate | None, issuer_key: ec.EllipticCurvePrivateKey,
                   not_before: dt.datetime, not_after: dt.datetime, path_length: int
                   ) -> x509.Certificate:
    """A CA certificate: self-signed when `issuer` is None, else signed by `issuer`."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False)
    return builder.sign(issuer_key, hashes.SHA256())


def load_csr(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The public key of a well-formed, self-signed P-256 CSR (its names are ignored)."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise InvalidArgument(f"CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise InvalidArgument(f"CSR is not valid PEM: {exc}") from exc
    if not csr.is_signature_valid:
        raise InvalidArgument("CSR signature does not verify")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise InvalidArgument("CSR key must be ECDSA P-256")
    return public


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer`'s key signed `cert` (validity dates are not checked here)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def spiffe_uri(*, tenant: str, pool: str, node_id: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/tenant/{tenant}/pool/{pool}/node/{node_id}"


def identity_from_pem(data: bytes) -> NodeIdentity:
    """The tenant, pool and node id a verified peer certificate carries."""
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PermissionDenied(f"peer certificate is not valid PEM: {exc}") from exc
    return identity_from_cert(cert)


def identity_from_cert(cert: x509.Certificate) -> NodeIdentity:
    """Accepts both URI forms: with a pool (current) and without (before pools existed)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PermissionDenied("peer certificate has no Cortex node identity") from None
    prefix = f"spiffe://{TRUST_DOMAIN}/tenant/"
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if not uri.startswith(prefix):
            continue
        head, sep, node_id = uri.removeprefix(prefix).partition("/node/")
        tenant, _, pool = head.partition("/pool/")
        if sep and tenant and node_id and "/" not in node_id:
            return NodeIdentity(
                tenant, node_id, format(cert.serial_number, "x"),
                cert.not_valid_after_utc.timestamp(), pool or DEFAULT_POOL,
                cert.not_valid_before_utc.timestamp(),
            )
    raise PermissionDenied("peer certificate has no Cortex node identity")
