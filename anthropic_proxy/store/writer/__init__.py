"""The store's writer: a process of its own, so the proxy never pays for the database with its GIL.

- protocol.py: what the proxy and the writer say to each other (small dataclasses) and how a put is encoded;
- process.py: the proxy's side, `WriterProcess` (its `put` never blocks; a sender and a receiver thread);
- child.py: the writer process itself (`Writer`, `main`), run as `python -m anthropic_proxy.store.writer`.
"""

from __future__ import annotations

from anthropic_proxy.store.writer.process import WriterProcess
from anthropic_proxy.store.writer.protocol import WriterSettings

__all__ = ["HEARTBEAT_SECONDS", "PRUNE_EVERY", "WriterProcess", "WriterSettings"]

# Read by the store when it starts its writer (`WriterSettings`): tests lower them.
PRUNE_EVERY = 500  # writes between two retention passes
HEARTBEAT_SECONDS = 30.0  # how often an instance on a shared database says it is alive
