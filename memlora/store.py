"""The memory store: SQLite, one transaction per exchange, a history row for every change.

An exchange (a window of turns) is applied atomically together with the row that marks it done, so a
process killed mid-ingest leaves either the whole exchange or none of it, and a rerun skips what is done.
The done-check runs again inside the write transaction, so two writers never apply one exchange twice;
`writer()` serialises whole ingests, so concurrent ingests give what one sequential run gives.

A store carries its schema version in `meta`; opening checks it and the tables, and refuses a database
that is not a memory store (or is one of a newer memlora) without writing to it. Read-only verbs open it
read-only, which also works on read-only media.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import numpy as np

from .errors import MemloraError
from .prompts import Memory

SCHEMA_VERSION = 1
"""Bump when the tables change; stores of memlora 0.2 have these tables and no version row (read as 1)."""
_TABLES = {
    "memories": "id TEXT PRIMARY KEY, text TEXT NOT NULL, date TEXT NOT NULL, embedding BLOB NOT NULL, "
                "created_seq INTEGER NOT NULL, updated_seq INTEGER NOT NULL",
    "history": "seq INTEGER PRIMARY KEY AUTOINCREMENT, memory_id TEXT NOT NULL, event TEXT NOT NULL, "
               "old_text TEXT, new_text TEXT, date TEXT NOT NULL, turn_ids TEXT NOT NULL, exchange TEXT NOT NULL, "
               "at REAL NOT NULL",
    "exchanges": "key TEXT PRIMARY KEY, status TEXT NOT NULL, turn_ids TEXT NOT NULL, facts TEXT, "
                 "failed_op TEXT, raw_output TEXT, error TEXT, at REAL NOT NULL",
    "meta": "key TEXT PRIMARY KEY, value TEXT NOT NULL",
}
_COLUMNS = {t: [c.split()[0] for c in spec.split(", ")] for t, spec in _TABLES.items()}
BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Change:
    """A resolved change to apply: `memory_id` is a store id (None for ADD)."""

    event: str
    memory_id: str | None
    text: str
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class HistoryRow:
    seq: int
    memory_id: str
    event: str
    old_text: str | None
    new_text: str | None
    date: str
    turn_ids: list[str]
    exchange: str


class MemoryStore:
    """A SQLite-backed memory store with embeddings for cosine retrieval.

    ``read_only=True`` never creates, converts or writes anything, and needs the store to exist."""

    def __init__(self, path: Path | str, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        try:
            self.db = _connect_read_only(self.path) if read_only else _connect(self.path)
            self._check_schema()
        except sqlite3.Error as e:
            raise MemloraError(f"{self.path}: not a usable memory store ({e})") from e
        self._cache: tuple[list[Memory], np.ndarray] | None = None

    def close(self) -> None:
        self.db.close()

    def _check_schema(self) -> None:
        """Accept our own tables at a version we read; create them in an empty database; refuse the rest."""
        found = self._tables()
        if not found:
            if self.read_only:
                raise MemloraError(f"{self.path}: an empty database, not a memory store; run `memlora ingest` first")
            script = "".join(f"CREATE TABLE IF NOT EXISTS {t} ({spec});\n" for t, spec in _TABLES.items())
            self.db.executescript(f"BEGIN IMMEDIATE;\n{script}INSERT OR IGNORE INTO meta VALUES "
                                  f"('schema_version', '{SCHEMA_VERSION}');\nCOMMIT;")
            found = self._tables()
        if found != _COLUMNS:
            have = ", ".join(sorted(found)) or "none"
            raise MemloraError(f"{self.path}: not a memlora memory store (tables: {have}); refusing to touch it")
        problems = [r[0] for r in self.db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:  # a damaged page would otherwise surface mid-ingest as a traceback
            raise MemloraError(f"{self.path}: the memory store is damaged ({'; '.join(problems)}); restore it from "
                               "a copy or re-ingest into a new store")
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row and row[0].isdigit() else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise MemloraError(f"{self.path}: written by a newer memlora (store schema {version}, this version "
                               f"reads {SCHEMA_VERSION}); upgrade memlora to use it")
        if not self.read_only:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            if row is None:  # a memlora 0.2 store: same tables, version not yet recorded
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _tables(self) -> dict[str, list[str]]:
        names = [r[0] for r in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return {n: [c[1] for c in self.db.execute(f'PRAGMA table_info("{n}")')] for n in names}

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the store's writer lock (``<store>.lock``) for a whole ingest; a second ingest waits for it.

        Each exchange retrieves what earlier ones stored, so interleaving two ingests would give a store no
        sequential run gives; the lock makes concurrent runs one sequential run."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fh = lock_path.open("a+")
        except OSError as e:
            raise MemloraError(f"{lock_path}: cannot create the store's writer lock ({e.strerror})") from e
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                owner = fh.read().strip() or "another process"
                print(f"waiting for another writer of {self.path} ({owner}) to finish", file=sys.stderr, flush=True)
                fcntl.flock(fh, fcntl.LOCK_EX)
            with contextlib.suppress(OSError):  # who holds it, for the message above; the lock works without
                fh.truncate(0)
                fh.write(f"pid {os.getpid()}\n")
                fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- exchanges -------------------------------------------------------------------------------
    def is_done(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM exchanges WHERE key=?", (key,)).fetchone() is not None

    def record_skipped(
        self, key: str, turn_ids: list[str], status: str, facts: list[str] | None = None,
        failed_op: str | None = None, raw_output: str | None = None, error: str | None = None,
    ) -> bool:
        """Mark an exchange done without changes (no facts, too long, or a malformed output kept for
        inspection). False when another writer finished it first (its record is kept)."""
        with self._write(key) as cur:
            cur.execute(
                "INSERT OR IGNORE INTO exchanges VALUES (?,?,?,?,?,?,?,?)",
                (key, status, json.dumps(turn_ids), json.dumps(facts), failed_op, raw_output, error, time.time()),
            )
            return cur.rowcount == 1

    def apply(self, key: str, turn_ids: list[str], date: str, facts: list[str],
              changes: list[Change]) -> list[str] | None:
        """Apply `changes` and mark the exchange done, in one transaction. Returns the ids touched, or None
        (and changes nothing) when the exchange is already done."""
        touched: list[str] = []
        with self._write(key) as cur:
            if cur.execute("SELECT 1 FROM exchanges WHERE key=?", (key,)).fetchone() is not None:
                return None
            seq = int((cur.execute("SELECT value FROM meta WHERE key='seq'").fetchone() or ("0",))[0]) + 1
            next_id = int((cur.execute("SELECT value FROM meta WHERE key='next_id'").fetchone() or ("0",))[0])
            for c in changes:
                if c.event == "NONE":
                    continue
                if c.event == "ADD":
                    mid = f"m{next_id}"
                    next_id += 1
                    cur.execute(
                        "INSERT INTO memories VALUES (?,?,?,?,?,?)",
                        (mid, c.text, date, _blob(c.embedding), seq, seq),
                    )
                    old = None
                else:
                    mid = c.memory_id
                    row = cur.execute("SELECT text FROM memories WHERE id=?", (mid,)).fetchone()
                    if row is None:
                        raise MemloraError(f"{self.path}: memory {mid} vanished during an update")
                    old = row[0]
                    if c.event == "UPDATE":
                        cur.execute(
                            "UPDATE memories SET text=?, date=?, embedding=?, updated_seq=? WHERE id=?",
                            (c.text, date, _blob(c.embedding), seq, mid),
                        )
                    else:
                        cur.execute("DELETE FROM memories WHERE id=?", (mid,))
                cur.execute(
                    "INSERT INTO history (memory_id,event,old_text,new_text,date,turn_ids,exchange,at) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (mid, c.event, old, None if c.event == "DELETE" else c.text, date,
                     json.dumps(turn_ids), key, time.time()),
                )
                touched.append(mid)
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('seq', ?)", (str(seq),))
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('next_id', ?)", (str(next_id),))
            cur.execute(
                "INSERT INTO exchanges VALUES (?,?,?,?,?,?,?,?)",
                (key, "applied", json.dumps(turn_ids), json.dumps(facts), None, None, None, time.time()),
            )
        return touched

    @contextlib.contextmanager
    def _write(self, key: str) -> Iterator[sqlite3.Cursor]:
        """One write transaction: committed whole, or rolled back whole with a one-line error (disk full...)."""
        if self.read_only:
            raise MemloraError(f"{self.path}: opened read-only")
        cur = self.db.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    cur.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise MemloraError(f"{self.path}: cannot write the memory store ({e}); nothing of exchange "
                               f"{key} was written") from e
        finally:
            self._cache = None

    # -- reading ---------------------------------------------------------------------------------
    def memories(self) -> list[Memory]:
        return self._load()[0]

    def search(self, query: np.ndarray, k: int) -> list[Memory]:
        """The `k` memories most similar to `query` (unit vectors, so the dot product is the cosine)."""
        mems, mat = self._load()
        if not mems or k <= 0:
            return []
        if mat.shape[1] != query.shape[-1]:
            raise MemloraError(f"{self.path}: its memories were embedded as {mat.shape[1]}-dimensional vectors, this "
                               f"embedder gives {query.shape[-1]}: search the store with the embedder that filled it")
        scores = mat @ query.astype(np.float32)
        order = np.argsort(-scores, kind="stable")[:k]
        return [Memory(mems[i].id, mems[i].text, mems[i].date, float(scores[i])) for i in order]

    def history(self, memory_id: str | None = None) -> list[HistoryRow]:
        q = "SELECT seq,memory_id,event,old_text,new_text,date,turn_ids,exchange FROM history"
        rows = self.db.execute(q + (" WHERE memory_id=? ORDER BY seq" if memory_id else " ORDER BY seq"),
                               (memory_id,) if memory_id else ()).fetchall()
        return [HistoryRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7]) for r in rows]

    def exchanges(self) -> list[dict]:
        cols = ("key", "status", "turn_ids", "facts", "failed_op", "raw_output", "error")
        rows = self.db.execute(f"SELECT {','.join(cols)} FROM exchanges ORDER BY at").fetchall()
        return [dict(zip(cols, r)) for r in rows]

    def _load(self) -> tuple[list[Memory], np.ndarray]:
        if self._cache is None:
            rows = self.db.execute(
                "SELECT id,text,date,embedding FROM memories ORDER BY created_seq, CAST(substr(id,2) AS INTEGER)"
            ).fetchall()
            mems = [Memory(r[0], r[1], r[2]) for r in rows]
            mat = np.stack([np.frombuffer(r[3], dtype=np.float32) for r in rows]) if rows else np.zeros((0, 0), np.float32)
            self._cache = (mems, mat)
        return self._cache


def _connect(path: Path) -> sqlite3.Connection:
    """A writable connection; creates the store (and its folder) when missing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MemloraError(f"{path.parent}: cannot create the store's folder ({e.strerror})") from e
    return sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_S)


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write; on read-only media (no -shm can be made) the file is opened immutable."""
    if not path.is_file():
        raise MemloraError(f"{path}: no memory store here; run `memlora ingest` first (or pass --store)")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        if os.access(path.parent, os.W_OK):
            raise
        db.close()
        return sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)


def _blob(v: np.ndarray | None) -> bytes:
    if v is None:
        raise ValueError("a memory needs an embedding")
    return np.asarray(v, dtype=np.float32).tobytes()
