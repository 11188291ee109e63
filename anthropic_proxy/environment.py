"""The process environment plus `.env` files, with the documented precedence.

Precedence: `--set` options > real environment > `.env` in the working directory > `.env` in state_dir.
Nothing is written into `os.environ`; secrets such as OPENROUTER_API_KEY are read from here on each
use, so `/api/config/reload` (which calls `reload()`) picks up a changed file without a restart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_STATE_DIR = "~/.anthropic-proxy"
_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def parse_dotenv(text: str) -> dict[str, str]:
    """The common `.env` dialect: `KEY=value`, `export KEY=value`, quotes, `#` comments."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            continue
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = value.encode().decode("unicode_escape") if "\\" in value else value
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0]
        values[key] = value
    return values


class Environment:
    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._origins: dict[str, str] = {}  # name -> "the environment" or the .env file that set it
        self.files: list[Path] = []
        self._state_dir: Path | None = None  # set by the state_dir option, which wins over the environment
        self.reload()

    def use_state_dir(self, state_dir: Path) -> None:
        if state_dir.expanduser() != self._state_dir:
            self._state_dir = state_dir.expanduser()
            self.reload()

    def reload(self) -> None:
        state_dir = self._state_dir or self._state_dir_from(dict(os.environ))
        files = [Path.cwd() / ".env", state_dir / ".env"]
        merged: dict[str, str] = {}
        origins: dict[str, str] = {}
        self.files = []
        for path in reversed(files):  # lowest precedence first
            if path.is_file():
                values = parse_dotenv(path.read_text(encoding="utf-8", errors="replace"))
                merged.update(values)
                origins.update(dict.fromkeys(values, str(path)))
                self.files.insert(0, path)
        # state_dir may itself be set in the working directory's .env
        state_env = (self._state_dir or self._state_dir_from({**merged, **os.environ})) / ".env"
        if state_env not in files and state_env.is_file():
            values = parse_dotenv(state_env.read_text(encoding="utf-8", errors="replace"))
            origins = {**dict.fromkeys(values, str(state_env)), **origins}
            merged = {**values, **merged}
            self.files.append(state_env)
        merged.update(os.environ)
        origins.update(dict.fromkeys(os.environ, "the environment"))
        self._values, self._origins = merged, origins

    @staticmethod
    def _state_dir_from(values: dict[str, str]) -> Path:
        return Path(values.get("ANTHROPIC_PROXY_HOME") or DEFAULT_STATE_DIR).expanduser()

    def get(self, name: str, default: str = "") -> str:
        return self._values.get(name) or default

    def origin(self, name: str) -> str | None:
        """Where `name`'s value comes from: "the environment", a `.env` file's path, or None when it is not set."""
        return self._origins.get(name) if self.get(name) else None

    def get_int(self, name: str, default: int) -> int:
        raw = self.get(name)
        try:
            return int(raw) if raw else default
        except ValueError as exc:
            raise ValueError(f"{name} must be a whole number (got {raw!r})") from exc


environment = Environment()
