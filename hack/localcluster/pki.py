"""Certificates for a local cluster: one CA, serving and client certs, a service-account key."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate's subject: CN is the user, O entries are its groups."""

    file_stem: str
    common_name: str
    organizations: tuple[str, ...] = ()


CLIENTS = (
    ClientIdentity("admin", "kubernetes-admin", ("system:masters",)),
    ClientIdentity("controller-manager", "system:kube-controller-manager"),
    ClientIdentity("scheduler", "system:kube-scheduler"),
    ClientIdentity("kwok", "kwok-controller", ("system:masters",)),
    ClientIdentity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)),
)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)


def _create_ca(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = _name("modeldeploy-localcluster-ca")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_now())
            .not_valid_after(_now() + _VALIDITY * 10)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    (pki / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pki / "ca.key", key)
    return cert, key


def _issue(pki: Path, stem: str, subject: x509.Name, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
           *, server_names: tuple[str, ...] = (), client: bool = True) -> None:
    ca_cert, ca_key = ca
    key = _key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(_now()).not_valid_after(_now() + _VALIDITY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if server_names:
        sans: list[x509.GeneralName] = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pki / f"{stem}.key", key)


def _load_ca(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def _covers(cert_path: Path, names: tuple[str, ...]) -> bool:
    """Whether the certificate at `cert_path` exists and names every entry of `names` as a SAN."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (FileNotFoundError, x509.ExtensionNotFound):
        return False
    have = {str(v) for v in sans.get_values_for_type(x509.IPAddress)} | set(sans.get_values_for_type(x509.DNSName))
    return all(str(ipaddress.ip_address(n)) in have if _is_ip(n) else n in have for n in names)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def ensure_pki(pki: Path, apiserver_names: tuple[str, ...], extra_clients: tuple[ClientIdentity, ...] = (),
               serving: tuple[tuple[str, str, tuple[str, ...]], ...] = ()) -> None:
    """Create every certificate the cluster needs, once (an existing CA is reused, never re-keyed).

    On a later call (e.g. `up --real-node` on an existing cluster) only what is missing is added:
    `extra_clients`, `serving` certs given as (file stem, CN, SANs), and an apiserver cert that
    lacks one of `apiserver_names` is re-issued by the same CA.
    """
    if not (pki / "complete").exists():
        pki.mkdir(parents=True, exist_ok=True)
        ca = _create_ca(pki)
        _issue(pki, "apiserver", _name("kube-apiserver"), ca, server_names=apiserver_names, client=False)
        for ident in CLIENTS:
            _issue(pki, ident.file_stem, _name(ident.common_name, ident.organizations), ca)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pki / "sa.key", sa_key)
        (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        (pki / "complete").write_text("ok\n")
    missing_clients = [i for i in extra_clients if not (pki / f"{i.file_stem}.crt").exists()]
    missing_serving = [s for s in serving if not _covers(pki / f"{s[0]}.crt", s[2])]
    stale_apiserver = not _covers(pki / "apiserver.crt", apiserver_names)
    if not (missing_clients or missing_serving or stale_apiserver):
        return
    ca = _load_ca(pki)
    if stale_apiserver:
        _issue(pki, "apiserver", _name("kube-apiserver"), ca, server_names=apiserver_names, client=False)
    for ident in missing_clients:
        _issue(pki, ident.file_stem, _name(ident.common_name, ident.organizations), ca)
    for stem, cn, names in missing_serving:
        _issue(pki, stem, _name(cn), ca, server_names=names, client=False)
