"""Pure Anthropic Messages <-> OpenAI chat completions translation (no mitmproxy, no I/O)."""
