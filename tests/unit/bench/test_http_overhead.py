"""The HTTP overhead benchmark's arithmetic (the benchmark itself runs a server)."""

from __future__ import annotations

import pytest

from bench.http_overhead import engine_seconds, percentile, summary_ms


def test_engine_seconds_sum_the_engine_timings_of_a_prediction() -> None:
    metrics = {"predict_time": 0.2, "load": 0.001, "inference": 0.15, "postprocess": 0.01}
    assert engine_seconds(metrics) == pytest.approx(0.161)
    assert engine_seconds({}) == 0.0  # a server that reports none: nothing subtracted


def test_percentiles_and_summary_in_milliseconds() -> None:
    values = [0.001 * i for i in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(0.0505, abs=0.001)
    summary = summary_ms(values)
    assert summary["p95_ms"] == pytest.approx(95.0, abs=1.0)
    assert summary["mean_ms"] == pytest.approx(50.5)
