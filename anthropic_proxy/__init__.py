"""anthropic-proxy: see every Anthropic API call Claude Code makes, and route it to OpenRouter on demand."""

__version__ = "0.1.0"
