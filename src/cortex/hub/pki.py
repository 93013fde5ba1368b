"""The hub's certificate authority: a root and an issuing intermediate, ECDSA P-256.

Layout in ``<data_dir>/ca``::

    ca.key, ca.pem            the first root (a data dir from before intermediates holds
                              only these: it is migrated by treating that CA as the root)
    root-N.key, root-N.pem    roots added by ``cortex ca rotate --root``
    int-N.key                 an issuing intermediate's key
    int-N.<root>.pem          its certificate signed by <root> (one per root trusted when
                              it was made: the older roots cross-sign it)
    bundle.pem                every trusted root: what nodes and clients trust
    state.json                which roots and intermediates exist, and which retired

Which chain goes where during a root rotation (roots R1 old, R2 new):
- the hub serves ``leaf, int/R1, R1`` while R1 is trusted, so peers that know only R1
  (and join tokens pinning R1) keep working;
- nodes get ``leaf, int/R2``; the hub trusts both roots, and nodes receive the new bundle
  with every renewal;
- R1 retires once no certificate issued through it is still valid, and the hub swaps its
  serving chain to R2 live (gRPC dynamic credentials).
Node certificates carry ``spiffe://cortex/tenant/<t>/pool/<p>/node/<id>``; the hub's
serving certificate always names ``cortex-hub``.

Several hubs may share one directory (``--ca-dir``, docs/operations.md): every change
(creation, rotation, retirement) happens under an exclusive ``flock`` on ``.lock`` in it,
after re-reading what another hub may have written, and ``state.json`` is replaced last
(atomically), so a reader sees the old CA or the new one. `reload_if_changed` notices
another hub's change by ``state.json``'s inode and mtime.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cortex.core import certpolicy
from cortex.errors import InvalidArgument
from cortex.hub._x509 import (
    DEFAULT_POOL,
    NodeIdentity,
    ca_certificate,
    identity_from_pem,
    issued_by,
    key_pem,
    load_csr,
    new_key,
    pem,
    spiffe_uri,
    spki_fingerprint,
    write_private,
)

__all__ = [
    "HUB_SERVER_NAME",
    "CaEntry",
    "CertificateAuthority",
    "NodeIdentity",
    "identity_from_pem",
    "spki_fingerprint",
    "write_private",
]

HUB_SERVER_NAME = "cortex-hub"
_ROOT_DAYS = 3650
_INTERMEDIATE_DAYS = 365
_SERVER_DAYS = 30


@dataclass(eq=False)
class _Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    certs: dict[str, x509.Certificate] = field(default_factory=dict)  # by signing root


@dataclass(frozen=True, slots=True)
class CaEntry:
    """One CA certificate, as `cortex ca status` shows it."""

    name: str
    kind: str            # "root" | "intermediate"
    signed_by: str       # the root's name (a root signs itself)
    fingerprint: str
    not_before: float
    not_after: float
    active: bool         # roots: the hub serves through it; intermediates: it issues
    retired: bool


class CertificateAuthority:
    def __init__(self, directory: Path, roots: list[_Authority],
                 intermediates: list[_Authority], retired: set[str]) -> None:
        self._dir = directory
        self._roots = roots
        self._ints = intermediates
        self._retired = retired
        self.generation = 0  # bumped whenever the served chain or the trust bundle changes
        self._stamp = _stamp(directory)   # state.json as last read or written here
        self._lock_depth = 0

    # -- loading ------------------------------------------------------------------------
    @classmethod
    def load_or_create(cls, directory: Path, *, now: dt.datetime) -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _flock(directory):   # two hubs starting at once: one creates, one loads
            return cls._load_or_create(directory, now=now)

    @classmethod
    def _load_or_create(cls, directory: Path, *, now: dt.datetime) -> CertificateAuthority:
        if (directory / "state.json").exists():
            ca = cls(directory, *cls._read(directory))
            ca._save()
            return ca
        if (directory / "ca.key").exists() and (directory / "ca.pem").exists():
            root = cls._load_root(directory, "ca")   # a single-CA data dir: migrate it
        else:
            key = new_key()
            cert = ca_certificate(subject="Cortex root CA", public=key.public_key(), issuer=None,
                                  issuer_key=key, not_before=now - _BACKDATE, path_length=1,
                                  not_after=now + dt.timedelta(days=_ROOT_DAYS))
            root = _Authority("ca", key, {"ca": cert})
            write_private(directory / "ca.key", key_pem(key))
            (directory / "ca.pem").write_bytes(pem(cert))
        ca = cls(directory, [root], [], set())
        ca._new_intermediate(now)
        ca._save()
        return ca

    @classmethod
    def _read(cls, directory: Path
              ) -> tuple[list[_Authority], list[_Authority], set[str]]:
        state = json.loads((directory / "state.json").read_text())
        roots = [cls._load_root(directory, n) for n in state["roots"]]
        ints = [cls._load_int(directory, n, state["roots"]) for n in state["intermediates"]]
        return roots, ints, set(state.get("retired", []))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock (re-entrant) with this object up to date with it: what
        another hub wrote is loaded first. Every change happens inside."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with _flock(self._dir):
            self._lock_depth = 1
            try:
                self._reload_locked()
                yield
            finally:
                self._lock_depth = 0

    def reload_if_changed(self) -> bool:
        """Load the directory again if another hub changed it (a rotation, a retirement);
        True when it did: the caller's serving chain and trust bundle follow
        (`generation` moved)."""
        if _stamp(self._dir) == self._stamp:
            return False
        with self.locked():
            pass   # locked() reloads
        return True

    def _reload_locked(self) -> None:
        if _stamp(self._dir) == self._stamp:
            return
        self._roots, self._ints, self._retired = self._read(self._dir)
        self._stamp = _stamp(self._dir)
        self.generation += 1

    @staticmethod
    def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidArgument(
                f"CA key {path} is missing: restore the CA directory from a backup, or see "
                "docs/security.md, 'How to recover a lost CA key'") from None
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidArgument(f"{path} is not an ECDSA key")
        return key

    @classmethod
    def _load_root(cls, directory: Path, name: str) -> _Authority:
        cert = x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())
        return _Authority(name, cls._load_key(directory / f"{name}.key"), {name: cert})

    @classmethod
    def _load_int(cls, directory: Path, name: str, roots: list[str]) -> _Authority:
        auth = _Authority(name, cls._load_key(directory / f"{name}.key"))
        for root in roots:
            path = directory / f"{name}.{root}.pem"
            if path.exists():
                auth.certs[root] = x509.load_pem_x509_certificate(path.read_bytes())
        return auth

    def _save(self) -> None:
        state = {"roots": [r.name for r in self._roots],
                 "intermediates": [i.name for i in self._ints],
                 "retired": sorted(self._retired)}
        bundle = self._dir / "bundle.pem.tmp"
        bundle.write_bytes(self.cert_pem)
        bundle.replace(self._dir / "bundle.pem")
        tmp = self._dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self._dir / "state.json")   # last: the files it names exist already
        self._stamp = _stamp(self._dir)

    # -- what peers see -----------------------------------------------------------------
    @property
    def _trusted_roots(self) -> list[_Authority]:
        return [r for r in self._roots if r.name not in self._retired]

    @property
    def serving_root(self) -> _Authority:
        """The oldest trusted root: the hub serves through it (every peer knows it)."""
        return self._trusted_roots[0]

    @property
    def newest_root(self) -> _Authority:
        return self._trusted_roots[-1]

    @property
    def active(self) -> _Authority:
        return self._ints[-1]

    @property
    def fingerprint(self) -> str:
        """What new join tokens pin: the serving root (present in every served chain)."""
        return spki_fingerprint(self.serving_root.certs[self.serving_root.name])

    @property
    def cert_pem(self) -> bytes:
        """The trust bundle: every trusted root, oldest first."""
        return b"".join(pem(r.certs[r.name]) for r in self._trusted_roots)

    @property
    def node_issuer(self) -> str:
        """The label recorded with each node certificate: ``<intermediate>/<root>``."""
        return f"{self.active.name}/{self.newest_root.name}"

    # -- issuing ------------------------------------------------------------------------
    def issue_server_cert(self, directory: Path, *, now: dt.datetime,
                          extra_names: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
        """(key PEM, chain PEM) for the hub's gRPC ports, through the serving root."""
        key = new_key()
        names: list[x509.GeneralName] = [x509.DNSName(HUB_SERVER_NAME), x509.DNSName("localhost")]
        for host in {socket.gethostname(), *extra_names}:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
        root = self.serving_root
        issuer = self.active.certs[root.name]
        not_after = min(now + dt.timedelta(days=_SERVER_DAYS), issuer.not_valid_after_utc)
        cert = (
            self._leaf_builder(key.public_key(), HUB_SERVER_NAME, issuer, now - _BACKDATE,
                               not_after)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(self.active.key, hashes.SHA256())
        )
        chain = pem(cert) + pem(issuer) + pem(root.certs[root.name])
        write_private(directory / "server.key", key_pem(key))
        (directory / "server.pem").write_bytes(chain)
        return key_pem(key), chain

    def sign_node_csr(self, csr_pem: bytes, *, tenant: str, node_id: str, now: dt.datetime,
                      ttl: dt.timedelta, pool: str = DEFAULT_POOL
                      ) -> tuple[bytes, x509.Certificate]:
        """Chain PEM (leaf, intermediate) for a node's CSR. Only the CSR's key is used:
        every name in the certificate comes from the caller (the token or the old cert)."""
        public = load_csr(csr_pem)
        issuer = self.active.certs[self.newest_root.name]
        validity = certpolicy.leaf_validity(now.timestamp(), ttl.total_seconds(),
                                            issuer.not_valid_after_utc.timestamp())
        cert = (
            self._leaf_builder(public, node_id, issuer, _utc(validity.not_before),
                               _utc(validity.not_after))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                spiffe_uri(tenant=tenant, pool=pool, node_id=node_id))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(self.active.key, hashes.SHA256())
        )
        return pem(cert) + pem(issuer), cert

    def _leaf_builder(self, public: ec.EllipticCurvePublicKey, cn: str,
                      issuer: x509.Certificate, not_before: dt.datetime,
                      not_after: dt.datetime) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.active.key.public_key()),
                False)
        )

    def issued_here(self, cert: x509.Certificate) -> bool:
        """Whether one of this hub's intermediates (retired ones too) signed `cert`."""
        return any(issued_by(cert, c) for i in self._ints for c in i.certs.values())

    # -- rotation and retirement --------------------------------------------------------
    def rotate(self, *, now: dt.datetime, new_root: bool = False) -> None:
        """A new issuing intermediate (signed by every trusted root), and first a new root
        when asked; old ones stay trusted until `retire` finds nothing depends on them."""
        with self.locked():
            self._rotate(now=now, new_root=new_root)

    def _rotate(self, *, now: dt.datetime, new_root: bool) -> None:
        if new_root:
            n = 1 + max((int(r.name.removeprefix("root-")) for r in self._roots
                         if r.name.startswith("root-")), default=1)
            key = new_key()
            cert = ca_certificate(subject=f"Cortex root CA {n}", public=key.public_key(),
                                  issuer=None, issuer_key=key, not_before=now - _BACKDATE,
                                  not_after=now + dt.timedelta(days=_ROOT_DAYS), path_length=1)
            name = f"root-{n}"
            write_private(self._dir / f"{name}.key", key_pem(key))
            (self._dir / f"{name}.pem").write_bytes(pem(cert))
            self._roots.append(_Authority(name, key, {name: cert}))
        self._new_intermediate(now)
        self._save()
        self.generation += 1

    def _new_intermediate(self, now: dt.datetime) -> None:
        number = 1 + max((int(i.name.removeprefix("int-")) for i in self._ints), default=0)
        name = f"int-{number}"
        key = new_key()
        auth = _Authority(name, key)
        for root in self._trusted_roots:
            root_cert = root.certs[root.name]
            auth.certs[root.name] = ca_certificate(
                subject=f"Cortex issuing CA {number}", public=key.public_key(),
                issuer=root_cert, issuer_key=root.key, not_before=now - _BACKDATE,
                not_after=min(now + dt.timedelta(days=_INTERMEDIATE_DAYS),
                              root_cert.not_valid_after_utc),
                path_length=0)
        write_private(self._dir / f"{name}.key", key_pem(key))
        for root_name, cert in auth.certs.items():
            (self._dir / f"{name}.{root_name}.pem").write_bytes(pem(cert))
        self._ints.append(auth)

    def needs_rotation(self, *, now: float, lifetime_s: float) -> bool:
        cert = self.active.certs[self.newest_root.name]
        return certpolicy.intermediate_needs_rotation(
            certpolicy.Validity(cert.not_valid_before_utc.timestamp(),
                                cert.not_valid_after_utc.timestamp()),
            now=now, lifetime_s=lifetime_s)

    def retire(self, latest: dict[str, float], *, now: float) -> bool:
        """Retire what no valid certificate depends on. `latest`: for each issuer label
        (``int/root``) the latest not_after of its unrevoked node certificates. True on
        a change (the caller then swaps the serving chain)."""
        with self.locked():
            return self._retire(latest, now=now)

    def _retire(self, latest: dict[str, float], *, now: float) -> bool:
        def last(match: int, name: str) -> float:
            return max((t for label, t in latest.items()
                        if label.split("/")[match] == name), default=0.0)

        changed = False
        for auth in self._ints[:-1]:
            if auth.name not in self._retired and certpolicy.issuer_retired(
                    active=False, latest_leaf_not_after=last(0, auth.name), now=now):
                self._retired.add(auth.name)
                changed = True
        for root in self._trusted_roots[:-1]:
            if certpolicy.issuer_retired(active=False, latest_leaf_not_after=last(-1, root.name),
                                         now=now) \
                    and self._next_root(root).name in self.active.certs:
                self._retired.add(root.name)
                changed = True
        if changed:
            self._save()
            self.generation += 1
        return changed

    def _next_root(self, root: _Authority) -> _Authority:
        trusted = self._trusted_roots
        return trusted[trusted.index(root) + 1]

    def status(self) -> list[CaEntry]:
        out = []
        for root in self._roots:
            cert = root.certs[root.name]
            out.append(_entry(root.name, "root", root.name, cert,
                              active=root is self.serving_root and root.name not in self._retired,
                              retired=root.name in self._retired))
        for auth in self._ints:
            for root_name, cert in auth.certs.items():
                out.append(_entry(auth.name, "intermediate", root_name, cert,
                                  active=auth is self.active,
                                  retired=auth.name in self._retired))
        return out


_BACKDATE = dt.timedelta(seconds=certpolicy.BACKDATE_S)


@contextlib.contextmanager
def _flock(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``<directory>/.lock``, shared with every hub using it (flock
    works across processes on one machine and on NFSv4; see docs/operations.md)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # closing releases the lock


def _stamp(directory: Path) -> tuple[int, int]:
    """Identifies one version of state.json: it is only ever replaced, never edited."""
    try:
        st = (directory / "state.json").stat()
    except FileNotFoundError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _entry(name: str, kind: str, signed_by: str, cert: x509.Certificate, *, active: bool,
           retired: bool) -> CaEntry:
    return CaEntry(name=name, kind=kind, signed_by=signed_by,
                   fingerprint=spki_fingerprint(cert),
                   not_before=cert.not_valid_before_utc.timestamp(),
                   not_after=cert.not_valid_after_utc.timestamp(), active=active,
                   retired=retired)
