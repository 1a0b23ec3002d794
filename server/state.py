"""Durable server state: owners, jobs, model versions, revocations and the audit log in SQLite.

One database file, ``state.db`` in the state directory, runs in WAL mode with full synchronous
commits. So several processes on the server host (the control service and the ServerApp running
a job) can share it, and a committed row survives a crash. Tensors stay in the
:class:`~lmeraser.server.model.ModelStore` beside it; the database records which version is
published. Every method that changes state runs in one transaction, together with the audit
entry that records the change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..shared.errors import LmeraserError
from .audit import AuditLog

logger = logging.getLogger(__name__)

DATABASE_FILE = "state.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    node_name TEXT NOT NULL UNIQUE,
    node_id TEXT NOT NULL DEFAULT '',
    node_unregistered INTEGER NOT NULL DEFAULT 0,
    enrolled_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS nonces (
    owner TEXT NOT NULL,
    nonce TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (owner, nonce)
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    owner TEXT,
    base_version TEXT,
    progress TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS versions (
    version TEXT PRIMARY KEY,
    parent TEXT,
    job INTEGER,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (
    request_hash TEXT PRIMARY KEY,
    owner TEXT NOT NULL UNIQUE,
    request TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    withdrawn TEXT NOT NULL,
    job INTEGER NOT NULL,
    receipt TEXT,
    completed_at REAL
);
"""

# Job statuses. A job stays ``pending`` or ``running`` until it finishes, so a restarted server
# picks up every job that has no outcome yet.
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
TRAIN, UNLEARN = "train", "unlearn"


class StateError(LmeraserError):
    """The state database is missing, corrupt or inconsistent."""


@dataclasses.dataclass(frozen=True)
class Owner:
    """An enrolled data owner."""

    owner: str
    public_key: str
    node_name: str
    node_id: str
    node_unregistered: int
    enrolled_at: float
    status: str
    revoked_at: float | None


@dataclasses.dataclass(frozen=True)
class Job:
    """A training or unlearning job and its progress."""

    id: int
    kind: str
    status: str
    config: dict[str, Any]
    owner: str | None
    base_version: str | None
    progress: dict[str, Any]
    result: dict[str, Any] | None
    attempts: int
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None


@dataclasses.dataclass(frozen=True)
class Revocation:
    """An accepted revocation request and, once its job is done, the signed receipt."""

    request_hash: str
    owner: str
    request: dict[str, Any]
    accepted_at: float
    withdrawn: list[str]
    job: int
    receipt: dict[str, Any] | None
    completed_at: float | None


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class StateDB:
    """The server's state database.

    Parameters
    ----------
    state_dir : path
        Server state directory; ``state.db`` is created there on first use.
    check : bool, default True
        Run SQLite's integrity check when opening; a corrupt file raises :class:`StateError`.

    Notes
    -----
    Methods may be called from several threads (the control service's workers): a lock
    serialises them on one connection. Other processes use their own ``StateDB``.
    """

    def __init__(self, state_dir: str | Path, check: bool = True) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / DATABASE_FILE
        self._lock = threading.RLock()
        try:
            self._connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                               timeout=30.0)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")
            if check:
                status = self._connection.execute("PRAGMA quick_check").fetchone()[0]
                if status != "ok":
                    raise sqlite3.DatabaseError(status)
            self._connection.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise StateError(f"state database {str(self.path)!r} is corrupt or not a database ({error}); "
                             f"restore it from a backup or move it away to start a new federation") from error
        self.audit = AuditLog(self._connection)
        self.audit.ensure_schema()

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one write transaction: committed on success, rolled back on error."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def _query(self, sql: str, parameters: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._connection.execute(sql, parameters)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str, default: str = "") -> str:
        """Return the value stored under ``key``."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else default

    def set_meta(self, connection: sqlite3.Connection, key: str, value: str) -> None:
        """Store ``value`` under ``key`` inside an open transaction."""
        connection.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # ------------------------------------------------------------------ owners

    def owner(self, owner: str) -> Owner | None:
        """Return the enrolled owner ``owner``, or None."""
        rows = self._query("SELECT * FROM owners WHERE owner = ?", (owner,))
        return Owner(**dict(rows[0])) if rows else None

    def owners(self, status: str | None = None) -> list[Owner]:
        """Return enrolled owners sorted by id, optionally only those with ``status``."""
        if status is None:
            rows = self._query("SELECT * FROM owners ORDER BY owner")
        else:
            rows = self._query("SELECT * FROM owners WHERE status = ? ORDER BY owner", (status,))
        return [Owner(**dict(row)) for row in rows]

    def find_owner(self, public_key: str = "", node_name: str = "") -> Owner | None:
        """Return the owner enrolled with ``public_key`` or ``node_name``, or None."""
        rows = self._query("SELECT * FROM owners WHERE public_key = ? OR node_name = ?", (public_key, node_name))
        return Owner(**dict(rows[0])) if rows else None

    def add_owner(self, owner: str, public_key: str, node_name: str, node_id: str, enrolled_at: float) -> None:
        """Enrol an owner and audit it, in one transaction."""
        with self.transaction() as connection:
            connection.execute("INSERT INTO owners (owner, public_key, node_name, node_id, enrolled_at) "
                               "VALUES (?, ?, ?, ?, ?)", (owner, public_key, node_name, node_id, enrolled_at))
            self.audit.append("enrolment", {"owner": owner, "public_key": public_key, "node_name": node_name,
                                            "node_id": node_id}, recorded_at=enrolled_at)
        logger.info("owner %s enrolled with node %s (id %s)", owner, node_name, node_id)

    def mark_unregistered(self, owner: str) -> None:
        """Record that ``owner``'s node was removed from the SuperLink."""
        with self.transaction() as connection:
            connection.execute("UPDATE owners SET node_unregistered = 1 WHERE owner = ?", (owner,))

    # ------------------------------------------------------------------ jobs

    def _job(self, row: sqlite3.Row) -> Job:
        data = dict(row)
        for key in ("config", "progress", "result"):
            data[key] = _loads(data[key])
        return Job(**data)

    def job(self, job_id: int) -> Job:
        """Return job ``job_id``; raises :class:`StateError` when there is none."""
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise StateError(f"job {job_id} not found in {str(self.path)!r}; list jobs with 'lmeraser server status'")
        return self._job(rows[0])

    def jobs(self) -> list[Job]:
        """Return every job, oldest first."""
        return [self._job(row) for row in self._query("SELECT * FROM jobs ORDER BY id")]

    def next_job(self) -> Job | None:
        """Return the oldest job without an outcome (pending or running), or None."""
        rows = self._query("SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY id LIMIT 1", (PENDING, RUNNING))
        return self._job(rows[0]) if rows else None

    def insert_job(self, connection: sqlite3.Connection, kind: str, config: dict[str, Any],
                   owner: str | None = None) -> int:
        """Queue a job inside an open transaction and return its id."""
        cursor = connection.execute("INSERT INTO jobs (kind, status, config, owner, created_at) VALUES (?, ?, ?, ?, ?)",
                                    (kind, PENDING, json.dumps(config, sort_keys=True), owner, time.time()))
        return int(cursor.lastrowid)

    def add_job(self, kind: str, config: dict[str, Any]) -> int:
        """Queue a job in its own transaction and return its id."""
        with self.transaction() as connection:
            job_id = self.insert_job(connection, kind, config)
        logger.info("job %d (%s) queued", job_id, kind)
        return job_id

    def start_job(self, job_id: int, base_version: str | None) -> Job:
        """Mark job ``job_id`` running and count the attempt. A resumed job keeps the base model
        version recorded by its first attempt."""
        with self.transaction() as connection:
            connection.execute(
                "UPDATE jobs SET status = ?, attempts = attempts + 1, started_at = COALESCE(started_at, ?), "
                "base_version = COALESCE(base_version, ?) WHERE id = ?",
                (RUNNING, time.time(), base_version, job_id))
        return self.job(job_id)

    def set_progress(self, job_id: int, progress: dict[str, Any]) -> None:
        """Record how far job ``job_id`` has come."""
        with self.transaction() as connection:
            connection.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))

    def record_error(self, job_id: int, error: str, final: bool = False) -> None:
        """Record a failed attempt of job ``job_id``; ``final`` marks the job failed for good."""
        with self.transaction() as connection:
            if final:
                connection.execute("UPDATE jobs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
                                   (FAILED, error, time.time(), job_id))
            else:
                connection.execute("UPDATE jobs SET error = ? WHERE id = ?", (error, job_id))

    def finish_job(self, connection: sqlite3.Connection, job_id: int, result: dict[str, Any]) -> None:
        """Mark job ``job_id`` done with ``result`` inside an open transaction."""
        connection.execute("UPDATE jobs SET status = ?, result = ?, error = NULL, finished_at = ? WHERE id = ?",
                           (DONE, json.dumps(result, sort_keys=True), time.time(), job_id))

    # ------------------------------------------------------------------ model versions

    def current_version(self) -> str:
        """Return the published model version id ("" before the first training)."""
        return self.get_meta("current")

    def publish(self, connection: sqlite3.Connection, version: str, parent: str, job_id: int) -> None:
        """Record ``version`` and make it the served model, inside an open transaction."""
        connection.execute("INSERT OR IGNORE INTO versions (version, parent, job, created_at) VALUES (?, ?, ?, ?)",
                           (version, parent, job_id, time.time()))
        self.set_meta(connection, "current", version)
        self.audit.append("model", {"version": version, "parent": parent, "job": job_id})

    def versions(self) -> list[dict[str, Any]]:
        """Return every published version, oldest first."""
        return [dict(row) for row in self._query("SELECT * FROM versions ORDER BY created_at")]

    # ------------------------------------------------------------------ revocations

    def _revocation(self, row: sqlite3.Row) -> Revocation:
        data = dict(row)
        data["request"] = json.loads(data["request"])
        data["withdrawn"] = json.loads(data["withdrawn"])
        data["receipt"] = _loads(data["receipt"])
        return Revocation(**data)

    def revocation(self, owner: str = "", request_hash: str = "") -> Revocation | None:
        """Return the revocation of ``owner`` or with ``request_hash``, or None."""
        rows = self._query("SELECT * FROM revocations WHERE owner = ? OR request_hash = ?", (owner, request_hash))
        return self._revocation(rows[0]) if rows else None

    def revocations(self, pending_only: bool = False) -> list[Revocation]:
        """Return revocations in acceptance order; ``pending_only`` keeps those without a receipt."""
        sql = "SELECT * FROM revocations" + (" WHERE receipt IS NULL" if pending_only else "") + " ORDER BY accepted_at"
        return [self._revocation(row) for row in self._query(sql)]

    def nonce_use(self, owner: str, nonce: str) -> str | None:
        """Return the request hash that already used ``nonce`` for ``owner``, or None."""
        rows = self._query("SELECT request_hash FROM nonces WHERE owner = ? AND nonce = ?", (owner, nonce))
        return rows[0]["request_hash"] if rows else None

    def accept_revocation(self, owner: str, request: dict[str, Any], request_hash: str, withdrawn: list[str],
                          job_config: dict[str, Any]) -> Revocation:
        """Commit an accepted revocation: the nonce, the owner's status, the unlearning job and
        the audit entry, in one transaction."""
        accepted_at = time.time()
        with self.transaction() as connection:
            connection.execute("INSERT INTO nonces (owner, nonce, request_hash, seen_at) VALUES (?, ?, ?, ?)",
                               (owner, request["nonce"], request_hash, accepted_at))
            connection.execute("UPDATE owners SET status = 'revoked', revoked_at = ? WHERE owner = ?",
                               (accepted_at, owner))
            job_id = self.insert_job(connection, UNLEARN, job_config, owner)
            connection.execute(
                "INSERT INTO revocations (request_hash, owner, request, accepted_at, withdrawn, job) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (request_hash, owner, json.dumps(request, sort_keys=True), accepted_at, json.dumps(withdrawn), job_id))
            self.audit.append("revocation", {"owner": owner, "request_hash": request_hash, "request": request,
                                             "withdrawn": withdrawn, "job": job_id}, recorded_at=accepted_at)
        logger.info("revocation of owner %s accepted (request %s, job %d, %d clusters withdrawn)", owner,
                    request_hash[:12], job_id, len(withdrawn))
        return self.revocation(owner=owner)

    def attach_receipt(self, connection: sqlite3.Connection, request_hash: str, document: dict[str, Any],
                       completed_at: float) -> None:
        """Store the signed receipt of a revocation and audit it, inside an open transaction."""
        connection.execute("UPDATE revocations SET receipt = ?, completed_at = ? WHERE request_hash = ?",
                           (json.dumps(document, sort_keys=True), completed_at, request_hash))
        self.audit.append("receipt", document, recorded_at=completed_at)
