"""The hub's CA on disk: root + intermediate, migration, rotation with cross-signing,
retirement; chains checked with cryptography's X.509 verifier at injected times."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from cortex.hub._x509 import ca_certificate, identity_from_cert, key_pem, new_key, pem
from cortex.hub.pki import CertificateAuthority

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def csr(*, uri: str = "") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "n-forged")]))
    if uri:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False)
    from cryptography.hazmat.primitives import serialization
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def certs(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


def verify_client(chain: bytes, roots: bytes, at: dt.datetime) -> None:
    leaf, *rest = certs(chain)
    verifier = PolicyBuilder().store(Store(certs(roots))).time(at).build_client_verifier()
    verifier.verify(leaf, rest)


def verify_server(chain: bytes, roots: bytes, at: dt.datetime) -> None:
    leaf, *rest = certs(chain)
    verifier = (PolicyBuilder().store(Store(certs(roots))).time(at)
                .build_server_verifier(x509.DNSName("cortex-hub")))
    verifier.verify(leaf, rest)


def node_cert(ca: CertificateAuthority, *, at: dt.datetime = NOW, uri: str = "") -> bytes:
    chain, _ = ca.sign_node_csr(csr(uri=uri), tenant="t1", node_id="n-1", pool="gpu", now=at,
                                ttl=dt.timedelta(hours=24))
    return chain


def test_fresh_ca_is_a_root_and_an_intermediate(tmp_path: Path) -> None:
    """A new data dir gets a root and int-1; node and server chains verify against the root."""
    ca = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    assert [(e.name, e.kind) for e in ca.status()] == [("ca", "root"), ("int-1", "intermediate")]
    chain = node_cert(ca)
    assert len(certs(chain)) == 2  # leaf + intermediate, served in full
    verify_client(chain, ca.cert_pem, NOW + dt.timedelta(hours=1))
    _, server = ca.issue_server_cert(tmp_path, now=NOW)
    verify_server(server, ca.cert_pem, NOW + dt.timedelta(hours=1))
    assert ca.node_issuer == "int-1/ca"


def test_node_identity_comes_from_the_hub_not_the_csr(tmp_path: Path) -> None:
    """A CSR claiming another tenant, pool and node gets the caller's identity only."""
    ca = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    chain = node_cert(ca, uri="spiffe://cortex/tenant/evil/pool/x/node/n-forged")
    leaf = certs(chain)[0]
    ident = identity_from_cert(leaf)
    assert (ident.tenant, ident.pool, ident.node_id) == ("t1", "gpu", "n-1")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cortex/tenant/t1/pool/gpu/node/n-1"]
    assert "n-forged" not in leaf.subject.rfc4514_string()


@pytest.mark.parametrize("offset", [dt.timedelta(hours=25), dt.timedelta(minutes=-5)])
def test_expired_and_not_yet_valid_leaves_do_not_verify(tmp_path: Path,
                                                        offset: dt.timedelta) -> None:
    """After its end, or before its (backdated) start, a node certificate is refused."""
    ca = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    with pytest.raises(VerificationError):
        verify_client(node_cert(ca), ca.cert_pem, NOW + offset)


def test_leaf_from_another_ca_does_not_verify(tmp_path: Path) -> None:
    """A chain from a different hub's CA does not verify against this hub's bundle."""
    ours = CertificateAuthority.load_or_create(tmp_path / "a", now=NOW)
    theirs = CertificateAuthority.load_or_create(tmp_path / "b", now=NOW)
    with pytest.raises(VerificationError):
        verify_client(node_cert(theirs), ours.cert_pem, NOW)
    assert not ours.issued_here(certs(node_cert(theirs))[0])
    assert ours.issued_here(certs(node_cert(ours))[0])


def test_single_ca_data_dir_is_migrated_keeping_its_pin(tmp_path: Path) -> None:
    """ca.key/ca.pem alone: it becomes the root (same pin), an intermediate is added."""
    key = new_key()
    root = ca_certificate(subject="Cortex root CA", public=key.public_key(), issuer=None,
                          issuer_key=key, not_before=NOW, path_length=1,
                          not_after=NOW + dt.timedelta(days=3650))
    (tmp_path / "ca.key").write_bytes(key_pem(key))
    (tmp_path / "ca.pem").write_bytes(pem(root))
    ca = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    assert ca.cert_pem == pem(root)
    from cortex.hub._x509 import spki_fingerprint
    assert ca.fingerprint == spki_fingerprint(root)
    verify_client(node_cert(ca), pem(root), NOW + dt.timedelta(hours=1))
    again = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    assert [e.name for e in again.status()] == ["ca", "int-1"]


def test_root_rotation_cross_signs_and_old_peers_keep_verifying(tmp_path: Path) -> None:
    """After `rotate --root`: the bundle holds both roots; the hub's chain still verifies
    for a peer knowing only the old root; nodes chain to the new root."""
    ca = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    old_root = ca.cert_pem
    generation = ca.generation
    ca.rotate(now=NOW, new_root=True)
    assert ca.generation > generation
    assert len(certs(ca.cert_pem)) == 2
    assert ca.node_issuer == "int-2/root-2"
    assert sorted(e.signed_by for e in ca.status() if e.name == "int-2") == ["ca", "root-2"]
    _, server = ca.issue_server_cert(tmp_path, now=NOW)
    verify_server(server, old_root, NOW + dt.timedelta(hours=1))
    new_root = pem(certs(ca.cert_pem)[1])
    chain = node_cert(ca)
    verify_client(chain, new_root, NOW + dt.timedelta(hours=1))
    with pytest.raises(VerificationError):
        verify_client(chain, old_root, NOW + dt.timedelta(hours=1))
    assert ca.fingerprint == CertificateAuthority.load_or_create(tmp_path, now=NOW).fingerprint


def test_old_ca_retires_once_nothing_valid_depends_on_it(tmp_path: Path) -> None:
    """While a valid leaf chains through the old root it stays; then it and int-1 retire,
    the hub serves through the new root and join tokens pin it; state survives a reload."""
    ca = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    ca.rotate(now=NOW, new_root=True)
    later = NOW.timestamp() + 3600
    assert not ca.retire({"int-1/ca": later + 60}, now=later)
    assert [e.retired for e in ca.status()] == [False, False, False, False, False]
    assert ca.retire({"int-2/root-2": later + 60}, now=later)
    retired = {e.name for e in ca.status() if e.retired}
    assert retired == {"ca", "int-1"}
    assert len(certs(ca.cert_pem)) == 1
    _, server = ca.issue_server_cert(tmp_path, now=NOW)
    verify_server(server, ca.cert_pem, NOW + dt.timedelta(hours=1))
    reloaded = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    assert {e.name for e in reloaded.status() if e.retired} == retired
    assert reloaded.fingerprint == ca.fingerprint
    assert not ca.retire({}, now=later)  # nothing more to retire: no change


def test_intermediate_rotation_is_due_near_its_end(tmp_path: Path) -> None:
    """With less than a leaf lifetime (+ margin) left, the intermediate must rotate."""
    ca = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    assert not ca.needs_rotation(now=NOW.timestamp(), lifetime_s=86400)
    assert ca.needs_rotation(now=NOW.timestamp() + 364 * 86400, lifetime_s=86400)


def test_a_missing_ca_key_is_named_with_the_way_out(tmp_path: Path) -> None:
    """A lost intermediate key stops the hub with the file's name and the recovery doc."""
    from cortex.errors import InvalidArgument

    CertificateAuthority.load_or_create(tmp_path, now=NOW)
    (tmp_path / "int-1.key").unlink()
    with pytest.raises(InvalidArgument, match=r"int-1.key is missing.*lost CA key"):
        CertificateAuthority.load_or_create(tmp_path, now=NOW)


def test_names_never_collide_after_an_intermediate_is_dropped(tmp_path: Path) -> None:
    """Rotation numbers a new intermediate past the highest existing one."""
    import json

    ca = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    ca.rotate(now=NOW)
    ca.rotate(now=NOW)
    state = json.loads((tmp_path / "state.json").read_text())
    state["intermediates"].remove("int-2")
    (tmp_path / "state.json").write_text(json.dumps(state))
    again = CertificateAuthority.load_or_create(tmp_path, now=NOW)
    again.rotate(now=NOW)
    assert [e.name for e in again.status() if e.kind == "intermediate"] == [
        "int-1", "int-3", "int-4"]
