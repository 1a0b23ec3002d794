"""The hash-chained audit log on real SQLite files, including rows edited or deleted behind its back."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from lmeraser.server.audit import GENESIS_HASH, AuditLog, verify_database
from lmeraser.shared.errors import AuditError

NOW = 1_700_000_000.0


def fill_log(path: Path, count: int = 5) -> None:
    """Write ``count`` committed entries of varied kinds to the audit log in ``path``."""
    connection = sqlite3.connect(path)
    log = AuditLog(connection)
    log.ensure_schema()
    kinds = ["enrolment", "training", "revocation", "receipt", "model"]
    for index in range(count):
        log.append(kinds[index % len(kinds)], {"owner": f"owner-{index}", "clusters": ["c1", "c2"], "n": index},
                   recorded_at=NOW + index)
    connection.commit()
    connection.close()


def tamper(path: Path, statement: str) -> None:
    """Run ``statement`` on the database directly, after dropping the triggers that guard the table."""
    connection = sqlite3.connect(path)
    connection.execute("DROP TRIGGER audit_no_update")
    connection.execute("DROP TRIGGER audit_no_delete")
    connection.execute(statement)
    connection.commit()
    connection.close()


def test_append_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    fill_log(path)

    report = verify_database(path)
    assert report.ok
    assert report.entries == 5
    assert report.first_bad is None


def test_entries_chain(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    fill_log(path, count=3)
    connection = sqlite3.connect(path)
    entries = AuditLog(connection).entries()
    connection.close()

    assert [entry.seq for entry in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS_HASH
    assert entries[1].prev_hash == entries[0].hash
    assert entries[2].prev_hash == entries[1].hash
    assert entries[2].payload == {"owner": "owner-2", "clusters": ["c1", "c2"], "n": 2}
    assert entries[2].kind == "revocation"


def test_integer_time_and_tuple_payload(tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / "state.db")
    log = AuditLog(connection)
    log.ensure_schema()
    entry = log.append("model", {"versions": ("abc", "def")}, recorded_at=1_700_000_000)
    connection.commit()

    assert entry.payload == {"versions": ["abc", "def"]}
    assert log.verify().ok
    connection.close()


def test_append_not_committed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    connection = sqlite3.connect(path)
    log = AuditLog(connection)
    log.ensure_schema()
    connection.commit()
    log.append("training", {"round": 1}, recorded_at=NOW)
    connection.rollback()

    assert log.entries() == []
    connection.close()


def test_append_rejects_bad_input(tmp_path: Path) -> None:
    connection = sqlite3.connect(tmp_path / "state.db")
    log = AuditLog(connection)
    log.ensure_schema()

    with pytest.raises(AuditError, match="kind must be a non-empty string"):
        log.append("", {})
    with pytest.raises(AuditError, match="not JSON-serialisable"):
        log.append("model", {"weights": object()})
    with pytest.raises(AuditError, match="must be finite unix seconds"):
        log.append("model", {}, recorded_at=float("nan"))
    connection.close()


def test_triggers_reject_update(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    fill_log(path, count=2)
    connection = sqlite3.connect(path)

    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        connection.execute("UPDATE audit SET kind = 'model' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        connection.execute("DELETE FROM audit WHERE seq = 1")
    connection.close()


def test_edited_payload_detected(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    fill_log(path, count=8)
    payload = json.dumps({"owner": "owner-9", "clusters": ["c1", "c2"], "n": 6}, sort_keys=True, separators=(",", ":"))
    tamper(path, f"UPDATE audit SET payload = '{payload}' WHERE seq = 7")

    report = verify_database(path)
    assert not report.ok
    assert report.first_bad == 7
    assert report.reason == "entry 7: hash does not match its contents (edited after it was written)"


def test_invalid_payload_detected(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    fill_log(path)
    tamper(path, "UPDATE audit SET payload = '{broken' WHERE seq = 2")

    report = verify_database(path)
    assert report.first_bad == 2
    assert "payload is not valid JSON" in report.reason


def test_deleted_row_detected(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    fill_log(path)
    tamper(path, "DELETE FROM audit WHERE seq = 3")

    report = verify_database(path)
    assert not report.ok
    assert report.first_bad == 4
    assert report.entries == 4
    assert "entry 3 is missing" in report.reason


def test_renumbered_rows_detected(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    fill_log(path)
    # Remove entry 3 and shift 4 and 5 down, so that the seqs stay contiguous.
    tamper(path, "DELETE FROM audit WHERE seq = 3")
    tamper_more = sqlite3.connect(path)
    tamper_more.execute("UPDATE audit SET seq = seq - 1 WHERE seq > 3")
    tamper_more.commit()
    tamper_more.close()

    report = verify_database(path)
    assert report.first_bad == 3
    assert report.reason == "entry 3: prev_hash does not match entry 2 (an entry was removed or reordered)"


def test_verify_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "state.db"

    with pytest.raises(AuditError) as raised:
        verify_database(path)
    assert str(path) in str(raised.value)
    assert "not found" in str(raised.value)
    assert "server's state directory" in str(raised.value)


def test_verify_without_audit_table(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE owners (id TEXT)")
    connection.commit()
    connection.close()

    with pytest.raises(AuditError, match="has no audit table"):
        verify_database(path)


def test_verify_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_text("plain text, not a database\n" * 10)

    with pytest.raises(AuditError, match="is not an SQLite database"):
        verify_database(path)


def test_verify_opens_read_only(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    fill_log(path)
    before = path.read_bytes()

    assert verify_database(path).ok
    assert path.read_bytes() == before
