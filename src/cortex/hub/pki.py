"""The hub's certificate authority: ECDSA P-256, created in the data dir on first start.

Node certificates carry their identity in a SPIFFE-style URI SAN
``spiffe://cortex/tenant/<tenant>/node/<node id>``; the hub ignores every name a CSR asks
for. The hub's serving certificate always names ``cortex-hub`` (clients and nodes verify
that name whatever address they dial, so NAT, load balancers and IPs just work).
Renewal, revocation and rotation come with the security issue; the layout leaves room.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cortex.errors import InvalidArgument, PermissionDenied

__all__ = [
    "HUB_SERVER_NAME",
    "CertificateAuthority",
    "NodeIdentity",
    "identity_from_pem",
    "spki_fingerprint",
]

HUB_SERVER_NAME = "cortex-hub"
TRUST_DOMAIN = "cortex"
_MAX_CSR_BYTES = 16 * 1024
_BACKDATE = dt.timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    tenant: str
    node_id: str
    serial: str
    not_after: float


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


class CertificateAuthority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.fingerprint = spki_fingerprint(cert)

    @classmethod
    def load_or_create(cls, directory: Path, *, now: dt.datetime) -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise InvalidArgument(f"{key_path} is not an ECDSA key")
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Cortex root CA")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert)

    def issue_server_cert(
        self, directory: Path, *, now: dt.datetime, extra_names: tuple[str, ...] = ()
    ) -> tuple[bytes, bytes]:
        """(key PEM, chain PEM) for the hub's gRPC ports; re-issued at every start."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(HUB_SERVER_NAME), x509.DNSName("localhost")]
        for host in {socket.gethostname(), *extra_names}:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
        cert = (
            self._leaf_builder(key.public_key(), HUB_SERVER_NAME, now, dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem
        write_private(directory / "server.key", key_pem)
        (directory / "server.pem").write_bytes(chain)
        return key_pem, chain

    def sign_node_csr(
        self, csr_pem: bytes, *, tenant: str, node_id: str, now: dt.datetime,
        ttl: dt.timedelta,
    ) -> tuple[bytes, x509.Certificate]:
        """Chain PEM for a node's CSR. Only the CSR's key is used, never its names."""
        if len(csr_pem) > _MAX_CSR_BYTES:
            raise InvalidArgument(f"CSR is larger than {_MAX_CSR_BYTES} bytes")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise InvalidArgument(f"CSR is not valid PEM: {exc}") from exc
        if not csr.is_signature_valid:
            raise InvalidArgument("CSR signature does not verify")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise InvalidArgument("CSR key must be ECDSA P-256")
        uri = f"spiffe://{TRUST_DOMAIN}/tenant/{tenant}/node/{node_id}"
        cert = (
            self._leaf_builder(public, node_id, now, ttl)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem, cert

    def _leaf_builder(
        self, public: ec.EllipticCurvePublicKey, cn: str, now: dt.datetime, ttl: dt.timedelta
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )


def identity_from_pem(pem: bytes) -> NodeIdentity:
    """The tenant and node id a verified peer certificate carries."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PermissionDenied("peer certificate has no Cortex node identity") from None
    prefix = f"spiffe://{TRUST_DOMAIN}/tenant/"
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(prefix):
            tenant, sep, node_id = uri.removeprefix(prefix).partition("/node/")
            if sep and tenant and node_id:
                return NodeIdentity(
                    tenant, node_id, format(cert.serial_number, "x"),
                    cert.not_valid_after_utc.timestamp(),
                )
    raise PermissionDenied("peer certificate has no Cortex node identity")
