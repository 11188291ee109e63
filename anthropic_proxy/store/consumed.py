"""How far the writer has consumed a journal (store/journal/): one row per journal, `journal_positions`.

The writer saves the position in the same transaction as the records it read before it, so that a crash between
the two can neither write an entry twice nor skip one (docs/journal.md). Rows are keyed by the journal's id: a
store on a shared database keeps one per proxy's journal, and a journal made again starts from its own start.
"""

from __future__ import annotations

import time

from anthropic_proxy.store.dialects import Connection
from anthropic_proxy.store.journal import Position

_FORGET_SECONDS = 30 * 86400.0  # a journal not consumed for this long is gone (its proxy's state dir with it)


def load(db: Connection, journal: str) -> Position | None:
    """The position saved for the journal whose id is `journal`, or None (none saved, or not readable)."""
    row = db.execute("SELECT position FROM journal_positions WHERE journal = ?", (journal,)).fetchone()
    try:
        return Position.parse(row[0]) if row else None
    except ValueError:
        return None


def save(db: Connection, position: Position) -> None:
    """Keep `position` for its journal: in the caller's transaction, with what was made of the entries before it."""
    db.execute("INSERT INTO journal_positions (journal, position, updated) VALUES (?, ?, ?) ON CONFLICT (journal) "
               "DO UPDATE SET position = excluded.position, updated = excluded.updated",
               (position.journal, str(position), time.time()))
    db.execute("DELETE FROM journal_positions WHERE updated < ?", (time.time() - _FORGET_SECONDS,))
