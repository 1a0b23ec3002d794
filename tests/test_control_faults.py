"""Bad input to the owner control plane: each rejected request gets a clear error and changes no state.

The tests run the real ControlService over gRPC with TLS against a real state database. The only
stand-in is the SuperLink admin, because the real one calls Flower's ``flwr`` CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lmeraser.client.control_client import ControlClient
from lmeraser.server.control import serve_control, stop_control
from lmeraser.server.deployment import SIGNING_KEY_FILE
from lmeraser.server.service import ControlService
from lmeraser.server.settings import ServerSettings
from lmeraser.server.state import DATABASE_FILE, StateDB, StateError
from lmeraser.shared.config import JobConfig
from lmeraser.shared.errors import ControlError
from lmeraser.shared.identity import EnrolmentRequest, RevocationRequest, generate_key, sign_payload

REPOSITORY = Path(__file__).resolve().parents[1]
LMERASER_COMMAND = Path(sys.executable).with_name("lmeraser")
STATE_TABLES = ("owners", "nonces", "jobs", "revocations")


class RecordingAdmin:
    """SuperLink admin stand-in that records each call and returns a fresh node id."""

    def __init__(self) -> None:
        self.registered: list[tuple[str, str]] = []
        self.unregistered: list[str] = []

    def register(self, node_key: str, node_name: str) -> str:
        self.registered.append((node_key, node_name))
        return str(uuid.uuid4().int % 2**63)

    def unregister(self, node_id: str) -> None:
        self.unregistered.append(node_id)


@dataclasses.dataclass
class ControlPlane:
    """A running control service, its state and a client connected to it."""

    state_dir: Path
    state: StateDB
    admin: RecordingAdmin
    client: ControlClient
    key_dir: Path


def state_snapshot(state_dir: Path) -> dict[str, Any]:
    """Read the rows of the state tables and the audit entry count from ``state.db``, read-only."""
    uri = (state_dir / DATABASE_FILE).resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        snapshot: dict[str, Any] = {
            table: connection.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall() for table in STATE_TABLES
        }
        snapshot["audit_entries"] = connection.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    return snapshot


def node_key_text() -> str:
    """Return a fresh EC P-384 public key as OpenSSH text, as a SuperNode uses."""
    public_key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return public_key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def owner_key(plane: ControlPlane, name: str) -> Ed25519PrivateKey:
    return generate_key(plane.key_dir / f"{name}.key")


def enrol(plane: ControlPlane, owner: str, key: Ed25519PrivateKey, node_name: str | None = None) -> dict[str, Any]:
    document = EnrolmentRequest.create(owner, key, node_name or f"node-{owner}", node_key_text()).to_json()
    return plane.client.enrol(document)


def revocation(owner: str, key: Ed25519PrivateKey, issued_at: float | None = None) -> dict[str, Any]:
    return RevocationRequest.create(owner, key, now=issued_at).to_json()


def resign(document: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return ``document`` with a valid signature over its current fields."""
    payload = {name: value for name, value in document.items() if name != "signature"}
    return {**payload, "signature": sign_payload(key, payload)}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("control-faults-tls")
    subprocess.run([sys.executable, str(REPOSITORY / "deploy" / "make_certs.py"), "--out", str(directory),
                    "--ip", "127.0.0.1"], check=True, capture_output=True, timeout=60)
    return {"ca": directory / "ca.crt", "cert": directory / "server.pem", "key": directory / "server.key"}


@pytest.fixture
def plane(tmp_path: Path, tls_files: dict[str, Path]):
    state_dir = tmp_path / "server"
    settings = ServerSettings(state_dir=state_dir, superlink="127.0.0.1:1", superlink_ca=str(tls_files["ca"]),
                              control_address="127.0.0.1:0", tls_cert=str(tls_files["cert"]),
                              tls_key=str(tls_files["key"]), job=JobConfig(classes="0,1,2").to_mapping())
    state = StateDB(state_dir)
    generate_key(state_dir / SIGNING_KEY_FILE)
    admin = RecordingAdmin()
    service = ControlService(settings, state, admin)
    server, port = serve_control(service, "127.0.0.1:0", tls_files["cert"], tls_files["key"], max_workers=2)
    client = ControlClient(f"127.0.0.1:{port}", tls_files["ca"], timeout=10.0)
    try:
        yield ControlPlane(state_dir=state_dir, state=state, admin=admin, client=client, key_dir=tmp_path / "keys")
    finally:
        client.close()
        stop_control(server, grace=None)
        state.close()


@pytest.fixture
def alice(plane: ControlPlane) -> Ed25519PrivateKey:
    """The key of owner ``alice``, enrolled on node ``node-alice``."""
    key = owner_key(plane, "alice")
    enrol(plane, "alice", key)
    return key


# ---------------------------------------------------------------------------- revocation


def test_revoke_unknown_owner(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    before = state_snapshot(plane.state_dir)

    with pytest.raises(ControlError) as caught:
        plane.client.revoke(revocation("ghost", owner_key(plane, "ghost")))

    assert caught.value.code == "not_found"
    assert "unknown owner 'ghost'" in str(caught.value)
    assert "alice" not in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


def test_revoke_invalid_owner_id(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    document = {**revocation("alice", alice), "owner": "alice smith"}
    before = state_snapshot(plane.state_dir)

    with pytest.raises(ControlError) as caught:
        plane.client.revoke(document)

    assert caught.value.code == "invalid"
    assert "invalid owner id 'alice smith'" in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


def test_revoke_signed_by_other_key(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    mallory = owner_key(plane, "mallory")
    enrol(plane, "mallory", mallory)
    before = state_snapshot(plane.state_dir)

    with pytest.raises(ControlError) as caught:
        plane.client.revoke(revocation("alice", mallory))

    assert caught.value.code == "permission_denied"
    assert "signature of the revocation request for owner 'alice' does not verify" in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


def test_revoke_tampered_nonce(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    document = {**revocation("alice", alice), "nonce": "0" * 32}
    before = state_snapshot(plane.state_dir)

    with pytest.raises(ControlError) as caught:
        plane.client.revoke(document)

    assert caught.value.code == "permission_denied"
    assert "signature" in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


def test_revoke_tampered_scope(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    # The signature is checked before the scope, so an unsupported scope added after signing
    # is reported as a bad signature.
    document = {**revocation("alice", alice), "scope": "everything"}
    before = state_snapshot(plane.state_dir)

    with pytest.raises(ControlError) as caught:
        plane.client.revoke(document)

    assert caught.value.code == "permission_denied"
    assert "signature" in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


def test_revoke_unsupported_scope_signed(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    document = resign({**revocation("alice", alice), "scope": "everything"}, alice)
    before = state_snapshot(plane.state_dir)

    with pytest.raises(ControlError) as caught:
        plane.client.revoke(document)

    assert caught.value.code == "invalid"
    assert "revocation scope 'everything' is not supported" in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


def test_revoke_expired_request(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    before = state_snapshot(plane.state_dir)

    with pytest.raises(ControlError) as caught:
        plane.client.revoke(revocation("alice", alice, issued_at=time.time() - 3600))

    assert caught.value.code == "invalid"
    assert "requests expire after 300 s" in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


def test_revoke_future_request(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    before = state_snapshot(plane.state_dir)

    with pytest.raises(ControlError) as caught:
        plane.client.revoke(revocation("alice", alice, issued_at=time.time() + 3600))

    assert caught.value.code == "invalid"
    assert "in the future" in str(caught.value)
    assert "check the clock" in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


def test_revoke_expired_owner_named_signature(plane: ControlPlane) -> None:
    key = owner_key(plane, "signature-lab")
    enrol(plane, "signature-lab", key)

    with pytest.raises(ControlError) as caught:
        plane.client.revoke(revocation("signature-lab", key, issued_at=time.time() - 3600))

    assert caught.value.code == "invalid"


def test_revoke_replayed_nonce(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    first = revocation("alice", alice)
    plane.client.revoke(first)
    before = state_snapshot(plane.state_dir)
    replay = resign({**first, "issued_at": first["issued_at"] - 1}, alice)

    with pytest.raises(ControlError) as caught:
        plane.client.revoke(replay)

    assert caught.value.code == "already_exists"
    assert f"nonce {first['nonce']!r} was already used" in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


def test_revoke_twice_returns_first(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    first = plane.client.revoke(revocation("alice", alice))
    before = state_snapshot(plane.state_dir)
    unregistered = list(plane.admin.unregistered)

    second = plane.client.revoke(revocation("alice", alice))

    assert second["request_hash"] == first["request_hash"]
    assert second["accepted_at"] == first["accepted_at"]
    assert second["status"] == "accepted"
    assert state_snapshot(plane.state_dir) == before
    assert plane.admin.unregistered == unregistered


def test_revoke_first_changes_state(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    # Counterpart of the rejected cases: an accepted request does change the snapshot.
    before = state_snapshot(plane.state_dir)

    reply = plane.client.revoke(revocation("alice", alice))
    after = state_snapshot(plane.state_dir)

    assert len(after["revocations"]) == len(before["revocations"]) + 1
    assert len(after["jobs"]) == len(before["jobs"]) + 1
    assert len(after["nonces"]) == len(before["nonces"]) + 1
    assert after["audit_entries"] == before["audit_entries"] + 1
    assert after["revocations"][0][0] == reply["request_hash"]
    assert len(plane.admin.unregistered) == 1


# ---------------------------------------------------------------------------- enrolment


def test_enrol_public_key_in_use(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    before = state_snapshot(plane.state_dir)
    registered = list(plane.admin.registered)

    with pytest.raises(ControlError) as caught:
        enrol(plane, "carol", alice, node_name="node-carol")

    assert caught.value.code == "already_exists"
    assert "public key of owner 'carol' is already enrolled for owner 'alice'" in str(caught.value)
    assert plane.admin.registered == registered
    assert state_snapshot(plane.state_dir) == before


def test_enrol_node_name_in_use(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    before = state_snapshot(plane.state_dir)
    registered = list(plane.admin.registered)

    with pytest.raises(ControlError) as caught:
        enrol(plane, "carol", owner_key(plane, "carol"), node_name="node-alice")

    assert caught.value.code == "already_exists"
    assert "node name of owner 'carol' is already enrolled for owner 'alice'" in str(caught.value)
    assert plane.admin.registered == registered
    assert state_snapshot(plane.state_dir) == before


def test_enrol_owner_id_twice(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    before = state_snapshot(plane.state_dir)
    registered = list(plane.admin.registered)

    with pytest.raises(ControlError) as caught:
        enrol(plane, "alice", owner_key(plane, "alice-2"), node_name="node-alice-2")

    assert caught.value.code == "already_exists"
    assert "owner 'alice' is already enrolled" in str(caught.value)
    assert plane.admin.registered == registered
    assert state_snapshot(plane.state_dir) == before


def test_enrol_node_key_not_openssh(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    key = owner_key(plane, "carol")
    document = EnrolmentRequest.create("carol", key, "node-carol", "garbage").to_json()
    before = state_snapshot(plane.state_dir)
    registered = list(plane.admin.registered)

    with pytest.raises(ControlError) as caught:
        plane.client.enrol(document)

    assert caught.value.code == "invalid"
    assert "node key of owner 'carol' is not an OpenSSH public key" in str(caught.value)
    assert plane.admin.registered == registered
    assert state_snapshot(plane.state_dir) == before


def test_enrol_node_key_pem(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    key = owner_key(plane, "carol")
    public_key = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem_text = public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    document = EnrolmentRequest.create("carol", key, "node-carol", pem_text).to_json()

    with pytest.raises(ControlError) as caught:
        plane.client.enrol(document)

    assert caught.value.code == "invalid"


def test_enrol_node_key_not_ec(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    key = owner_key(plane, "carol")
    ed25519_text = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    document = EnrolmentRequest.create("carol", key, "node-carol", ed25519_text.decode()).to_json()
    before = state_snapshot(plane.state_dir)

    with pytest.raises(ControlError) as caught:
        plane.client.enrol(document)

    assert caught.value.code == "invalid"
    assert "needs an EC key (P-384)" in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


def test_enrol_tampered_signature(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    key = owner_key(plane, "carol")
    document = EnrolmentRequest.create("carol", key, "node-carol", node_key_text()).to_json()
    document["node_name"] = "node-carol-2"
    before = state_snapshot(plane.state_dir)
    registered = list(plane.admin.registered)

    with pytest.raises(ControlError) as caught:
        plane.client.enrol(document)

    assert caught.value.code == "invalid"
    assert "signature of the enrolment request for owner 'carol' does not verify" in str(caught.value)
    assert plane.admin.registered == registered
    assert state_snapshot(plane.state_dir) == before


# ---------------------------------------------------------------------------- status and receipts


def test_status_unknown_owner(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    before = state_snapshot(plane.state_dir)

    with pytest.raises(ControlError) as caught:
        plane.client.status(owner="ghost")

    assert caught.value.code == "not_found"
    assert "no revocation for owner 'ghost'" in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


def test_receipt_unknown_owner(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    before = state_snapshot(plane.state_dir)

    with pytest.raises(ControlError) as caught:
        plane.client.receipt(owner="ghost")

    assert caught.value.code == "not_found"
    assert "no revocation for owner 'ghost'" in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


def test_receipt_job_not_done(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    reply = plane.client.revoke(revocation("alice", alice))
    before = state_snapshot(plane.state_dir)

    with pytest.raises(ControlError) as caught:
        plane.client.receipt(request_hash=reply["request_hash"])

    assert caught.value.code == "failed_precondition"
    assert "the revocation of owner 'alice' is accepted" in str(caught.value)
    assert "ask again when it is done" in str(caught.value)
    assert state_snapshot(plane.state_dir) == before


# ---------------------------------------------------------------------------- state database and audit log


def test_state_db_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_FILE
    path.write_bytes(b"not an SQLite database\x00" * 400)
    original = path.read_bytes()

    with pytest.raises(StateError) as caught:
        StateDB(tmp_path)

    assert repr(str(path)) in str(caught.value)
    assert "restore it from a backup" in str(caught.value)
    assert path.read_bytes() == original


def test_state_db_truncated_file(tmp_path: Path) -> None:
    state = StateDB(tmp_path)
    for index in range(200):
        state.add_owner(f"owner-{index}", f"key-{index}" * 8, f"node-{index}", str(index), 1_700_000_000.0)
    state.close()
    path = tmp_path / DATABASE_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    truncated = path.read_bytes()

    with pytest.raises(StateError) as caught:
        StateDB(tmp_path)

    assert repr(str(path)) in str(caught.value)
    assert "restore it from a backup" in str(caught.value)
    assert path.read_bytes() == truncated


def run_audit_verify(state_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LMERASER_COMMAND), "audit", "verify", "--state-dir", str(state_dir)],
                          capture_output=True, text=True, timeout=60)


def test_audit_verify_intact(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    enrol(plane, "bob", owner_key(plane, "bob"))
    plane.client.revoke(revocation("alice", alice))

    result = run_audit_verify(plane.state_dir)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 entries, chain intact" in result.stdout


def test_audit_verify_tampered_payload(plane: ControlPlane, alice: Ed25519PrivateKey) -> None:
    enrol(plane, "bob", owner_key(plane, "bob"))
    plane.client.revoke(revocation("alice", alice))
    # The triggers only block accidental edits, so someone who can write the file drops them first.
    with contextlib.closing(sqlite3.connect(plane.state_dir / DATABASE_FILE, isolation_level=None)) as connection:
        connection.execute("DROP TRIGGER audit_no_update")
        payload = json.loads(connection.execute("SELECT payload FROM audit WHERE seq = 2").fetchone()[0])
        payload["node_name"] = "node-eve"
        connection.execute("UPDATE audit SET payload = ? WHERE seq = 2", (json.dumps(payload),))

    result = run_audit_verify(plane.state_dir)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN at entry 2" in result.stdout
    assert "hash does not match its contents" in result.stdout
