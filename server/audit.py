"""An append-only, hash-chained audit log in the server's SQLite database.

Each entry stores the hash of the entry before it (``prev_hash``) and its own hash, which is
the SHA-256 of ``prev_hash`` followed by the canonical JSON of its seq, time, kind and
payload. Editing, removing or reordering an entry therefore breaks the chain at that entry,
and ``verify`` reports where.

NOTE: removing entries from the end of the log leaves a valid, shorter chain. Detecting that
requires comparing ``head()`` with a copy of the last hash kept elsewhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from lmeraser.shared.errors import AuditError
from lmeraser.shared.identity import canonical_json

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
KINDS = ("enrolment", "training", "revocation", "receipt", "model")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        recorded_at REAL NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    # The triggers stop accidental edits through SQL. They do not stop anyone who can write the
    # file, because such a person can drop them, so the hash chain is what detects tampering.
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be updated'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be deleted'); END""",
)


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log; ``recorded_at`` is in unix seconds (UTC)."""

    seq: int
    recorded_at: float
    kind: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """Result of checking the chain: ``first_bad`` is the seq of the first bad entry, or None if ``ok``."""

    ok: bool
    entries: int
    first_bad: int | None
    reason: str


def entry_hash(prev_hash: str, seq: int, recorded_at: float, kind: str, payload: dict[str, Any]) -> str:
    """Return the SHA-256 hex of ``prev_hash`` followed by the canonical JSON of the entry's fields."""
    body = canonical_json({"seq": seq, "recorded_at": recorded_at, "kind": kind, "payload": payload})
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


class AuditLog:
    """The ``audit`` table of an open SQLite connection.

    ``append`` does not commit. The caller commits the entry in the same transaction as the
    state change it records, so that the entry and the change are committed or rolled back together.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def ensure_schema(self) -> None:
        """Create the ``audit`` table and its triggers if they are missing.

        The statements run in the caller's transaction when one is open and are not committed here.
        """
        for statement in _SCHEMA:
            self.connection.execute(statement)

    def head(self) -> AuditEntry | None:
        """Return the last entry, or None if the log is empty."""
        row = self.connection.execute(
            "SELECT seq, recorded_at, kind, payload, prev_hash, hash FROM audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else _entry_from_row(row)

    def append(self, kind: str, payload: dict[str, Any], recorded_at: float | None = None) -> AuditEntry:
        """Insert an entry after the current last one and return it, without committing.

        Call it after the write that it records, in the same transaction: that write holds
        SQLite's write lock, so no other connection can append between the read of the last
        entry and the insert. Without the lock, a concurrent append makes this insert fail, with
        sqlite3.IntegrityError on ``seq`` or sqlite3.OperationalError "database is locked",
        instead of forking the chain.

        Raises
        ------
        AuditError
            If ``kind`` is empty, ``payload`` is not a JSON-serialisable dict, or ``recorded_at``
            is not a finite number.
        """
        if not isinstance(kind, str) or not kind:
            raise AuditError(f"audit entry kind must be a non-empty string, got {kind!r}; "
                             f"use one of {', '.join(KINDS)}")
        if not isinstance(payload, dict):
            raise AuditError(f"payload of the {kind!r} audit entry must be a dict, got {type(payload).__name__}")
        moment = time.time() if recorded_at is None else recorded_at
        if isinstance(moment, bool) or not isinstance(moment, (int, float)) or not math.isfinite(moment):
            raise AuditError(f"recorded_at of the {kind!r} audit entry must be finite unix seconds, got {moment!r}")
        # SQLite returns a REAL column as float, so hash the float that it will store.
        moment = float(moment)
        try:
            payload_text = canonical_json(payload).decode("ascii")
        except (TypeError, ValueError) as error:
            raise AuditError(f"payload of the {kind!r} audit entry is not JSON-serialisable ({error}); "
                             f"pass only strings, numbers, lists and dicts") from error
        # Hash the payload as verify() will read it back, for example with tuples as lists.
        stored_payload = json.loads(payload_text)

        last = self.head()
        seq = 1 if last is None else last.seq + 1
        prev_hash = GENESIS_HASH if last is None else last.hash
        digest = entry_hash(prev_hash, seq, moment, kind, stored_payload)
        self.connection.execute(
            "INSERT INTO audit (seq, recorded_at, kind, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, moment, kind, payload_text, prev_hash, digest),
        )
        logger.debug("audit entry %d (%s) appended", seq, kind)
        return AuditEntry(seq=seq, recorded_at=moment, kind=kind, payload=stored_payload, prev_hash=prev_hash,
                          hash=digest)

    def entries(self) -> list[AuditEntry]:
        """Return every entry in seq order.

        Raises
        ------
        AuditError
            If a stored payload is not a JSON object; ``verify`` reports the same problem by seq.
        """
        rows = self.connection.execute(
            "SELECT seq, recorded_at, kind, payload, prev_hash, hash FROM audit ORDER BY seq"
        ).fetchall()
        return [_entry_from_row(row) for row in rows]

    def verify(self) -> AuditReport:
        """Check the whole chain in seq order and report the first bad entry.

        Seqs must run 1..n without gaps, each payload must be a JSON object, each ``prev_hash``
        must equal the previous entry's hash, and each stored hash must match the entry's contents.
        """
        rows = self.connection.execute(
            "SELECT seq, recorded_at, kind, payload, prev_hash, hash FROM audit ORDER BY seq"
        ).fetchall()
        previous_hash = GENESIS_HASH
        previous_seq = 0
        for row in rows:
            seq, stored_hash = row[0], row[5]
            reason = _check_row(row, previous_seq, previous_hash)
            if reason is not None:
                logger.warning("audit log check failed at entry %s: %s", seq, reason)
                return AuditReport(ok=False, entries=len(rows), first_bad=seq, reason=f"entry {seq}: {reason}")
            previous_seq = seq
            previous_hash = stored_hash
        return AuditReport(ok=True, entries=len(rows), first_bad=None,
                           reason=f"{len(rows)} entries, chain intact")


def _check_row(row: tuple, previous_seq: int, previous_hash: str) -> str | None:
    """Return what is wrong with one row given the entry before it, or None if the row is valid."""
    seq, recorded_at, kind, payload_text, prev_hash, stored_hash = row
    if seq != previous_seq + 1:
        if previous_seq == 0:
            return f"the log starts at seq {seq} instead of 1 (entries were removed from the start)"
        if seq == previous_seq + 2:
            return f"follows entry {previous_seq}, so entry {previous_seq + 1} is missing (an entry was removed)"
        return (f"follows entry {previous_seq}, so entries {previous_seq + 1} to {seq - 1} are missing "
                f"(entries were removed)")

    try:
        payload = json.loads(payload_text)
    except (TypeError, ValueError) as error:
        return f"payload is not valid JSON ({error})"
    if not isinstance(payload, dict):
        return f"payload is a JSON {type(payload).__name__}, not an object"

    if prev_hash != previous_hash:
        if previous_seq == 0:
            return "prev_hash is not the genesis hash (the start of the log was replaced)"
        return f"prev_hash does not match entry {previous_seq} (an entry was removed or reordered)"

    try:
        recomputed = entry_hash(prev_hash, seq, recorded_at, kind, payload)
    except (TypeError, ValueError, AttributeError) as error:
        return f"fields cannot be hashed ({error}), so the row was edited after it was written"
    if recomputed != stored_hash:
        return "hash does not match its contents (edited after it was written)"
    return None


def _entry_from_row(row: tuple) -> AuditEntry:
    seq, recorded_at, kind, payload_text, prev_hash, stored_hash = row
    try:
        payload = json.loads(payload_text)
    except (TypeError, ValueError) as error:
        raise AuditError(f"audit entry {seq} has a payload that is not valid JSON ({error}); "
                         f"run verify to check the log") from error
    if not isinstance(payload, dict):
        raise AuditError(f"audit entry {seq} has a payload that is not a JSON object; run verify to check the log")
    return AuditEntry(seq=seq, recorded_at=recorded_at, kind=kind, payload=payload, prev_hash=prev_hash,
                      hash=stored_hash)


def verify_database(path: Path) -> AuditReport:
    """Open the SQLite database at ``path`` read-only and verify its audit log.

    Raises
    ------
    AuditError
        If the file is missing, is not an SQLite database or has no ``audit`` table.
    """
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"audit database {str(path)!r} not found; pass the SQLite database file in the "
                         f"server's state directory")
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as error:
        raise AuditError(f"cannot open audit database {str(path)!r} read-only: {error}") from error
    try:
        try:
            table = connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'audit'"
            ).fetchone()
        except sqlite3.DatabaseError as error:
            raise AuditError(f"{str(path)!r} is not an SQLite database ({error}); pass the SQLite database "
                             f"file in the server's state directory") from error
        if table is None:
            raise AuditError(f"database {str(path)!r} has no audit table; pass the SQLite database file in the "
                             f"server's state directory")
        return AuditLog(connection).verify()
    finally:
        connection.close()
