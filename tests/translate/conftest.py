"""Translate the recordings once per test session; several test modules check the same outputs."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/translate/helpers.py is imported as a plain module by the test files next to it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
