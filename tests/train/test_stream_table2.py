"""The paper's Table 2 comparison at CPU size: benchmarks/stream_table2.py's four models, one pass over one small
synthetic stream, exactly as the benchmark runs them on the GPU at 10M events."""

import math

import pytest

from tests.benchmark_scripts import load_benchmark

TABLE_2 = ("Transformer (SASRec)", "HSTU softmax without rab", "HSTU without rab", "HSTU")


@pytest.fixture(scope="module")
def rows():
    script = load_benchmark("stream_table2")
    return {name: script.run(script.MODELS[name], 100, 42, "cpu", ["train.learning_rate=0.01"]) for name in TABLE_2}


def test_the_four_models_run_one_pass_over_the_same_events(rows):
    first = rows[TABLE_2[0]]
    assert first["events"] > 3000 and 0 < first["cold_targets"] < first["events"]
    for row in rows.values():  # the same stream, predicted event by event, against the same baseline
        assert (row["events"], row["cold_targets"], row["windows"]) == (first["events"], first["cold_targets"], 60)
        assert all(row[f"popularity_{key}"] == first[f"popularity_{key}"] for key in ("hr@10", "hr@50", "ndcg@10"))
        assert all(math.isfinite(row[key]) for key in ("hr@10", "hr@50", "ndcg@10"))
        assert 0 < row["hr@10"] <= row["hr@50"] <= 1 and 0 < row["ndcg@10"] <= row["hr@10"]


def test_the_four_models_are_four_different_models(rows):
    """Softmax or pointwise attention, with or without rab: each setting changes what the run learns."""
    assert len({(row["hr@10"], row["hr@50"], row["ndcg@10"]) for row in rows.values()}) == len(TABLE_2)
