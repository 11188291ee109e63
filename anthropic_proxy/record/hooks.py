"""Custom mitmproxy hooks that anthropic-proxy fires for users' own addons (see docs/extending.md)."""

from __future__ import annotations

from dataclasses import dataclass

from mitmproxy.hooks import Hook

from anthropic_proxy.record.model import Record


@dataclass
class AnthropicRecordCompleteHook(Hook):
    """A record reached its final state (success, error or cancelled) and was handed to the store.

    Addon method: `def anthropic_record_complete(self, record: Record)` (sync or async). It runs in the
    background, after the client already has its whole answer, so it never delays a client.
    """

    record: Record
