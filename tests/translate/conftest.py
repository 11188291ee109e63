"""Make the shared test modules next to this file (helpers.py, sdk.py) importable by the tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
