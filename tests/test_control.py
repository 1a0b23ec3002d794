"""The control plane's gRPC transport: a real TLS server on 127.0.0.1 and a fake handler."""

from __future__ import annotations

import datetime
import ipaddress
import socket
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lmeraser.client.control_client import ControlClient
from lmeraser.server.control import serve_control, stop_control
from lmeraser.shared import control_pb2, control_pb2_grpc
from lmeraser.shared.errors import CONTROL_ERROR_STATUS, ControlError, LmeraserError

ENROLMENT = {"owner": "owner-3", "public_key": "MCowBQYDK2VwAyEA", "node_name": "node-1", "node_key": "ecdsa-sha2-nistp384 AAAA",
             "issued_at": 1_700_000_000, "signature": "c2lnbmF0dXJl"}
REVOCATION = {"owner": "owner-3", "nonce": "9f1c", "issued_at": 1_700_000_100, "scope": "all",
              "signature": "c2lnbmF0dXJl"}
SIGNED_RECEIPT = {"receipt": {"request_hash": "ab12", "owner": "owner-3", "clusters": ["c0", "c2"],
                              "model": "v2", "completed_at": 1_700_000_200.25},
                  "signature": "cmVjZWlwdA=="}


def _write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _make_ca(directory: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    """Create a self-signed CA and write its certificate as ``name``.pem."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"lmeraser test CA {name}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = _write_pem(directory / f"{name}.pem", certificate.public_bytes(serialization.Encoding.PEM))
    return key, certificate, path


def _make_server_certificate(directory: Path, ca_key: ec.EllipticCurvePrivateKey,
                             ca_certificate: x509.Certificate) -> tuple[Path, Path]:
    """Issue a server certificate for 127.0.0.1 and localhost; return the certificate and key paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certfile = _write_pem(directory / "server.pem", certificate.public_bytes(serialization.Encoding.PEM))
    keyfile = _write_pem(directory / "server.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return certfile, keyfile


class FakeHandler:
    """Records each call and returns canned replies, or raises ``self.error`` when it is set."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.error: BaseException | None = None
        self.revoke_result: dict[str, Any] = {
            "request_hash": "ab12", "status": "accepted", "accepted_at": 1_700_000_101.5,
            "withdrawn_clusters": ["c0", "c2"], "receipt": None}
        self.status_result: dict[str, Any] = {
            "request_hash": "ab12", "owner": "owner-3", "status": "running",
            "progress": {"phase": "retrain", "done": 1, "total": 2}, "accepted_at": 1_700_000_101.5,
            "completed_at": None, "error": None}

    def _record(self, method: str, arguments: Any) -> None:
        self.calls.append((method, arguments))
        if self.error is not None:
            raise self.error

    def enrol(self, request: dict[str, Any]) -> dict[str, Any]:
        self._record("enrol", request)
        return {"owner": request["owner"], "fingerprint": "sha256:0f3a", "enrolled_at": 1_700_000_001.0,
                "status": "enrolled", "node_id": "42"}

    def revoke(self, request: dict[str, Any]) -> dict[str, Any]:
        self._record("revoke", request)
        return self.revoke_result

    def status(self, owner: str, request_hash: str) -> dict[str, Any]:
        self._record("status", (owner, request_hash))
        return self.status_result

    def receipt(self, owner: str, request_hash: str) -> dict[str, Any]:
        self._record("receipt", (owner, request_hash))
        return SIGNED_RECEIPT

    def predict(self, model: str, images: list[bytes]) -> dict[str, Any]:
        self._record("predict", (model, images))
        predictions = [{"label": 3, "class": "cat", "cluster": "c1", "withdrawn": False, "message": ""},
                       {"label": None, "class": None, "cluster": "c2", "withdrawn": True,
                        "message": "cluster c2 is withdrawn until it is retrained"}]
        return {"model": model or "v2", "predictions": predictions[:len(images)]}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("control-tls")
    ca_key, ca_certificate, ca_path = _make_ca(directory, "ca")
    certfile, keyfile = _make_server_certificate(directory, ca_key, ca_certificate)
    _, _, other_ca_path = _make_ca(directory, "other-ca")
    return {"ca": ca_path, "other_ca": other_ca_path, "cert": certfile, "key": keyfile}


@pytest.fixture(scope="module")
def control_server(tls_files: dict[str, Path]):
    handler = FakeHandler()
    server, port = serve_control(handler, "127.0.0.1:0", tls_files["cert"], tls_files["key"], max_workers=2)
    yield handler, port
    stop_control(server, grace=None)


@pytest.fixture
def handler(control_server) -> FakeHandler:
    handler, _ = control_server
    handler.reset()
    return handler


@pytest.fixture
def client(control_server, handler: FakeHandler, tls_files: dict[str, Path]):
    _, port = control_server
    with ControlClient(f"127.0.0.1:{port}", tls_files["ca"], timeout=10.0) as client:
        yield client


def test_enrol_round_trip(handler: FakeHandler, client: ControlClient) -> None:
    result = client.enrol(ENROLMENT)
    assert result == {"owner": "owner-3", "fingerprint": "sha256:0f3a", "enrolled_at": 1_700_000_001.0,
                      "status": "enrolled", "node_id": "42"}
    assert handler.calls == [("enrol", ENROLMENT)]
    assert isinstance(handler.calls[0][1]["issued_at"], int)


def test_revoke_round_trip_without_receipt(handler: FakeHandler, client: ControlClient) -> None:
    result = client.revoke(REVOCATION)
    assert result == handler.revoke_result
    assert result["receipt"] is None
    assert handler.calls == [("revoke", REVOCATION)]


def test_revoke_round_trip_with_receipt(handler: FakeHandler, client: ControlClient) -> None:
    handler.revoke_result = {**handler.revoke_result, "status": "done", "receipt": SIGNED_RECEIPT}
    result = client.revoke(REVOCATION)
    assert result["receipt"] == SIGNED_RECEIPT
    assert result == handler.revoke_result


def test_status_round_trip_running(handler: FakeHandler, client: ControlClient) -> None:
    result = client.status(request_hash="ab12")
    assert result == handler.status_result
    assert result["completed_at"] is None
    assert result["error"] is None
    assert handler.calls == [("status", ("", "ab12"))]


def test_status_round_trip_failed(handler: FakeHandler, client: ControlClient) -> None:
    handler.status_result = {**handler.status_result, "status": "failed", "completed_at": 1_700_000_300.0,
                             "error": "retraining cluster c2 failed: out of memory"}
    result = client.status(owner="owner-3")
    assert result == handler.status_result
    assert handler.calls == [("status", ("owner-3", ""))]


def test_receipt_round_trip(handler: FakeHandler, client: ControlClient) -> None:
    assert client.receipt(owner="owner-3", request_hash="ab12") == SIGNED_RECEIPT
    assert handler.calls == [("receipt", ("owner-3", "ab12"))]


def test_predict_round_trip(handler: FakeHandler, client: ControlClient) -> None:
    images = [b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b"\xff\xd8\xff\xe0" + b"\x00" * 1000]
    result = client.predict(images, model="v1")
    assert result == handler.predict("v1", images)
    assert handler.calls[0] == ("predict", ("v1", images))


def test_predict_current_model(handler: FakeHandler, client: ControlClient) -> None:
    result = client.predict([b"\x89PNG"])
    assert result["model"] == "v2"
    assert handler.calls == [("predict", ("", [b"\x89PNG"]))]


@pytest.mark.parametrize("code", sorted(CONTROL_ERROR_STATUS))
def test_handler_error_reaches_client(handler: FakeHandler, client: ControlClient, code: str) -> None:
    handler.error = ControlError(code, "unknown owner 'x'")
    with pytest.raises(ControlError) as raised:
        client.status(owner="x")
    assert raised.value.code == code
    assert str(raised.value) == "unknown owner 'x'"


def test_handler_lmeraser_error_is_invalid(handler: FakeHandler, client: ControlClient) -> None:
    handler.error = LmeraserError("scope 'some' is invalid; use 'all'")
    with pytest.raises(ControlError) as raised:
        client.revoke(REVOCATION)
    assert raised.value.code == "invalid"
    assert str(raised.value) == "scope 'some' is invalid; use 'all'"


def test_handler_crash_is_internal(handler: FakeHandler, client: ControlClient) -> None:
    handler.error = KeyError("secret detail")
    with pytest.raises(ControlError) as raised:
        client.receipt(request_hash="ab12")
    assert raised.value.code == "unavailable"
    assert "INTERNAL" in str(raised.value)
    assert "secret detail" not in str(raised.value)


def test_other_ca_is_rejected(control_server, tls_files: dict[str, Path]) -> None:
    _, port = control_server
    with ControlClient(f"127.0.0.1:{port}", tls_files["other_ca"], timeout=10.0) as client:
        with pytest.raises(ControlError) as raised:
            client.status(request_hash="ab12")
    assert raised.value.code == "unavailable"
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert str(tls_files["other_ca"]) in str(raised.value)


def test_server_name_override(control_server, handler: FakeHandler, tls_files: dict[str, Path]) -> None:
    _, port = control_server
    with ControlClient(f"127.0.0.1:{port}", tls_files["ca"], timeout=10.0, server_name="localhost") as client:
        assert client.status(request_hash="ab12")["request_hash"] == "ab12"
    with ControlClient(f"127.0.0.1:{port}", tls_files["ca"], timeout=10.0, server_name="other.test") as client:
        with pytest.raises(ControlError) as raised:
            client.status(request_hash="ab12")
    assert raised.value.code == "unavailable"


def test_missing_ca_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(LmeraserError, match="no-such-ca.pem"):
        ControlClient("127.0.0.1:1", missing)


def test_ca_file_without_certificate(tmp_path: Path) -> None:
    bad = _write_pem(tmp_path / "not-a-ca.pem", b"hello")
    with pytest.raises(LmeraserError, match="not-a-ca.pem"):
        ControlClient("127.0.0.1:1", bad)


def test_plaintext_channel_fails(control_server) -> None:
    _, port = control_server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = control_pb2_grpc.ControlStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Status(control_pb2.StatusRequest(request_hash="ab12"), timeout=10.0)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_no_server_is_unavailable(tls_files: dict[str, Path]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with ControlClient(f"127.0.0.1:{port}", tls_files["ca"], timeout=5.0) as client:
        with pytest.raises(ControlError) as raised:
            client.status(owner="owner-3")
    assert raised.value.code == "unavailable"
    assert f"127.0.0.1:{port}" in str(raised.value)


def test_bind_in_use_names_address(control_server, tls_files: dict[str, Path]) -> None:
    _, port = control_server
    address = f"127.0.0.1:{port}"
    with pytest.raises(LmeraserError, match=address):
        serve_control(FakeHandler(), address, tls_files["cert"], tls_files["key"])


def test_server_key_mismatch(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    keyfile = _write_pem(tmp_path / "other.key", other_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(LmeraserError, match="other.key"):
        serve_control(FakeHandler(), "127.0.0.1:0", tls_files["cert"], keyfile)


def test_server_missing_certificate(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    with pytest.raises(LmeraserError, match="missing.pem"):
        serve_control(FakeHandler(), "127.0.0.1:0", tmp_path / "missing.pem", tls_files["key"])


@pytest.mark.parametrize("change, key", [
    ({"issued_at": "1700000000"}, "issued_at"),
    ({"issued_at": True}, "issued_at"),
    ({"extra": "x"}, "extra"),
])
def test_revoke_document_checked(client: ControlClient, handler: FakeHandler, change: dict, key: str) -> None:
    with pytest.raises(ControlError, match=key) as raised:
        client.revoke({**REVOCATION, **change})
    assert raised.value.code == "invalid"
    assert handler.calls == []


def test_enrol_document_missing_key(client: ControlClient, handler: FakeHandler) -> None:
    document = {name: value for name, value in ENROLMENT.items() if name != "signature"}
    with pytest.raises(ControlError, match="signature"):
        client.enrol(document)
    assert handler.calls == []


def test_status_needs_selection(client: ControlClient) -> None:
    with pytest.raises(ControlError) as raised:
        client.status()
    assert raised.value.code == "invalid"


def test_control_error_rejects_unknown_code() -> None:
    with pytest.raises(ValueError, match="'missing'"):
        ControlError("missing", "unknown owner 'x'")
