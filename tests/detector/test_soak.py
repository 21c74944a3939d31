"""The soak of bench/soak.py in a shorter window: mixed Detect and DetectImages traffic while
a version is published every 2 s and the embedder restarts once — no failed call, every
client sees versions rise, memory stays within 10% of after warm-up. `python -m bench.soak`
runs the full 60 s."""

import pytest

from bench.soak import run_soak


@pytest.mark.slow
def test_a_short_soak_under_swaps_and_an_embedder_restart():
    result = run_soak(seconds=14, publish_every=2, clients=3)
    print(result.report())
    assert result.embedder_restarted
    assert result.failures == []
    assert result.non_monotone_clients == 0
    assert result.published >= 6
    assert max(result.served_versions) >= result.published - 1
    assert result.calls["detect_images"] > 0 and result.calls["detect_1"] > 0 and result.calls["detect_64"] > 0
    assert result.rss_growth <= 0.10, result.report()
