import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.eval.metrics import hit_rate, mrr, ndcg, summarize


def test_known_values():
    ranks = torch.tensor([1, 2, 11, 300])
    assert hit_rate(ranks, 10) == 0.5
    assert math.isclose(ndcg(ranks, 10), (1.0 + 1 / math.log2(3)) / 4)
    assert math.isclose(ndcg(ranks, 50), (1.0 + 1 / math.log2(3) + 1 / math.log2(12)) / 4)
    assert math.isclose(mrr(ranks), (1 + 0.5 + 1 / 11 + 1 / 300) / 4)
    assert set(summarize(ranks)) == {"hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr"}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=1, max_size=40), st.integers(1, 300))
def test_metric_bounds_and_monotonicity(ranks, k):
    ranks = torch.tensor(ranks)
    assert 0.0 <= ndcg(ranks, k) <= hit_rate(ranks, k) <= 1.0
    assert hit_rate(ranks, k) <= hit_rate(ranks, k + 1)
    assert ndcg(ranks, k) <= ndcg(ranks, k + 1)
    assert mrr(ranks) <= 1.0 and mrr(ranks - ranks + 1) == 1.0


def test_summarize_rejects_bad_ranks():
    import pytest
    with pytest.raises(ValueError):
        summarize(torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        summarize(torch.tensor([], dtype=torch.int64))


def test_auc_and_normalized_entropy():
    from genrec.eval.metrics import auc, normalized_entropy
    labels = torch.tensor([0, 0, 1, 1])
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), labels) == 0.75
    assert auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), labels) == 0.5  # ties count half
    assert math.isnan(auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))
    base = torch.full((4,), math.log(0.5 / 0.5))  # predicting the base rate 0.5 gives NE = 1
    assert math.isclose(normalized_entropy(base, labels), 1.0)
    assert normalized_entropy(torch.tensor([-5.0, -5.0, 5.0, 5.0]), labels) < 0.05
