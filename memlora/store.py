"""The memory store: SQLite, one transaction per exchange, a history row for every change.

An exchange (a window of turns) is applied atomically together with the row that marks it done, so a
process killed mid-ingest leaves either the whole exchange or none of it, and a rerun skips what is done.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MemloraError
from .prompts import Memory

_SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    id TEXT PRIMARY KEY, text TEXT NOT NULL, date TEXT NOT NULL, embedding BLOB NOT NULL,
    created_seq INTEGER NOT NULL, updated_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, memory_id TEXT NOT NULL, event TEXT NOT NULL,
    old_text TEXT, new_text TEXT, date TEXT NOT NULL, turn_ids TEXT NOT NULL, exchange TEXT NOT NULL,
    at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS exchanges (
    key TEXT PRIMARY KEY, status TEXT NOT NULL, turn_ids TEXT NOT NULL, facts TEXT,
    failed_op TEXT, raw_output TEXT, error TEXT, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


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
    """A SQLite-backed memory store with embeddings for cosine retrieval."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise MemloraError(f"{self.path}: not a usable memory store ({e})") from e
        self._cache: tuple[list[Memory], np.ndarray] | None = None

    def close(self) -> None:
        self.db.close()

    # -- exchanges -------------------------------------------------------------------------------
    def is_done(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM exchanges WHERE key=?", (key,)).fetchone() is not None

    def record_skipped(
        self, key: str, turn_ids: list[str], status: str, facts: list[str] | None = None,
        failed_op: str | None = None, raw_output: str | None = None, error: str | None = None,
    ) -> None:
        """Mark an exchange done without changes (no facts, or a malformed output kept for inspection)."""
        self.db.execute(
            "INSERT OR REPLACE INTO exchanges VALUES (?,?,?,?,?,?,?,?)",
            (key, status, json.dumps(turn_ids), json.dumps(facts), failed_op, raw_output, error, time.time()),
        )

    def apply(self, key: str, turn_ids: list[str], date: str, facts: list[str], changes: list[Change]) -> list[str]:
        """Apply `changes` and mark the exchange done, in one transaction. Returns the ids touched."""
        touched: list[str] = []
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
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
                "INSERT OR REPLACE INTO exchanges VALUES (?,?,?,?,?,?,?,?)",
                (key, "applied", json.dumps(turn_ids), json.dumps(facts), None, None, None, time.time()),
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        finally:
            self._cache = None
        return touched

    # -- reading ---------------------------------------------------------------------------------
    def memories(self) -> list[Memory]:
        return self._load()[0]

    def search(self, query: np.ndarray, k: int) -> list[Memory]:
        """The `k` memories most similar to `query` (unit vectors, so the dot product is the cosine)."""
        mems, mat = self._load()
        if not mems or k <= 0:
            return []
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


def _blob(v: np.ndarray | None) -> bytes:
    if v is None:
        raise ValueError("a memory needs an embedding")
    return np.asarray(v, dtype=np.float32).tobytes()
