"""The record store: `Store` (store.py) and the names its users need.

    store.py       the `Store` API: writes handed to the writer process, reads, import, orphans at start-up
    filters.py     `RecordFilter` and the monitor's time ranges
    search.py      the text filter (`q`), over the pieces the store keeps anyway
    reading.py     a stored row back as its record; `record_json`
    statistics.py  the monitor's figures (`Store.aggregate`, `Store.analyze`)
    rows.py        a record as rows (every writer's), retention, collection of unused pieces
    writer/        the writer process (protocol.py, the proxy side process.py, the child child.py)
    threads.py     the store's threads in the proxy: a log they survive, a loop started again if it ends
    journal/       what the proxy puts, on disk until the writer has written it (docs/journal.md); consumed.py:
                   how far the writer is, kept with the rows
    dialects.py    SQLite and what PostgreSQL spells differently (postgres.py); schema.py: the migrations
    cache_break.py why a call's prompt cache missed
"""

from anthropic_proxy.store.dialects import DB_NAME
from anthropic_proxy.store.filters import RecordFilter, parse_time_range
from anthropic_proxy.store.reading import StoreCorrupt, record_json
from anthropic_proxy.store.store import MEMORY_BUDGET_MB, MIN_MEMORY_BUDGET_MB, Store

__all__ = ["DB_NAME", "MEMORY_BUDGET_MB", "MIN_MEMORY_BUDGET_MB", "RecordFilter", "Store", "StoreCorrupt",
           "parse_time_range", "record_json"]
