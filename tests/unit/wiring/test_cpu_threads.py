"""Torch's CPU threads: a worker inside the API's process leaves a core to the event loop."""

from __future__ import annotations

from sdserve.wiring import cpu_threads


def test_a_worker_beside_the_api_leaves_one_core_to_the_event_loop() -> None:
    assert cpu_threads(0, beside_api=True, default=2) == 1
    assert cpu_threads(0, beside_api=True, default=16) == 15
    assert cpu_threads(0, beside_api=True, default=1) == 1  # never none


def test_a_worker_process_of_its_own_keeps_torchs_default() -> None:
    assert cpu_threads(0, beside_api=False, default=16) is None


def test_the_setting_wins() -> None:
    assert cpu_threads(4, beside_api=True, default=16) == 4
    assert cpu_threads(4, beside_api=False, default=16) == 4
