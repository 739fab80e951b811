"""Transport security, switched on by configuration: TLS on every gRPC server and mutual
TLS between services (each service presents its certificate and checks its peer's against
the CA), and HTTPS on the gateway. Certificates come from mounted files (Kubernetes
Secrets); without them everything is plaintext, as on a developer machine."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from services.kit import settings as kit_settings


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """`cert_file`/`key_file`: this process's certificate; `ca_file`: the CA its peers'
    certificates must chain to; `require_client_cert`: servers refuse clients without one."""

    cert_file: Path | None = None
    key_file: Path | None = field(default=None, repr=False)
    ca_file: Path | None = None
    require_client_cert: bool = True

    @property
    def server_enabled(self) -> bool:
        return self.cert_file is not None

    @property
    def client_enabled(self) -> bool:
        return self.ca_file is not None


def read(r: kit_settings.Reader, prefix: str = "AIOPS_TLS") -> TLSSettings:
    """Reads `<prefix>_CERT_FILE`, `_KEY_FILE`, `_CA_FILE`, `_REQUIRE_CLIENT_CERT`."""
    cert = _file(r, f"{prefix}_CERT_FILE")
    key = _file(r, f"{prefix}_KEY_FILE")
    ca = _file(r, f"{prefix}_CA_FILE")
    if (cert is None) != (key is None):
        r.problems.append(f"{prefix}_CERT_FILE and {prefix}_KEY_FILE: set both or neither")
    return TLSSettings(cert, key, ca, r.bool(f"{prefix}_REQUIRE_CLIENT_CERT", True))


def _file(r: kit_settings.Reader, name: str) -> Path | None:
    value = r.optional_str(name)
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        r.problems.append(f"{name}={value!r}: no such file")
        return None
    return path


def server_credentials(tls: TLSSettings) -> grpc.ServerCredentials:
    assert tls.cert_file is not None and tls.key_file is not None
    ca = tls.ca_file.read_bytes() if tls.ca_file else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=bool(ca) and tls.require_client_cert,
    )


def channel_credentials(tls: TLSSettings) -> grpc.ChannelCredentials:
    assert tls.ca_file is not None
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_file.read_bytes(),
        private_key=tls.key_file.read_bytes() if tls.key_file else None,
        certificate_chain=tls.cert_file.read_bytes() if tls.cert_file else None,
    )


def server_ssl_context(tls: TLSSettings) -> ssl.SSLContext:
    """For an HTTPS listener (the gateway); client certificates are not asked for."""
    assert tls.cert_file is not None and tls.key_file is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context
