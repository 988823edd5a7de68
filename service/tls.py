"""Serving TLS and mutual TLS from files that may change on disk.

grpcio's dynamic server credentials ask a *fetcher* for the certificate
configuration on every new handshake. :class:`CertificateFiles` answers it:
it looks at the files' identity (inode, size, modification time) at most
once per ``check_interval`` and re-reads them only when that changed, so a
renewed Kubernetes Secret (an atomic swap of the mounted directory) or a
``cp`` of new files reaches new connections without a restart. Connections
already open keep the certificate they were made with.

Invariant: the configuration grpc serves is always a pair that was read
whole and checked (the key matches the first certificate, the client CA
parses). A replacement that is unreadable, half written or mismatched
keeps the previous pair and logs one warning per such state of the files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshdemo.watched import WatchedFiles
from service.config import ServiceConfig, StartupError

__all__ = ["CertificateFiles", "TlsFileError", "read_pair", "server_credentials"]

log = logging.getLogger("meshdemo.tls")


class TlsFileError(Exception):
    """A certificate, key or CA file cannot be used; the message names the file."""

    def __init__(self, path: str, setting: str, problem: str) -> None:
        super().__init__(f"TLS file {setting} {path}: {problem}")
        self.path = path
        self.setting = setting
        self.problem = problem


def _read(path: str, setting: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(path, setting, exc.strerror or str(exc)) from None
    if not data.strip():
        raise TlsFileError(path, setting, "the file is empty")
    return data


def _certificates(data: bytes, path: str, setting: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsFileError(path, setting, "not a PEM certificate") from None
    return certificates


def read_pair(cert_file: str, key_file: str) -> tuple[bytes, bytes]:
    """Read a certificate chain and its private key, checking that they belong together.

    Raises:
        TlsFileError: A file is missing, unreadable, not PEM, or the key is not
            the first certificate's.
    """
    chain = _read(cert_file, "--tls-cert-file / MESH_TLS_CERT_FILE")
    key = _read(key_file, "--tls-key-file / MESH_TLS_KEY_FILE")
    leaf = _certificates(chain, cert_file, "--tls-cert-file / MESH_TLS_CERT_FILE")[0]
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise TlsFileError(
            key_file, "--tls-key-file / MESH_TLS_KEY_FILE", "not an unencrypted PEM private key"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != leaf.public_key().public_bytes(serialization.Encoding.DER, public):
        raise TlsFileError(
            key_file,
            "--tls-key-file / MESH_TLS_KEY_FILE",
            f"the key does not belong to the certificate in {cert_file}",
        )
    return chain, key


def _read_client_ca(path: str) -> bytes:
    setting = "--tls-client-ca-file / MESH_TLS_CLIENT_CA_FILE"
    data = _read(path, setting)
    _certificates(data, path, setting)
    return data


class CertificateFiles:
    """The server's certificate files, re-read when they change (grpc's certificate fetcher).

    Args:
        cert_file: PEM certificate chain, leaf first.
        key_file: PEM private key of the leaf.
        client_ca_file: PEM CA bundle client certificates must chain to (mutual
            TLS); empty for none.
        check_interval: Seconds between looks at the files.
        clock: Monotonic seconds; a seam for tests.

    Raises:
        TlsFileError: The files cannot be used at construction (start-up).
    """

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        client_ca_file: str = "",
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self._files = WatchedFiles(
            (cert_file, key_file, client_ca_file),
            self._load,
            errors=(TlsFileError,),
            what="TLS files",
            log=log,
            check_interval=check_interval,
            clock=clock,
        )

    def __repr__(self) -> str:
        return (
            f"CertificateFiles({self.cert_file!r}, {self.key_file!r}, "
            f"client_ca={self.client_ca_file!r}, reloads={self.reloads})"
        )

    @property
    def mutual(self) -> bool:
        """Whether client certificates are required."""
        return bool(self.client_ca_file)

    @property
    def reloads(self) -> int:
        """How many times a changed pair was taken up since start-up."""
        return self._files.reloads

    @property
    def configuration(self) -> grpc.ServerCertificateConfiguration:
        """The configuration served now."""
        return self._files.value

    def _load(self) -> grpc.ServerCertificateConfiguration:
        chain, key = read_pair(self.cert_file, self.key_file)
        root = _read_client_ca(self.client_ca_file) if self.client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=root)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed and read well, else None (keep the old).

        Never raises: grpc calls it on every handshake.
        """
        try:
            return self._files.value if self._files.refresh() else None
        except Exception:
            log.exception("checking the TLS files failed; keeping the current certificate")
            return None


def server_credentials(
    config: ServiceConfig, *, check_interval: float = 1.0
) -> tuple[grpc.ServerCredentials, CertificateFiles] | None:
    """Dynamic TLS credentials for the settings' files, or None when TLS is off.

    Raises:
        StartupError: A file is missing, unreadable or does not hold what it should.
    """
    if not config.tls_cert_file:
        return None
    try:
        files = CertificateFiles(
            config.tls_cert_file,
            config.tls_key_file,
            config.tls_client_ca_file,
            check_interval=check_interval,
        )
    except TlsFileError as exc:
        raise StartupError(
            f"cannot serve TLS: {exc}",
            f"point {exc.setting} at a readable PEM file (python -m client certs writes a "
            "development set)",
        ) from None
    credentials = grpc.dynamic_ssl_server_credentials(
        files.configuration,
        # grpc documents None as "no change"; its stubs say the fetcher always returns one.
        files.fetch,  # type: ignore[arg-type]
        require_client_authentication=files.mutual,
    )
    return credentials, files
