"""The training-lane benchmark's arithmetic (the benchmark itself runs a server)."""

from __future__ import annotations

from bench.training_lane import markdown, summary


def test_the_summary_compares_busy_with_idle_predictions() -> None:
    result = summary([0.1, 0.1, 0.1], [0.2, 0.3, 0.25])
    assert result["idle"] == {"count": 3, "p50_ms": 100.0, "mean_ms": 100.0}
    assert result["during_training"]["p50_ms"] == 250.0
    assert result["ratio_p50"] == 2.5
    assert result["ratio_mean"] == 2.5
    table = markdown({**result, "machine": "x86_64, 2 CPUs"})
    assert "busy / idle: p50 x2.5" in table
