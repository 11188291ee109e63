"""A record as database rows: what every writer of the store shares (the writer process, `import`, the closing
of orphans at start-up). Inside the caller's transaction; no threads, no queues (see store/schema.py for the schema,
store/search.py for the `search` column and the `turns` table).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from anthropic_proxy.record import bodies
from anthropic_proxy.record.masking import mask_text
from anthropic_proxy.record.model import Record
from anthropic_proxy.record.pricing import PriceBook
from anthropic_proxy.store import search
from anthropic_proxy.store.cache_break import explain_around, prompt_facts
from anthropic_proxy.store.dialects import Connection, Dialect, storable_text

logger = logging.getLogger("anthropic_proxy.store")

METRIC_COLUMNS = ("duration_ms", "input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens",
                  "cost_usd")
RECORD_COLUMNS = ("id", "ts", "status", "provider", "model", "session", "search", "summary", "data", "refs",
                  *METRIC_COLUMNS, "owner", "cache_head", "cache_bp", "cache_break", "cache_break_at",
                  "cache_break_usd")


def metric_values(record: Record) -> tuple[Any, ...]:
    usage = record.usage
    return (record.metrics.duration_ms, usage.input_tokens, usage.output_tokens,
            usage.cache_creation_input_tokens, usage.cache_read_input_tokens, record.cost_usd)


@dataclass(slots=True)
class Prepared:
    """A record made ready for the database (done outside the write transaction)."""

    record_id: str
    row: tuple[Any, ...]
    split: bodies.Split
    turn: list[str]  # the blobs of the messages this call added to its conversation (`search.py`)


def prepare(record: Record, owner: str, data: dict[str, Any] | None = None) -> Prepared:
    """`data`: the record's JSON form (`model_dump(mode="json", by_alias=True)`) when the caller has it already. It
    is cut in place, and may share its values with `record`: all that is read from the record is read first."""
    body = record.request.body
    searched = storable_text(search.column_text(body, record.message))
    summary = mask_text(json.dumps(record.summary()))
    head, breakpoint = prompt_facts(record.request.path, body)
    turn = len(search.turn_messages(body))
    split = bodies.split(data if data is not None else record.model_dump(mode="json", by_alias=True))
    chain = split.chains.get(search.BODY_SLOT, [])
    row = (record.id, record.timestamp.timestamp(), record.status, record.provider, storable_text(record.model),
           storable_text(record.session_id), searched, summary, split.skeleton,
           json.dumps(split.refs, separators=(",", ":")),
           *metric_values(record), owner, head, breakpoint, None, None, None)  # the break: `explain_around`
    return Prepared(record.id, row, split, search.turn_blobs([blob for _, _, blob in chain], turn))


class RowWriter:
    """Inserts, replaces and deletes records with the pieces they use, in one dialect's SQL; explains the cache
    breaks of what it writes (`cache_break.py`) with the prices of `book`."""

    def __init__(self, dialect: Dialect, book: PriceBook) -> None:
        self.dialect = dialect
        self.book = book
        self._upsert = dialect.upsert("records", RECORD_COLUMNS, "id")
        self._add_blob = dialect.insert_ignore("blobs", ("id", "data"))
        self._add_node = dialect.insert_ignore("nodes", ("id", "parent", "blob"))
        self._add_turn = dialect.insert_ignore("turns", ("record_id", "blob"))
        # An instance says it is alive (id, name, seen): at start-up and in the writer's heartbeats.
        self.announce = dialect.upsert("instances", ("id", "name", "seen"), "id")

    def store(self, db: Connection, prepared: list[Prepared]) -> None:
        """Insert or replace records with the pieces they add (inside the caller's transaction)."""
        garbage: set[str] = set()
        for item in prepared:
            split = item.split
            for keys in split.refs.values():
                for key, ref in keys.items():
                    if key != bodies.MESSAGES:
                        db.execute(self._add_blob, (ref, split.blobs[ref]))
            for chain in split.chains.values():
                # Nodes exist as a prefix of the chain (a node's ancestors always exist): binary search its end.
                lo, hi = 0, len(chain)  # chain[:lo] exists, chain[hi:] does not
                while lo < hi:
                    mid = (lo + hi) // 2
                    if db.execute("SELECT 1 FROM nodes WHERE id = ?", (chain[mid][0],)).fetchone():
                        lo = mid + 1
                    else:
                        hi = mid
                for node, parent, blob in chain[lo:]:
                    db.execute(self._add_blob, (blob, split.blobs[blob]))
                    db.execute(self._add_node, (node, parent, blob))
            old = {ref for (ref,) in db.execute("SELECT ref FROM record_refs WHERE record_id = ?", (item.record_id,))}
            new = split.ref_ids()
            db.execute(self._upsert, item.row)
            if old != new:
                db.executemany("DELETE FROM record_refs WHERE record_id = ? AND ref = ?",
                               [(item.record_id, ref) for ref in old - new])
                db.executemany("INSERT INTO record_refs (record_id, ref) VALUES (?, ?)",
                               [(item.record_id, ref) for ref in new - old])
                garbage |= old - new
            old_turn = {blob for (blob,) in db.execute("SELECT blob FROM turns WHERE record_id = ?",
                                                       (item.record_id,))}
            if old_turn != set(item.turn):
                db.execute("DELETE FROM turns WHERE record_id = ?", (item.record_id,))
                db.executemany(self._add_turn, [(item.record_id, blob) for blob in item.turn])
        if garbage:
            collect(db, garbage)
        explain_around(db, [item.record_id for item in prepared], self.book, _unexplained)

    def prune(self, db: Connection, *, max_records: int, retention_days: float) -> None:
        """Retention: drop records older than `retention_days` and beyond the newest `max_records`. On a shared
        database every instance prunes; the write lock makes the passes take turns (deleting what another pass
        already deleted does nothing)."""
        cutoff = time.time() - retention_days * 86400
        try:
            db.reopen_if_broken()
            db.begin_write()
            ids = [i for (i,) in db.execute("SELECT id FROM records WHERE ts < ?", (cutoff,))]
            ids += [i for (i,) in db.execute(
                f"SELECT id FROM records WHERE ts >= ? ORDER BY ts DESC LIMIT {self.dialect.unlimited} OFFSET ?",
                (cutoff, max_records))]
            if ids:
                delete_records(db, ids)
            db.commit()
        except self.dialect.errors as exc:  # retention runs again after the next writes
            self.rollback(db)
            logger.warning("store: retention pass failed (%s)", self.dialect.scrub(str(exc)))

    def rollback(self, db: Connection) -> None:
        with contextlib.suppress(*self.dialect.errors):  # a full disk (or a lost server) can refuse even this
            if db.in_transaction:
                db.rollback()


def _unexplained(record_id: str, exc: Exception) -> None:
    logger.warning("store: the cache break of record %s cannot be explained (%s: %s)", record_id,
                   type(exc).__name__, exc)


def delete_records(db: Connection, ids: list[str]) -> None:
    """Delete records and whatever pieces only they used (inside the caller's transaction)."""
    garbage: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ", ".join("?" * len(chunk))
        garbage.update(ref for (ref,) in db.execute(f"SELECT ref FROM record_refs WHERE record_id IN ({marks})",
                                                    chunk))
        db.execute(f"DELETE FROM record_refs WHERE record_id IN ({marks})", chunk)
        db.execute(f"DELETE FROM turns WHERE record_id IN ({marks})", chunk)
        db.execute(f"DELETE FROM records WHERE id IN ({marks})", chunk)
    collect(db, garbage)


def collect(db: Connection, candidates: set[str]) -> None:
    """Remove the nodes and blobs among `candidates` (and, for nodes, their ancestors) nothing uses any more."""
    blobs: set[str] = set()
    nodes = list(candidates)
    while nodes:
        ref = nodes.pop()
        if db.execute("SELECT 1 FROM record_refs WHERE ref = ? LIMIT 1", (ref,)).fetchone():
            continue
        row = db.execute("SELECT parent, blob FROM nodes WHERE id = ?", (ref,)).fetchone()
        if row is None:
            blobs.add(ref)  # not a node: a blob (system, tools)
            continue
        if db.execute("SELECT 1 FROM nodes WHERE parent = ? LIMIT 1", (ref,)).fetchone():
            continue
        db.execute("DELETE FROM nodes WHERE id = ?", (ref,))
        blobs.add(row[1])
        if row[0] is not None:
            nodes.append(row[0])
    for ref in blobs:
        if not db.execute("SELECT 1 FROM record_refs WHERE ref = ? LIMIT 1", (ref,)).fetchone() \
                and not db.execute("SELECT 1 FROM nodes WHERE blob = ? LIMIT 1", (ref,)).fetchone():
            db.execute("DELETE FROM blobs WHERE id = ?", (ref,))
