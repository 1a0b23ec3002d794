"""Identity keys, signed owner requests and signed revocation receipts, with real Ed25519 keys."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lmeraser.server.receipts import Receipt, sign_receipt, verify_receipt
from lmeraser.shared.errors import IdentityError, ReceiptError
from lmeraser.shared.identity import (
    EnrolmentRequest,
    RevocationRequest,
    canonical_json,
    fingerprint,
    generate_key,
    load_private_key,
    load_public_key,
    public_key_from_text,
    public_key_text,
    sign_payload,
    verify_payload,
)

NOW = 1_700_000_000.0
NODE_KEY = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQ= node"


@pytest.fixture
def owner_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def server_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def make_receipt(signer: Ed25519PrivateKey, **changes) -> Receipt:
    fields = dict(owner="owner-3", request_hash="ab" * 32, accepted_at=NOW, completed_at=NOW + 42.5,
                  clusters_retrained=("c1", "c4"), owners_contacted=("owner-1", "owner-5"), sample_epochs=640,
                  old_model="0123abcd", new_model="4567ef00", server_key=fingerprint(signer.public_key()))
    fields.update(changes)
    return Receipt(**fields)


# ----------------------------------------------------------------------------- key files


def test_keygen_writes_private_and_public(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "owner.key"
    key = generate_key(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "owner.pub").is_file()
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()
    assert b"BEGIN PUBLIC KEY" in (tmp_path / "keys" / "owner.pub").read_bytes()
    assert public_key_text(load_public_key(tmp_path / "keys" / "owner.pub")) == public_key_text(key)
    assert [p.name for p in sorted((tmp_path / "keys").iterdir())] == ["owner.key", "owner.pub"]


def test_keygen_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "owner.key"
    first = generate_key(path)

    with pytest.raises(IdentityError, match="already exists; pass --force") as raised:
        generate_key(path)
    assert str(path) in str(raised.value)
    assert public_key_text(load_private_key(path)) == public_key_text(first)


def test_keygen_force_replaces(tmp_path: Path) -> None:
    path = tmp_path / "owner.key"
    first = generate_key(path)
    second = generate_key(path, force=True)

    assert public_key_text(second) != public_key_text(first)
    assert public_key_text(load_private_key(path)) == public_key_text(second)
    assert public_key_text(load_public_key(path.with_suffix(".pub"))) == public_key_text(second)


def test_keygen_rejects_pub_suffix(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="choose a path such as"):
        generate_key(tmp_path / "owner.pub")


def test_key_files_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "owner.key"
    key = generate_key(path)

    loaded = load_private_key(path)
    assert public_key_text(loaded) == public_key_text(key)
    assert public_key_text(load_public_key(path)) == public_key_text(key)
    assert fingerprint(load_public_key(path.with_suffix(".pub"))) == fingerprint(key.public_key())


def test_load_missing_key(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="not found") as raised:
        load_private_key(tmp_path / "absent.key")
    assert "absent.key" in str(raised.value)


def test_load_non_pem(tmp_path: Path) -> None:
    path = tmp_path / "owner.key"
    path.write_text("not a key\n")

    with pytest.raises(IdentityError, match="is not a PEM file"):
        load_private_key(path)
    with pytest.raises(IdentityError, match="is not a PEM file"):
        load_public_key(path)


def test_load_rejects_rsa_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_path = tmp_path / "rsa.key"
    private_path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    public_path = tmp_path / "rsa.pub"
    public_path.write_bytes(rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))

    with pytest.raises(IdentityError, match="RSA.*not an Ed25519 key") as raised:
        load_private_key(private_path)
    assert "rsa.key" in str(raised.value)
    with pytest.raises(IdentityError, match="RSA.*not an Ed25519 key"):
        load_public_key(public_path)


def test_public_key_text_round_trip(owner_key: Ed25519PrivateKey) -> None:
    text = public_key_text(owner_key.public_key())

    assert len(text) == 44
    assert fingerprint(public_key_from_text(text)) == fingerprint(owner_key.public_key())
    assert fingerprint(owner_key.public_key()).startswith("sha256:")
    assert len(fingerprint(owner_key.public_key())) == len("sha256:") + 16


def test_public_key_text_invalid() -> None:
    with pytest.raises(IdentityError, match="not valid base64"):
        public_key_from_text("%%%not-base64%%%")
    with pytest.raises(IdentityError, match="decodes to 3 bytes"):
        public_key_from_text("YWJj")
    with pytest.raises(IdentityError, match=r"\.\.\.") as raised:
        public_key_from_text("A" * 200)
    assert "A" * 100 not in str(raised.value)


def test_payload_signature(owner_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey) -> None:
    payload = {"b": 1, "a": "é"}
    signature = sign_payload(owner_key, payload)

    assert canonical_json(payload) == b'{"a":"\\u00e9","b":1}'
    verify_payload(owner_key.public_key(), {"a": "é", "b": 1}, signature)
    with pytest.raises(IdentityError, match="signature does not verify"):
        verify_payload(server_key.public_key(), payload, signature)
    with pytest.raises(IdentityError, match="not valid base64"):
        verify_payload(owner_key.public_key(), payload, "***")


# ----------------------------------------------------------------------------- revocation requests


def test_revocation_create_and_check(owner_key: Ed25519PrivateKey) -> None:
    request = RevocationRequest.create("owner-3", owner_key, now=NOW)

    request.check(owner_key.public_key(), now=NOW + 10)
    assert request.issued_at == int(NOW)
    assert request.scope == "all"
    assert len(request.nonce) == 32
    assert set(request.payload()) == {"owner", "nonce", "issued_at", "scope"}


def test_revocation_json_round_trip(owner_key: Ed25519PrivateKey) -> None:
    request = RevocationRequest.create("owner-3", owner_key, now=NOW)
    parsed = RevocationRequest.from_json(request.to_json())

    assert parsed == request
    assert parsed.request_hash() == request.request_hash()
    parsed.check(owner_key.public_key(), now=NOW)


def test_request_hash_excludes_signature(owner_key: Ed25519PrivateKey) -> None:
    request = RevocationRequest.create("owner-3", owner_key, now=NOW)
    other = RevocationRequest.create("owner-3", owner_key, now=NOW)

    assert request.request_hash() == dataclasses.replace(request, signature="x").request_hash()
    assert request.request_hash() != other.request_hash()
    assert len(request.request_hash()) == 64


def test_revocation_other_key_rejected(owner_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey) -> None:
    request = RevocationRequest.create("owner-3", server_key, now=NOW)

    with pytest.raises(IdentityError) as raised:
        request.check(owner_key.public_key(), now=NOW)
    message = str(raised.value)
    assert "signature of the revocation request for owner 'owner-3' does not verify" in message
    assert fingerprint(owner_key.public_key()) in message
    assert "sign it with the owner's own key" in message


@pytest.mark.parametrize("field, value", [("scope", "cluster-7"), ("nonce", "00" * 16), ("owner", "owner-4"),
                                          ("issued_at", int(NOW) + 1)])
def test_revocation_tampered_field(owner_key: Ed25519PrivateKey, field: str, value: object) -> None:
    request = RevocationRequest.create("owner-3", owner_key, now=NOW)
    tampered = dataclasses.replace(request, **{field: value})

    with pytest.raises(IdentityError, match="does not verify with the enrolled key"):
        tampered.check(owner_key.public_key(), now=NOW)


def test_revocation_too_old(owner_key: Ed25519PrivateKey) -> None:
    request = RevocationRequest.create("owner-3", owner_key, now=NOW)

    request.check(owner_key.public_key(), now=NOW + 300)
    with pytest.raises(IdentityError, match="issued 400 s ago") as raised:
        request.check(owner_key.public_key(), now=NOW + 400)
    assert "expire after 300 s" in str(raised.value)
    assert "create a new request" in str(raised.value)


def test_revocation_from_future(owner_key: Ed25519PrivateKey) -> None:
    request = RevocationRequest.create("owner-3", owner_key, now=NOW + 120)

    with pytest.raises(IdentityError, match="issued 120 s in the future") as raised:
        request.check(owner_key.public_key(), now=NOW)
    assert "check the clock" in str(raised.value)
    request.check(owner_key.public_key(), now=NOW + 60)


def test_revocation_bad_scope(owner_key: Ed25519PrivateKey) -> None:
    with pytest.raises(IdentityError, match="revocation scope 'cluster-7' is not supported"):
        RevocationRequest.create("owner-3", owner_key, scope="cluster-7", now=NOW)


def test_revocation_bad_scope_signed(owner_key: Ed25519PrivateKey) -> None:
    valid = RevocationRequest.create("owner-3", owner_key, now=NOW)
    unsigned = dataclasses.replace(valid, scope="cluster-7")
    signed = dataclasses.replace(unsigned, signature=sign_payload(owner_key, unsigned.payload()))

    with pytest.raises(IdentityError, match="revocation scope 'cluster-7' is not supported"):
        signed.check(owner_key.public_key(), now=NOW)


@pytest.mark.parametrize("owner", ["", "a" * 65, "owner 3", "owner/3", "ownér"])
def test_revocation_bad_owner_id(owner_key: Ed25519PrivateKey, owner: str) -> None:
    with pytest.raises(IdentityError, match="invalid owner id"):
        RevocationRequest.create(owner, owner_key, now=NOW)

    document = RevocationRequest.create("owner-3", owner_key, now=NOW).to_json()
    document["owner"] = owner
    with pytest.raises(IdentityError, match="invalid owner id"):
        RevocationRequest.from_json(document)


def test_revocation_json_missing_field(owner_key: Ed25519PrivateKey) -> None:
    document = RevocationRequest.create("owner-3", owner_key, now=NOW).to_json()
    del document["nonce"]

    with pytest.raises(IdentityError, match="missing field\\(s\\) nonce"):
        RevocationRequest.from_json(document)


def test_revocation_json_wrong_type(owner_key: Ed25519PrivateKey) -> None:
    document = RevocationRequest.create("owner-3", owner_key, now=NOW).to_json()

    with pytest.raises(IdentityError, match="field 'issued_at' must be int, got str"):
        RevocationRequest.from_json({**document, "issued_at": "1700000000"})
    with pytest.raises(IdentityError, match="field 'issued_at' must be int, got bool"):
        RevocationRequest.from_json({**document, "issued_at": True})


# ----------------------------------------------------------------------------- enrolment requests


def test_enrolment_self_signature(owner_key: Ed25519PrivateKey) -> None:
    request = EnrolmentRequest.create("owner-3", owner_key, "node-a", NODE_KEY, now=NOW)

    request.check(now=NOW)
    EnrolmentRequest.from_json(request.to_json()).check(now=NOW)
    assert request.public_key == public_key_text(owner_key.public_key())
    assert fingerprint(request.key()) == fingerprint(owner_key.public_key())


def test_enrolment_tampered(owner_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey) -> None:
    request = EnrolmentRequest.create("owner-3", owner_key, "node-a", NODE_KEY, now=NOW)

    with pytest.raises(IdentityError, match="enrolment request for owner 'owner-3' does not verify"):
        dataclasses.replace(request, node_name="node-b").check(now=NOW)
    swapped = dataclasses.replace(request, public_key=public_key_text(server_key.public_key()))
    with pytest.raises(IdentityError, match="does not verify with the key it enrols"):
        swapped.check(now=NOW)


def test_enrolment_expired(owner_key: Ed25519PrivateKey) -> None:
    request = EnrolmentRequest.create("owner-3", owner_key, "node-a", NODE_KEY, now=NOW)

    with pytest.raises(IdentityError, match="issued 301 s ago"):
        request.check(now=NOW + 301)


def test_enrolment_bad_node_name(owner_key: Ed25519PrivateKey) -> None:
    with pytest.raises(IdentityError, match="invalid node name 'node a'"):
        EnrolmentRequest.create("owner-3", owner_key, "node a", NODE_KEY, now=NOW)


# ----------------------------------------------------------------------------- receipts


def test_receipt_sign_and_verify(server_key: Ed25519PrivateKey) -> None:
    receipt = make_receipt(server_key)
    document = sign_receipt(server_key, receipt)

    verified = verify_receipt(server_key.public_key(), document, owner="owner-3", request_hash="ab" * 32)
    assert verified == receipt
    assert Receipt.from_json(receipt.to_json()) == receipt
    assert document["receipt"]["clusters_retrained"] == ["c1", "c4"]


@pytest.mark.parametrize("field, value", [("owner", "owner-4"), ("completed_at", NOW + 1.0),
                                          ("clusters_retrained", ["c1"]), ("sample_epochs", 641),
                                          ("new_model", "4567ef01")])
def test_receipt_changed_field(server_key: Ed25519PrivateKey, field: str, value: object) -> None:
    document = sign_receipt(server_key, make_receipt(server_key))
    document["receipt"][field] = value

    with pytest.raises(ReceiptError) as raised:
        verify_receipt(server_key.public_key(), document)
    assert f"does not verify with server key {fingerprint(server_key.public_key())}" in str(raised.value)
    assert "altered or signed by another server" in str(raised.value)


def test_receipt_other_server_key(server_key: Ed25519PrivateKey, owner_key: Ed25519PrivateKey) -> None:
    document = sign_receipt(server_key, make_receipt(server_key))

    with pytest.raises(ReceiptError) as raised:
        verify_receipt(owner_key.public_key(), document)
    assert fingerprint(server_key.public_key()) in str(raised.value)
    assert fingerprint(owner_key.public_key()) in str(raised.value)


def test_receipt_forged_fingerprint(server_key: Ed25519PrivateKey, owner_key: Ed25519PrivateKey) -> None:
    forged = make_receipt(owner_key, server_key=fingerprint(server_key.public_key()))
    payload = forged.payload()
    document = {"receipt": payload, "signature": sign_payload(owner_key, payload)}

    with pytest.raises(ReceiptError, match="signed by another server"):
        verify_receipt(server_key.public_key(), document)


def test_receipt_sign_wrong_key(server_key: Ed25519PrivateKey, owner_key: Ed25519PrivateKey) -> None:
    with pytest.raises(ReceiptError, match="but is being signed with key"):
        sign_receipt(owner_key, make_receipt(server_key))


def test_receipt_owner_mismatch(server_key: Ed25519PrivateKey) -> None:
    document = sign_receipt(server_key, make_receipt(server_key))

    with pytest.raises(ReceiptError, match="receipt is for owner 'owner-3', expected owner 'owner-4'"):
        verify_receipt(server_key.public_key(), document, owner="owner-4")


def test_receipt_request_hash_mismatch(server_key: Ed25519PrivateKey) -> None:
    document = sign_receipt(server_key, make_receipt(server_key))

    with pytest.raises(ReceiptError) as raised:
        verify_receipt(server_key.public_key(), document, request_hash="cd" * 32)
    assert "ab" * 32 in str(raised.value)
    assert "expected request " + "cd" * 32 in str(raised.value)


def test_receipt_missing_fields(server_key: Ed25519PrivateKey) -> None:
    document = sign_receipt(server_key, make_receipt(server_key))

    with pytest.raises(ReceiptError, match="missing field\\(s\\) signature"):
        verify_receipt(server_key.public_key(), {"receipt": document["receipt"]})
    del document["receipt"]["new_model"]
    with pytest.raises(ReceiptError, match="missing field\\(s\\) new_model"):
        verify_receipt(server_key.public_key(), document)
