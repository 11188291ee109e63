"""Rate limits and subscription quota, as Anthropic reports them in the `anthropic-ratelimit-*` response headers.

Every answer carries the current figures: for API keys `anthropic-ratelimit-{requests,tokens,input-tokens,
output-tokens}-{limit,remaining,reset}`; for subscriptions the unified windows
`anthropic-ratelimit-unified-{5h,7d}-{utilization,reset}` (utilisation a fraction, 1 = full; reset a Unix time or
an RFC 3339 instant) and `anthropic-ratelimit-unified-status`. `report()` reads them from the stored records'
response headers, oldest first:

- `latest`: every `anthropic-ratelimit-*` header seen, named as sent (lower case), with the last value, when it
  came and in which record: a header this module does not know is kept and shown as it is;
- `limits`: the `-limit` / `-remaining` / `-reset` triples, one entry per limit;
- `windows`: the unified windows with their utilisation, reset and a projection of when the window fills at the
  rate it filled since the window's earliest point seen (`fillsAt`, and whether that is before the reset);
- `series`: the numeric remaining and utilisation values over time (for a chart).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

PREFIX = "anthropic-ratelimit-"
_TRIPLE = re.compile(r"^anthropic-ratelimit-(.+)-(limit|remaining|reset)$")
_UTILIZATION = re.compile(r"^anthropic-ratelimit-(unified-(\d+)([mhd]))-utili[sz]ation$")
_SERIES = re.compile(r"-(remaining|utili[sz]ation)$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def instant(value: str | None) -> float | None:
    """A reset header as a Unix time: a number of seconds, or an RFC 3339 instant; None if neither."""
    if not value:
        return None
    if (number := _number(value)) is not None:
        return number
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def report(rows: Iterable[tuple[float, str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The rate-limit report from (timestamp, record id, response headers) rows, oldest first."""
    latest: dict[str, dict[str, Any]] = {}
    series: list[dict[str, Any]] = []
    points: dict[str, list[tuple[float, float]]] = {}  # utilisation header -> (t, value)
    for ts, record_id, headers in rows:
        values: dict[str, float] = {}
        for raw_name, value in headers.items():
            name = str(raw_name).lower()
            if not name.startswith(PREFIX) or not isinstance(value, str):
                continue
            latest[name] = {"value": value, "at": _iso(ts), "recordId": record_id}
            if _SERIES.search(name) and (number := _number(value)) is not None:
                values[name.removeprefix(PREFIX)] = number
                if _UTILIZATION.match(name):
                    points.setdefault(name, []).append((ts, number))
        if values:
            series.append({"t": ts, "recordId": record_id, "values": values})
    return {"latest": dict(sorted(latest.items())), "limits": _limits(latest), "windows": _windows(latest, points),
            "series": series}


def _limits(latest: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    limits: dict[str, dict[str, Any]] = {}
    for name, seen in latest.items():
        if (match := _TRIPLE.match(name)) is None or match.group(1).startswith("unified"):
            continue
        entry = limits.setdefault(match.group(1), {"name": match.group(1), "limit": None, "remaining": None,
                                                    "reset": None, "at": seen["at"]})
        entry[match.group(2)] = seen["value"]
        entry["at"] = max(entry["at"], seen["at"])
    return sorted(limits.values(), key=lambda e: e["name"])


def _windows(latest: dict[str, dict[str, Any]], points: dict[str, list[tuple[float, float]]]) -> list[dict[str, Any]]:
    windows = []
    for name, seen in latest.items():
        if (match := _UTILIZATION.match(name)) is None:
            continue
        window, length = match.group(1), int(match.group(2)) * _UNIT_SECONDS[match.group(3)]
        reset = instant((latest.get(f"{PREFIX}{window}-reset") or {}).get("value"))
        status = (latest.get(f"{PREFIX}{window}-status") or latest.get(f"{PREFIX}unified-status") or {}).get("value")
        windows.append({"window": window.removeprefix("unified-"), "header": name,
                        "utilization": _number(seen["value"]), "reset": _iso(reset) if reset is not None else None,
                        "status": status, "at": seen["at"], **_projection(points.get(name, []), length, reset)})
    return sorted(windows, key=lambda w: w["header"])


def _projection(points: list[tuple[float, float]], length: float, reset: float | None) -> dict[str, Any]:
    """When the window fills at the rate it filled over the points of the current window: the points since the
    window began (reset minus its length) and after the last drop (a drop is a window that reset)."""
    current = points[-1:]
    for t, value in reversed(points[:-1]):
        if value > current[0][1] or (reset is not None and t < reset - length):
            break
        current.insert(0, (t, value))
    if len(current) < 2 or current[-1][0] <= current[0][0]:
        return {"ratePerHour": None, "fillsAt": None, "fillsBeforeReset": None}
    (t0, u0), (t1, u1) = current[0], current[-1]
    rate = (u1 - u0) / (t1 - t0)
    fills = t1 + (1 - u1) / rate if rate > 0 and u1 < 1 else (t1 if u1 >= 1 else None)
    return {"ratePerHour": rate * 3600, "fillsAt": _iso(fills) if fills is not None else None,
            "fillsBeforeReset": (fills < reset) if fills is not None and reset is not None else None}
