"""The rate-limit report: latest values as sent, limit triples, unified windows and their projection."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from anthropic_proxy.reports.ratelimits import instant, report

T0 = datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp()
RESET = T0 + 4 * 3600


def rows(*points: tuple[float, float], extra: dict[str, str] | None = None) -> list:
    return [(T0 + t, f"r{n}", {"Anthropic-RateLimit-Unified-5h-Utilization": str(u),
                               "anthropic-ratelimit-unified-5h-reset": str(int(RESET)),
                               "content-type": "application/json", **(extra or {})})
            for n, (t, u) in enumerate(points)]


def test_projection_at_the_rate_of_the_current_window():
    # 0.2 -> 0.5 in an hour: 30 points an hour, full 1 h 40 min after the last point, before the reset
    found = report(rows((0, 0.2), (1800, 0.35), (3600, 0.5)))
    window = found["windows"][0]
    assert window["window"] == "5h" and window["utilization"] == 0.5
    assert window["ratePerHour"] == pytest.approx(0.3)
    assert instant(window["fillsAt"]) == pytest.approx(T0 + 3600 + 5 * 3600 / 3)
    assert window["fillsBeforeReset"] is True and instant(window["reset"]) == RESET
    slow = report(rows((0, 0.2), (3600, 0.25)))["windows"][0]  # 5 points an hour: 15 h to go, after the reset
    assert slow["fillsBeforeReset"] is False


def test_a_drop_starts_a_new_window_and_one_point_projects_nothing():
    # the window reset between the second and third point: only the points after the drop count
    window = report(rows((0, 0.8), (600, 0.9), (1200, 0.1), (4800, 0.2)))["windows"][0]
    assert window["ratePerHour"] == pytest.approx(0.1)
    assert report(rows((0, 0.5)))["windows"][0]["fillsAt"] is None
    flat = report(rows((0, 0.5), (600, 0.5)))["windows"][0]
    assert (flat["ratePerHour"], flat["fillsAt"]) == (0, None)
    full = report(rows((0, 0.9), (600, 1.0)))["windows"][0]
    assert full["fillsAt"] is not None and instant(full["fillsAt"]) == T0 + 600


def test_latest_values_limits_and_unknown_headers():
    found = report([
        (T0, "a", {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
                   "anthropic-ratelimit-requests-reset": "2026-12-01T10:00:30Z"}),
        (T0 + 5, "b", {"anthropic-ratelimit-requests-remaining": "48", "anthropic-ratelimit-someday-new": "x=1"}),
        (T0 + 6, "c", {"content-type": "text/plain"}),  # nothing to report in it
    ])
    assert found["latest"]["anthropic-ratelimit-someday-new"] == {
        "value": "x=1", "at": datetime.fromtimestamp(T0 + 5, UTC).isoformat(), "recordId": "b"}
    assert found["limits"] == [{"name": "requests", "limit": "50", "remaining": "48",
                                "reset": "2026-12-01T10:00:30Z",
                                "at": datetime.fromtimestamp(T0 + 5, UTC).isoformat()}]
    assert [p["values"] for p in found["series"]] == [{"requests-remaining": 49.0}, {"requests-remaining": 48.0}]
    assert found["windows"] == []


def test_reset_instants():
    assert instant("1764583200") == 1764583200.0
    assert instant("2026-12-01T10:00:00Z") == T0
    assert instant("soon") is None and instant(None) is None
