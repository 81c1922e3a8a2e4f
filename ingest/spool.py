"""A durable local spool for messages taken from the broker while the database is away.

SQLite in WAL mode with synchronous=FULL: one transaction (one fsync) per batch, so a message
acknowledged to the broker after `append` returns survives a crash of this process or host.
Rows come back in the order they went in and are deleted only after the database has them.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime
from pathlib import Path

from ingest.mqtt import Message

log = logging.getLogger(__name__)


class SpoolFull(RuntimeError):
    pass


class Spool:
    def __init__(self, path: Path, max_messages: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_messages = max_messages
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "topic TEXT NOT NULL, payload BLOB NOT NULL, received_at TEXT NOT NULL)"
        )
        self.depth = int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0])
        if self.depth:
            log.warning(
                "spool %s holds %d messages from an earlier run; replaying them", path, self.depth
            )

    def append(self, messages: list[Message]) -> None:
        """Store messages durably (fsync) or raise SpoolFull without storing any."""
        if self.depth + len(messages) > self.max_messages:
            raise SpoolFull(
                f"spool {self.path} is full ({self.depth} of {self.max_messages} messages)"
            )
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany(
            "INSERT INTO spool (topic, payload, received_at) VALUES (?, ?, ?)",
            [(m.topic, m.payload, m.received_at.isoformat()) for m in messages],
        )
        self._db.execute("COMMIT")
        self.depth += len(messages)

    def peek(self, limit: int) -> tuple[list[int], list[Message]]:
        """The oldest `limit` messages, in order, with their spool ids."""
        rows = self._db.execute(
            "SELECT id, topic, payload, received_at FROM spool ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        ids = [r[0] for r in rows]
        msgs = [Message(r[1], bytes(r[2]), 0, 0, datetime.fromisoformat(r[3]), -1) for r in rows]
        return ids, msgs

    def remove(self, ids: list[int]) -> None:
        if not ids:
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM spool WHERE id BETWEEN ? AND ?", (ids[0], ids[-1]))
        self._db.execute("COMMIT")
        self.depth -= len(ids)

    def close(self) -> None:
        self._db.close()
