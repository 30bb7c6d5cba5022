"""benchmarks/scaling_law.py's fits: a power law, and a power law to a limit (a ceiling for quality, a floor for a
loss), recovered from curves of known parameters."""

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

COMPUTE = list(np.geomspace(1e10, 1e14, 7))


@pytest.fixture(scope="module")
def law():
    return load_benchmark("scaling_law")


def test_a_power_law_is_recovered(law):
    fit = law.power_law(COMPUTE, [3e-3 * c ** 0.13 for c in COMPUTE])
    assert fit["a"] == pytest.approx(3e-3) and fit["b"] == pytest.approx(0.13) and fit["r2"] == pytest.approx(1.0)


def test_quality_rising_to_a_ceiling_is_recovered(law):
    ndcg = [0.2 - 4.0 * c ** -0.15 for c in COMPUTE]
    fit = law.power_law_to_limit(COMPUTE, ndcg, higher_is_better=True)
    assert fit["limit"] == pytest.approx(0.2, abs=1e-3) and fit["b"] == pytest.approx(-0.15, abs=0.01)
    assert fit["kind"] == "ceiling"
    assert fit["r2"] > 0.999 > law.power_law(COMPUTE, ndcg)["r2"]  # the plain power law bends away from it


def test_a_loss_falling_to_a_floor_is_recovered(law):
    nll = [5.0 + 900.0 * c ** -0.2 for c in COMPUTE]
    fit = law.power_law_to_limit(COMPUTE, nll, higher_is_better=False)
    assert fit["limit"] == pytest.approx(5.0, abs=0.02) and fit["b"] == pytest.approx(-0.2, abs=0.01)
    assert fit["kind"] == "floor"
    assert fit["r2"] > 0.999


def test_fits_skip_a_metric_that_older_rows_lack(law):
    rows = [{"architecture": "hstu", "train_flops": c, "ndcg@10": 0.2 - 4.0 * c ** -0.15, "loss": 9.0 * c ** -0.05}
            for c in COMPUTE]
    for row in rows[3:]:
        row["nll"] = 5.0 + 900.0 * row["train_flops"] ** -0.2
    hstu = law.fits(rows, law.TASKS["retrieval"])["hstu"]
    assert hstu["nll"]["r2"] > 0.99 and hstu["with_limit"]["nll"]["limit"] == pytest.approx(5.0, abs=0.05)
    assert hstu["loss"]["b"] == pytest.approx(-0.05) and hstu["decades_of_compute"] == 4.0
    assert law.power_law_to_limit(COMPUTE[:3], [1.0, 0.9, 0.8], higher_is_better=False) is None  # 3 points, 3 unknowns
