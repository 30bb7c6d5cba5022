import math

import pytest
import torch
import torch.nn.functional as F

from genrec.config import ModelConfig
from genrec.model.similarity import build_similarity
from genrec.train.losses import full_softmax_loss, sampled_softmax_loss


def table(num_items, dim, seed=0):
    weights = F.normalize(torch.randn(num_items + 1, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)
    return lambda ids=None: weights if ids is None else weights[ids]


@pytest.mark.parametrize("num_positions, num_items, num_negatives", [
    (4, 50, 16),  # small catalog: whole-table scores (dot) / item features (MoL) once, then gather
    (40, 100, 4),  # table normalised once, rows gathered
    (4, 100, 16),  # large catalog: gathered rows normalised one by one
])
@pytest.mark.parametrize("kind", ["dot", "mol"])
def test_matches_explicit_softmax_over_sampled_set(num_positions, num_items, num_negatives, kind):
    torch.manual_seed(0)
    similarity = build_similarity(ModelConfig(embedding_dim=8, similarity=kind))
    items = table(num_items, 8)
    user = F.normalize(torch.randn(num_positions, 8), dim=-1)
    targets = torch.arange(num_positions) % num_items + 1
    loss = sampled_softmax_loss(user, targets, items, num_items, num_negatives, 0.1,
                                torch.Generator().manual_seed(3), similarity=similarity)
    negatives = torch.randint(1, num_items + 1, (num_positions, num_negatives),
                              generator=torch.Generator().manual_seed(3))
    expected = 0.0
    with torch.no_grad():
        for p in range(num_positions):
            logits = [float(similarity.pairs(user[p], items(targets[p]))) / 0.1]
            logits += [float(similarity.pairs(user[p], items(n))) / 0.1 for n in negatives[p] if n != targets[p]]
            expected += -(logits[0] - math.log(sum(math.exp(x) for x in logits)))
    assert math.isclose(loss.item(), expected / num_positions, rel_tol=1e-5)


def test_negative_equal_to_positive_is_masked():
    """With a one-item corpus every negative is the positive: the loss must be exactly zero."""
    items = table(1, 4)
    user = F.normalize(torch.randn(3, 4), dim=-1)
    loss = sampled_softmax_loss(user, torch.ones(3, dtype=torch.int64), items, 1, 8, 0.05,
                                torch.Generator().manual_seed(0), in_batch_negatives=4)
    assert loss.item() == 0.0


def test_in_batch_negatives_add_terms_and_gradients():
    items = table(100, 8)
    user = F.normalize(torch.randn(6, 8), dim=-1).requires_grad_()
    targets = torch.tensor([5, 5, 7, 9, 11, 13])
    base = sampled_softmax_loss(user, targets, items, 100, 4, 0.05, torch.Generator().manual_seed(0))
    more = sampled_softmax_loss(user, targets, items, 100, 4, 0.05, torch.Generator().manual_seed(0),
                                in_batch_negatives=6)
    assert more.item() > base.item()
    more.backward()
    assert torch.isfinite(user.grad).all() and user.grad.abs().sum() > 0


def test_full_softmax_is_cross_entropy_over_the_catalog():
    items = table(30, 8, seed=1)
    user = F.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    targets = torch.tensor([1, 7, 30, 12, 7])
    loss = full_softmax_loss(user, targets, items, 30, 0.05)
    expected = 0.0
    for p in range(5):
        logits = [float(user[p] @ items(torch.tensor(i))) / 0.05 for i in range(1, 31)]
        expected += math.log(sum(math.exp(x) for x in logits)) - logits[int(targets[p]) - 1]
    assert math.isclose(loss.item(), expected / 5, rel_tol=1e-5)
