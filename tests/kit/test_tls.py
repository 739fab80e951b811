"""Transport security with certificates the test makes: TLS and mutual TLS on gRPC between
services, HTTPS on the gateway, and refusals for plaintext or a stranger's certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from aiohttp import web
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import app as gateway_app
from gateway.settings import GatewaySettings
from services.feedback import server as feedback_server
from services.feedback.settings import FeedbackSettings
from services.kit import channels, serve, settings, tls
from tests.conftest import feedback_env

FEEDBACK = fb_svc.SubmitFeedbackRequest(
    feedback=fb.Feedback(
        target=fb.Target(kind=fb.TARGET_KIND_ALERT, id="tls-1"), verdict=fb.VERDICT_CONFIRMED
    )
)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_file, key_file = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = _key()
    ca = _cert("aiops test CA", ca_key, None, ca=True)
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    issuer = (ca.subject, ca_key)
    out = {"ca": tmp_path / "ca.crt"}
    for name in ("server", "client"):
        key = _key()
        out[f"{name}_cert"], out[f"{name}_key"] = _write(
            tmp_path / name, _cert(name, key, issuer), key
        )
    stranger_key = _key()
    stranger_ca = _cert("someone else's CA", stranger_key, None, ca=True)
    key = _key()
    out["stranger_cert"], out["stranger_key"] = _write(
        tmp_path / "stranger", _cert("stranger", key, (stranger_ca.subject, stranger_key)), key
    )
    return out


def _tls_env(pki: dict[str, Path], role: str, prefix: str = "AIOPS_TLS") -> dict[str, str]:
    return {
        f"{prefix}_CERT_FILE": str(pki[f"{role}_cert"]),
        f"{prefix}_KEY_FILE": str(pki[f"{role}_key"]),
        f"{prefix}_CA_FILE": str(pki["ca"]),
    }


def _client_tls(pki: dict[str, Path], role: str) -> tls.TLSSettings:
    return tls.read(settings.Reader(_tls_env(pki, role)))


@pytest.fixture
async def mtls_feedback(
    pki: dict[str, Path], redis_url: str, redis_prefix: str
) -> AsyncIterator[serve.Running]:
    env = feedback_env(redis_url, redis_prefix, **_tls_env(pki, "server"))
    async with feedback_server.running(FeedbackSettings.from_env(env)) as running:
        yield running


async def test_mutual_tls_lets_a_client_with_our_certificate_in(
    mtls_feedback: serve.Running, pki: dict[str, Path]
) -> None:
    async with channels.open_channel(
        f"localhost:{mtls_feedback.port}",
        service="aiops.feedback.v1.FeedbackService",
        tls_settings=_client_tls(pki, "client"),
    ) as channel:
        reply = await fb_grpc.FeedbackServiceStub(channel).SubmitFeedback(FEEDBACK, timeout=5)
    assert reply.feedback.name.startswith("feedback/")


@pytest.mark.parametrize("who", ["plaintext", "stranger", "no_client_cert"])
async def test_mutual_tls_refuses_plaintext_and_strangers(
    mtls_feedback: serve.Running, pki: dict[str, Path], who: str
) -> None:
    target = f"localhost:{mtls_feedback.port}"
    if who == "plaintext":
        channel = grpc.aio.insecure_channel(target)
    elif who == "stranger":
        channel = grpc.aio.secure_channel(
            target,
            grpc.ssl_channel_credentials(
                pki["ca"].read_bytes(),
                pki["stranger_key"].read_bytes(),
                pki["stranger_cert"].read_bytes(),
            ),
        )
    else:
        channel = grpc.aio.secure_channel(
            target, grpc.ssl_channel_credentials(pki["ca"].read_bytes())
        )
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await fb_grpc.FeedbackServiceStub(channel).SubmitFeedback(FEEDBACK, timeout=3)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_gateway_serves_https_and_reaches_services_over_mutual_tls(
    mtls_feedback: serve.Running, pki: dict[str, Path], tmp_path: Path
) -> None:
    env = {
        **_tls_env(pki, "client"),
        **_tls_env(pki, "server", "AIOPS_GATEWAY_TLS"),
        "AIOPS_FEEDBACK_ADDR": f"localhost:{mtls_feedback.port}",
        "AIOPS_GATEWAY_JWT_KEYRING_DIR": str(tmp_path / "keys"),
        "AIOPS_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    cfg = GatewaySettings.from_env(env)
    application = gateway_app.create_app(cfg)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_ssl_context(cfg.https))
    await site.start()
    port = runner.addresses[0][1]
    from gateway import keyring

    try:
        ring = keyring.Keyring.load(tmp_path / "keys")
        token = keyring.mint_token(
            ring,
            subject="t",
            roles=["operator"],
            issuer=cfg.issuer,
            audience=cfg.audience,
            ttl_seconds=300,
        )
        trust = ssl.create_default_context(cafile=str(pki["ca"]))
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"https://localhost:{port}/api/v1/aiops/feedback",
                ssl=trust,
                headers={"Authorization": f"Bearer {token}"},
                json={
                    "target": {"kind": "TARGET_KIND_ALERT", "id": "a"},
                    "verdict": "VERDICT_CONFIRMED",
                },
            ) as resp:
                assert resp.status == 201, await resp.text()
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://localhost:{port}/health") as plain:
                    await plain.read()
    finally:
        await runner.cleanup()


def test_a_certificate_without_its_key_is_a_configuration_error(pki: dict[str, Path]) -> None:
    with pytest.raises(settings.SettingsError, match="set both or neither"):
        FeedbackSettings.from_env({"AIOPS_TLS_CERT_FILE": str(pki["server_cert"])})
    with pytest.raises(settings.SettingsError, match="no such file"):
        FeedbackSettings.from_env({"AIOPS_TLS_CA_FILE": "/nonexistent/ca.crt"})
