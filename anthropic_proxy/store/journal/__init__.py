"""An append-only journal of opaque payloads on disk: the proxy appends, a consumer reads, stores and truncates.

Built the way trusted logs are: segment files of framed entries, each with a sequence number and checksums, so that
a torn tail (a crash mid-write) or damaged bytes are found, skipped and reported rather than read as entries
(`format.py`). The producer's side (`appender.Journal`) never makes its caller wait for the disk; the consumer's
(`reader.JournalReader`) reads from a `Position` it keeps in its own database, in the transaction that stores what
it made of the entries, and deletes the segments it has consumed. docs/journal.md has the design and its bounds.
"""

from anthropic_proxy.store.journal.appender import Journal, JournalBusy, JournalFull
from anthropic_proxy.store.journal.format import Damage
from anthropic_proxy.store.journal.reader import Batch, Entry, JournalReader, Position, Problem, next_seq

__all__ = ["Batch", "Damage", "Entry", "Journal", "JournalBusy", "JournalFull", "JournalReader", "Position",
           "Problem", "next_seq"]
