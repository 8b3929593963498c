"""The webhook outbox: undelivered events on disk, in SQLite (WAL mode), until their receiver says 2xx.

One table, one row per undelivered event: `seq` (insertion order, never reused), `endpoint` (a hash of
the receiver's URL, so several webhooks can share one file and a URL holding a token is not written
down), the event id and stream, `created` (the event's own time, Unix seconds: what `max_age_s` is
measured against) and the JSON body exactly as it is POSTed (so a signature computed after a restart
covers the same bytes).

Durability: every `add` is its own committed transaction. In WAL mode with `synchronous=NORMAL`, a
committed row survives the process being killed (SIGKILL, a crash, OOM); a power cut can lose the last
transactions that were not yet checkpointed. A row is deleted only after its delivery was acknowledged
or it was dropped for a counted reason, so a process that dies between the receiver's 2xx and the
delete sends that event again at the next start (at least once; receivers de-duplicate by event id).

`Outbox` is synchronous and not thread-safe: the webhook sink calls it from one dedicated thread, so
the event loop never waits on the disk.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from swapwatch.errors import SwapwatchError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    created REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_endpoint_seq ON outbox (endpoint, seq);
"""


def endpoint_key(url: str) -> str:
    """The `endpoint` column value for a receiver URL (a hash: URLs may hold tokens)."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


@dataclass(slots=True)
class OutboxRow:
    """What the sink keeps in memory about one undelivered event (the body stays on disk)."""

    seq: int
    event_id: str
    stream: str
    created: float


class Outbox:
    """Undelivered events of one endpoint in a SQLite file (created if missing)."""

    def __init__(self, path: str | Path, url: str, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.endpoint = endpoint_key(url)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: opened here, then used from the sink's one outbox thread only.
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=busy_timeout_s, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:
                self._db.executescript(_SCHEMA)
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, SCHEMA_VERSION):
                    raise SwapwatchError(
                        f"{self.path}: webhook outbox schema version {version}, this swapwatch knows {SCHEMA_VERSION}"
                    )
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as err:
            raise SwapwatchError(f"{self.path}: cannot open the webhook outbox: {err}") from None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the outbox is closed")
        return self._db

    def add(self, event_id: str, stream: str, created: float, body: bytes) -> int:
        """Store one event (committed before returning); its `seq`."""
        db = self._conn()
        with db:
            cur = db.execute(
                "INSERT INTO outbox (endpoint, event_id, stream, created, body) VALUES (?, ?, ?, ?, ?)",
                (self.endpoint, event_id, stream, created, body),
            )
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def pending(self) -> list[OutboxRow]:
        """This endpoint's undelivered events, oldest first."""
        rows = self._conn().execute(
            "SELECT seq, event_id, stream, created FROM outbox WHERE endpoint = ? ORDER BY seq", (self.endpoint,)
        )
        return [OutboxRow(int(seq), str(eid), str(stream), float(created)) for seq, eid, stream, created in rows]

    def body(self, seq: int) -> bytes | None:
        """The stored body of `seq`, or None when it is gone."""
        row = self._conn().execute("SELECT body FROM outbox WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else bytes(row[0])

    def remove(self, seqs: Iterable[int]) -> None:
        """Delete delivered or dropped events (committed before returning)."""
        db = self._conn()
        with db:
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def count(self) -> int:
        """This endpoint's undelivered events."""
        row = self._conn().execute("SELECT COUNT(*) FROM outbox WHERE endpoint = ?", (self.endpoint,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection (idempotent); SQLite checkpoints the WAL into the file."""
        db, self._db = self._db, None
        if db is not None:
            db.close()
