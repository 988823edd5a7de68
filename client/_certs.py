"""``python -m client certs``: a development CA, a server and a client certificate.

For laptops, tests and the local mesh; a cluster should get its certificates
from cert-manager or the chart. Keys are ECDSA P-256, written with mode 0600;
the CA is valid for ``--days`` days and signs both leaves.

Files written into ``--out``: ``ca.crt``, ``ca.key``, ``server.crt``,
``server.key``, ``client.crt``, ``client.key``.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CERT_FILES",
    "CertificateSet",
    "add_certs_parser",
    "default_dns_names",
    "default_ips",
    "run_certs",
    "write_certificates",
]

#: Every file ``write_certificates`` writes, by role.
CERT_FILES = {
    "ca": ("ca.crt", "ca.key"),
    "server": ("server.crt", "server.key"),
    "client": ("client.crt", "client.key"),
}

#: The chart's defaults: release ``meshdemo`` in namespace ``meshdemo`` (see skaffold.yaml).
DEFAULT_RELEASE = "meshdemo"
DEFAULT_NAMESPACE = "meshdemo"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
#: The local mesh's DNS name (mesh._config.DEFAULT_NAME).
LOCAL_MESH_NAME = "users.meshdemo.svc.cluster.local"
#: 127.0.0.1 and the first replicas' addresses of the local mesh.
DEFAULT_LOOPBACK = 9


def default_dns_names(
    release: str = DEFAULT_RELEASE,
    namespace: str = DEFAULT_NAMESPACE,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> list[str]:
    """The names clients dial: the chart's two Services, its pods, the local mesh, localhost.

    As the chart's ``meshdemo.tls.dnsNames``: each Service by its short,
    namespaced, ``.svc`` and fully qualified name, and a wildcard over the
    headless Service's pod records.
    """
    headless = f"{release}-users-headless"
    names: list[str] = []
    for service in (headless, f"{release}-users"):
        names += [
            service,
            f"{service}.{namespace}",
            f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.{cluster_domain}",
        ]
    names.append(f"*.{headless}.{namespace}.svc.{cluster_domain}")
    names += [LOCAL_MESH_NAME, "localhost"]
    return names


def default_ips(loopback: int = DEFAULT_LOOPBACK) -> list[str]:
    """127.0.0.1 up to 127.0.0.``loopback``, and ::1."""
    first = ipaddress.IPv4Address("127.0.0.1")
    return [str(first + i) for i in range(loopback)] + ["::1"]


@dataclass(frozen=True, slots=True)
class CertificateSet:
    """What to issue.

    Attributes:
        dns_names: DNS subject alternative names of the server certificate.
        ips: IP subject alternative names of the server certificate.
        client_name: Common name (and DNS SAN) of the client certificate.
        days: Validity of every certificate, in days.
    """

    dns_names: Sequence[str] = field(default_factory=default_dns_names)
    ips: Sequence[str] = field(default_factory=default_ips)
    client_name: str = "meshdemo-client"
    days: int = 365

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError("--days must be at least 1")
        if not self.dns_names and not self.ips:
            raise ValueError("the server certificate needs at least one --dns or --ip")
        for ip in self.ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ValueError(f"--ip {ip!r} is not an IP address") from None


_Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshdemo development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(subject: str, issuer: x509.Name, key: _Key, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # An hour back: clocks of containers and laptops differ a little.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _new_ca(days: int, common_name: str) -> tuple[_Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _builder(common_name, _name(common_name), key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca: tuple[_Key, x509.Certificate],
    common_name: str,
    sans: list[x509.GeneralName],
    purpose: x509.ObjectIdentifier,
    days: int,
) -> tuple[_Key, x509.Certificate]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        _builder(common_name, ca_cert.subject, key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(authority, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _server_sans(spec: CertificateSet) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(spec.dns_names)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(spec.ips)]
    return sans


def _pem_key(key: _Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode, so a key is never readable by others, not even briefly.
    # An existing file (--force) gets the mode before the new bytes go in.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def write_certificates(
    out: Path, spec: CertificateSet | None = None, *, force: bool = False, ca_name: str = ""
) -> dict[str, Path]:
    """Issue a CA, a server and a client certificate into ``out``; the paths by file name.

    Args:
        out: The directory (created when missing).
        spec: Names and validity; the defaults when None.
        force: Overwrite files that exist.
        ca_name: Common name of the CA (a random-looking default names this run).

    Raises:
        FileExistsError: A file exists and ``force`` is False (nothing is written).
    """
    spec = spec or CertificateSet()
    names = [name for pair in CERT_FILES.values() for name in pair]
    existing = [n for n in names if (out / n).exists()]
    if existing and not force:
        raise FileExistsError(
            f"{out} already holds {', '.join(existing)}; pass --force to replace them"
        )
    out.mkdir(parents=True, exist_ok=True)
    ca = _new_ca(spec.days, ca_name or f"meshdemo development CA {os.urandom(4).hex()}")
    server = _leaf(
        ca, _server_cn(spec), _server_sans(spec), ExtendedKeyUsageOID.SERVER_AUTH, spec.days
    )
    client = _leaf(
        ca,
        spec.client_name,
        [x509.DNSName(spec.client_name)],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        spec.days,
    )
    paths: dict[str, Path] = {}
    for role, (key, cert) in {"ca": ca, "server": server, "client": client}.items():
        cert_name, key_name = CERT_FILES[role]
        _write(out / cert_name, _pem_cert(cert), 0o644)
        _write(out / key_name, _pem_key(key), 0o600)
        paths[cert_name], paths[key_name] = out / cert_name, out / key_name
    return paths


def _server_cn(spec: CertificateSet) -> str:
    plain = [n for n in spec.dns_names if not n.startswith("*")]
    return (plain or list(spec.ips))[0]


def add_certs_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``certs`` command to a subparsers object; returns its parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "certs",
        help="write a development CA, a server and a client certificate",
        description="Write a development CA (ca.crt, ca.key), a server certificate "
        "(server.crt, server.key) and a client certificate for mutual TLS "
        "(client.crt, client.key) into --out. Keys are ECDSA P-256 with mode 0600. "
        "For development only: in a cluster use cert-manager or the chart's generated CA.",
        epilog="The server certificate names, by default, the chart's Services (release "
        f"{DEFAULT_RELEASE} in namespace {DEFAULT_NAMESPACE}: NAME-users, NAME-users-headless, "
        "each as NAME, NAME.NS, NAME.NS.svc and NAME.NS.svc.DOMAIN, and "
        "*.NAME-users-headless.NS.svc.DOMAIN for the pods), the local mesh's "
        f"{LOCAL_MESH_NAME}, localhost, 127.0.0.1 to 127.0.0.N (--loopback) and ::1. "
        "Clients verify the name they dialled (dns:/// and k8s:/// targets: the target's "
        "host name; static:/// targets: each address, so IPs need IP names) or "
        "--tls-server-name. exit codes: 0 written, 1 files exist (without --force) or cannot "
        "be written, 2 bad options.",
    )
    parser.add_argument(
        "--out", required=True, help="directory to write into, created if missing (required)"
    )
    parser.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name of the server certificate (repeatable; replaces the default "
        "names listed below)",
    )
    parser.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="ADDR",
        help="an IP address of the server certificate (repeatable; added to --loopback's; "
        "default: none more)",
    )
    parser.add_argument(
        "--loopback",
        type=int,
        default=DEFAULT_LOOPBACK,
        metavar="N",
        help="name 127.0.0.1 to 127.0.0.N and ::1 (0 for none; default: %(default)s)",
    )
    parser.add_argument(
        "--release",
        default=DEFAULT_RELEASE,
        help="the chart's release name for the default names (default: %(default)s)",
    )
    parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help="the namespace for the default names (default: %(default)s)",
    )
    parser.add_argument(
        "--cluster-domain",
        default=DEFAULT_CLUSTER_DOMAIN,
        help="the cluster domain for the default names (default: %(default)s)",
    )
    parser.add_argument(
        "--client-name",
        default="meshdemo-client",
        help="common name of the client certificate (default: %(default)s)",
    )
    parser.add_argument(
        "--days", type=int, default=365, help="validity in days (default: %(default)s)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace files that exist (default: refuse and exit 1)"
    )
    return parser


def _spec_from(args: argparse.Namespace) -> CertificateSet:
    if not 0 <= args.loopback <= 254:
        raise ValueError("--loopback must be from 0 to 254")
    ips = (default_ips(args.loopback) if args.loopback else []) + list(args.ip)
    dns = list(args.dns) or default_dns_names(args.release, args.namespace, args.cluster_domain)
    return CertificateSet(dns_names=dns, ips=ips, client_name=args.client_name, days=args.days)


def run_certs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run ``certs``: 0 when written, 2 for bad options, 1 when files exist."""
    try:
        spec = _spec_from(args)
    except ValueError as exc:
        err.write(f"error: {exc}\n")
        return 2
    try:
        paths = write_certificates(Path(args.out), spec, force=args.force)
    except (FileExistsError, OSError) as exc:
        err.write(f"error: {exc}\n")
        return 1
    for name, path in paths.items():
        out.write(f"wrote {path}{' (0600)' if name.endswith('.key') else ''}\n")
    out.write(
        f"server names: {', '.join([*spec.dns_names, *spec.ips])}\n"
        f"serve:  MESH_TLS_CERT_FILE={paths['server.crt']} MESH_TLS_KEY_FILE={paths['server.key']}"
        f" [MESH_TLS_CLIENT_CA_FILE={paths['ca.crt']}]\n"
        f"dial:   MESH_TLS_CA_FILE={paths['ca.crt']} [MESH_TLS_CLIENT_CERT_FILE="
        f"{paths['client.crt']} MESH_TLS_CLIENT_KEY_FILE={paths['client.key']}]\n"
    )
    return 0
